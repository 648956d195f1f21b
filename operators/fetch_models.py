"""Download the model weights on request: ``python -m engine fetch-models`` in the background.

Only when the user allowed it twice: the add-on's "Allow Model Downloads" preference and
Blender's own "Allow Online Access". The download runs as a separate process writing a log in the
models folder; a timer calls :func:`pump` to follow it (tests call ``pump`` directly, because
timers do not run in the bpy module). Disabling the add-on stops a running download.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import bpy

from . import redraw_3d_views
from ..engine_runner import EngineNotFound, engine_command, engine_environment
from ..preferences import addon_prefs, models_root
from ..worker_monitor import tail

LOG_NAME = "fetch-models.log"


class Download:
    """One running ``fetch-models`` process and its log file."""

    def __init__(self, process: subprocess.Popen, log_path: Path, log_file):
        self.process, self.log_path, self._log_file = process, log_path, log_file

    def last_line(self) -> str:
        return tail(self.log_path, 1).strip()  # only the log's end is read: it grows during a download

    def close(self) -> None:
        self._log_file.close()


_current: Download | None = None  # at most one download at a time: this is that slot, not a registry


def downloads_refused(prefs) -> str | None:
    """Why downloading is not allowed right now, or None."""
    if not prefs.allow_downloads:
        return "Model downloads are off: enable 'Allow Model Downloads' in the add-on's preferences"
    if not bpy.app.online_access:
        return "Blender's online access is off: enable it in Preferences > System > Network"
    return None


def start_download(prefs, runtime) -> Download:
    """Start fetch-models for the models folder; progress goes to ``<root>/fetch-models.log``."""
    global _current
    root = Path(models_root(prefs))
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / LOG_NAME
    log_file = open(log_path, "w", encoding="utf-8")
    try:
        process = subprocess.Popen(
            engine_command(prefs, ["fetch-models", f"--models={root}", "--yes"]), stdout=log_file,  # user agreed
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=engine_environment(str(root)),
        )
    except OSError as exc:
        log_file.close()
        raise EngineNotFound(f"could not start the engine's Python to download the models: {exc}") from exc
    _current = Download(process, log_path, log_file)
    runtime.download_running, runtime.download_status = True, f"Downloading into {root} (log: {log_path.name})"
    return _current


def pump(runtime) -> bool:
    """Follow the running download once; True while it is still running."""
    global _current
    if _current is None:
        runtime.download_running = False
        return False
    code = _current.process.poll()
    last = _current.last_line()
    if code is None:
        runtime.download_status = last or "Downloading…"
        return True
    _current.close()
    runtime.download_running = False
    runtime.download_status = ("Models downloaded and verified" if code == 0 else
                               f"Download failed (exit {code}): {last}. Full log: {_current.log_path}")
    runtime.engine_checked = False  # the engine check must be run again
    _current = None
    return False


def stop_download() -> None:
    """Stop a running download (the add-on is being disabled)."""
    global _current
    if _current is not None:
        _current.process.terminate()
        try:
            _current.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _current.process.kill()
        _current.close()
        _current = None


def _timer_tick():
    window_manager = bpy.context.window_manager
    if window_manager is None or not pump(window_manager.idto3d_runtime):
        return None  # stop the timer
    redraw_3d_views(window_manager)
    return 1.0


class IDTO3D_OT_fetch_models(bpy.types.Operator):
    bl_idname = "idto3d.fetch_models"
    bl_label = "Download Models"
    bl_description = ("Download Stable Diffusion 1.5, Arc2Face and the antelopev2 detector into the models "
                      "folder (several GB; research-only licence terms; needs downloads allowed)")

    def execute(self, context):
        prefs = addon_prefs(context)
        refused = downloads_refused(prefs)
        if refused:
            self.report({"ERROR"}, refused)
            return {"CANCELLED"}
        if _current is not None:
            self.report({"WARNING"}, "A download is already running")
            return {"CANCELLED"}
        try:
            download = start_download(prefs, context.window_manager.idto3d_runtime)
        except (EngineNotFound, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        bpy.app.timers.register(_timer_tick, first_interval=1.0)
        self.report({"INFO"}, f"Downloading the models; progress in {download.log_path}")
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_fetch_models,)
