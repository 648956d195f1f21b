"""Check the engine: ``python -m engine doctor --json`` in the engine's Python, in the background.

From the UI the check runs as a background process followed by a timer calling :func:`pump`
(the UI never waits for it); EXEC mode (scripts, tests) waits for the answer. The doctor's
report is kept (JSON) for the preferences to show.
"""

from __future__ import annotations

import json

import bpy

from . import redraw_3d_views
from ..engine_runner import EngineNotFound, start_engine_json
from ..preferences import addon_prefs, models_root
from ..worker_monitor import CommandFailed

TIMEOUT_S = 180.0
_running = None  # the one background check (a CommandMonitor), if any


def summarise(report: dict) -> str:
    """One short line for the panel, naming what is missing."""
    if report.get("ok"):
        cuda = report.get("cuda", {})
        where = cuda.get("device") if cuda.get("cuda_available") else "CPU only"
        return f"Engine ready ({where})"
    return "Missing: " + ", ".join(report.get("failed", [])[:6])


def start(context):
    global _running
    prefs = addon_prefs(context)
    runtime = context.window_manager.idto3d_runtime
    _running = start_engine_json(
        prefs, ["doctor", "--json"], "the engine check", timeout_s=TIMEOUT_S, models_root=models_root(prefs)
    )
    runtime.engine_check_running = True
    return _running


def pump(runtime) -> bool:
    """Follow the running check once; True while it still runs. Applies the answer when it ends."""
    global _running
    if _running is None:
        runtime.engine_check_running = False
        return False
    try:
        report = _running.pump()
    except CommandFailed as exc:
        _running = None
        runtime.engine_check_running = False
        runtime.engine_checked, runtime.engine_ok, runtime.engine_summary = True, False, str(exc)
        runtime.engine_report = ""
        return False
    if report is None:
        return True
    _running = None
    runtime.engine_check_running = False
    runtime.engine_checked = True
    runtime.engine_ok = bool(report.get("ok"))
    runtime.engine_summary = summarise(report)
    runtime.engine_report = json.dumps(report)
    return False


def stop() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
    if bpy.app.timers.is_registered(_timer_tick):
        bpy.app.timers.unregister(_timer_tick)


def _timer_tick():
    window_manager = bpy.context.window_manager
    if window_manager is None or not pump(window_manager.idto3d_runtime):
        redraw_3d_views(window_manager)
        return None
    return 0.5


class IDTO3D_OT_check_engine(bpy.types.Operator):
    bl_idname = "idto3d.check_engine"
    bl_label = "Check Engine"
    bl_description = "Check the engine's Python, packages, GPU and model folders (runs in the background)"

    @classmethod
    def poll(cls, context):
        return _running is None

    def _start(self, context) -> bool:
        try:
            start(context)
        except EngineNotFound as exc:
            runtime = context.window_manager.idto3d_runtime
            runtime.engine_checked, runtime.engine_ok, runtime.engine_summary = True, False, str(exc)
            self.report({"ERROR"}, str(exc))
            return False
        return True

    def invoke(self, context, event):
        if not self._start(context):
            return {"CANCELLED"}
        bpy.app.timers.register(_timer_tick, first_interval=0.3)
        return {"FINISHED"}

    def execute(self, context):
        if not self._start(context):
            return {"CANCELLED"}
        runtime = context.window_manager.idto3d_runtime
        try:
            _running.wait()
        except CommandFailed:
            pass  # pump() records the reason
        pump(runtime)
        if not runtime.engine_ok and not runtime.engine_report:
            self.report({"ERROR"}, runtime.engine_summary)
            return {"CANCELLED"}
        self.report({"INFO"} if runtime.engine_ok else {"WARNING"}, runtime.engine_summary)
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_check_engine,)
