"""Generate panel: readiness, Generate Head, and while a job runs its progress, stage, ETA, loss,
latest preview and Cancel; after it, the error (message, hint, engine log tail) and Resume.

Preview thumbnails come from a ``bpy.utils.previews`` collection made on first draw and freed by
:func:`unregister_previews`.
"""

from __future__ import annotations

import os
import textwrap

import bpy

from . import UserScenePanel
from .. import generation

_previews = None


def unregister_previews() -> None:
    global _previews
    if _previews is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_previews)
        _previews = None


def preview_icon(path: str) -> int:
    """Icon of the newest preview PNG; the collection holds only that one."""
    global _previews
    if not path or not os.path.isfile(path):
        return 0
    import bpy.utils.previews

    if _previews is None:
        _previews = bpy.utils.previews.new()
    if path not in _previews:
        _previews.clear()
        try:
            _previews.load(path, path, "IMAGE")
        except (KeyError, RuntimeError):
            return 0
    return _previews[path].icon_id


def _eta(seconds) -> str:
    if seconds is None:
        return "ETA unknown"
    seconds = int(seconds)
    return (
        f"ETA {seconds // 3600}h {seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"ETA {seconds // 60}m {seconds % 60:02d}s"
    )


def draw_job(layout, job: generation.Job) -> None:
    if job.placement_note:
        column = layout.column(align=True)
        column.scale_y = 0.8
        for index, line in enumerate(textwrap.wrap(job.placement_note, 48)):
            column.label(text=line, icon="INFO" if index == 0 else "BLANK1")
    if not job.finished:
        layout.progress(factor=job.progress, type="BAR", text=job.status_line())
        row = layout.row()
        row.label(text=_eta(job.eta_s), icon="TIME")
        if job.loss is not None:
            row.label(text=f"loss {job.loss:.4g}")
        if job.expression:
            layout.label(text=f"Expression: {job.expression}", icon="SHAPEKEY_DATA")
        icon = preview_icon(job.preview_path)
        if icon:
            layout.template_icon(icon_value=icon, scale=8.0)
        layout.operator("idto3d.cancel_head", icon="CANCEL")
        return
    box = layout.box()
    if job.ok:
        box.label(text=job.status_line(), icon="CHECKMARK")
    elif job.cancelled:
        box.label(text="Cancelled", icon="CANCEL")
    else:
        error = job.error or {}
        box.label(text=error.get("message", "Failed"), icon="ERROR")
        if error.get("hint"):
            box.label(text=f"Fix: {error['hint']}", icon="INFO")
        if job.stderr_tail:
            column = box.column(align=True)
            column.scale_y = 0.7
            for line in job.stderr_tail.splitlines()[-6:]:
                column.label(text=line)
    box.label(text=f"Job folder: {job.job_dir}", icon="FILE_FOLDER")
    if job.can_resume:
        box.operator("idto3d.resume_head", icon="PLAY")


class IDTO3D_PT_generate(UserScenePanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_generate"
    bl_label = "Generate"

    def draw(self, context):
        settings = context.scene.idto3d
        runtime = context.window_manager.idto3d_runtime
        layout = self.layout
        photos = sum(1 for photo in settings.photos if photo.enabled)
        expressions = sum(1 for item in settings.expressions if item.enabled)
        column = layout.column(align=True)
        column.label(text=f"{photos} photo(s) in use", icon="CHECKMARK" if photos else "ERROR")
        column.label(text=f"{expressions} expression(s)", icon="CHECKMARK" if expressions else "ERROR")
        if runtime.engine_check_running:
            column.label(text="Checking the engine…", icon="SORTTIME")
        elif runtime.engine_checked:
            column.label(text=runtime.engine_summary, icon="CHECKMARK" if runtime.engine_ok else "ERROR")
        else:
            column.label(text="Engine not checked yet", icon="QUESTION")
        row = layout.row()
        row.enabled = not runtime.engine_check_running
        row.operator("idto3d.check_engine", icon="CHECKMARK")
        if runtime.download_running or runtime.download_status:
            layout.label(text=runtime.download_status, icon="IMPORT")
        if runtime.offer_download or (
            runtime.engine_checked and not runtime.engine_ok and "models/" in runtime.engine_summary
        ):
            row = layout.row()
            row.enabled = not runtime.download_running
            row.operator("idto3d.fetch_models", icon="IMPORT")
        job = generation.job_for(context.scene)
        starting = generation.launch_for(context.scene.name) is not None
        row = layout.row()
        row.scale_y = 1.5
        row.enabled = (job is None or job.finished) and not starting
        row.operator("idto3d.generate_head", icon="USER")
        if starting:
            layout.label(text="Checking the engine's Python…", icon="SORTTIME")
        if job is not None:
            draw_job(layout, job)
        layout.operator("idto3d.import_head_result", icon="IMPORT")


CLASSES = (IDTO3D_PT_generate,)
