"""One job of a batch: ``python -m engine run JOB_DIR --resume`` in a child process, retried
from its last checkpoint when the child dies, with its record in ``JOB_DIR/batch.json`` and a
log in ``JOB_DIR/batch.log`` (appended to by the worker while it runs, so not recorded as the
engine's: the engine never deletes it).

The same function runs in the batch process (local runner) and inside a Ray task (Ray runner), so
both behave alike. Why a child process: a crash, a segfault or the kernel's OOM killer takes only
that job, and a dead child is simply started again with ``--resume``. The child's stdin is a pipe
this process keeps open (the worker treats a closed stdin as cancel, engine/pipeline/worker.py):
``should_stop()`` sends it a cancel line, and if this process dies the pipe closes and the child
stops itself at the next step with a checkpoint.

Only the holder of the job's lock writes the job folder's manifest: the child while it runs, this
function before and after (it takes the lock to write batch.json). The checkpoint a start resumes
from is read holding that lock, once a previous worker of the job (a Ray retry's orphan) has let
go: the worker always gets ``--resume`` (without a checkpoint it starts from the beginning).

What is retried: a worker that died (a signal, the OOM killer, a crash after it started) or went
silent for ``stall_timeout_s``. What is not: the job's own error, a worker that could not start at
all (exit 1 before its hello: the node's Python lacks a package), and a worker stopped from outside
(SIGTERM/SIGINT to it: an admin's decision; the job is "cancelled" and a rerun continues it).
Standard library only.
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
HURRIED_LOCK_WAIT_S = 2.0  # leaving at once (a second Ctrl-C): batch.json only if the worker is done by then
CANCEL_GRACE_S = 300.0  # a cancelled worker ends its step and writes a checkpoint; then it is killed
EXIT_WAIT_S = 2.0  # the worker exited but its stdout stays open (a grandchild holds it): stop reading
STALL_TIMEOUT_S = 1800.0  # no message from the worker for this long: it is hung (killed, retried)
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


def now() -> str:
    """The local time with its offset, as the batch's records write it."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_state(job_dir: Path) -> dict | None:
    try:
        state = json.loads((job_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(job_dir: Path, state: dict, wait_s: float = LOCK_WAIT_S, fill=None) -> None:
    """batch.json, under the job's lock (see the module doc), recorded as the engine's.
    ``fill()`` runs holding the lock first: what only then is final (the newest checkpoint)."""
    with JobLock(job_dir).acquire(wait_s):
        if fill is not None:
            fill()
        owned.write_owned_file(job_dir / STATE, lambda p: p.write_text(json.dumps(state, indent=1) + "\n",
                                                                        encoding="utf-8"))


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
            progress_every: float = 30.0, python: str | None = None, adopt_checkpoints: bool = False,
            stall_timeout_s: float | None = STALL_TIMEOUT_S) -> dict:
    """Run the job in ``job_dir`` (placed by the batch) to its end; return its record.

    ``retries``: how many times a worker that died (killed, crashed, hung) is started again from
    the last checkpoint, counted over the whole batch run (``batch_id``), so a Ray retry of this
    function continues the count. ``should_stop()`` true: the worker is told to cancel (it writes
    a checkpoint) and the record says "cancelled". ``on_message(msg)`` sees the worker's protocol
    messages (the local runner prints them). ``adopt_checkpoints``: passed to the worker (a copied
    folder, docs/pipeline.md). ``stall_timeout_s``: a worker silent that long is killed (None: never).
    """
    job_dir = Path(job_dir)
    asked = should_stop or (lambda: False)
    interrupted = threading.Event()  # a KeyboardInterrupt here (ray.cancel) stops the job the same way

    def should_stop() -> bool:
        return interrupted.is_set() or asked()

    state = read_state(job_dir)
    if state is None or state.get("batch") != batch_id:
        state = {"batch": batch_id, "status": "running", "attempts": []}
    state["status"] = "running"
    for attempt in state["attempts"]:
        if attempt.get("outcome") is None:  # its runner died with it (a Ray worker killed): a death
            attempt["outcome"] = "runner died"
    from .generate import ProgressLines

    log = _Log(job_dir / LOG)
    printer = ProgressLines(log.stream, progress_every, prefix="job: ")
    options = {"adopt_checkpoints": adopt_checkpoints, "stall_timeout_s": stall_timeout_s}
    try:
        while True:
            deaths = sum(a["outcome"] not in FINAL_OUTCOMES for a in state["attempts"])
            if should_stop():
                return _finish(job_dir, state, log, "cancelled", None)
            if deaths > retries:
                error = {"code": "worker_died", "message": f"the worker died {deaths} times "
                         f"({', '.join(a['outcome'] for a in state['attempts'][-deaths:])})",
                         "hint": "see batch.log; its last checkpoint is kept: run the batch again to continue it"}
                return _finish(job_dir, state, log, "failed", error)
            outcome, error = _attempt(job_dir, state, log, printer, should_stop, interrupted, on_message, python,
                                      **options)
            if outcome == "done":
                return _finish(job_dir, state, log, "done", None)
            if outcome in ("cancelled", STOPPED_OUTSIDE):
                return _finish(job_dir, state, log, "cancelled", None, outside=outcome == STOPPED_OUTSIDE)
            if outcome in ("failed", CANNOT_START):
                return _finish(job_dir, state, log, "failed", error)
            log.line(f"the worker {outcome}; {'retrying from the last checkpoint' if deaths + 1 <= retries else 'no retries left'}")
    except BaseException as exc:  # KeyboardInterrupt from ray.cancel or a second Ctrl-C, or a bug: a true record
        if not isinstance(exc, KeyboardInterrupt):
            log.line(f"runner failed: {type(exc).__name__}: {exc}")
        try:
            if isinstance(exc, KeyboardInterrupt):
                _finish(job_dir, state, log, "cancelled", None, wait_s=HURRIED_LOCK_WAIT_S)
            else:
                _finish(job_dir, state, log, "failed", {"code": "runner_error", "message": f"{type(exc).__name__}: "
                        f"{exc}", "hint": "see batch.log"}, wait_s=HURRIED_LOCK_WAIT_S)
        except Exception:  # noqa: BLE001  (the original exception is the one to report)
            pass
        raise
    finally:
        printer.close()
        log.close()


STOPPED_OUTSIDE = "was stopped from outside"
CANNOT_START = "could not start"
FINAL_OUTCOMES = ("done", "failed", "cancelled", STOPPED_OUTSIDE, CANNOT_START)  # the others are deaths


def _attempt(job_dir: Path, state: dict, log: _Log, printer, should_stop, interrupted: threading.Event,
             on_message, python, *, adopt_checkpoints: bool, stall_timeout_s: float | None) -> tuple[str, dict | None]:
    """One worker start. Returns (outcome, error): done, failed, cancelled, stopped from outside,
    could not start, or how it died (retried)."""
    number = len(state["attempts"]) + 1
    attempt = {"number": number, "started": now(), "runner_pid": os.getpid(), "host": socket.gethostname(),
               "engine": str(engine_root()), "resumed_from": None, "outcome": None}
    state["attempts"].append(attempt)
    # Waits while an earlier worker of this job still holds the lock (a Ray retry's orphan writing
    # its last checkpoint); the step read then is final.
    _write_state(job_dir, state, fill=lambda: attempt.update(resumed_from=checkpoint_step(job_dir)))
    step = attempt["resumed_from"]
    command = [python or sys.executable, "-m", "engine", "run", str(job_dir), "--resume"]
    if adopt_checkpoints:
        command.append("--adopt-checkpoints")
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
    hello = False
    cancel_sent = exited = stalled = None
    last_message = time.monotonic()
    while True:
        try:
            if should_stop() and cancel_sent is None:
                cancel_sent = time.monotonic()
                log.line("stopping: cancel sent to the worker (it writes a checkpoint)")
                _send_cancel(process)
            if cancel_sent is not None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                process.kill()
            if stall_timeout_s and stalled is None and time.monotonic() - last_message > stall_timeout_s:
                stalled = stall_timeout_s
                log.line(f"attempt {number}: no message from the worker for {stall_timeout_s:.0f} s: killing it")
                process.kill()
            try:
                msg = messages.get(timeout=0.2)
            except queue.Empty:
                if process.poll() is not None:  # exited; a grandchild may still hold its stdout open
                    exited = exited or time.monotonic()
                    if time.monotonic() - exited > EXIT_WAIT_S:
                        break
                continue
            if msg is None:  # end of the worker's output
                break
            last_message = time.monotonic()
            if isinstance(msg, str):  # a line that is not the protocol: the worker is broken
                log.line(f"unreadable worker output: {msg}")
                continue
            printer(msg)
            expected = msg["type"] == "warning" and msg.get("code") == "no_checkpoint" and step is None
            if on_message is not None and not expected:  # --resume on a fresh job: no news
                on_message(msg)
            if msg["type"] == "hello":
                hello = True
            elif msg["type"] == "progress" and "first_step" not in attempt:
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
        outcome = "cancelled" if should_stop() else STOPPED_OUTSIDE
    elif done is not None and done.get("code") not in RETRYABLE:
        outcome = "failed"
    elif done is not None:
        outcome = f"could not start ({done.get('code')})"  # job_busy: retried
    elif stalled is not None:
        outcome = f"stalled (no message for {stalled:.0f} s)"
    elif not hello and isinstance(code, int) and code > 0:
        outcome = CANNOT_START
        error = {"code": "worker_cannot_start",
                 "message": f"the worker exited with status {code} before it started, on {attempt['host']} (its "
                            "Python could not run the engine)",
                 "hint": f"see {job_dir / LOG}: install the engine's packages in that node's Python "
                         f"({python or sys.executable}), then run the batch again"}
    else:
        outcome = f"died ({attempt['exit']})"
    attempt["outcome"] = outcome
    log.line(f"attempt {number}: {outcome} after {attempt['seconds']:.0f} s (exit {attempt['exit']})")
    return outcome, error


def _stopped(job_dir: Path, outside: bool = False) -> dict:
    step = checkpoint_step(job_dir)
    where = f"with a checkpoint at step {step}" if step is not None else "before its first checkpoint"
    who = "its worker was stopped from outside (SIGTERM or SIGINT to it), " if outside else ""
    return {"code": "cancelled", "message": f"{who}stopped {where}",
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
            wait_s: float = LOCK_WAIT_S, *, outside: bool = False) -> dict:
    """Write the job's final record. A cancelled job's checkpoint step is read holding the job's
    lock, i.e. once its worker has written its last checkpoint and let go."""
    state["status"] = status
    state["finished"] = now()
    state["seconds"] = round(sum(a.get("seconds", 0.0) for a in state["attempts"]), 3)

    def fill() -> None:
        state["error"] = _stopped(job_dir, outside) if status == "cancelled" else error
        state.update(result_summary(job_dir) if status == "done" else {"result": None})

    try:
        _write_state(job_dir, state, wait_s, fill)
    except JobBusyError:  # a worker of this job still runs (it was told to stop): say so in the log
        step = checkpoint_step(job_dir)
        state["error"] = error if status != "cancelled" else left_at_once(step)
        state["result"] = None
        log.line("could not write batch.json: the job's worker still holds its lock")
    log.line(f"{status}" + (f": {state['error']['message']}" if state.get("error") else ""))
    return record_of(state)


def left_at_once(step: int | None, who: str = "the batch left at once") -> dict:
    """The record of a job whose runner left while its worker was still stopping (a second Ctrl-C)."""
    where = f"its newest checkpoint then was step {step}" if step is not None else "it had no checkpoint yet"
    return {"code": "cancelled", "message": f"{who} while the job's worker was stopping: {where}; "
                                            "the worker writes a later one as it stops",
            "hint": "run the same batch command again: it continues from the newest checkpoint"}


def record_of(state: dict) -> dict:
    """The index's view of a job's state."""
    attempts = state.get("attempts", [])
    return {"status": state.get("status"), "seconds": state.get("seconds"),
            "compute_seconds": state.get("compute_seconds"), "attempts": len(attempts),
            "resumed_from": [a["resumed_from"] for a in attempts if a.get("resumed_from") is not None],
            "identity_score": state.get("identity_score"), "judge_distance": state.get("judge_distance"),
            "identity_score_note": state.get("identity_score_note"), "result": state.get("result"),
            "glb": state.get("glb"), "error": state.get("error"),
            "deaths": [a["outcome"] for a in attempts if a.get("outcome") not in (*FINAL_OUTCOMES, None)]}
