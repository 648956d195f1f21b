"""``python -m engine generate --images A B --expressions smiling angry --out DIR``: the job for a terminal.

Writes ``DIR/job.json`` (so the run can be repeated, or continued with ``python -m engine run DIR
--resume``), then runs it in this process with a progress bar on stderr. Ctrl-C stops at the next
step with a checkpoint. Same exit codes as the worker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from .presets import PRESETS
from .worker import EXIT_BAD_JOB, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="*", type=Path, default=[], help="photos of one person")
    parser.add_argument("--embedding", type=Path, default=None, help="a ready [512] identity .npy instead of photos")
    parser.add_argument("--expressions", nargs="*", default=[], help="expressions besides neutral")
    parser.add_argument("--preset", default="standard", choices=list(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="the job folder (job.json and result/ go here)")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: $IDTO3D_MODELS or per user)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texture-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def _job_dict(args) -> dict:
    return {
        "photos": [str(p.expanduser().resolve()) for p in args.images],
        "embedding": str(args.embedding.expanduser().resolve()) if args.embedding else None,
        "expressions": ["neutral", *[e for e in args.expressions if e != "neutral"]],
        "preset": args.preset, "seed": args.seed,
        "models": str(args.models.expanduser().resolve()) if args.models else None,
        "device": args.device, "texture_size": args.texture_size,
    }


class ProgressBar:
    """One line on stderr, redrawn in place: stage, a bar, step/total, loss, ETA."""

    def __init__(self, stream=None, width: int = 28):
        # sys.stderr looked up now, not at import: it may have been replaced since (tests, embedders).
        self.stream, self.width, self.stage = stream or sys.stderr, width, ""

    def __call__(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "stage":
            self.stage = f"[{msg['index']}/{msg['count']}] {msg['name']}"
            self._line(self.stage)
        elif kind == "progress":
            done = msg["step"] / max(msg["total"], 1)
            bar = "#" * int(done * self.width)
            eta = msg.get("eta_s")
            tail = f" loss {msg['loss']:.4g}" if msg.get("loss") is not None else ""
            tail += f" eta {eta:.0f} s" if eta is not None else ""
            self._line(f"{self.stage} [{bar:<{self.width}}] {msg['step']}/{msg['total']}{tail}")
        elif kind in ("warning", "error"):
            self._line("")
            print(f"{kind}: {msg['message']}" + (f" ({msg['hint']})" if msg.get("hint") else ""), file=self.stream)
        elif kind == "result":
            self._line("")
            print(f"result: {msg['folder']}" + (f" ({msg['glb']})" if msg.get("glb") else ""), file=self.stream)

    def _line(self, text: str) -> None:
        self.stream.write("\r" + text[:120].ljust(120) + ("" if text else "\r"))
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from ..errors import EngineError
    from .failures import Cancelled
    from .job import JobError, write_job
    from .run import run_job

    out = args.out.expanduser().resolve()
    bar = ProgressBar()
    try:
        write_job(out, _job_dict(args))
    except JobError as exc:
        bar(exc.to_dict() | {"type": "error"})
        return EXIT_BAD_JOB
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.perf_counter()
    try:
        run_job(out, resume=args.resume, emit=bar, should_stop=stop.is_set)
    except Cancelled:
        print(f"\ncancelled; continue with: python -m engine run {out} --resume", file=sys.stderr)
        return EXIT_CANCELLED
    except JobError as exc:
        bar(exc.to_dict() | {"type": "error"})
        return EXIT_BAD_JOB
    except EngineError as exc:
        bar(exc.to_dict() | {"type": "error"})
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"done in {time.perf_counter() - started:.0f} s; job.json is in {out}", file=sys.stderr)
    return EXIT_OK
