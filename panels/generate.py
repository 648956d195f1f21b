"""Generate panel: what is ready and what is missing before a head can be generated."""

from __future__ import annotations

import bpy

from . import SidebarPanel


class IDTO3D_PT_generate(SidebarPanel, bpy.types.Panel):
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
        if runtime.engine_checked:
            column.label(text=runtime.engine_summary, icon="CHECKMARK" if runtime.engine_ok else "ERROR")
        else:
            column.label(text="Engine not checked yet", icon="QUESTION")
        layout.operator("idto3d.check_engine", icon="CHECKMARK")
        if runtime.download_running or runtime.download_status:
            layout.label(text=runtime.download_status, icon="IMPORT")
        if runtime.engine_checked and not runtime.engine_ok and "models/" in runtime.engine_summary:
            row = layout.row()
            row.enabled = not runtime.download_running
            row.operator("idto3d.fetch_models", icon="IMPORT")


CLASSES = (IDTO3D_PT_generate,)
