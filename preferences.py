"""Add-on preferences: where the engine's Python and the models are, which device, downloads."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .engine.models import default_models_root


class IDTO3D_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python_executable: StringProperty(
        name="Engine Python",
        description=(
            "Python executable that has torch and the engine's packages (see docs/install.md). "
            "Empty: $IDTO3D_PYTHON if set, else Blender's own Python"
        ),
        subtype="FILE_PATH",
        default="",
    )
    models_root: StringProperty(
        name="Models Folder",
        description=(
            "Folder holding sd15/, arc2face/, antelopev2/ and loras/. Empty: the default per-user "
            "folder (or $IDTO3D_MODELS)"
        ),
        subtype="DIR_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the engine optimises the head",
        items=(
            ("AUTO", "Automatic", "CUDA GPU when one is usable, else CPU"),
            ("CUDA", "CUDA GPU", "Fail clearly if no usable CUDA GPU is found"),
            ("CPU", "CPU", "Slow (hours per head); for checks and small previews"),
        ),
        default="AUTO",
    )
    allow_downloads: BoolProperty(
        name="Allow Model Downloads",
        description=(
            "Let the add-on download model weights when you ask for it (also needs Blender's "
            "'Allow Online Access'). The weights have research-only licence terms"
        ),
        default=False,
    )

    torch_variant: EnumProperty(
        name="Torch Build",
        description="Which torch Install Engine puts into the engine's environment",
        items=(("CUDA", "CUDA (NVIDIA GPU)", "For an NVIDIA GPU (large download)"),
               ("CPU", "CPU only", "No GPU: works everywhere, very slowly")),
        default="CUDA",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "python_executable")
        layout.prop(self, "models_root")
        if not self.models_root:
            layout.label(text=f"Default: {default_models_root()}", icon="INFO")
        layout.prop(self, "device")
        row = layout.row()
        row.prop(self, "allow_downloads")
        if self.allow_downloads and not bpy.app.online_access:
            layout.label(text="Blender's online access is off: downloads stay disabled", icon="ERROR")
        row = layout.row(align=True)
        row.operator("idto3d.check_engine", icon="CHECKMARK")
        row.operator("idto3d.fetch_models", icon="IMPORT")
        runtime = context.window_manager.idto3d_runtime
        draw_engine_report(layout.box(), runtime)
        draw_gpu_check(layout.box(), runtime)
        box = layout.box()
        row = box.row(align=True)
        row.prop(self, "torch_variant")
        install = row.row()
        install.enabled = bpy.app.online_access and not runtime.install_running
        install.operator("idto3d.install_engine", icon="CONSOLE")
        if not bpy.app.online_access:
            box.label(text="Install Engine needs Blender's online access (Preferences > System > Network)",
                      icon="INFO")
        if runtime.install_status:
            box.label(text=runtime.install_status, icon="SORTTIME" if runtime.install_running else "INFO")


def draw_engine_report(layout, runtime) -> None:
    """What the last Check Engine (``python -m engine doctor --json``) found, one row per check."""
    if runtime.engine_check_running:
        layout.label(text="Checking the engine…", icon="SORTTIME")
        return
    if not runtime.engine_report:
        layout.label(text=runtime.engine_summary or "Press Check Engine to see what the engine's Python has",
                     icon="QUESTION")
        return
    report = parsed_engine_report(runtime.engine_report)
    layout.label(text=runtime.engine_summary, icon="CHECKMARK" if report.get("ok") else "ERROR")
    column = layout.column(align=True)
    for check in report.get("checks", []):
        icon = "CHECKMARK" if check.get("ok") else ("ERROR" if check.get("required") else "DOT")
        column.label(text=f"{check.get('name')}: {check.get('detail', '')}", icon=icon)
    for model in report.get("models", []):
        state = "complete" if model.get("complete") else "missing " + ", ".join(model.get("missing", [])[:2])
        column.label(text=f"models/{model.get('key')}: {state}", icon="CHECKMARK" if model.get("complete") else "ERROR")


_report_cache: tuple[str, dict] = ("", {})  # the doctor's JSON text and its parse, kept between draws


def parsed_engine_report(text: str) -> dict:
    """The doctor's report as a dict, parsed once per report rather than on every redraw."""
    global _report_cache
    if text != _report_cache[0]:
        import json

        try:
            report = json.loads(text)
        except ValueError:
            report = {}
        _report_cache = (text, report if isinstance(report, dict) else {})
    return _report_cache[1]


def draw_gpu_check(layout, runtime) -> None:
    """Check GPU (one real step on this GPU with the models) and its verdict; Copy Report for bug reports."""
    row = layout.row(align=True)
    row.operator("idto3d.check_gpu", icon="MEMORY")
    row.operator("idto3d.copy_gpu_report", icon="COPYDOWN")
    if runtime.gpu_check_running:
        layout.label(text="Checking the GPU (loads the models, runs a few steps)…", icon="SORTTIME")
    elif runtime.gpu_check_summary:
        layout.label(text=runtime.gpu_check_summary, icon="CHECKMARK" if runtime.gpu_check_ok else "ERROR")


def addon_prefs(context) -> IDTO3D_AP_preferences:
    """This add-on's preferences (raises a clear error if the add-on is not enabled)."""
    addon = context.preferences.addons.get(__package__)
    if addon is None:
        raise RuntimeError(f"the add-on {__package__} is not enabled")
    return addon.preferences


def models_root(prefs) -> str:
    return bpy.path.abspath(prefs.models_root) if prefs.models_root else str(default_models_root())


CLASSES = (IDTO3D_AP_preferences,)
