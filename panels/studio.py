"""Studio panel: shown instead of the generation panels while the window shows the studio scene.

The studio ("ID-to-3D Studio", made by Relight) is a scene of its own with the head linked into
it. Its own ID-to-3D settings are defaults nobody chose, so the panels that edit photos,
expressions and generation settings are hidden there; this panel says where the user is and
leads back to the scene the studio was made from.
"""

from __future__ import annotations

import bpy

from . import SidebarPanel
from ..operators.relight import is_studio, source_scene


class IDTO3D_PT_studio(SidebarPanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_studio"
    bl_label = "Studio"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and is_studio(context.scene)

    def draw(self, context):
        layout = self.layout
        source = source_scene(context.scene)
        column = layout.column(align=True)
        column.label(text="This is the ID-to-3D studio scene", icon="SCENE_DATA")
        column.label(text=f"made from {source.name!r}: generate and edit there" if source else
                     "Its scene is gone: open another scene to generate", icon="BLANK1")
        row = layout.row()
        row.scale_y = 1.3
        row.operator("idto3d.studio_toggle", text="Back to Scene", icon="LOOP_BACK")
        layout.operator("idto3d.render_preview", icon="RENDER_STILL")


CLASSES = (IDTO3D_PT_studio,)
