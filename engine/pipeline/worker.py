"""``python -m engine run JOB_DIR [--resume]``: the worker the add-on starts (and the batch runner).

Protocol on stdout (engine/protocol.py): ``hello`` first, ``done`` last, nothing after it; logs on
stderr. A ``{"type": "cancel"}`` line on stdin, stdin closing (Blender went away), SIGINT or
SIGTERM all stop the job at the next step with a checkpoint and ``done ok=false code=cancelled``.
Exit codes: 0 ok, 1 failed (an ``error`` message says why), 2 bad job.json, 130 cancelled.

The stdin contract is the add-on's: whoever starts the worker keeps its stdin open (a pipe) for
as long as the job may run. Started with stdin at /dev/null (cron, SLURM, ``nohup``) it stops at
once; shells and schedulers use ``python -m engine generate``, which never reads stdin.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from .. import __version__, protocol

EXIT_OK, EXIT_FAILED, EXIT_BAD_JOB, EXIT_CANCELLED = 0, 1, 2, 130
log = logging.getLogger(__name__)


class _Stdout:
    """Thread-safe protocol writer that survives a reader that went away."""

    def __init__(self, stream):
        self.stream, self.lock, self.closed = stream, threading.Lock(), False

    def __call__(self, msg: dict) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(protocol.encode(msg))
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.closed = True  # nobody reads any more: keep running to a checkpoint


def run_worker(job_dir: Path, *, resume: bool, stdin=None, stdout=None, watch: bool = True,
               adopt_checkpoints: bool = False) -> int:
    from ..errors import EngineError

    send = _Stdout(stdout or sys.stdout)
    stop = threading.Event()
    why: list[str] = []  # "cancel" or "closed", once the watcher has stopped the job
    if watch:
        # The protocol's watcher survives any line (not UTF-8, huge, deeply nested): cancel and
        # "Blender went away" always work.
        threading.Thread(target=lambda: why.append(protocol.watch_for_cancel(stdin or sys.stdin, stop,
                                                                             log=log.warning)),
                         name="idto3d-cancel-watcher", daemon=True).start()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    send(protocol.hello(__version__, os.getpid()))
    try:
        from .failures import Cancelled, classify
        from .job import JobError
        from .run import run_job

        try:
            run_job(job_dir, resume=resume, emit=send, should_stop=stop.is_set, adopt_checkpoints=adopt_checkpoints)
        except Cancelled as exc:
            hint = exc.hint
            if why == ["closed"]:  # the usual trap: started from a shell or scheduler without a pipe
                from .generate import resume_command

                hint = (f"stdin closed, which tells this worker (the add-on's) to stop. To continue it "
                        f"from a shell or a scheduler use: {resume_command(Path(job_dir).resolve())}")
                log.warning("%s", hint)
            send(protocol.message("error", code="cancelled", message=exc.message, hint=hint))
            send(protocol.message("done", ok=False, code="cancelled"))
            return EXIT_CANCELLED
        except JobError as exc:
            send(protocol.message("error", **exc.to_dict()))
            send(protocol.message("done", ok=False, code=exc.code))
            return EXIT_BAD_JOB
        except EngineError as exc:
            log.error("%s", exc)
            send(protocol.message("error", **exc.to_dict()))
            send(protocol.message("done", ok=False, code=exc.code))
            return EXIT_FAILED
        send(protocol.message("done", ok=True))
        return EXIT_OK
    except BaseException as exc:  # anything else, KeyboardInterrupt included: still error + done
        traceback.print_exc(file=sys.stderr)
        error = classify(exc, job_dir) if not isinstance(exc, KeyboardInterrupt) else None
        if error is None:
            send(protocol.message("error", code="cancelled", message="interrupted", hint="run again with --resume"))
            send(protocol.message("done", ok=False, code="cancelled"))
            return EXIT_CANCELLED
        send(protocol.message("error", **error.to_dict()))
        send(protocol.message("done", ok=False, code=error.code))
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- CLI ----------------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_dir", type=Path, help="the job folder (holds job.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the job's last checkpoint")
    parser.add_argument("--adopt-checkpoints", action="store_true",
                        help="the folder is a copy that did not keep file times: check its checkpoints by loading them "
                             "and take them back as the engine's (docs/pipeline.md)")


def run(args: argparse.Namespace) -> int:
    code = run_worker(args.job_dir, resume=args.resume, adopt_checkpoints=args.adopt_checkpoints)
    # Everything is written and ``done`` is sent: leave now. Interpreter teardown with torch and
    # diffusers loaded takes seconds, and the add-on waits for the exit after a cancel.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
