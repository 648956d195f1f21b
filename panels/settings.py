"""Settings panel: quality preset, seed and output folder; engine preferences at a glance."""

from __future__ import annotations

import bpy

from . import UserScenePanel


class IDTO3D_PT_settings(UserScenePanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_settings"
    bl_label = "Settings"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        settings = context.scene.idto3d
        layout = self.layout
        layout.use_property_split = True
        layout.prop(settings, "preset")
        layout.prop(settings, "seed")
        layout.prop(settings, "texture_size")
        layout.prop(settings, "placement")
        layout.prop(settings, "output_dir")
        addon = context.preferences.addons.get(__package__.rpartition(".")[0])
        if addon is not None:
            prefs = addon.preferences
            layout.prop(prefs, "device")
            layout.prop(prefs, "models_root")


CLASSES = (IDTO3D_PT_settings,)
