"""Check the engine: run ``python -m engine doctor --json`` in the engine's Python and keep a summary."""

from __future__ import annotations

import bpy

from ..engine_runner import EngineNotFound, run_engine_json
from ..preferences import addon_prefs, models_root


def summarise(report: dict) -> str:
    """One short line for the panel, naming what is missing."""
    if report.get("ok"):
        cuda = report.get("cuda", {})
        where = cuda.get("device") if cuda.get("cuda_available") else "CPU only"
        return f"Engine ready ({where})"
    return "Missing: " + ", ".join(report.get("failed", [])[:6])


class IDTO3D_OT_check_engine(bpy.types.Operator):
    bl_idname = "idto3d.check_engine"
    bl_label = "Check Engine"
    bl_description = "Check the engine's Python, packages, GPU and model folders"

    def execute(self, context):
        runtime = context.window_manager.idto3d_runtime
        prefs = addon_prefs(context)
        try:
            report = run_engine_json(prefs, ["doctor", "--json"], "the engine check", timeout_s=180,
                                     models_root=models_root(prefs))
        except EngineNotFound as exc:
            runtime.engine_checked, runtime.engine_ok, runtime.engine_summary = True, False, str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        runtime.engine_checked = True
        runtime.engine_ok = bool(report.get("ok"))
        runtime.engine_summary = summarise(report)
        self.report({"INFO"} if runtime.engine_ok else {"WARNING"}, runtime.engine_summary)
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_check_engine,)
