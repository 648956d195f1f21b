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
    result = json.loads((out / "result" / "result.json").read_text())
    assert result["smoke_run"] is True and result["expressions"][0] == "neutral"
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


def test_worker_stops_when_its_stdin_closes(tmp_path, tiny_models_root, photos_dir):
    """Blender going away closes the worker's stdin: the worker must stop and say so, not run on."""
    from engine import protocol

    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "smoke_pipeline.py"), "run",
         "--photos", str(photos_dir / "grace_hopper.jpg"), "--expressions", "neutral", "smiling",
         "--models", str(tiny_models_root), "--out", str(tmp_path / "result"), "--smoke",
         "--grid", "16", "--pretrain-steps", "5", "--steps", "50"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    messages = [protocol.decode(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1
    assert messages[0]["type"] == "hello"
    assert messages[-2]["type"] == "error" and messages[-2]["code"] == "cancelled"
    assert messages[-1] == {"type": "done", "ok": False}
    assert not (tmp_path / "result" / "head.npz").exists()
