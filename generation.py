"""Generate Head: the checks before a job, the job folder, the worker, and what its messages do.

One job per scene at a time. :func:`start_job` refuses with a :class:`Refusal` saying what to
fix, else writes ``job.json`` into a fresh job folder and starts ``python -m engine run JOB_DIR``
in the engine's Python. :meth:`Job.pump` is one timer tick: it takes the worker's messages
(never waiting) and updates the job's state for the panel, streams mesh snapshots into the head
object and, at the end, turns the result folder into the finished head. The modal operator's
timer calls it; headless callers and tests call it directly (timers do not run in the bpy module).
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import bpy

from . import placement, result_import
from .engine.errors import EngineError
from .engine.models import check_models
from .engine.owned import claim_dir, remove_owned
from .engine.pipeline.job import JOB_FILE, JobError, JobSpec, write_job  # stdlib only; imported once, not on a press
from .engine.result_format import ResultFormatError
from .engine_runner import ADDON_DIR, EngineNotFound, engine_environment, engine_python
from .worker_monitor import CommandFailed, CommandMonitor, WorkerMonitor

ADDON_PACKAGE = __package__
CHECKPOINT_MARKER = Path("checkpoints") / "latest.json"
DEVICE_FROM_PREFS = {"AUTO": "auto", "CUDA": "cuda", "CPU": "cpu"}
PROBE_TIMEOUT_S = 30.0


class Refusal(Exception):
    """Generate Head cannot start; ``message`` says what to fix."""

    def __init__(self, code: str, message: str, *, offer_download: bool = False):
        super().__init__(message)
        self.code, self.message, self.offer_download = code, message, offer_download


# ------------------------------------------------------------------------------- checks before a job


def photos_in_use(settings) -> list[str]:
    """Absolute paths of the ticked photos; refuses when none is ticked or a file is gone."""
    paths = [bpy.path.abspath(photo.path) for photo in settings.photos if photo.enabled and photo.path]
    if not paths:
        raise Refusal(
            "no_photo",
            "No photo is in use: add photos of the person in the References panel and tick at least one",
        )
    for path in paths:
        if not os.path.isfile(path):
            raise Refusal(
                "photo_missing",
                f"Photo not found: {path}. Remove it from the list or put the file back, then try again",
            )
    return [os.path.abspath(path) for path in paths]


def expressions_in_use(settings) -> list[str]:
    """The ticked expressions exactly as typed, checked by the engine's own rule.

    Duplicates, empty names, names over Blender's 63-byte limit, "Basis", case variants of
    "neutral" and control characters are refused here, before a job starts, so every name reaches
    its shape key unchanged.
    """
    from .engine.pipeline.job import NEUTRAL, check_expression_names

    names = [item.text for item in settings.expressions if item.enabled]
    if not names:
        raise Refusal(
            "no_expression",
            "No expression is in use: add one in the Expressions panel "
            "(neutral is the Basis) or load a set from its Expression Sets menu",
        )
    problems = check_expression_names(names)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Refusal(
            "bad_expressions",
            f"Expressions: {problems[0]}{more}. Rename or remove it in the Expressions panel",
        )
    return names if names[0] == NEUTRAL else [NEUTRAL, *[n for n in names if n != NEUTRAL]]


def expression_prompts(settings, names: list[str]) -> dict[str, str]:
    """The prompt of each expression in use that has one of its own (job.json ``expression_prompts``)."""
    prompts = {}
    for item in settings.expressions:
        prompt = " ".join(item.prompt.split())
        if item.enabled and item.text in names and prompt and prompt != item.text:
            prompts[item.text] = prompt
    return prompts


BASIC_EXPRESSION_COUNT = 6  # the six basic emotions: what the presets' step counts were set for


def steps_per_expression(preset: str, expressions: int) -> int:
    """About how many geometry steps shape each expression: every step optimises neutral (the
    preset's ``neutral_fraction`` of the steps) or one expression picked at random, so the rest
    of the steps are shared by all of them (engine/pipeline/seeds.py ``pick_expression``)."""
    from .engine.pipeline.presets import PRESETS

    settings = PRESETS[preset.lower()]
    return round(settings.geometry_steps * (1 - settings.neutral_fraction) / max(1, expressions))


def step_budget_note(settings) -> str:
    """A warning for the Expressions panel when many expressions share the preset's steps (the
    ARKit 52 set gets ~1/9 of the steps per shape that the six emotions get), with what to do."""
    count = sum(1 for item in settings.expressions
                if item.enabled and item.text.strip().casefold() != "neutral")
    if count <= BASIC_EXPRESSION_COUNT:
        return ""
    each, usual = (steps_per_expression(settings.preset, n) for n in (count, BASIC_EXPRESSION_COUNT))
    advice = ("untick the shapes your rig does not use (lip sync needs mostly jawOpen and the mouth* shapes)"
              if settings.preset == "HIGH" else
              "choose the High preset, or untick the shapes your rig does not use")
    return (f"{count} expressions share the {settings.preset.capitalize()} preset's geometry steps: about {each} "
            f"each ({usual} with six). For better shapes {advice}")


# Pythons proven to start with torch, per session ((path, mtime)); failures are probed again each
# time, so installing torch into the same Python is seen at the next press.
_probed: set[tuple[str, float]] = set()
# Finds torch without importing it (importing takes seconds); prints one JSON object for CommandMonitor.
PROBE = "import importlib.util, json; print(json.dumps({'torch': importlib.util.find_spec('torch') is not None}))"


class EngineProbe:
    """Is the engine's Python usable? Asked in the background: a new Python can take up to
    :data:`PROBE_TIMEOUT_S` to start (a cold disk, a virus scanner), and the UI must not wait.

    :meth:`pump` returns None while the probe runs, the Python's path once it passed, and raises
    :class:`Refusal` when it failed. A Python proven in this session answers at once.
    """

    def __init__(self, prefs):
        try:
            self.python = engine_python(prefs)
        except EngineNotFound as exc:
            raise Refusal("engine_python", str(exc)) from None
        try:
            self.key = (self.python, os.stat(self.python).st_mtime)
        except OSError as exc:
            raise Refusal("engine_python", f"Engine Python {self.python!r} cannot be used: {exc}") from None
        self.monitor: CommandMonitor | None = None
        if self.key not in _probed:
            try:
                self.monitor = CommandMonitor([self.python, "-c", PROBE], cwd=str(ADDON_DIR), env=engine_environment(),
                                              what="the torch check", timeout_s=PROBE_TIMEOUT_S)
            except OSError as exc:
                raise self._refusal(f"does not start ({exc})") from None

    def pump(self) -> str | None:
        if self.monitor is None:
            return self.python
        try:
            answer = self.monitor.pump()
        except CommandFailed as exc:
            code = self.monitor.process.returncode
            if self.monitor.timed_out:
                raise self._refusal(f"does not start ({exc})") from None
            last = (self.monitor.stderr_text().strip().splitlines() or ["no output"])[-1]
            raise self._refusal(f"does not start (exit {code}: {last})") from None
        if answer is None:
            return None
        if not answer.get("torch"):
            raise Refusal(
                "engine_no_torch",
                f"Engine Python {self.python!r} has no torch. Press Install Engine in the add-on's "
                "preferences, or choose a Python that has the engine's packages (docs/install.md)",
            )
        _probed.add(self.key)
        self.monitor = None
        return self.python

    def _refusal(self, problem: str) -> Refusal:
        return Refusal(
            "engine_python", f"Engine Python {self.python!r} {problem}. Set Engine Python in the add-on's preferences"
        )

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()


# The identity step falls back to dlib's detector with Arc2Face's own arcface.onnx when the
# antelopev2 pack is absent, and says so itself if it cannot; the prior's folders have no fallback.
NEEDED_BEFORE_LAUNCH = ("sd15", "arc2face")


def check_models_present(root: str, prefs) -> None:
    blocking = [
        report for report in check_models(root) if report.blocking and report.spec.key in NEEDED_BEFORE_LAUNCH
    ]
    if blocking:
        names = ", ".join(f"{r.spec.key}/" for r in blocking)
        from .operators.fetch_models import downloads_refused

        allowed = downloads_refused(prefs) is None
        how = (
            "press Download Models"
            if allowed
            else "put them there as docs/install.md explains (or allow downloads in the preferences and press "
            "Download Models)"
        )
        raise Refusal("models_missing", f"Models missing in {root}: {names}. {how}", offer_download=allowed)


def jobs_root(settings) -> Path:
    """Where new job folders go: the user's output folder, else the extension's user folder."""
    if settings.output_dir:
        return Path(bpy.path.abspath(settings.output_dir))
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path="jobs", create=True))
    except (ValueError, RuntimeError) as exc:
        raise Refusal(
            "output_unwritable",
            f"The extension's user folder cannot be used for jobs ({exc}); "
            "choose an Output Folder in the Settings panel",
        ) from None


def check_writable(folder: Path) -> None:
    problem = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".idto3d-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        raise Refusal(
            "output_unwritable",
            f"Cannot write job folders into {folder} ({problem}): choose another "
            "Output Folder in the Settings panel",
        )


def job_request(settings, prefs, photos: list[str], expressions: list[str], models_root: str) -> dict:
    """job.json (CONTRACT §1) for the scene's settings."""
    return {
        "job_version": 1,
        "photos": photos,
        "embedding": None,
        "expressions": expressions,
        "preset": settings.preset.lower(),
        "overrides": {},
        "seed": int(settings.seed),
        "models": models_root,
        "device": DEVICE_FROM_PREFS.get(prefs.device, "auto"),
        "dtype": "auto",
        "memory": {"attention": "sdpa", "channels_last": False, "vae_tiling": False, "cpu_offload": False},
        "texture_size": int(settings.texture_size),
        "output": {"glb": True, "contact_sheet": True, "quality_report": True},
        "snapshot_interval_s": 1.0,
        "allow_download": False,
        "expression_prompts": expression_prompts(settings, expressions),
    }


def new_job_folder(root: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = root / (f"job-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        _claim(folder)
        return folder
    raise Refusal("output_unwritable", f"Could not make a fresh job folder in {root}")


WORKER_STDERR = "addon-worker-stderr.log"


def _remove_unstarted_job_folder(folder: Path) -> None:
    """A job folder this press made whose worker never started: what the add-on wrote into it
    (job.json, the stderr log) and the folder go; anything else is left."""
    try:
        for name in (JOB_FILE, WORKER_STDERR):
            (folder / name).unlink(missing_ok=True)
        remove_owned(folder)
    except (OSError, EngineError):
        pass  # best effort: the refusal says what happened; an empty job folder is harmless


def _claim(folder: Path) -> None:
    """Mark the job folder as the engine's (engine/owned.py)."""
    claim_dir(folder, "job")


# ------------------------------------------------------------------------------------------ the job


class Job:
    """One running (or finished) generation for one scene, and what the panel shows of it."""

    def __init__(self, scene, job_dir: Path, monitor: WorkerMonitor, location, resumed: bool, placement_note="",
                 selection_at_press: dict | None = None):
        self.scene_name = scene.name
        # What the user had selected when they pressed Generate Head: the head takes over the
        # selection only where that is still so (see hand_over_selection).
        self.selection_at_press = selection_at_press if selection_at_press is not None else selection_of(scene)
        self.job_dir, self.monitor, self.location, self.resumed = job_dir, monitor, tuple(location), resumed
        self.placement_note = placement_note  # where the head goes and why, when not simply at the cursor
        self.started = time.monotonic()
        self.stage = "starting"
        self.stage_index = self.stage_count = 0
        self.step = self.total = 0
        self.loss: float | None = None
        self.eta_s: float | None = None
        self.expression = ""
        self.preview_path = ""
        self.preview_seq = 0
        self.snapshots_applied = 0
        self.snapshot_build: result_import.SnapshotBuild | None = None  # a snapshot on its way into the head
        self.object_name = ""
        self.result_folder = ""
        self.warnings: list[str] = []
        self.error: dict | None = None
        self.stderr_tail = ""
        self.ok: bool | None = None
        self.timer = None  # the modal operator's event timer, removed when the job ends

    @property
    def finished(self) -> bool:
        return self.ok is not None

    @property
    def cancelled(self) -> bool:
        return self.finished and self.monitor.cancel_requested_at is not None and not self.ok

    @property
    def progress(self) -> float:
        """Fraction of the whole job: stages done plus the share of the current one."""
        if self.ok:
            return 1.0
        if not self.stage_count:
            return 0.0
        within = self.step / self.total if self.total else 0.0
        return min(1.0, max(0.0, (self.stage_index - 1 + within) / self.stage_count))

    def head_object(self):
        return bpy.data.objects.get(self.object_name) if self.object_name else None

    def pump(self) -> bool:
        """One tick: apply what the worker said since the last one. True while the job runs."""
        if self.finished:
            return False
        if self.snapshot_build is not None:  # the snapshot of an earlier tick: its next piece of work
            self._advance_snapshot()
        messages = self.monitor.pump()
        # Only the newest snapshot and preview of a burst are worth drawing.
        last_snapshot = max((i for i, m in enumerate(messages) if m["type"] == "snapshot"), default=-1)
        for index, msg in enumerate(messages):
            kind = msg["type"]
            if kind == "stage":
                self.stage, self.stage_index, self.stage_count = (
                    str(msg["name"]),
                    int(msg["index"]),
                    int(msg["count"]),
                )
                self.step, self.total = 0, 0
            elif kind == "progress":
                self.step, self.total = int(msg["step"]), int(msg["total"])
                self.loss = msg.get("loss") if isinstance(msg.get("loss"), (int, float)) else None
                self.eta_s = msg.get("eta_s") if isinstance(msg.get("eta_s"), (int, float)) else None
                self.expression = str(msg.get("expression") or "")
            elif kind == "preview":
                self.preview_path = str(msg["path"])
                self.preview_seq += 1
            elif kind == "snapshot" and index == last_snapshot:
                self._apply_snapshot(msg)
            elif kind == "warning":
                self.warnings.append(str(msg["message"]))
            elif kind == "error":
                self.error = {
                    "code": str(msg["code"]),
                    "message": str(msg["message"]),
                    "hint": str(msg.get("hint") or ""),
                }
            elif kind == "result":
                if self.snapshot_build is not None:  # shown first, so every snapshot started is seen
                    self.snapshot_build.finish()
                    self._advance_snapshot()
                self._apply_result(msg)
            elif kind == "done":
                self._finish(bool(msg["ok"]) and self.error is None)
        return not self.finished

    def _apply_snapshot(self, msg: dict) -> None:
        path = Path(str(msg["path"]))
        if not path.resolve().is_relative_to(self.job_dir.resolve()):
            self.warnings.append(f"ignored a snapshot outside the job folder: {path}")
            return
        try:
            vertices, faces = result_import.read_snapshot(path)
        except ResultFormatError as exc:  # the worker keeps only the newest few: one may be gone already
            self.warnings.append(str(exc))
            return
        obj = self.head_object()
        if obj is None or obj.type != "MESH":
            obj = self._new_head_object()
        if self.snapshot_build is not None:  # a newer snapshot replaces one still being built
            self.snapshot_build.discard()
        self.snapshot_build = result_import.SnapshotBuild(obj, vertices, faces)
        self._advance_snapshot()  # its first piece of work in this tick

    def _advance_snapshot(self) -> None:
        build = self.snapshot_build
        if build.done or build.advance():
            self.snapshot_build = None
            if build.done:
                self.snapshots_applied += 1

    def _new_head_object(self):
        scene = bpy.data.scenes.get(self.scene_name) or bpy.context.scene
        mesh = bpy.data.meshes.new("Head (generating)")
        obj = bpy.data.objects.new("Head", mesh)
        obj.location = self.location
        obj["idto3d_job"] = str(self.job_dir)
        scene.collection.objects.link(obj)
        self.object_name = obj.name
        hand_over_selection(scene, obj, self.selection_at_press)
        return obj

    def _apply_result(self, msg: dict) -> None:
        folder = Path(str(msg["folder"]))
        try:
            into = self.head_object()
            obj = result_import.import_result(
                folder,
                name="Head",
                into=into,
                location=self.location,
                collection=(bpy.data.scenes.get(self.scene_name) or bpy.context.scene).collection,
            )
        except (ResultFormatError, OSError, RuntimeError) as exc:
            self.error = {
                "code": "import_failed",
                "message": f"The result could not be brought into Blender: {exc}",
                "hint": f"The result folder stays at {folder}; try Import Head Result on it",
            }
            return
        if into is None:
            obj.location = self.location
            hand_over_selection(bpy.data.scenes.get(self.scene_name) or bpy.context.scene, obj,
                                self.selection_at_press)
        obj.data.name = "Head"
        self.object_name, self.result_folder = obj.name, str(folder)

    def _finish(self, ok: bool) -> None:
        if self.snapshot_build is not None:  # the last snapshot stays shown (a failed or cancelled job)
            self.snapshot_build.finish()
            self._advance_snapshot()
        self.ok = ok
        if not ok:
            self.stderr_tail = self.monitor.stderr_tail()
            if self.error is None and not self.cancelled:
                self.error = {
                    "code": "failed",
                    "message": "The engine stopped without saying why.",
                    "hint": "",
                }

    @property
    def can_resume(self) -> bool:
        return self.finished and not self.ok and (self.job_dir / CHECKPOINT_MARKER).is_file()

    def cancel(self) -> None:
        """Ask the worker to stop; the next pumps see it end (killed after a short grace)."""
        self.monitor.request_cancel()

    def abandon(self) -> None:
        """Nothing will pump this job again (its modal operator was ended, another file is being
        loaded): the worker is asked to stop at its next step, which leaves a checkpoint, and is
        killed by the monitor's reaper thread if it does not; the job ends as cancelled. Never waits."""
        _remove_timer(self)
        if self.snapshot_build is not None:  # its scene is going away: no half-built datablock is left
            self.snapshot_build.discard()
            self.snapshot_build = None
        if not self.finished:
            self.monitor.stop_in_background()
            self._finish(False)

    def status_line(self) -> str:
        if self.ok:
            return f"Done: {self.object_name}"
        if self.cancelled:
            return "Cancelled"
        if self.finished:
            return f"Failed: {self.error['message'] if self.error else 'unknown error'}"
        text = f"{self.stage.capitalize()}"
        if self.stage_count:
            text += f" ({self.stage_index}/{self.stage_count})"
        if self.total:
            text += f" step {self.step}/{self.total}"
        return text


def selection_of(scene) -> dict[str, tuple[str, frozenset[str]]]:
    """Per view layer of ``scene``: (the active object's name, the selected objects' names)."""
    selection = {}
    for view_layer in scene.view_layers:
        active = view_layer.objects.active
        selection[view_layer.name] = (
            active.name if active is not None else "",
            frozenset(obj.name for obj in view_layer.objects if obj.select_get(view_layer=view_layer)),
        )
    return selection


def hand_over_selection(scene, obj, at_press: dict[str, tuple[str, frozenset[str]]]) -> int:
    """Make the new head the selected, active object (as after Blender's own Add or Import), but
    only where the user has not moved on since pressing Generate Head.

    The head appears seconds to minutes after the press (with the first snapshot, or the result),
    while the user keeps working. In a view layer whose active object or selection changed since
    the press, or whose active object is in Edit, Sculpt, Paint or Pose Mode, taking over would
    pull the user out of their work (and leave their object stuck in that mode): the selection is
    left alone there. Returns in how many view layers the head became active."""
    handed = 0
    for view_layer in scene.view_layers:
        active = view_layer.objects.active
        now = (active.name if active is not None else "",
               frozenset(o.name for o in view_layer.objects if o.select_get(view_layer=view_layer)))
        if at_press.get(view_layer.name) != now or (active is not None and active.mode != "OBJECT"):
            continue
        try:
            obj.select_set(True, view_layer=view_layer)  # also brings the view layer up to date
        except RuntimeError:  # not in this view layer (an excluded collection)
            continue
        for other in view_layer.objects:
            if other is not obj and other.select_get(view_layer=view_layer):
                other.select_set(False, view_layer=view_layer)
        view_layer.objects.active = obj
        handed += 1
    return handed


_jobs: dict[str, Job] = {}  # scene name -> its latest job (one job per scene at a time)


def job_for(scene) -> Job | None:
    return _jobs.get(scene.name)


def running_job(scene) -> Job | None:
    job = job_for(scene)
    return job if job is not None and not job.finished else None


class Launch:
    """Generate Head between the press and the worker: the checks, with the engine probe in the
    background. :meth:`pump` (a timer tick) returns None while the probe runs, then does the rest
    of the checks, writes the job folder, starts the worker and returns the :class:`Job`; a check
    that fails raises :class:`Refusal` and starts nothing."""

    def __init__(self, context, resume: bool):
        from .preferences import addon_prefs

        self.scene_name = context.scene.name
        self.resume = resume
        self.timer = None  # the modal operator's event timer while the probe runs
        scene, settings = context.scene, context.scene.idto3d
        if running_job(scene) is not None or _launches.get(scene.name) is not None:
            raise Refusal(
                "job_running",
                "A head is already being generated in this scene: wait for it or press Cancel first",
            )
        self.prefs = addon_prefs(context)
        if resume:
            self.job_dir = Path(settings.last_job_dir)
            if not (self.job_dir / CHECKPOINT_MARKER).is_file():
                raise Refusal("no_checkpoint", f"No checkpoint to resume from in {self.job_dir}: press Generate Head")
        else:
            self.photos = photos_in_use(settings)
            self.expressions = expressions_in_use(settings)
        self.selection_at_press = selection_of(scene)
        self.view_layer_name = context.view_layer.name if context.view_layer else ""
        self.probe = EngineProbe(self.prefs)
        _launches[scene.name] = self

    def pump(self) -> Job | None:
        """One tick. Raises :class:`Refusal` for anything that keeps the job from starting (a
        failed check, or an OS error while writing the job folder or starting the worker): the
        launch is over then, whatever the caller does next."""
        try:
            python = self.probe.pump()
            if python is None:
                return None
            job = self._start(python)
        except BaseException:
            self.stop()
            raise
        self._forget()
        return job

    def wait(self, poll_s: float = 0.02) -> Job:
        """Block until the worker runs (EXEC mode, scripts, farms)."""
        while (job := self.pump()) is None:
            time.sleep(poll_s)
        return job

    def stop(self) -> None:
        self.probe.stop()
        self._forget()

    def _forget(self) -> None:
        if _launches.get(self.scene_name) is self:
            del _launches[self.scene_name]

    def _start(self, python: str) -> Job:
        from .preferences import models_root

        scene = bpy.data.scenes.get(self.scene_name)
        if scene is None:
            raise Refusal("scene_gone", f"The scene {self.scene_name!r} is gone")
        settings, prefs = scene.idto3d, self.prefs
        root = models_root(prefs)
        if self.resume:
            job_dir = self.job_dir
            check_writable(job_dir)
        else:
            check_models_present(root, prefs)
            base = jobs_root(settings)
            check_writable(base)
            request = job_request(settings, prefs, self.photos, self.expressions, root)
            try:
                JobSpec.from_dict(request, base)  # the worker's own validation, before any folder is made
            except JobError as exc:
                raise Refusal(exc.code, f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")) from None
        previous = _jobs.get(scene.name)
        if self.resume and previous is not None and previous.job_dir == job_dir:
            location, note = previous.location, previous.placement_note
        else:
            location, note = placement.place_head(
                scene, scene.cursor.location, beside=settings.placement == "BESIDE",
                view_layer=scene.view_layers.get(self.view_layer_name),
                window_manager=getattr(bpy.context, "window_manager", None))
        made = None  # the job folder this press made (removed again if the worker cannot start)
        try:
            if not self.resume:
                job_dir = made = new_job_folder(base)
                write_job(job_dir, request)
            command = [python, "-m", "engine", "run", str(job_dir)] + (["--resume"] if self.resume else [])
            monitor = WorkerMonitor(
                command,
                cwd=str(ADDON_DIR),
                env=engine_environment(root),
                stderr_path=job_dir / WORKER_STDERR,
            )
        except (OSError, EngineError) as exc:  # a full disk, a read-only folder, a Python that cannot start
            where = job_dir if self.resume else base
            if made is not None:
                _remove_unstarted_job_folder(made)
            reason = getattr(exc, "strerror", None) or exc
            raise Refusal(
                "worker_not_started",
                f"The engine could not be started in {where} ({reason}): check the Output Folder and the Engine "
                "Python, then press Generate Head again",
            ) from None
        job = Job(scene, job_dir, monitor, location, self.resume, note, self.selection_at_press)
        if (
            self.resume
            and previous is not None
            and previous.head_object() is not None
            and previous.result_folder == ""
        ):
            job.object_name = previous.object_name  # keep streaming into the same unfinished head
        _jobs[scene.name] = job
        settings.last_job_dir = str(job_dir)
        return job


_launches: dict[str, Launch] = {}  # scene name -> a Generate Head press still checking the engine


def launch_for(scene_name: str) -> Launch | None:
    """A Generate Head press in this scene still checking the engine's Python, if any."""
    return _launches.get(scene_name)


def begin_job(context, *, resume: bool = False) -> Launch:
    """The quick checks; the engine probe starts in the background (see :class:`Launch`)."""
    return Launch(context, resume)


def start_job(context, *, resume: bool = False) -> Job:
    """Check everything, write job.json into a fresh job folder and start the worker (blocks
    while the engine's Python is probed: headless callers and tests)."""
    return begin_job(context, resume=resume).wait()


def wait(job: Job, poll_s: float = 0.1) -> Job:
    """Pump until the job ends (headless use: EXEC mode, ``blender -b --python``)."""
    while job.pump():
        time.sleep(poll_s)
    return job


def _remove_timer(owner) -> None:
    window_manager = getattr(bpy.context, "window_manager", None)
    if owner.timer is not None and window_manager is not None:
        try:
            window_manager.event_timer_remove(owner.timer)
        except (ReferenceError, ValueError, RuntimeError):
            pass  # the window it belonged to is gone (a file was loaded)
    owner.timer = None


def end_launch(launch: Launch) -> None:
    """A Generate Head press that will not go on (its modal operator was cancelled): stop the
    engine probe, remove its timer, and let the button come back."""
    _remove_timer(launch)
    launch.stop()


def stop_all() -> None:
    """End every worker and remove every timer (unregister, quitting Blender)."""
    for launch in list(_launches.values()):
        end_launch(launch)
    for job in list(_jobs.values()):
        _remove_timer(job)
        job.monitor.close()
    _jobs.clear()


@bpy.app.handlers.persistent
def on_load_pre(*_args) -> None:
    """Another file is being loaded: the scenes the launches and jobs belong to go away, and
    Blender ends their modal operators without a last tick. Stop every launch; ask every running
    worker to stop at its next step (it writes a checkpoint, so the job folder can be resumed with
    ``python -m engine run JOB_DIR --resume``) without waiting for it; forget them all, so Generate
    Head is available in the new file."""
    for launch in list(_launches.values()):
        end_launch(launch)
    for job in list(_jobs.values()):
        job.abandon()
    _jobs.clear()
