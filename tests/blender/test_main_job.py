"""The README's main job, end to end in its quickest form: zip -> Blender -> photos -> Generate Head
(headless, the real worker) -> relight -> render. Asserts on what is in the scene and the render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_main_job_generates_a_head_with_moving_shape_keys_and_renders_it(tmp_path):
    from PIL import Image

    out = tmp_path / "job"
    env = {**os.environ, "IDTO3D_MODELS": str(tmp_path / "no-real-models")}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "main_job.py"),
            "--out",
            str(out),
            "--quick",
            "--expressions",
            "smiling",
            "with curly red hair",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # Without real weights it must say so, say how to get them and label the run.
    assert "real model weights not found" in done.stdout and "docs/install.md" in done.stdout
    assert "SMOKE RUN" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["smoke_run"] is True and summary["tiny_test_models"] is True and summary["preset"] == "test"
    )
    # The head in the scene: the mesh the engine wrote, with UVs and one moving key per expression.
    assert summary["vertices"] > 100 and summary["faces"] > 100
    assert summary["vertices"] == summary["result_mesh"]["vertices"]
    assert summary["uv_layers"] == ["UVMap"]
    assert summary["shape_keys"] == ["Basis", "smiling", "with curly red hair"]
    assert all(offset > 1e-6 for offset in summary["shape_key_max_offset_m"].values()), summary[
        "shape_key_max_offset_m"
    ]
    assert summary["snapshots_streamed"] >= 1
    # The render shows something lit in front of the camera, not an empty frame.
    pixels = np.asarray(Image.open(out / "render.png").convert("RGB"), np.float32) / 255
    assert pixels.shape[:2] == (96, 96)
    assert summary["render_statistics"]["foreground_fraction"] > 0.05 and pixels.std() > 0.02
    assert (out / "head.blend").stat().st_size > 10_000
    job = Path(summary["job"])
    result = json.loads((job / "result" / "result.json").read_text())
    assert result["models"]["tiny_test_models"] is True
    assert result["mesh"]["expressions"] == ["neutral", "smiling", "with curly red hair"]
    assert (job / "result" / "head.glb").is_file() and (job / "job.json").is_file()
    # The photos went through the add-on's Check Photos: all three derived photos are usable.
    assert done.stdout.count(": OK") + done.stdout.count(": SEVERAL_FACES") == 3


def test_main_job_refuses_an_output_folder_it_did_not_write(tmp_path):
    out = tmp_path / "Documents"
    out.mkdir()
    (out / "thesis.txt").write_text("irreplaceable")
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "main_job.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "not empty and was not written by this job" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "irreplaceable"


# Blender quitting closes the worker's stdin: tests/pipeline/test_worker.py::test_stdin_closing_cancels.
