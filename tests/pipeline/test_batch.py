"""``python -m engine batch``: every manifest row checked with its own error, the local runner
stopped with Ctrl-C and continued, a rerun that only reports, and a Ray runner that cannot start."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.pipeline.batch import ManifestError, read_manifest
from engine.pipeline.job_folder import checkpoint_step

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path):
    return read_manifest(path, models="/models", device="cpu", preset="standard")


def test_every_row_is_checked_with_its_own_error(tmp_path, photos_dir):
    np.save(tmp_path / "anna.npy", np.ones(512, np.float32))
    (tmp_path / "faces").mkdir()
    shutil.copy(photos_dir / "grace_hopper.jpg", tmp_path / "faces" / "bob.jpg")
    manifest = tmp_path / "faces.csv"
    manifest.write_text(
        "\ufeffid,photos,embedding,expressions,preset,seed,overrides\n"  # Excel's byte-order mark
        "anna,,anna.npy,smiling|with curly red hair,test,1,\n"
        "bob,faces/bob.jpg,,,,2,\"{\"\"geometry_steps\"\": 8}\"\n"
        "carol,carol1.jpg|faces/bob.jpg|carol3.jpg,,smiling,test,0,\n"
        "../evil,,anna.npy,,test,0,\n"
        "\n"
        "Anna,,anna.npy,,test,0,\n"
        "dave,,anna.npy,Basis,test,0,\n"
        "erin,,anna.npy,,ultra,0,\n"
        "fay,,anna.npy,,test,abc,\n"
        "gus,,anna.npy,,test,0,\"{\"\"grid\"\": -1}\"\n"
        "hal,,,,test,0,\n", encoding="utf-8")
    rows = {row.line: row for row in _rows(manifest)}
    assert rows[2].job == {"photos": [], "embedding": str(tmp_path / "anna.npy"),
                           "expressions": ["smiling", "with curly red hair"], "preset": "test", "seed": 1,
                           "texture_size": None, "overrides": {}, "expression_prompts": {}, "models": "/models",
                           "device": "cpu"}
    assert rows[3].error is None and rows[3].job["photos"] == [str(tmp_path / "faces" / "bob.jpg")]
    assert rows[3].job["preset"] == "standard" and rows[3].job["overrides"] == {"geometry_steps": 8}
    errors = {line: row.error for line, row in rows.items() if row.error}
    assert sorted(errors) == [4, 5, 7, 8, 9, 10, 11, 12]  # the blank line 6 is no row
    assert errors[4]["code"] == "batch_missing_photo" and errors[4]["field"] == "photos"
    assert errors[4]["message"].startswith("line 4 (id 'carol'): photos ")
    assert str(tmp_path / "carol1.jpg") in errors[4]["message"] and str(tmp_path / "carol3.jpg") in errors[4]["message"]
    assert "bob.jpg" not in errors[4]["message"]  # that one exists
    assert errors[5]["field"] == "id" and "'../evil' cannot be a folder name" in errors[5]["message"]
    assert "used by line 2" in errors[7]["message"]  # Anna and anna would share a folder on some systems
    expected = {8: ("job_bad_expressions", "Basis"), 9: ("job_bad_preset", "ultra"), 10: ("job_bad_seed", "abc"),
                11: ("job_bad_overrides", "grid"), 12: ("job_bad_photos", "no photos and no embedding")}
    for line, (code, text) in expected.items():
        assert errors[line]["code"] == code and text in errors[line]["message"], errors[line]
        assert errors[line]["message"].startswith(f"line {line} (id ") and errors[line]["hint"]


def test_manifest_formats_and_whole_manifest_errors(tmp_path):
    np.save(tmp_path / "e.npy", np.ones(512, np.float32))
    semicolons = tmp_path / "excel.csv"  # a spreadsheet in a locale that separates with ';'
    semicolons.write_text("id;embedding;seed\nanna;e.npy;4\n", encoding="utf-8")
    assert [(r.id, r.job["seed"]) for r in _rows(semicolons)] == [("anna", 4)]

    lines = tmp_path / "faces.jsonl"
    lines.write_text('{"id": "anna", "embedding": "e.npy", "expressions": ["smiling", "jawOpen"], '
                     '"expression_prompts": {"jawOpen": "mouth wide open"}}\n'
                     '{"id": "bob", "embedding": "e.npy", "seeds": 3}\n'
                     '{"id": "carol", \n', encoding="utf-8")
    anna, bob, carol = _rows(lines)
    assert anna.error is None and anna.job["expressions"] == ["smiling", "jawOpen"]
    assert anna.job["expression_prompts"] == {"jawOpen": "mouth wide open"}
    assert bob.error["field"] == "seeds" and "unknown field 'seeds'" in bob.error["message"]
    assert carol.error["message"].startswith("line 3: not valid JSON")

    typo = tmp_path / "typo.csv"
    typo.write_text("id,photo,seed\nanna,a.jpg,1\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="unknown columns 'photo'") as info:
        _rows(typo)
    assert "photos" in info.value.hint
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="no rows"):
        _rows(tmp_path / "empty.jsonl")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def batch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "batch", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), **kwargs)


def write_manifest(folder: Path, geometry_steps: int = 40) -> Path:
    np.save(folder / "anna.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    rows = [{"id": "anna", "embedding": "anna.npy", "expressions": ["smiling"], "preset": "test",
             "overrides": {"geometry_steps": geometry_steps, "checkpoint_every": 2}},
            {"id": "carol", "photos": ["carol.jpg"], "preset": "test"}]
    manifest = folder / "faces.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def index(root: Path) -> dict:
    return {job["id"]: job for job in json.loads((root / "index.json").read_text())["jobs"]}


def test_local_batch_stopped_with_ctrl_c_continues_and_a_rerun_only_reports(tmp_path, tiny_models_root):
    manifest, root = write_manifest(tmp_path), tmp_path / "root"
    args = (str(manifest), "--out", str(root), "--models", str(tiny_models_root), "--device", "cpu",
            "--progress-every", "1")
    first = batch(*args)
    deadline = time.monotonic() + 180
    while (checkpoint_step(root / "anna") or 0) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)  # to the batch alone: it must stop its worker itself
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-3000:]
    step = checkpoint_step(root / "anna")
    assert 2 <= step < 40
    jobs = index(root)
    assert json.loads((root / "index.json").read_text())["status"] == "interrupted"
    assert jobs["anna"]["status"] == "cancelled" and jobs["anna"]["error"] == f"stopped with a checkpoint at step {step}"
    assert jobs["carol"]["status"] == "invalid" and str(tmp_path / "carol.jpg") in jobs["carol"]["error"]
    assert "carol.jpg" in (root / "index.csv").read_text()

    second = batch(*args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1, err[-3000:]  # carol's row is still bad
    log = (root / "anna" / "batch.log").read_text()
    assert f"resuming from checkpoint step {step}" in log and f"resumed at geometry step {step + 1}/40" in log
    jobs = index(root)
    assert jobs["anna"]["status"] == "done" and jobs["anna"]["resumed_from"] == [step]
    assert Path(jobs["anna"]["result"], "head.npz").is_file() and Path(jobs["anna"]["glb"]).is_file()
    assert jobs["anna"]["identity_score"] is None and "no face was found" in jobs["anna"]["identity_score_note"]
    assert jobs["anna"]["compute_seconds"] < jobs["anna"]["seconds"]

    stamps = {p: p.stat().st_mtime_ns for p in (root / "anna").rglob("*") if p.is_file()}
    third = batch(*args)
    _, err = third.communicate(timeout=60)
    assert third.returncode == 1 and "anna: done already" in err
    assert {p: p.stat().st_mtime_ns for p in (root / "anna").rglob("*") if p.is_file()} == stamps  # nothing ran
    assert index(root)["anna"]["note"] == "finished in an earlier run"


def test_a_ray_runner_that_cannot_start_says_why_and_runs_nothing(tmp_path, tiny_models_root, monkeypatch, capsys):
    from engine.cli import main

    manifest, root = write_manifest(tmp_path, geometry_steps=6), tmp_path / "root"
    args = ["batch", str(manifest), "--out", str(root), "--models", str(tiny_models_root), "--device", "cpu"]
    assert main([*args, "--ray", "127.0.0.1:9"]) == 2  # nobody listens there: seconds, not Ray's minutes
    err = capsys.readouterr().err
    assert "no Ray cluster answers at 127.0.0.1:9" in err and "ray start --head" in err
    assert json.loads((root / "index.json").read_text())["status"] == "not started"
    assert not (root / "anna" / "checkpoints").exists()

    monkeypatch.setitem(sys.modules, "ray", None)  # a Python without the optional extra
    assert main([*args, "--ray"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray, an optional extra" in err and "pip install 'ray==2.60.0'" in err
    assert re.search(r"anna", (root / "index.csv").read_text())
