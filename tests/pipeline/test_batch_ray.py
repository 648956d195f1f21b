"""``batch --ray`` on a real local Ray cluster that the tests start (2 CPUs) and stop, with tiny
models. Three identities, one with a missing photo: mid-geometry, one job's worker process is
killed, and the Ray worker running another job is killed; both resume from their checkpoints,
the bad row fails alone naming its photo, and a rerun only reports. Ctrl-C on the driver: every
task stops its worker with a checkpoint before the driver leaves, and a rerun continues there."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from engine.pipeline.job_folder import checkpoint_step

REPO_ROOT = Path(__file__).resolve().parents[2]
GEOMETRY_STEPS = 40


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPUs started as the docs say (``ray start --head``), private to these
    tests (engine.pipeline.batch_ray.PrivateCluster: its own token, nothing read from or written
    to ~/.ray, its own temp folder, a free port); stopped by its pid (never ``ray stop``, which
    stops every cluster of the user), and every process it started checked gone. Yields
    (address, environment for the batch)."""
    from engine.pipeline.batch_ray import PrivateCluster

    cluster = PrivateCluster(num_cpus=2)
    try:
        yield cluster.address, cluster.env
    finally:
        cluster.stop()
        time.sleep(1.0)
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if cluster.temp_dir in " ".join(p.info["cmdline"] or [])]
        assert left == [], f"Ray processes left behind: {left}"


def _wait_dead(pid: int) -> None:
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _log_pids(log: Path) -> list[tuple[int, int]]:
    """(worker pid, runner pid) of each attempt, as batch_job writes them in the job's log."""
    if not log.exists():
        return []
    return [(int(a), int(b)) for a, b in re.findall(r"worker pid (\d+) \(runner pid (\d+)", log.read_text())]



def _ray_batch(manifest, root, models, ray_cluster) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of ``python -m engine batch MANIFEST --out ROOT --ray ADDRESS`` on the
    test's cluster, one torch thread per job."""
    address, cluster_env = ray_cluster
    command = [sys.executable, "-m", "engine", "batch", str(manifest), "--out", str(root), "--models",
               str(models), "--device", "cpu", "--ray", address, "--progress-every", "2"]
    return command, {**cluster_env, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_ray_batch_survives_killed_workers_and_a_bad_row(tmp_path, tiny_models_root, ray_cluster):
    for seed, name in enumerate(("anna", "bob")):
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(seed).normal(size=512).astype(np.float32))
    long = {"geometry_steps": GEOMETRY_STEPS, "checkpoint_every": 2}
    rows = [{"id": "anna", "embedding": "anna.npy", "expressions": ["smiling"], "preset": "test", "overrides": long},
            {"id": "bob", "embedding": "bob.npy", "preset": "test", "seed": 1, "overrides": long},
            {"id": "carol", "photos": ["carol-front.jpg"], "expressions": ["smiling"], "preset": "test"}]
    manifest = tmp_path / "faces.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    root = tmp_path / "root"
    command, env = _ray_batch(manifest, root, tiny_models_root, ray_cluster)
    driver = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)

    # Wait for each job to have a checkpoint in the geometry stage, then kill: anna's job worker
    # process, and the Ray worker process that runs bob's task.
    victims = {"anna": 0, "bob": 1}  # index into (worker pid, runner pid)
    killed: dict[str, tuple[int, int]] = {}  # job -> (pid, checkpoint step right after the kill)
    orphan = None  # bob's worker, whose runner was killed: it stops itself with one more checkpoint
    orphan_step = None  # bob's newest checkpoint once that orphan is gone (before a new worker can write one)
    deadline = time.monotonic() + 240
    while len(killed) < 2 or orphan_step is None:
        assert driver.poll() is None, driver.communicate()[1][-4000:]
        assert time.monotonic() < deadline, f"no geometry checkpoints in time; killed so far: {killed}"
        for job, which in victims.items():
            pids, step = _log_pids(root / job / "batch.log"), checkpoint_step(root / job)
            if job not in killed and pids and step is not None and step >= 2:
                pid = pids[-1][which]
                orphan = pids[-1][0] if job == "bob" else orphan
                os.kill(pid, signal.SIGKILL)
                _wait_dead(pid)
                killed[job] = (pid, checkpoint_step(root / job))
        if orphan is not None and orphan_step is None and not _alive(orphan):
            orphan_step = checkpoint_step(root / "bob")
        time.sleep(0.05)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, err[-4000:]  # carol's row is bad; the others are done

    index = {job["id"]: job for job in json.loads((root / "index.json").read_text())["jobs"]}
    for job in ("anna", "bob"):
        step_at_kill = killed[job][1]
        assert step_at_kill < GEOMETRY_STEPS, f"{job} was killed after its geometry stage, not in it"
        log = (root / job / "batch.log").read_text()
        resumed = [int(s) for s in re.findall(r"attempt 2: worker pid \d+ \(runner pid \d+ on [^)]+\), "
                                              r"resuming from checkpoint step (\d+)", log)]
        assert len(resumed) == 1, log[-3000:]
        # anna's worker died at once: it resumes from exactly the checkpoint seen after the kill.
        # bob's worker lost its runner, saw its stdin close and wrote one more checkpoint first:
        # the retry read the step once that worker let go of the job's lock, so it resumes from it.
        assert resumed[0] == (step_at_kill if job == "anna" else orphan_step)
        assert step_at_kill <= resumed[0] < GEOMETRY_STEPS
        assert f"attempt 2: resumed at geometry step {resumed[0] + 1}/{GEOMETRY_STEPS}" in log
        assert index[job]["status"] == "done" and index[job]["attempts"] == 2
        assert index[job]["resumed_from"] == resumed
        assert Path(index[job]["result"], "head.npz").is_file() and Path(index[job]["glb"]).is_file()
        result = json.loads(Path(index[job]["result"], "result.json").read_text())
        assert result["job"]["settings"]["geometry_steps"] == GEOMETRY_STEPS
    anna_pids, bob_pids = _log_pids(root / "anna" / "batch.log"), _log_pids(root / "bob" / "batch.log")
    assert anna_pids[0][1] == anna_pids[1][1]  # same Ray task: it restarted its own dead worker
    assert bob_pids[0][1] != bob_pids[1][1]  # Ray ran bob's task again in a new Ray worker
    assert "runner died" in index["bob"]["note"] and "SIGKILL" in index["anna"]["note"]
    carol = index["carol"]
    assert carol["status"] == "invalid" and carol["error_code"] == "batch_missing_photo"
    assert str(tmp_path / "carol-front.jpg") in carol["error"] and not (root / "carol").exists()
    csv_text = (root / "index.csv").read_text(encoding="utf-8-sig")
    assert csv_text.splitlines()[0].startswith("id,line,status,") and "carol-front.jpg" in csv_text

    # A rerun starts nothing: it reports the finished jobs and the bad row again.
    stamps = {p: p.stat().st_mtime_ns for job in ("anna", "bob") for p in (root / job).rglob("*") if p.is_file()}
    again = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "anna: done already" in again.stderr and "bob: done already" in again.stderr
    assert "carol: invalid" in again.stderr and "carol-front.jpg" in again.stderr
    assert {p: p.stat().st_mtime_ns for job in ("anna", "bob") for p in (root / job).rglob("*") if p.is_file()} == stamps
    rerun = {job["id"]: job for job in json.loads((root / "index.json").read_text())["jobs"]}
    assert [rerun[j]["status"] for j in ("anna", "bob", "carol")] == ["done", "done", "invalid"]
    assert rerun["anna"]["resumed_from"] == index["anna"]["resumed_from"]  # the earlier run's record, kept
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(root) in " ".join(p.info["cmdline"] or []) and "run" in (p.info["cmdline"] or [])]


def test_ctrl_c_on_a_ray_batch_leaves_every_job_resumable(tmp_path, tiny_models_root, ray_cluster):
    """Ctrl-C to the driver: Ray cancels the task (a KeyboardInterrupt inside the runner), which
    tells its worker to stop with a checkpoint; the driver waits for the job's record before it
    leaves, so the index names the checkpoint that is on disk, no worker is left running, and the
    same command continues from that step."""
    np.save(tmp_path / "anna.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    row = {"id": "anna", "embedding": "anna.npy", "preset": "test",
           "overrides": {"geometry_steps": GEOMETRY_STEPS, "checkpoint_every": 2}}
    manifest, root = tmp_path / "faces.jsonl", tmp_path / "root"
    manifest.write_text(json.dumps(row) + "\n", encoding="utf-8")
    command, env = _ray_batch(manifest, root, tiny_models_root, ray_cluster)
    driver = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    deadline = time.monotonic() + 240
    while (checkpoint_step(root / "anna") or 0) < 2:
        assert driver.poll() is None, driver.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no geometry checkpoint in time"
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, err[-4000:]
    step = checkpoint_step(root / "anna")
    assert 2 <= step < GEOMETRY_STEPS
    worker = _log_pids(root / "anna" / "batch.log")[-1][0]
    assert not _alive(worker), "the job's worker outlived the batch"
    job = {j["id"]: j for j in json.loads((root / "index.json").read_text())["jobs"]}["anna"]
    assert job["status"] == "cancelled" and job["error"] == f"stopped with a checkpoint at step {step}", job
    state = json.loads((root / "anna" / "batch.json").read_text())
    assert state["status"] == "cancelled" and state["attempts"][-1]["outcome"] == "cancelled"

    again = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (root / "anna" / "batch.log").read_text()
    assert f"resuming from checkpoint step {step}" in log and f"resumed at geometry step {step + 1}/{GEOMETRY_STEPS}" in log
    rerun = {j["id"]: j for j in json.loads((root / "index.json").read_text())["jobs"]}["anna"]
    assert rerun["status"] == "done" and rerun["resumed_from"] == [step]


def test_an_ipv6_head_address_is_reached():
    from engine.pipeline.batch_ray import _check_reachable

    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        _check_reachable(f"[::1]:{server.getsockname()[1]}")  # raises when the brackets are taken as the host
        _check_reachable(f"ray://[::1]:{server.getsockname()[1]}")


def test_ray_local_runs_a_private_cluster_and_leaves_nothing_behind(tmp_path, tiny_models_root):
    """``--ray local`` starts a cluster of its own (engine.pipeline.batch_ray.PrivateCluster): no
    token written into the user's home (~/.ray/auth_token), and no Ray process left after it."""
    import shutil
    import tempfile

    home = tmp_path / "home"
    home.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: Ray's socket paths are limited
    np.save(tmp_path / "anna.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    row = {"id": "anna", "embedding": "anna.npy", "preset": "test",
           "overrides": {"geometry_steps": 2, "texture_steps": 1}}
    (tmp_path / "faces.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=str(scratch), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0")
    try:
        done = subprocess.run([sys.executable, "-m", "engine", "batch", str(tmp_path / "faces.jsonl"), "--out",
                               str(tmp_path / "root"), "--models", str(tiny_models_root), "--device", "cpu", "--ray",
                               "local"], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        job = {j["id"]: j for j in json.loads((tmp_path / "root" / "index.json").read_text())["jobs"]}["anna"]
        assert job["status"] == "done" and "Ray: each job reserves 1 CPU(s) and 0 GPU(s)" in done.stderr
        assert not (home / ".ray").exists()
        time.sleep(1.0)
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(scratch) in " ".join(p.info["cmdline"] or [])]
        assert left == [], f"Ray processes left behind: {left}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
