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
resumes). Ctrl-C cancels every task: a running one tells its worker to stop with a checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import EngineError

RAY_REQUIREMENT = "ray==2.60.0"
CANCEL_WAIT_S = 300.0  # running jobs end their step and write a checkpoint


def import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError("`batch --ray` needs Ray, an optional extra of the engine, and this Python has none",
                          code="ray_missing",
                          hint=f"pip install '{RAY_REQUIREMENT}' into the engine's Python on every node of the "
                               "cluster (docs/batch.md), or run the batch without --ray") from None
    return ray


def connect(ray, address: str) -> None:
    """Join the cluster at ``address`` ('auto': the one this machine is part of, or $RAY_ADDRESS),
    or start a throwaway one here ('local')."""
    engine_package = Path(__file__).resolve().parents[1]  # this engine/ folder, sent to every node
    options = dict(logging_level=logging.WARNING, log_to_driver=False,
                   runtime_env={"py_modules": [str(engine_package)]})
    try:
        if address == "local":
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, its own errors...
        where = "this machine's cluster" if address == "auto" else address
        raise EngineError(f"cannot connect to the Ray cluster at {where} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", code="ray_unreachable",
                          hint="start a cluster with `ray start --head` (and `ray start --address HEAD:6379` on "
                               "each worker node, docs/batch.md); check the address, and that this machine has the "
                               "cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token); or use --ray local") from None


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nobody listens at (Ray itself keeps retrying for minutes)."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5.0).close()
    except ValueError:
        raise EngineError(f"{address!r} is not a Ray address", code="ray_unreachable",
                          hint="give HOST:PORT of the head node (port 6379 by default), 'auto' or 'local'") from None
    except OSError as exc:
        raise EngineError(f"no Ray cluster answers at {address} ({exc.strerror or exc})", code="ray_unreachable",
                          hint="start one with `ray start --head` on that machine (docs/batch.md), or check the "
                               "address (`ray status` on the head node shows it)") from None


def _job_task(job_dir: str, batch_id: str, retries: int, progress_every: float) -> dict:
    """The Ray task: one job, on whichever node Ray picked."""
    from .batch_job import run_one

    return run_one(Path(job_dir), batch_id=batch_id, retries=retries, progress_every=progress_every)


def run_on_ray(entries, *, address: str, batch_id: str, retries: int, cpus_per_job: float,
               gpus_per_job: float | None, progress_every: float, should_stop, update) -> None:
    """Run ``entries`` (batch.Entry) as Ray tasks; ``update(entry, record)`` as each ends."""
    if address not in ("auto", "local"):
        _check_reachable(address)  # before importing Ray: a wrong address is told in seconds
    ray = import_ray()
    connect(ray, address)
    try:
        if gpus_per_job is None:
            gpus_per_job = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_job_task)
        refs = {}
        for entry in entries:
            ref = task.options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=retries,
                               retry_exceptions=False, name=f"idto3d-job-{entry.id}").remote(
                str(entry.job_dir), batch_id, retries, progress_every)
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
                from .batch import _say

                _say(f"{len(pending)} job(s) queued or running on the cluster")
        if pending:  # stopped: every running task tells its worker to write a checkpoint and stop
            for ref in pending:
                ray.cancel(ref)
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
            for ref in pending:
                update(refs[ref], _record(ray, ref, refs[ref], batch_id))
    finally:
        ray.shutdown()


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
            if record["status"] in ("running", None):
                record["status"] = "cancelled"
            return record
        record["status"] = "failed"
        record["error"] = {"code": "ray_task_failed",
                           "message": f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                           "hint": "see the job's batch.log; run the batch again to resume it from its checkpoint"}
        return record
