"""Install Engine: a virtual environment in the extension's user folder with the pinned packages.

Only when Blender's online access is allowed. Runs step by step in the background (venv, torch
from the CPU or CUDA index the user chose, then requirements-engine.txt under constraints.txt), each step
a separate process writing to a log; a timer calls :func:`pump`. The environment is built in
``runtime/venv.partial`` and only renamed to ``runtime/venv`` (and set as the Engine Python) once
every step succeeded, so a failed install never leaves a half-made environment marked usable;
the partial folder (ours, marked) is removed and the status names the failed step and its log.
When every step succeeded but the final rename fails (a full disk, ``venv`` a broken link), the
complete environment is kept, the status says what is in the way, and the next Install Engine
only moves it into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import bpy

from . import redraw_3d_views
from ..engine.cuda_wheels import ONNXRUNTIME_GPU, TORCH_INDEX as TORCH_INDEX_URL, WheelChoice, choose_wheel, query_gpus
from ..engine_runner import ADDON_DIR
from ..preferences import addon_prefs
from ..worker_monitor import tail

MARKER = ".idto3d-runtime.json"
LOG_NAME = "install.log"


def runtime_folder() -> Path:
    return Path(bpy.utils.extension_path_user(__package__.rpartition(".")[0], path="runtime", create=True))


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def pinned(package: str, constraints: Path) -> str:
    """``package==version`` from constraints.txt (the bare name when it is not pinned there)."""
    try:
        for line in constraints.read_text(encoding="utf-8").splitlines():
            match = re.match(rf"^\s*{re.escape(package)}\s*==\s*([^\s;#]+)", line, re.I)
            if match:
                return f"{package}=={match.group(1)}"
    except OSError:
        pass
    return package


def _is_ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _is_complete(folder: Path) -> bool:
    """An environment every install step succeeded in (marked ready before its final rename)."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("state") == "ready"
    except (OSError, ValueError, AttributeError):
        return False


TRASH_PREFIX = ".idto3d-trash-"
_deleting: list[threading.Thread] = []
_being_deleted: set[str] = set()  # trash folders a deletion thread already works on
_being_deleted_lock = threading.Lock()


def discard(folder: Path) -> None:
    """Remove a folder of ours without making the caller wait: an environment is several GB, so it
    is renamed aside at once (one rename: the timer tick never waits on the disk) and deleted by a
    background thread. A deletion cut short (Blender quit) leaves a trash folder that the next
    install clears. Raises OSError when even the rename fails."""
    trash = folder.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
    os.replace(folder, trash)
    _delete_later(trash)


def _delete_later(path: Path) -> None:
    """Delete ``path`` in a background thread, unless one already does (a trash folder renamed
    aside a moment ago is also what the sweep of leftovers finds)."""
    key = os.path.abspath(path)
    with _being_deleted_lock:
        if key in _being_deleted:
            return
        _being_deleted.add(key)

    def delete() -> None:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            with _being_deleted_lock:
                _being_deleted.discard(key)

    thread = threading.Thread(target=delete, name="idto3d-delete-environment", daemon=True)
    thread.start()
    _deleting[:] = [t for t in _deleting if t.is_alive()] + [thread]


def wait_for_deletions(timeout_s: float | None = None) -> bool:
    """Wait for the background deletions (tests, benchmarks); True when all have finished."""
    for thread in list(_deleting):
        thread.join(timeout_s)
    return not any(thread.is_alive() for thread in _deleting)


class Install:
    """The steps of one install and the process of the step that runs now.

    With no steps, the environment in ``venv.partial`` is already complete (an earlier install
    whose last rename failed): the first pump only moves it into place."""

    def __init__(self, root: Path, steps: list[tuple[str, list[str]]]):
        self.root, self.steps = root, steps
        self.partial, self.final = root / "venv.partial", root / "venv"
        self.log_path = root / LOG_NAME
        self.index = -1
        self.process: subprocess.Popen | None = None
        self.outcome: str | None = None  # "ok" or the failure text
        self._log = open(self.log_path, "a" if not steps else "w", encoding="utf-8")
        if steps:
            self._next()
        else:
            self._log.write(f"== moving the complete environment {self.partial} into place\n")
            self._log.flush()

    def _next(self) -> None:
        self.index += 1
        label, command = self.steps[self.index]
        self._log.write(f"== {label}: {' '.join(command)}\n")
        self._log.flush()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.root)
        )

    @property
    def label(self) -> str:
        return self.steps[self.index][0] if self.steps else "moving the environment into place"

    def last_line(self) -> str:
        return tail(self.log_path, 1).strip()  # only the log's end is read, once per timer tick

    def pump(self) -> bool:
        """Advance; True while steps remain. Sets ``outcome`` at the end."""
        if self.outcome is not None:
            return False
        if self.process is None:  # nothing to run: a complete environment waits to be moved into place
            return self._succeed()
        code = self.process.poll()
        if code is None:
            return True
        if code != 0:
            return self._fail(f"{self.label} failed (exit {code}): {self.last_line()}")
        if self.index + 1 < len(self.steps):
            self._next()
            return True
        return self._succeed()

    def _succeed(self) -> bool:
        """The new environment replaces the old one: two renames, the old one deleted in the background.

        When they fail, the complete new environment is kept in ``venv.partial`` (several GB, minutes
        to download again): the message says what is in the way, and the next Install Engine only
        moves it into place."""
        old = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            (self.partial / MARKER).write_text(json.dumps({"state": "ready"}), encoding="utf-8")
        except OSError as exc:
            return self._fail(f"the new environment could not be marked complete ({exc.strerror or exc})")
        retry = (f"the new environment is complete and kept in {self.partial}: press Install Engine again to move "
                 "it into place (nothing is downloaded again)")
        if os.path.lexists(self.final) and not _is_ours(self.final):
            broken = self.final.is_symlink() and not self.final.exists()
            what = "a broken link" if broken else "not made by Install Engine"
            return self._fail(f"{self.final} is in the way ({what}): move or remove it, then {retry}",
                              keep_partial=True)
        try:
            if os.path.lexists(self.final):
                os.replace(self.final, old)
            try:
                os.replace(self.partial, self.final)
            except OSError:
                if old.exists() and not os.path.lexists(self.final):
                    os.replace(old, self.final)  # the previous environment stays in use
                raise
        except OSError as exc:
            return self._fail(f"{self.final} could not be replaced ({exc.strerror or exc}): free the disk or remove "
                              f"{self.final}, then {retry}", keep_partial=True)
        if old.exists():
            _delete_later(old)
        self.outcome = "ok"
        self._log.close()
        return False

    def _fail(self, text: str, *, keep_partial: bool = False) -> bool:
        if keep_partial:
            self.outcome = f"Install Engine: {text}. The previous Engine Python stays in use; log: {self.log_path}"
        else:
            self.outcome = f"Install Engine: {text}. Nothing was installed; full log: {self.log_path}"
        self._log.close()
        if not keep_partial and _is_ours(self.partial):
            try:
                discard(self.partial)
            except OSError:
                pass  # left marked as ours: the next install removes it
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.outcome is None:  # a complete environment waiting for its rename is kept
            self._fail("stopped (the add-on was disabled)", keep_partial=_is_complete(self.partial))


_current: Install | None = None
_probe: GpuProbe | None = None  # nvidia-smi being asked before a CUDA install starts


class GpuProbe:
    """``nvidia-smi`` asked on a background thread (two queries, up to 20 s each on a stuck driver:
    never on Blender's UI thread). ``kwargs`` are start_install's, for when it has answered."""

    def __init__(self, query, kwargs: dict):
        self.gpus: list | None = None
        self.kwargs = kwargs
        self._thread = threading.Thread(target=self._ask, args=(query,), name="idto3d-gpu-probe", daemon=True)
        self._thread.start()

    def _ask(self, query) -> None:
        try:
            self.gpus = query()
        except Exception:  # query_gpus never raises; a broken one still must not leave the button stuck
            self.gpus = []

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()


def request_install(prefs, runtime, *, query=None, **kwargs) -> GpuProbe | None:
    """What Install Engine does: with Torch Build CUDA, nvidia-smi is asked in the background and
    the install starts once it answered (:func:`probe_tick`, from the timer); with CPU at once."""
    global _probe
    _refuse_if_unable()
    if prefs.torch_variant != "CUDA" or not kwargs.get("with_torch", True):
        start_install(prefs, runtime, **kwargs)
        return None
    _probe = GpuProbe(query or query_gpus, kwargs)
    runtime.install_running = True
    runtime.install_status = "Install Engine: asking nvidia-smi which NVIDIA driver and GPU this computer has…"
    return _probe


def probe_tick(prefs, runtime) -> bool:
    """True while nvidia-smi is still being asked; then starts the install with its answer."""
    global _probe
    if _probe is None:
        return False
    if not _probe.done:
        return True
    probe, _probe = _probe, None
    try:
        start_install(prefs, runtime, gpus=probe.gpus, **probe.kwargs)
    except (InstallRefused, OSError) as exc:
        runtime.install_running, runtime.install_status = False, f"Install Engine: {exc}"
    return False


def torch_choice(variant: str, gpus=None) -> WheelChoice:
    """Which torch build Install Engine puts in: the CPU build when asked, else the newest CUDA
    build of the pinned torch the NVIDIA driver and GPU can run (``nvidia-smi``, when present),
    falling back to the CPU build with the reason (engine/cuda_wheels.py)."""
    if variant == "CPU":
        return WheelChoice("cpu", TORCH_INDEX_URL.format("cpu"), False, "the CPU build of torch (chosen)")
    return choose_wheel(query_gpus() if gpus is None else gpus)


def install_steps(
    partial: Path,
    variant: str | WheelChoice,
    *,
    requirements: Path,
    constraints: Path,
    pip_args: list[str],
    with_torch: bool = True,
) -> list[tuple[str, list[str]]]:
    """The install's commands: venv, torch from the chosen index, the pinned requirements, and
    with a CUDA 13 torch onnxruntime-gpu in place of the CPU onnxruntime (same module name: the
    CPU one is removed first; it shares torch's CUDA 13 libraries)."""
    choice = variant if isinstance(variant, WheelChoice) else torch_choice(variant)
    python = str(venv_python(partial))
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args]
    steps = [("creating the environment", [sys.executable, "-m", "venv", str(partial)])]
    if with_torch:
        steps.append(
            (
                f"installing torch ({choice.variant})",
                [*pip, pinned("torch", constraints), "--index-url", choice.index_url],
            )
        )
    steps.append(
        ("installing the engine's packages", [*pip, "-r", str(requirements), "-c", str(constraints)])
    )
    if choice.onnxruntime_gpu:
        steps.append(("removing the CPU onnxruntime",
                      [python, "-m", "pip", "uninstall", "--disable-pip-version-check", "-y", "onnxruntime"]))
        steps.append(("installing onnxruntime-gpu", [*pip, ONNXRUNTIME_GPU, "-c", str(constraints)]))
    return steps


def start_install(
    prefs,
    runtime,
    *,
    root: Path | None = None,
    requirements: Path | None = None,
    constraints: Path | None = None,
    pip_args: list[str] = (),
    with_torch: bool = True,
    gpus: list | None = None,
) -> Install:
    """Start installing the engine's environment (refused while offline or already running).
    ``gpus``: nvidia-smi's answer when the caller asked it already (:func:`request_install`)."""
    global _current
    _refuse_if_unable()
    root = root or runtime_folder()
    partial = root / "venv.partial"
    for leftover in root.glob(f"{TRASH_PREFIX}*"):  # deletions that Blender quitting cut short
        _delete_later(leftover)
    if partial.exists():
        if not _is_ours(partial):
            raise InstallRefused(f"{partial} exists and was not made by Install Engine: move it away")
        if _is_complete(partial):  # an install whose last rename failed: only move it into place
            _current = Install(root, [])
            runtime.install_running, runtime.install_status = True, f"Install Engine: {_current.label}…"
            return _current
        discard(partial)  # a previous install that was interrupted (deleted in the background)
    partial.mkdir(parents=True)
    (partial / MARKER).write_text(json.dumps({"state": "installing"}), encoding="utf-8")
    choice = torch_choice(prefs.torch_variant, gpus) if with_torch else torch_choice("CPU")
    steps = install_steps(
        partial,
        choice,
        requirements=requirements or ADDON_DIR / "requirements-engine.txt",
        constraints=constraints or ADDON_DIR / "constraints.txt",
        pip_args=list(pip_args),
        with_torch=with_torch,
    )
    _current = Install(root, steps)
    runtime.install_running, runtime.install_status = True, f"Install Engine: {_current.label}… ({choice.reason})"
    return _current


def pump(prefs, runtime) -> bool:
    """Follow the install once; True while it runs. Sets the Engine Python when it succeeded."""
    global _current
    if _current is None:
        runtime.install_running = False
        return False
    try:
        running = _current.pump()
    except OSError as exc:  # the log or the next step's process: never leave the button stuck
        running = _current._fail(f"{_current.label} could not go on ({exc.strerror or exc})")
    if running:
        runtime.install_status = f"Install Engine: {_current.label}: {_current.last_line()[:80]}"
        return True
    runtime.install_running = False
    if _current.outcome == "ok":
        prefs.python_executable = str(venv_python(_current.final))
        runtime.install_status = f"Engine installed in {_current.final}; press Check Engine"
        runtime.engine_checked = False
    else:
        runtime.install_status = _current.outcome
    _current = None
    return False


def _refuse_if_unable() -> None:
    if not bpy.app.online_access:
        raise InstallRefused(
            "Blender's online access is off: enable it in Preferences > System > Network "
            "to install the engine"
        )
    if (_current is not None and _current.outcome is None) or _probe is not None:
        raise InstallRefused("An engine install is already running")


def stop_install() -> None:
    global _current, _probe
    _probe = None  # its thread ends by itself; its answer is dropped
    if _current is not None:
        _current.stop()
        _current = None
    if bpy.app.timers.is_registered(_timer_tick):
        bpy.app.timers.unregister(_timer_tick)


def _timer_tick():
    context = bpy.context
    if context.window_manager is None:
        return None
    prefs, runtime = addon_prefs(context), context.window_manager.idto3d_runtime
    if probe_tick(prefs, runtime):
        return 0.5
    running = pump(prefs, runtime)
    redraw_3d_views(context.window_manager)
    return 1.0 if running else None


class InstallRefused(Exception):
    """Install Engine cannot start; the message says why."""


class IDTO3D_OT_install_engine(bpy.types.Operator):
    bl_idname = "idto3d.install_engine"
    bl_label = "Install Engine"
    bl_description = (
        "Create a Python environment in the extension's user folder and install torch and the "
        "engine's pinned packages (several GB; needs Blender's online access)"
    )

    def execute(self, context):
        prefs, runtime = addon_prefs(context), context.window_manager.idto3d_runtime
        try:
            probe = request_install(prefs, runtime)
            if probe is not None and bpy.app.background:  # no UI to keep responsive, no timers to wait with
                probe.wait()
                probe_tick(prefs, runtime)
        except (InstallRefused, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        bpy.app.timers.register(_timer_tick, first_interval=0.5)
        self.report({"INFO"}, "Installing the engine in the background")
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_install_engine,)
