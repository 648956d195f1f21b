"""``python -m engine generate --images A B --expressions smiling angry --out DIR``: the job for a
terminal, a script or a scheduler.

Writes ``DIR/job.json`` into a folder claimed as the engine's, then runs the job in this process.
The same command run again is safe (a scheduler's requeue reruns it as it is): a folder that holds
this job continues from its newest checkpoint, and a finished one is reported and left alone.
``--resume`` reads ``DIR/job.json``, so ``generate --out DIR --resume`` alone continues a job
(arguments given with it must match what the job makes; where it runs — ``--device``,
``--models`` — may change); given the job's arguments it also starts the job when DIR holds
none. ``--new`` starts over from step 0, replacing the job DIR holds; a folder holding another
job is refused without it, and the user's own files in it are never touched. Stdin is never read,
so it runs the same from a shell, from cron or under SLURM (stdin at /dev/null). Ctrl-C (SIGINT)
or SIGTERM stop at the next step with a checkpoint, and the message names the command that
continues; a second Ctrl-C leaves at once.

Progress goes to stderr: a bar redrawn in place on a terminal, plain lines (one per stage, one
every ``--progress-every`` seconds, and a heartbeat while a stage reports no steps) when stderr is
a file or a pipe, so logs stay readable. Exit codes: 0 done (or done before), 1 failed, 2 bad input
(a bad argument, or arguments that differ from the job being resumed), 3 the output folder was
refused, 4 the device is not available, 5 another process runs the job, 130 stopped by SIGINT,
143 by SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import exit_code_for
from .presets import PRESETS
from .worker import EXIT_BAD_JOB, EXIT_OK

DEFAULT_PRESET = "standard"
PROGRESS_EVERY_S = 10.0
HEARTBEAT_S = 60.0  # a line at least this often in a log, even while a stage reports no steps
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
                           "argument is needed (any given must match what the job makes; --device and --models may "
                           "change). With the job's arguments it starts the job when --out holds none (a requeue)")
    mode.add_argument("--new", action="store_true",
                      help="start over from step 0, replacing the job that --out holds, this one or another (its "
                           "checkpoints, previews and result; your other files in the folder stay)")
    parser.add_argument("--adopt-checkpoints", action="store_true",
                        help="--out is a copy that did not keep file times (cp -r, scp -r, an object store): check its "
                             "checkpoints by loading them and continue from them (docs/pipeline.md)")
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
    no redraws; each line starts with the wall-clock time (and ``prefix``, e.g. a batch job's id).
    With ``heartbeat_s``, :meth:`beat` (called every second by :meth:`start_heartbeat`'s thread)
    adds a line when none came for that long: model loading, the quality report and the export
    report no steps, and a farm's no-output watchdog must not take the job for hung."""

    def __init__(self, stream=None, every_s: float = PROGRESS_EVERY_S, *, prefix: str = "", clock=time.monotonic,
                 heartbeat_s: float | None = None):
        self.stream, self.every_s, self.prefix, self.clock = stream or sys.stderr, float(every_s), prefix, clock
        self.heartbeat_s = heartbeat_s
        self.stage = ""
        self.last = -float("inf")
        self.last_line = self.stage_started = clock()
        self.lock = threading.Lock()  # the heartbeat thread prints too
        self.closed = threading.Event()

    def __call__(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "stage":
            self.stage = msg["name"]
            self.stage_started = self.clock()
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

    def beat(self) -> None:
        now = self.clock()
        if self.heartbeat_s is not None and now - self.last_line >= self.heartbeat_s:
            self._print(f"{self.stage or 'starting'}: still working ({_duration(now - self.stage_started)} in this "
                        "stage)")

    def start_heartbeat(self) -> "ProgressLines":
        if self.heartbeat_s is not None:
            threading.Thread(target=self._beating, name="idto3d-heartbeat", daemon=True).start()
        return self

    def _beating(self) -> None:
        while not self.closed.wait(1.0):
            self.beat()

    def _print(self, text: str) -> None:
        with self.lock:
            self.last_line = self.clock()
            self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.prefix}{text}\n")
            self.stream.flush()

    def close(self) -> None:
        self.closed.set()


def progress_printer(mode: str, every_s: float, stream=None):
    stream = stream or sys.stderr
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return ProgressBar(stream)
    return ProgressLines(stream, every_s, heartbeat_s=max(HEARTBEAT_S, every_s))


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
    """The command that continues the job in ``out``, with this very Python (a farm's venv)."""
    return f"{shlex.quote(sys.executable)} -m engine generate --out {shlex.quote(str(out))} --resume"


def _report(printer, exc) -> None:
    printer(exc.to_dict() | {"type": "error"})


def _place(args, out: Path):
    """Put the job the arguments describe (or job.json's, with --resume) into ``out``."""
    from .job import JOB_FILE, JobError, load_job
    from .job_folder import PLACEMENT_FIELDS, place_job

    given = _given(args)
    if not args.resume:
        return place_job(out, _job_dict(args), new=args.new, restart=args.new)
    if (out / JOB_FILE).is_file():
        spec = load_job(out)
        differ = _differences(given, spec)
        if differ:
            raise JobError(f"these arguments differ from the job being resumed in {out}: "
                           f"{'; '.join(text for _, text in differ)}", code="resume_mismatch", field=differ[0][0],
                           hint="drop them to continue the job as it is (`--out DIR --resume` is enough), or start it "
                                "over with the new values: --new (where it runs, --device and --models, may change)")
        return place_job(out, {**spec.to_dict(), **{k: v for k, v in given.items() if k in PLACEMENT_FIELDS}})
    if "photos" not in given and "embedding" not in given:
        raise JobError(f"{out} holds no job.json: there is no job to resume", code="resume_no_job",
                       hint="give the job's arguments too (--images or --embedding, --expressions, ...): with them "
                            "--resume starts the job when the folder holds none, as a scheduler's requeue needs")
    return place_job(out, _job_dict(args))


def _known_device(name: str) -> bool:
    """A device name job.json accepts (a bad one is job.json's error to report, exit 2)."""
    import re

    from .job import DEVICES

    return name in DEVICES or re.fullmatch(r"cuda:\d+", name) is not None


def _differences(given: dict, spec) -> list[tuple[str, str]]:
    """The options given with --resume whose values differ from what the job makes (its identity;
    placement fields such as --device may change): (field, "--seed 3 (job.json: 0)")."""
    from .job_folder import PLACEMENT_FIELDS, identity

    job = identity(spec)
    shown = []
    for name, value in given.items():
        if name in PLACEMENT_FIELDS or name == "texture_size" and value == job["texture_size"]:
            continue  # where it runs may change; a texture size equal to the preset's own is no change
        if value != job[name]:
            text = f"{OPTION_OF_FIELD[name]} {_shown(value)} (job.json: {_shown(job[name])})"
            if name == "overrides":
                text = text[:-1] + "; --set replaces all of them: give every one, or none)"
            shown.append((name, text))
    return shown


def run(args: argparse.Namespace) -> int:
    from ..errors import EXIT_NO_RESULT, EngineError, exit_code_for_signal
    from ..options import check_device_available
    from .failures import Cancelled
    from .job import JobError
    from .job_folder import checkpoint_step
    from .run import run_job

    out = args.out.expanduser().resolve()
    if args.progress_every <= 0:
        print(f"generate: error: --progress-every must be > 0 seconds, not {args.progress_every:g}", file=sys.stderr)
        return EXIT_BAD_JOB
    printer = progress_printer(args.progress, args.progress_every)
    try:
        if args.device is not None and _known_device(args.device):
            check_device_available(args.device)  # before job.json is written or rewritten: exit 4
        placed = _place(args, out)
        check_device_available(placed.spec.device, "job.json's device")
    except JobError as exc:
        _report(printer, exc)
        return EXIT_BAD_JOB
    except EngineError as exc:  # the folder refused (3), no such device here (4), a worker runs the job now (5)
        _report(printer, exc)
        return exit_code_for(exc)
    for name in placed.placement_changed:
        print(f"note: job.json's {name} is now {_shown(placed.spec.to_dict()[name])} (where the job runs; it is the "
              "same job)", file=sys.stderr)
    if placed.finished and not args.new:
        print(f"{out} already holds the result of this job ({out / 'result'}): nothing to do (add --new to make it "
              "again from step 0)", file=sys.stderr)
        return EXIT_OK
    resume = placed.checkpoint_step is not None
    if resume:
        print(f"continuing the job in {out} from its checkpoint at step {placed.checkpoint_step}", file=sys.stderr)

    if isinstance(printer, ProgressLines):
        quiet_library_progress_bars()
        printer.start_heartbeat()
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum, frame) -> None:
        signals.append(signum)
        if len(signals) > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (model loading can take minutes)
        if not stop.is_set():
            stop.set()
            print("\nstopping at the next step with a checkpoint (Ctrl-C again to leave at once)", file=sys.stderr)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        run_job(out, resume=resume, emit=printer, should_stop=stop.is_set, adopt_checkpoints=args.adopt_checkpoints)
    except Cancelled:
        printer.close()
        step = checkpoint_step(out)
        where = f"at step {step}" if step is not None else "before the first checkpoint"
        print(f"cancelled {where}; continue with: {resume_command(out)}", file=sys.stderr)
        return exit_code_for_signal(signals[0] if signals else signal.SIGINT)
    except KeyboardInterrupt:
        printer.close()
        step = checkpoint_step(out)
        where = f"; its newest checkpoint is step {step}" if step is not None else " before the first checkpoint"
        print(f"\nleft at once{where}; continue with: {resume_command(out)}", file=sys.stderr)
        return exit_code_for_signal(signals[0] if signals else signal.SIGINT)
    except JobError as exc:
        _report(printer, exc)
        return EXIT_BAD_JOB
    except EngineError as exc:  # a refusal found when the run starts keeps its own status (3, 5); a failure is 1
        _report(printer, exc)
        return exit_code_for(exc, default=EXIT_NO_RESULT)
    finally:
        printer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"done in {_duration(time.perf_counter() - started)}; job.json is in {out}", file=sys.stderr)
    return EXIT_OK


def _shown(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
