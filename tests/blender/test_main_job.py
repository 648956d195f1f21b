"""The README's main job, end to end in its quickest form: zip -> Blender -> photos -> head object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_main_job_builds_installs_checks_photos_and_brings_a_head_with_shape_keys(tmp_path):
    out = tmp_path / "job"
    env = {**os.environ, "IDTO3D_MODELS": str(tmp_path / "no-real-models")}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "main_job.py"), "--out", str(out), "--quick",
         "--expressions", "smiling", "with curly red hair"],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # Without real weights it must say so, say how to get them and label the run.
    assert "real model weights not found" in done.stdout
    assert "docs/install.md" in done.stdout
    assert "SMOKE RUN" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke_run"] is True
    assert summary["shape_keys"] == ["Basis", "smiling", "with curly red hair"]
    assert summary["vertices"] > 100 and summary["faces"] > 100
    assert (out / "head.blend").stat().st_size > 10_000
    assert (out / "render.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "job" / "result" / "result.json").read_text())
    assert result["models"]["tiny_test_models"] is True
    assert result["mesh"]["expressions"] == ["neutral", "smiling", "with curly red hair"]
    assert (out / "job" / "result" / "head.glb").is_file() and (out / "job" / "job.json").is_file()
    # The photos went through the add-on's Check Photos: all three derived photos are usable.
    assert done.stdout.count(": OK") + done.stdout.count(": SEVERAL_FACES") == 3


def test_main_job_refuses_an_output_folder_it_did_not_write(tmp_path):
    out = tmp_path / "Documents"
    out.mkdir()
    (out / "thesis.txt").write_text("irreplaceable")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "main_job.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "not empty and was not written by this job" in done.stdout
    assert (out / "thesis.txt").read_text() == "irreplaceable"


# The worker's stdin-closing cancel is tested with the real worker in tests/pipeline/test_worker.py.
