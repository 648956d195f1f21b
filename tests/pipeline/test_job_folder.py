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


def _job(embedding: str, models, **fields) -> dict:
    return {"photos": [], "embedding": embedding, "expressions": ["neutral", "smiling"], "preset": "test",
            "models": str(models), "device": "cpu", **fields}


def listing(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_on_an_unclaimed_folder_holding_another_jobs_checkpoints_changes_nothing(tmp_path, tiny_models_root):
    """A job folder made by hand or by another tool (no marker): the engine recorded none of its
    checkpoints, so --new cannot delete them, and left there they would be taken for the new job's."""
    import json

    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    import numpy as np

    np.save(job / "embedding.npy", np.ones(512, np.float32))
    (job / "job.json").write_text(json.dumps(_job("embedding.npy", tiny_models_root, seed=5)))
    (job / "checkpoints" / "ckpt-0000004.pt").write_bytes(b"the other job's step 4")
    (job / "checkpoints" / "latest.json").write_text('{"format": 1, "file": "ckpt-0000004.pt", "step": 4}')
    assert job_folder.foreign_checkpoints(job) == [job / "checkpoints" / "ckpt-0000004.pt",
                                                   job / "checkpoints" / "latest.json"]
    before = listing(job)
    with pytest.raises(owned.ForeignFolderError, match="nothing was changed") as info:
        job_folder.place_job(job, _job("embedding.npy", tiny_models_root, seed=7), new=True)
    assert "ckpt-0000004.pt" in info.value.message
    assert listing(job) == before and owned.read_manifest(job) is None


def test_where_a_job_runs_is_not_which_job_it_is(tmp_path, tiny_models_root):
    """Identity (what the job makes) decides "the same job"; placement (device, models root, dtype,
    memory, snapshot interval) may change: job.json is rewritten, recorded, holding the job's lock."""
    import json

    import numpy as np

    np.save(tmp_path / "e.npy", np.ones(512, np.float32))
    job = tmp_path / "job"
    first = job_folder.place_job(job, _job(str(tmp_path / "e.npy"), tiny_models_root))
    assert not first.same
    elsewhere = tmp_path / "mnt" / "models"  # the same models mounted at another path on another node
    moved = _job(str(tmp_path / "e.npy"), elsewhere, device="cuda", dtype="bf16", texture_size=64,
                 memory={"attention": "sliced"}, snapshot_interval_s=10.0)
    placed = job_folder.place_job(job, moved)
    assert placed.same and placed.placement_changed == ["models", "device", "dtype", "memory", "snapshot_interval_s"]
    data = json.loads((job / "job.json").read_text())
    assert data["device"] == "cuda" and data["models"] == str(elsewhere) and data["memory"]["attention"] == "sliced"
    assert data["texture_size"] is None  # the job as job.json spelt it: null is the test preset's 64
    assert owned.is_own(job / "job.json")
    # a result made on another device is this job's result
    (job / "result").mkdir()
    spec = job_folder.load_job(job)
    (job / "result" / "result.json").write_text(json.dumps({"job": {**spec.resolved_dict(), "device": "cpu"}}))
    assert job_folder.finished(job, spec)
    # what the job makes is another job
    with pytest.raises(job_folder.OtherJobError, match="seed: 0 there, 1 here"):
        job_folder.place_job(job, {**moved, "seed": 1})
    # while a worker runs the job, its job.json is not rewritten under it
    holder = JobLock(job).acquire()
    try:
        before = sha(job / "job.json")
        with pytest.raises(JobBusyError):
            job_folder.place_job(job, {**moved, "device": "cpu"})
        assert sha(job / "job.json") == before
    finally:
        holder.release()


def test_a_copy_that_did_not_keep_file_times_is_adopted_only_after_its_checkpoints_load(tmp_path, make_job):
    """cp -r (shutil.copy: bytes, not times) of a finished job: every engine file looks changed, so
    the copy is refused; --adopt-checkpoints loads and checks each checkpoint, then takes the
    folder back and the job continues from its last checkpoint (here the finished geometry) to
    the same mesh. A checkpoint that does not load is refused and nothing is taken back."""
    import shutil

    import numpy as np

    from engine.pipeline.checkpoint import CheckpointError

    job = make_job(stop_after="geometry", overrides={"geometry_steps": 4, "checkpoint_every": 2})
    run_job(job)
    made = np.load(job / "result" / "head.npz")["vertices"]

    copy = tmp_path / "copy"
    shutil.copytree(job, copy, copy_function=shutil.copy)
    with pytest.raises(owned.ForeignFolderError, match="did not record") as info:
        run_job(copy, resume=True)
    assert "--adopt-checkpoints" in info.value.hint and "cp -a" in info.value.hint

    broken = tmp_path / "broken"
    shutil.copytree(job, broken, copy_function=shutil.copy)
    (victim := sorted((broken / "checkpoints").glob("ckpt-*.pt"))[0]).write_bytes(b"not a checkpoint")
    manifest = (broken / owned.MARKER).read_bytes()
    with pytest.raises(CheckpointError, match="cannot be adopted") as info:
        run_job(broken, resume=True, adopt_checkpoints=True)
    assert victim.name in info.value.message and (broken / owned.MARKER).read_bytes() == manifest

    messages = []
    run_job(copy, resume=True, adopt_checkpoints=True, emit=messages.append)
    warnings = {m.get("code"): m["message"] for m in messages if m["type"] == "warning"}
    assert "adopted" in warnings and "geometry_resumed" in warnings  # continued, not started over
    assert not [m for m in messages if m["type"] == "progress" and m["stage"] == "geometry"]
    assert np.array_equal(np.load(copy / "result" / "head.npz")["vertices"], made)
    assert job_folder.foreign_checkpoints(copy) == []


def test_a_file_system_without_locks_is_refused_where_several_machines_run_jobs(tmp_path, monkeypatch):
    import errno

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(job_folder, "lock_file", no_locks)
    with pytest.raises(job_folder.LockUnavailableError, match="cannot lock files") as info:
        JobLock(tmp_path).acquire(strict=True)
    assert "flock" in info.value.hint and "nolock" in info.value.hint
    JobLock(tmp_path).acquire().release()  # one machine, one user: a warning, and the job runs
