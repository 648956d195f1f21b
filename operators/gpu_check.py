"""Check GPU: ``python -m engine doctor --gpu --json --preset P`` in the engine's Python, in the background.

One real SDS step of the scene's quality preset on the user's GPU with their models (seconds per
step, peak VRAM, whether fp16 stays finite, minutes per preset, the settings the pipeline will
use); the engine saves them as the machine profile the pipeline reads. Runs like Check Engine: a
background process and a timer calling :func:`pump`; EXEC mode waits. The preferences show the
summary; Copy Report puts the text report on the clipboard for bug reports.
"""

from __future__ import annotations

import bpy

from . import redraw_3d_views
from ..engine_runner import EngineNotFound, start_engine_json
from ..preferences import addon_prefs, models_root
from ..worker_monitor import CommandFailed

TIMEOUT_S = 900.0  # loading SD 1.5-sized models and a few steps; minutes on a slow disk
_running = None  # the one background check (a CommandMonitor), if any


def summarise(check: dict) -> str:
    """One line for the preferences: the verdict, or what went wrong."""
    if not check.get("ok"):
        return f"Check GPU: {check.get('problem', 'failed')}"
    s, presets = check["settings"], check.get("presets", {})
    minutes = presets.get(check.get("preset"), {}).get("minutes")
    vram = f", peak {check['peak_vram_gib']} GiB" if check.get("peak_vram_gib") is not None else ""
    head = f", ~{minutes} min per {check.get('preset')} head" if minutes is not None else ""
    extras = [", sliced attention" if s["attention"] == "sliced" else "",
              ", VAE checkpointing" if s.get("vae_checkpointing") else "",
              ", CPU offload" if s.get("cpu_offload") else ""]
    return f"{check['seconds_per_step']} s/step{vram}{head}; uses {s['dtype']}, {s['views_per_step']} view(s)" + "".join(
        extras)


def generation_running() -> str | None:
    """The name of a scene whose generation is running (any scene: they share the GPU), or None."""
    from .. import generation

    for scene in bpy.data.scenes:
        if generation.running_job(scene) is not None:
            return scene.name
    return None


def start(context):
    global _running
    prefs = addon_prefs(context)
    preset = context.scene.idto3d.preset.lower() if getattr(context, "scene", None) else "standard"
    args = ["doctor", "--gpu", "--json", "--no-models", "--preset", "standard" if preset == "test" else preset]
    _running = start_engine_json(prefs, args, "Check GPU", timeout_s=TIMEOUT_S, models_root=models_root(prefs))
    runtime = context.window_manager.idto3d_runtime
    runtime.gpu_check_running, runtime.gpu_check_summary = True, ""
    return _running


def pump(runtime) -> bool:
    """Follow the running check once; True while it still runs. Applies the answer when it ends."""
    global _running
    if _running is None:
        runtime.gpu_check_running = False
        return False
    try:
        report = _running.pump()
    except CommandFailed as exc:
        _running = None
        runtime.gpu_check_running, runtime.gpu_check_summary, runtime.gpu_check_text = False, str(exc), str(exc)
        return False
    if report is None:
        return True
    _running = None
    check = report.get("gpu_check", {"ok": False, "problem": "the engine is too old for Check GPU"})
    runtime.gpu_check_running = False
    runtime.gpu_check_ok = bool(check.get("ok"))
    runtime.gpu_check_summary = summarise(check)
    runtime.gpu_check_text = report.get("gpu_check_text") or runtime.gpu_check_summary
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
    return 1.0


class IDTO3D_OT_check_gpu(bpy.types.Operator):
    bl_idname = "idto3d.check_gpu"
    bl_label = "Check GPU"
    bl_description = ("Run one real optimisation step of the scene's quality preset on the GPU with your models: "
                      "speed, memory, precision; saves the settings generation will use (runs in the background)")

    @classmethod
    def poll(cls, context):
        if _running is not None:
            cls.poll_message_set("Check GPU is already running")
            return False
        busy = generation_running()
        if busy:
            # Both would compete for GPU memory, and the check's out-of-memory errors would be saved
            # as this GPU's profile (fewer views, memory savers) for every later job.
            cls.poll_message_set(f"A generation is running in scene {busy!r} and using the GPU: Check GPU measures "
                                 "the GPU alone, so wait until it ends (or stop it)")
            return False
        return True

    def _start(self, context) -> bool:
        try:
            start(context)
        except EngineNotFound as exc:
            runtime = context.window_manager.idto3d_runtime
            runtime.gpu_check_ok, runtime.gpu_check_summary = False, str(exc)
            self.report({"ERROR"}, str(exc))
            return False
        return True

    def invoke(self, context, event):
        if not self._start(context):
            return {"CANCELLED"}
        bpy.app.timers.register(_timer_tick, first_interval=1.0)
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
        self.report({"INFO"} if runtime.gpu_check_ok else {"WARNING"}, runtime.gpu_check_summary)
        return {"FINISHED"} if runtime.gpu_check_ok else {"CANCELLED"}


class IDTO3D_OT_copy_gpu_report(bpy.types.Operator):
    bl_idname = "idto3d.copy_gpu_report"
    bl_label = "Copy Report"
    bl_description = "Copy the Check GPU report to the clipboard (paste it into a bug report)"

    @classmethod
    def poll(cls, context):
        return bool(context.window_manager.idto3d_runtime.gpu_check_text)

    def execute(self, context):
        context.window_manager.clipboard = context.window_manager.idto3d_runtime.gpu_check_text
        self.report({"INFO"}, "Check GPU report copied to the clipboard")
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_check_gpu, IDTO3D_OT_copy_gpu_report)
