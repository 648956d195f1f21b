"""``python -m engine generate --images A B --expressions smiling angry --out DIR``: the job for a
terminal, a script or a scheduler.

Writes ``DIR/job.json`` into a folder claimed as the engine's, then runs the job in this process.
Stdin is never read, so it runs the same from a shell, from cron or under SLURM (stdin at
/dev/null). Ctrl-C (SIGINT) or SIGTERM stop at the next step with a checkpoint, and the message
names the command that continues: ``python -m engine generate --out DIR --resume``, which reads
``DIR/job.json`` (arguments given with it must match it). A folder holding another job is refused
unless ``--new``; the user's own files in it are never touched.

Progress goes to stderr: a bar redrawn in place on a terminal, plain lines (one per stage, one
every ``--progress-every`` seconds) when stderr is a file or a pipe, so logs stay readable.
Exit codes: 0 ok, 1 failed, 2 bad input (a bad argument, or arguments that differ from the job
being resumed), 3 the output folder was refused, 130 cancelled.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import EXIT_OUTPUT_REFUSED, exit_code_for
from .presets import PRESETS
from .worker import EXIT_BAD_JOB, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK

DEFAULT_PRESET = "standard"
PROGRESS_EVERY_S = 10.0
# job.json field -> the option that sets it (named in a refusal of --resume)
OPTION_OF_FIELD = {"photos": "--images", "embedding": "--embedding", "expressions": "--expressions",
                   "preset": "--preset", "seed": "--seed", "models": "--models", "device": "--device",
                   "texture_size": "--texture-size", "overrides": "--set"}


def configure(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that --resume can tell what the user actually typed.
    parser.add_argument("--images", nargs="*", type=Path, default=None, help="photos of one person")
    parser.add_argument("--embedding", type=Path, default=None, help="a ready [512] identity .npy instead of photos")
    parser.add_argument("--expressions", nargs="*", default=None, help="expressions besides neutral")
    parser.add_argument("--preset", default=None, choices=list(PRESETS), help=f"quality (default {DEFAULT_PRESET})")
    parser.add_argument("--out", type=Path, required=True, help="the job folder (job.json and result/ go here)")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: $IDTO3D_MODELS or per user)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--texture-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE", dest="overrides",
                        type=_override, help='override a preset field, e.g. --set geometry_steps=3000 (a JSON value; '
                                             'job.json "overrides"; see docs/pipeline.md)')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the job in --out from its last checkpoint; reads --out/job.json, so no other "
                           "argument is needed (any given must match it)")
    mode.add_argument("--new", action="store_true",
                      help="replace the job that --out holds (its checkpoints, previews and result; your other files "
                           "in the folder stay)")
    parser.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                        help="auto: a redrawn bar on a terminal, plain lines otherwise (logs)")
    parser.add_argument("--progress-every", type=float, default=PROGRESS_EVERY_S, metavar="SECONDS",
                        help=f"seconds between progress lines in lines mode (default {PROGRESS_EVERY_S:g})")


def _override(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE (e.g. geometry_steps=3000)")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value  # a bare word is text


def _given(args) -> dict:
    """The job.json fields the user set on the command line, as generate writes them."""
    given = {}
    if args.images is not None:
        given["photos"] = [str(p.expanduser().resolve()) for p in args.images]
    if args.embedding is not None:
        given["embedding"] = str(args.embedding.expanduser().resolve())
    if args.expressions is not None:
        given["expressions"] = ["neutral", *[e for e in args.expressions if e != "neutral"]]
    for name in ("preset", "seed", "device", "texture_size"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.models is not None:
        given["models"] = str(args.models.expanduser().resolve())
    if args.overrides is not None:
        given["overrides"] = dict(args.overrides)
    return given


def _job_dict(args) -> dict:
    given = _given(args)
    return {"photos": given.get("photos", []), "embedding": given.get("embedding"),
            "expressions": given.get("expressions", ["neutral"]), "preset": given.get("preset", DEFAULT_PRESET),
            "seed": given.get("seed", 0), "models": given.get("models"), "device": given.get("device", "auto"),
            "texture_size": given.get("texture_size"), "overrides": given.get("overrides", {})}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressBar:
    """One line on stderr, redrawn in place: stage, a bar, step/total, loss, ETA (for a terminal)."""

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

    def close(self) -> None:
        self._line("")


class ProgressLines:
    """Plain lines for a log (stderr not a terminal): a line per stage, warning, error and result,
    and a progress line at most every ``every_s`` seconds plus each stage's last step. No ``\\r``,
    no redraws; each line starts with the wall-clock time (and ``prefix``, e.g. a batch job's id)."""

    def __init__(self, stream=None, every_s: float = PROGRESS_EVERY_S, *, prefix: str = "", clock=time.monotonic):
        self.stream, self.every_s, self.prefix, self.clock = stream or sys.stderr, float(every_s), prefix, clock
        self.stage = ""
        self.last = -float("inf")

    def __call__(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "stage":
            self.stage = msg["name"]
            self.last = -float("inf")  # the first progress of a stage is shown
            self._print(f"stage {msg['index']}/{msg['count']} {msg['name']}")
        elif kind == "progress":
            now = self.clock()
            if msg["step"] != msg["total"] and now - self.last < self.every_s:
                return
            self.last = now
            percent = 100.0 * msg["step"] / max(msg["total"], 1)
            loss = f" loss {msg['loss']:.4g}" if msg.get("loss") is not None else ""
            self._print(f"{msg.get('stage') or self.stage} step {msg['step']}/{msg['total']} ({percent:.0f}%)"
                        f"{loss} eta {_duration(msg.get('eta_s'))}")
        elif kind in ("warning", "error"):
            self._print(f"{kind}: {msg['message']}" + (f" ({msg['hint']})" if msg.get("hint") else ""))
        elif kind == "result":
            self._print(f"result: {msg['folder']}" + (f" ({msg['glb']})" if msg.get("glb") else ""))

    def _print(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.prefix}{text}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def progress_printer(mode: str, every_s: float, stream=None):
    stream = stream or sys.stderr
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return ProgressBar(stream)
    return ProgressLines(stream, every_s)


def quiet_library_progress_bars() -> None:
    """The Hugging Face libraries draw their own tqdm bars (loading weights) with ``\r``: off in a
    log. The variable reaches what is imported later (and the batch's worker processes)."""
    import importlib
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module, switch in (("huggingface_hub.utils", "disable_progress_bars"),
                           ("transformers.utils.logging", "disable_progress_bar"),
                           ("diffusers.utils.logging", "disable_progress_bar")):
        try:
            getattr(importlib.import_module(module), switch)()
        except (ImportError, AttributeError):  # not installed here: nothing of it to quiet
            pass


def resume_command(out: Path) -> str:
    return f"python -m engine generate --out {shlex.quote(str(out))} --resume"


def _report(printer, exc) -> None:
    printer(exc.to_dict() | {"type": "error"})


def run(args: argparse.Namespace) -> int:
    from ..errors import EngineError
    from ..owned import ForeignFolderError
    from .failures import Cancelled
    from .job import JobError, load_job
    from .job_folder import OtherJobError, checkpoint_step, differences, normalised, place_job
    from .run import run_job

    out = args.out.expanduser().resolve()
    if args.progress_every <= 0:
        print(f"generate: error: --progress-every must be > 0 seconds, not {args.progress_every:g}", file=sys.stderr)
        return EXIT_BAD_JOB
    printer = progress_printer(args.progress, args.progress_every)
    try:
        if args.resume:
            if not (out / "job.json").is_file():
                raise JobError(f"{out} holds no job.json: there is no job to resume", code="resume_no_job",
                               hint="start the job without --resume (with --images or --embedding, --expressions, ...)")
            spec = load_job(out)
            given = _given(args)
            if given:
                from .job import JobSpec

                theirs = normalised(JobSpec.from_dict({**spec.to_dict(), **given}, out))
                differ = differences(theirs, normalised(spec), fields=list(given))
                if differ:
                    shown = "; ".join(f"{OPTION_OF_FIELD[f]} {_shown(theirs[f])} (job.json: {_shown(normalised(spec)[f])})"
                                      for f in differ)
                    raise JobError(f"these arguments differ from the job being resumed in {out}: {shown}",
                                   code="resume_mismatch", field=differ[0],
                                   hint="drop them to continue the job as it is (`--out DIR --resume` is enough), or "
                                        "start it over with the new values: --new")
        else:
            placed = place_job(out, _job_dict(args), new=args.new)
            if placed.same and placed.checkpoint_step is not None:
                print(f"note: {out} already holds this job; starting over (add --resume to continue from step "
                      f"{placed.checkpoint_step})", file=sys.stderr)
    except JobError as exc:
        _report(printer, exc)
        return EXIT_BAD_JOB
    except (OtherJobError, ForeignFolderError) as exc:
        _report(printer, exc)
        return EXIT_OUTPUT_REFUSED
    except EngineError as exc:
        _report(printer, exc)
        return exit_code_for(exc)

    if isinstance(printer, ProgressLines):
        quiet_library_progress_bars()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        run_job(out, resume=args.resume, emit=printer, should_stop=stop.is_set)
    except Cancelled:
        printer.close()
        step = checkpoint_step(out)
        where = f"at step {step}" if step is not None else "before the first checkpoint"
        print(f"cancelled {where}; continue with: {resume_command(out)}", file=sys.stderr)
        return EXIT_CANCELLED
    except JobError as exc:
        _report(printer, exc)
        return EXIT_BAD_JOB
    except EngineError as exc:
        _report(printer, exc)
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"done in {_duration(time.perf_counter() - started)}; job.json is in {out}", file=sys.stderr)
    return EXIT_OK


def _shown(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
