"""A job folder is the engine's (engine/pipeline/job_folder.py): what a run deletes is what it
recorded, checkpoints it did not write are refused before any work, one process runs a job."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import pytest

from engine import atomic, owned
from engine.pipeline import job_folder
from engine.pipeline.job_folder import JobBusyError, JobLock, open_for_run
from engine.pipeline.run import run_job


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_users_files_that_match_the_pruned_names_survive_a_run(make_job):
    """Previews are pruned to the newest three; a user's preview-/snapshot- named files (the
    oldest by name, so the first to go under the old pattern rule) are not the engine's."""
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 16}, snapshot_interval_s=0.2)
    live = job / "live"
    live.mkdir()
    mine = {live / "preview-000000.png": b"\x89PNG the user's favourite frame",
            live / "snapshot-000001.npz": b"a mesh the user kept"}
    for path, data in mine.items():
        path.write_bytes(data)
    previews = []
    run_job(job, emit=lambda m: previews.append(m["path"]) if m["type"] == "preview" else None)
    assert len(previews) > 3, "the run must write more previews than are kept, or nothing was pruned"
    for path, data in mine.items():
        assert path.read_bytes() == data
    engines = sorted(p.name for p in live.glob("preview-*.png") if p not in mine)
    assert engines == sorted(os.path.basename(p) for p in previews[-3:])  # the newest three of the engine's
    assert owned.foreign_entries(job) == sorted([*mine, job / "embedding.npy", job / "job.json"])  # all theirs


def test_checkpoint_files_it_did_not_record_are_refused_before_any_work(make_job):
    job = make_job(stop_after="geometry")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "latest.json").write_text('{"format": 1, "file": "ckpt-0000002.pt", "step": 2}')
    (job / "checkpoints" / "ckpt-0000002.pt").write_bytes(b"from an older engine, or copied by hand")
    before = {p.name: sha(p) for p in (job / "checkpoints").iterdir()}
    messages = []
    with pytest.raises(owned.ForeignFolderError, match="did not record") as info:
        run_job(job, resume=True, emit=messages.append)
    assert "ckpt-0000002.pt" in info.value.message and "move" in info.value.hint
    assert messages == []  # refused before the first stage
    assert {p.name: sha(p) for p in (job / "checkpoints").iterdir()} == before


def test_a_killed_runs_temporaries_are_removed_and_lookalikes_kept(make_job):
    job = make_job()
    (job / "checkpoints").mkdir()
    fd, leftover = tempfile.mkstemp(prefix=f".ckpt-0000004.pt{atomic.TMP_TAG}", suffix=".pt", dir=job / "checkpoints")
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    lookalike = job / f"notes{atomic.TMP_TAG}today.txt"
    lookalike.write_text("mine")
    open_for_run(job).release()
    assert not os.path.exists(leftover)
    assert lookalike.read_text() == "mine"
    assert owned.read_manifest(job)["kind"] == "job" and owned.read_manifest(job)["shared"] is True


def test_one_process_runs_a_job_at_a_time(make_job, monkeypatch):
    job = make_job(stop_after="geometry")
    monkeypatch.setattr(job_folder, "RUN_LOCK_WAIT_S", 0.5)
    holder = JobLock(job).acquire()  # another run of this job (the lock is per open file)
    try:
        with pytest.raises(JobBusyError, match="another process is running"):
            run_job(job)
        assert not (job / "checkpoints").exists() and not (job / "live").exists()
        assert job_folder.is_running(job)
        threading.Timer(0.3, holder.release).start()  # it finishes: the next run waits for it, then goes
        monkeypatch.setattr(job_folder, "RUN_LOCK_WAIT_S", 30.0)
        run_job(job)
    finally:
        holder.release()
    assert (job / "result" / "head.npz").is_file() and not job_folder.is_running(job)


def test_a_job_started_over_never_loses_its_newest_checkpoint(tmp_path):
    """Started again without --resume after an earlier run reached step 12: the checkpoint just
    written (step 2) sorts before the old ones by name, yet it is the one latest.json names; the
    earlier run's are the ones pruned."""
    import torch

    from engine.pipeline import checkpoint

    job = owned.claim_dir(tmp_path / "job", "job")
    for step in (10, 12):  # the earlier run
        checkpoint.save_checkpoint(job, step, {"stage": "geometry", "value": torch.tensor(step)})
    checkpoint.save_checkpoint(job, 2, {"stage": "geometry", "value": torch.tensor(2)})
    assert checkpoint.load_latest(job)["value"].item() == 2
    checkpoint.save_checkpoint(job, 4, {"stage": "geometry", "value": torch.tensor(4)})
    assert sorted(p.name for p in (job / "checkpoints").glob("ckpt-*.pt")) == ["ckpt-0000002.pt", "ckpt-0000004.pt"]
    assert checkpoint.load_latest(job)["value"].item() == 4
