"""One job of a batch: ``python -m engine run JOB_DIR [--resume]`` in a child process, retried
from its last checkpoint when the child dies, with its record in ``JOB_DIR/batch.json`` and a
log in ``JOB_DIR/batch.log``.

The same function runs in the batch process (local runner) and inside a Ray task (Ray runner), so
both behave alike. Why a child process: a crash, a segfault or the kernel's OOM killer takes only
that job, and a dead child is simply started again with ``--resume``. The child's stdin is a pipe
this process keeps open (the worker treats a closed stdin as cancel, engine/pipeline/worker.py):
``should_stop()`` sends it a cancel line, and if this process dies the pipe closes and the child
stops itself at the next step with a checkpoint.

Only the holder of the job's lock writes the job folder's manifest: the child while it runs, this
function before and after (it takes the lock to write batch.json). Standard library only.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import owned, protocol
from .job_folder import RESULT, RESULT_JSON, JobBusyError, JobLock, checkpoint_step

STATE = "batch.json"
LOG = "batch.log"
LOCK_WAIT_S = 600.0  # a previous worker of this job still finishing (a Ray retry after its runner died)
CANCEL_GRACE_S = 300.0  # a cancelled worker ends its step and writes a checkpoint; then it is killed
RETRYABLE = {"job_busy"}  # error codes worth another attempt; every other error is the job's own


def engine_root() -> Path:
    """The folder that holds the ``engine`` package this process runs (on a Ray worker: the copy
    Ray unpacked), put on the child's PYTHONPATH so it runs exactly the same engine."""
    return Path(__file__).resolve().parents[2]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_root()), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # the log is a file: no redrawn bars in it
    return env


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_state(job_dir: Path) -> dict | None:
    try:
        state = json.loads((job_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(job_dir: Path, state: dict, wait_s: float = LOCK_WAIT_S) -> None:
    """batch.json, under the job's lock (see the module doc), recorded as the engine's."""
    with JobLock(job_dir).acquire(wait_s):
        owned.write_owned_file(job_dir / STATE, lambda p: p.write_text(json.dumps(state, indent=1) + "\n",
                                                                        encoding="utf-8"))
        if (job_dir / LOG).exists():
            owned.record(job_dir / LOG)  # nobody appends while we hold the lock


class _Log:
    """JOB_DIR/batch.log: the runner's lines and the worker's stderr, appended."""

    def __init__(self, path: Path):
        self.stream = open(path, "a", encoding="utf-8", errors="backslashreplace")

    def line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} batch: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def identity_score(result: dict) -> tuple[float | None, float | None, str]:
    """(ArcFace cosine, dlib distance, note) of the neutral face from result.json's quality
    report; a None comes with the reason in the note."""
    quality = result.get("quality")
    if not isinstance(quality, dict):
        return None, None, "no quality report in result.json (stop_after geometry, or output.quality_report off)"
    neutral = (quality.get("expressions") or {}).get("neutral") or {}
    cosine, distance = neutral.get("mean_arcface_cosine"), neutral.get("mean_dlib_distance")
    tiny = " (tiny random test models: meaningless)" if quality.get("tiny_test_models") else ""
    if cosine is not None:
        note = "mean ArcFace cosine of the neutral renders to the photos' identity" + tiny
    elif not neutral.get("faces_found"):
        note = "no face was found in the neutral report renders" + tiny
    elif not quality.get("arcface_available"):
        note = "no ArcFace model or identity embedding for the report"
    else:
        note = "no ArcFace score in the report"
    if distance is None and quality.get("photos") == 0:
        note += "; no photos, so no dlib distance"
    return cosine, distance, note


def result_summary(job_dir: Path) -> dict:
    folder = job_dir / RESULT
    try:
        result = json.loads((folder / RESULT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"result": None}
    cosine, distance, note = identity_score(result)
    timings = result.get("timings_s") or {}
    glb = folder / "head.glb"
    return {"result": str(folder), "glb": str(glb) if glb.is_file() else None,
            "compute_seconds": round(sum(v for v in timings.values() if isinstance(v, (int, float))), 3),
            "identity_score": cosine, "judge_distance": distance, "identity_score_note": note}


def run_one(job_dir: Path | str, *, batch_id: str, retries: int = 2, should_stop=None, on_message=None,
            progress_every: float = 30.0, python: str | None = None) -> dict:
    """Run the job in ``job_dir`` (placed by the batch) to its end; return its record.

    ``retries``: how many times a worker that died (killed, crashed, stopped from outside) is
    started again from the last checkpoint, counted over the whole batch run (``batch_id``), so a
    Ray retry of this function continues the count. ``should_stop()`` true: the worker is told to
    cancel (it writes a checkpoint) and the record says "cancelled". ``on_message(msg)`` sees the
    worker's protocol messages (the local runner prints them).
    """
    job_dir = Path(job_dir)
    asked = should_stop or (lambda: False)
    interrupted = threading.Event()  # a KeyboardInterrupt here (ray.cancel) stops the job the same way

    def should_stop() -> bool:
        return interrupted.is_set() or asked()

    state = read_state(job_dir)
    if state is None or state.get("batch") != batch_id:
        state = {"batch": batch_id, "status": "running", "attempts": []}
    for attempt in state["attempts"]:
        if attempt.get("outcome") is None:  # its runner died with it (a Ray worker killed): a death
            attempt["outcome"] = "runner died"
    from .generate import ProgressLines

    log = _Log(job_dir / LOG)
    printer = ProgressLines(log.stream, progress_every, prefix="job: ")
    try:
        while True:
            deaths = sum(a["outcome"] not in ("done", "failed", "cancelled") for a in state["attempts"])
            if should_stop():
                return _finish(job_dir, state, log, "cancelled", _stopped(job_dir))
            if deaths > retries:
                error = {"code": "worker_died", "message": f"the worker died {deaths} times "
                         f"({', '.join(a['outcome'] for a in state['attempts'][-deaths:])})",
                         "hint": "see batch.log; its last checkpoint is kept: run the batch again to continue it"}
                return _finish(job_dir, state, log, "failed", error)
            outcome, error = _attempt(job_dir, state, log, printer, should_stop, interrupted, on_message, python)
            if outcome == "done":
                return _finish(job_dir, state, log, "done", None)
            if outcome == "cancelled":
                return _finish(job_dir, state, log, "cancelled", _stopped(job_dir))
            if outcome == "failed":
                return _finish(job_dir, state, log, "failed", error)
            log.line(f"the worker {outcome}; {'retrying from the last checkpoint' if deaths + 1 <= retries else 'no retries left'}")
    except BaseException as exc:  # KeyboardInterrupt from ray.cancel, or a bug: leave a true record
        if not isinstance(exc, KeyboardInterrupt):
            log.line(f"runner failed: {type(exc).__name__}: {exc}")
        try:
            _finish(job_dir, state, log, "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed",
                    _stopped(job_dir) if isinstance(exc, KeyboardInterrupt) else
                    {"code": "runner_error", "message": f"{type(exc).__name__}: {exc}", "hint": "see batch.log"},
                    wait_s=5.0)  # leaving in a hurry: a worker still stopping keeps the lock a moment
        except Exception:  # noqa: BLE001  (the original exception is the one to report)
            pass
        raise
    finally:
        log.close()


def _attempt(job_dir: Path, state: dict, log: _Log, printer, should_stop, interrupted: threading.Event,
             on_message, python) -> tuple[str, dict | None]:
    """One worker start. Returns (outcome, error): done, failed, cancelled, or how it died."""
    step = checkpoint_step(job_dir)
    number = len(state["attempts"]) + 1
    attempt = {"number": number, "started": _now(), "runner_pid": os.getpid(), "host": socket.gethostname(),
               "engine": str(engine_root()), "resumed_from": step, "outcome": None}
    state["attempts"].append(attempt)
    _write_state(job_dir, state)  # waits while an earlier worker of this job still holds the lock
    command = [python or sys.executable, "-m", "engine", "run", str(job_dir)] + (["--resume"] if step is not None else [])
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.stream,
                               env=child_env(), cwd=job_dir)
    attempt["pid"] = process.pid
    how = f"resuming from checkpoint step {step}" if step is not None else "from the beginning"
    log.line(f"attempt {number}: worker pid {process.pid} (runner pid {os.getpid()} on {attempt['host']}), {how}")
    log.line(f"attempt {number}: {' '.join(command)} (engine from {attempt['engine']})")
    messages: queue.Queue = queue.Queue()
    threading.Thread(target=_read_messages, args=(process.stdout, messages), daemon=True).start()
    done = error = None
    cancel_sent = None
    while True:
        try:
            if should_stop() and cancel_sent is None:
                cancel_sent = time.monotonic()
                log.line("stopping: cancel sent to the worker (it writes a checkpoint)")
                _send_cancel(process)
            if cancel_sent is not None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                process.kill()
            try:
                msg = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if msg is None:  # end of the worker's output
                break
            if isinstance(msg, str):  # a line that is not the protocol: the worker is broken
                log.line(f"unreadable worker output: {msg}")
                continue
            printer(msg)
            if on_message is not None:
                on_message(msg)
            if msg["type"] == "progress" and "first_step" not in attempt:
                attempt["first_step"] = msg["step"]
                attempt["first_stage"] = msg.get("stage")
                if step is not None:
                    log.line(f"attempt {number}: resumed at {msg.get('stage')} step {msg['step']}/{msg['total']}")
            elif msg["type"] == "error":
                error = {k: msg.get(k) for k in ("code", "message", "hint")}
            elif msg["type"] == "done":
                done = msg
        except KeyboardInterrupt:  # ray.cancel: stop the worker with a checkpoint, then report
            if cancel_sent is not None:
                raise  # interrupted again while the worker stops: leave now (it stops itself when our pipe closes)
            interrupted.set()
    code = process.wait()
    if process.stdin:
        try:
            process.stdin.close()
        except OSError:
            pass
    attempt["seconds"] = round(time.monotonic() - started, 3)
    attempt["exit"] = code if code >= 0 else f"signal {_signal_name(-code)}"
    if done is not None and done.get("ok"):
        outcome = "done"
    elif done is not None and done.get("code") == "cancelled":
        outcome = "cancelled" if should_stop() else "was stopped from outside"
    elif done is not None and done.get("code") not in RETRYABLE:
        outcome = "failed"
    elif done is not None:
        outcome = f"could not start ({done.get('code')})"
    else:
        outcome = f"died ({attempt['exit']})"
    attempt["outcome"] = outcome
    log.line(f"attempt {number}: {outcome} after {attempt['seconds']:.0f} s (exit {attempt['exit']})")
    return outcome, error


def _stopped(job_dir: Path) -> dict:
    step = checkpoint_step(job_dir)
    where = f"with a checkpoint at step {step}" if step is not None else "before its first checkpoint"
    return {"code": "cancelled", "message": f"stopped {where}",
            "hint": "run the same batch command again: it continues from there"}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _send_cancel(process: subprocess.Popen) -> None:
    try:
        process.stdin.write(protocol.encode(protocol.message("cancel")).encode("utf-8"))
        process.stdin.flush()
    except (OSError, ValueError):  # already gone
        pass


def _read_messages(stream, messages: queue.Queue) -> None:
    reader = protocol.Reader()
    try:
        while True:
            line = protocol.read_line(stream)
            if line is None:
                break
            try:
                messages.put(reader.feed(line))
            except protocol.ProtocolError as exc:
                messages.put(str(exc))
    except (OSError, ValueError, protocol.ProtocolError) as exc:
        messages.put(str(exc))
    finally:
        messages.put(None)


def _finish(job_dir: Path, state: dict, log: _Log, status: str, error: dict | None,
            wait_s: float = LOCK_WAIT_S) -> dict:
    state["status"] = status
    state["error"] = error
    state["finished"] = _now()
    state["seconds"] = round(sum(a.get("seconds", 0.0) for a in state["attempts"]), 3)
    state.update(result_summary(job_dir) if status == "done" else {"result": None})
    log.line(f"{status}" + (f": {error['message']}" if error else ""))
    try:
        _write_state(job_dir, state, wait_s)
    except JobBusyError:  # a worker of this job still runs (it was told to stop): say so in the log
        log.line("could not write batch.json: the job's worker still holds its lock")
    return record_of(state)


def record_of(state: dict) -> dict:
    """The index's view of a job's state."""
    attempts = state.get("attempts", [])
    return {"status": state.get("status"), "seconds": state.get("seconds"),
            "compute_seconds": state.get("compute_seconds"), "attempts": len(attempts),
            "resumed_from": [a["resumed_from"] for a in attempts if a.get("resumed_from") is not None],
            "identity_score": state.get("identity_score"), "judge_distance": state.get("judge_distance"),
            "identity_score_note": state.get("identity_score_note"), "result": state.get("result"),
            "glb": state.get("glb"), "error": state.get("error"),
            "deaths": [a["outcome"] for a in attempts if a.get("outcome") not in ("done", "failed", "cancelled", None)]}
