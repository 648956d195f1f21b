"""The Ray runner of ``batch --ray``: one Ray task per job, with the CPUs and GPUs it needs.

Ray is an optional extra (``ray==2.60.0``, the version in requirements.txt), imported only here
and only when ``--ray`` is given. Each task runs :func:`engine.pipeline.batch_job.run_one` on a
node of the cluster: the same worker process, retries from the last checkpoint and batch.json as
the local runner. The engine's own code travels with the tasks (Ray ``py_modules``), so every
node runs the driver's engine; the job folders, the photos and the models folder must be on a file
system that every node sees at the same path (docs/batch.md).

Two kinds of death are survived: the job's worker process (``run_one`` starts it again with
``--resume``) and the Ray worker running the task (Ray runs the task again, up to ``--retries``
times; the new ``run_one`` waits for the old worker process to let go of the job's lock, then
resumes). Ctrl-C cancels every task: a running one tells its worker to stop with a checkpoint, and
the driver waits for each job's batch.json to say so before it leaves (a second Ctrl-C leaves at once).

A task reserves ``--cpus-per-job`` CPUs, and Ray sets the task's ``OMP_NUM_THREADS`` to that number
(the job's worker inherits it): on a GPU cluster the default is the GPU nodes' CPUs per GPU, so the
CPU-side stages (photo analysis, UV unwrap, the quality report) are not single-threaded.

:class:`PrivateCluster` starts a Ray cluster of this machine's own (``--ray local``, the tests, the
benchmark): its own token and temp folder, nothing read from or written to ``~/.ray``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import EngineError

RAY_REQUIREMENT = "ray==2.60.0"
CANCEL_WAIT_S = 300.0  # running jobs end their step and write a checkpoint
FINAL = ("done", "failed", "cancelled")
ENDED_GRACE_S = 10.0  # a task Ray says is over has this long to show its record in batch.json


class RunnerUnavailable(EngineError):
    """The Ray runner cannot start (no Ray in this Python, no cluster at the address): nothing ran."""

    code = "ray_unreachable"


def import_ray():
    try:
        import ray
    except ImportError:
        raise RunnerUnavailable("`batch --ray` needs Ray, an optional extra of the engine, and this Python has none",
                                code="ray_missing",
                                hint=f"pip install '{RAY_REQUIREMENT}' into the engine's Python on every node of the "
                                     "cluster (docs/batch.md), or run the batch without --ray") from None
    return ray


def connect(ray, address: str) -> None:
    """Join the cluster at ``address`` ('auto': the one this machine is part of, or $RAY_ADDRESS)."""
    engine_package = Path(__file__).resolve().parents[1]  # this engine/ folder, sent to every node
    options = dict(logging_level=logging.WARNING, log_to_driver=False,
                   runtime_env={"py_modules": [str(engine_package)]})
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, its own errors...
        where = "this machine's cluster" if address == "auto" else address
        raise RunnerUnavailable(f"cannot connect to the Ray cluster at {where} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                                hint="start a cluster with `ray start --head` (and `ray start --address HEAD:6379` "
                                     "on each worker node, docs/batch.md); check the address, and that this machine "
                                     "has the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token); or use --ray "
                                     "local") from None


def _host_port(address: str) -> tuple[str, int]:
    """HOST and PORT of ``[ray://]HOST:PORT``; an IPv6 host in brackets (``[::1]:6379``)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nobody listens at (Ray itself keeps retrying for minutes)."""
    import socket

    try:
        host, port = _host_port(address)
        socket.create_connection((host, port), timeout=5.0).close()
    except ValueError:
        raise RunnerUnavailable(f"{address!r} is not a Ray address",
                                hint="give HOST:PORT of the head node (port 6379 by default; an IPv6 host in "
                                     "brackets, [::1]:6379), 'auto' or 'local'") from None
    except OSError as exc:
        raise RunnerUnavailable(f"no Ray cluster answers at {address} ({exc.strerror or exc})",
                                hint="start one with `ray start --head` on that machine (docs/batch.md), or check "
                                     "the address (`ray status` on the head node shows it)") from None


class PrivateCluster:
    """A Ray cluster of this machine's own, started with ``ray start --head --block`` (as
    docs/batch.md starts one): its own token and temp folder (nothing read from or written to
    ``~/.ray``), a free port. :meth:`stop` ends it by its pid (never ``ray stop``, which stops every
    cluster of the user). ``env`` is the environment a process needs to join it (the token)."""

    def __init__(self, num_cpus: int | None = None, env: dict | None = None):
        self.env = {**(os.environ if env is None else env), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
        base = tempfile.mkdtemp(prefix="idto3d-ray-")
        if len(base) > 40:  # Ray's socket paths under it must stay within the 107-byte limit
            os.rmdir(base)
            base = tempfile.mkdtemp(prefix="idto3d-ray-", dir="/tmp")
        self.temp_dir = base
        ray_cli = Path(sys.executable).with_name("ray")
        command = [str(ray_cli) if ray_cli.exists() else (shutil.which("ray") or "ray"), "start", "--head", "--block",
                   "--port", "0", "--temp-dir", base, "--include-dashboard", "false", "--disable-usage-stats",
                   *(["--num-cpus", str(num_cpus)] if num_cpus else [])]
        started = time.perf_counter()
        try:
            self.head = subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise RunnerUnavailable(f"cannot start a local Ray cluster ({exc.strerror or exc})",
                                    code="ray_missing", hint=f"pip install '{RAY_REQUIREMENT}'") from None
        address, output = None, []
        for line in self.head.stdout:  # the head prints the address workers join, then blocks
            output.append(line)
            found = re.search(r"ray start --address='([^']+)'", line)
            address = found.group(1) if found else address
            if address and line.rstrip().endswith("--block"):
                break
        if not address:
            self.stop()
            raise RunnerUnavailable("the local Ray cluster did not start: " + "".join(output)[-1500:],
                                    hint="see Ray's message above")
        threading.Thread(target=self.head.stdout.read, daemon=True).start()  # keep its pipe drained
        self.address, self.start_seconds = address, time.perf_counter() - started

    def stop(self) -> None:
        if self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)  # --block: it stops the processes it started, then exits
            try:
                self.head.wait(60)
            except subprocess.TimeoutExpired:
                self.head.kill()
                self.head.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _job_task(job_dir: str, batch_id: str, retries: int, progress_every: float, options: dict) -> dict:
    """The Ray task: one job, on whichever node Ray picked."""
    from .batch_job import run_one

    return run_one(Path(job_dir), batch_id=batch_id, retries=retries, progress_every=progress_every, **options)


def cpus_per_gpu(ray) -> float:
    """CPUs per GPU on the cluster's GPU nodes (the smallest share), at least 1."""
    shares = [node["Resources"]["CPU"] // node["Resources"]["GPU"] for node in ray.nodes()
              if node.get("Alive") and node["Resources"].get("GPU", 0) >= 1 and node["Resources"].get("CPU", 0) >= 1]
    return max(1.0, float(min(shares))) if shares else 1.0


def run_on_ray(entries, *, address: str, batch_id: str, retries: int, cpus_per_job: float | None,
               gpus_per_job: float | None, progress_every: float, should_stop, update, say,
               job_options: dict | None = None) -> None:
    """Run ``entries`` (batch.Entry) as Ray tasks; ``update(entry, record)`` as each ends."""
    if address not in ("auto", "local"):
        _check_reachable(address)  # before importing Ray: a wrong address is told in seconds
    cluster = None
    if address == "local":
        cluster = PrivateCluster()
        # This driver joins it with its token: set before Ray is imported (Ray reads it once).
        os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        address = cluster.address
    try:
        ray = import_ray()
        connect(ray, address)
        try:
            if gpus_per_job is None:
                gpus_per_job = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            if cpus_per_job is None:
                cpus_per_job = max(1.0, float(int(cpus_per_gpu(ray) * gpus_per_job))) if gpus_per_job else 1.0
            say(f"Ray: each job reserves {cpus_per_job:g} CPU(s) and {gpus_per_job:g} GPU(s)")
            _run_tasks(ray, entries, batch_id=batch_id, retries=retries, cpus_per_job=cpus_per_job,
                       gpus_per_job=gpus_per_job, progress_every=progress_every, should_stop=should_stop,
                       update=update, say=say, job_options=job_options or {})
        finally:
            ray.shutdown()
    finally:
        if cluster is not None:
            cluster.stop()


def _run_tasks(ray, entries, *, batch_id, retries, cpus_per_job, gpus_per_job, progress_every, should_stop, update,
               say, job_options) -> None:
    task = ray.remote(_job_task)
    refs = {}
    for entry in entries:
        ref = task.options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=retries,
                           retry_exceptions=False, name=f"idto3d-job-{entry.id}").remote(
            str(entry.job_dir), batch_id, retries, progress_every, job_options)
        refs[ref] = entry
        update(entry, status="queued")
    pending = list(refs)
    last_summary = time.monotonic()
    while pending and not should_stop():
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in ready:
            update(refs[ref], _record(ray, ref, refs[ref], batch_id))
        if time.monotonic() - last_summary >= progress_every and pending:
            last_summary = time.monotonic()
            say(f"{len(pending)} job(s) queued or running on the cluster")
    if pending:  # stopped: every running task tells its worker to write a checkpoint and stop
        for ref in pending:
            ray.cancel(ref)
        _wait_for_cancelled(ray, refs, pending, batch_id, update)


def _wait_for_cancelled(ray, refs, pending, batch_id: str, update, timeout_s: float = CANCEL_WAIT_S) -> None:
    """Wait until every cancelled task's job has recorded its end in batch.json (its worker wrote
    a checkpoint and exited): a cancelled task's reference may be ready before the task has done
    so, and the driver leaving kills the tasks it owns. A task that never started is "pending"."""
    from .batch_job import read_state

    deadline = time.monotonic() + timeout_s
    ended: dict = {}  # ref -> when Ray first said the task is over
    left = list(pending)
    while left:
        ready, _ = ray.wait(left, num_returns=len(left), timeout=0.5)
        still = []
        for ref in left:
            entry = refs[ref]
            state = read_state(entry.job_dir)
            mine = state is not None and state.get("batch") == batch_id
            if ref in ready:
                ended.setdefault(ref, time.monotonic())
            if mine and state.get("status") in FINAL:
                update(entry, _record(ray, ref, entry, batch_id))
            elif ref in ready and not mine:
                update(entry, {"status": "pending"})  # cancelled before it started: nothing of it ran
            elif ref in ready and time.monotonic() - ended[ref] > ENDED_GRACE_S:
                update(entry, _record(ray, ref, entry, batch_id))  # over without its record: the batch says so
            else:
                still.append(ref)
        left = still
        if left and time.monotonic() > deadline:
            return  # the batch reports them as left while stopping


def _record(ray, ref, entry, batch_id: str) -> dict:
    """The task's return value, or, for a task that was cancelled or failed, what its job folder says."""
    from .batch_job import read_state, record_of

    try:
        return ray.get(ref, timeout=1.0)
    except Exception as exc:  # TaskCancelledError, WorkerCrashedError after its retries, GetTimeoutError
        state = read_state(entry.job_dir)
        record = record_of(state) if state and state.get("batch") == batch_id else {"status": "pending"}
        cancelled = isinstance(exc, (ray.exceptions.TaskCancelledError, ray.exceptions.GetTimeoutError))
        if cancelled:
            if record["status"] in ("running", None):  # the task ended before its runner recorded the job's end
                from .batch_job import left_at_once
                from .job_folder import checkpoint_step

                record["status"] = "cancelled"
                record["error"] = left_at_once(checkpoint_step(entry.job_dir), who="its Ray task ended")
            return record
        record["status"] = "failed"
        record["error"] = {"code": "ray_task_failed",
                           "message": f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                           "hint": "see the job's batch.log; run the batch again to resume it from its checkpoint"}
        return record
