"""Head panel: the active head's expressions (shape keys) with identity scores, and the studio rig."""

from __future__ import annotations

import bpy

from . import SidebarPanel
from ..operators.head import head_key
from ..operators.relight import IDTO3D_OT_relight, is_studio, settings_scene
from ..result_import import quality_scores, quality_side_shares


_scores: dict[str, tuple[dict, dict]] = {}  # result folder -> (scores, side shares), read once per folder


def _figures(obj) -> tuple[dict, dict]:
    folder = obj.get("idto3d_result") if obj is not None else None
    if not folder:
        return {}, {}
    if folder not in _scores:
        _scores[folder] = quality_scores(folder), quality_side_shares(folder)
    return _scores[folder]


def scores_for(obj) -> dict[str, float]:
    return _figures(obj)[0]


def side_shares_for(obj) -> dict[str, float]:
    """How much of each left/right expression's movement is on its own side (quality report)."""
    return _figures(obj)[1]


class IDTO3D_UL_shape_keys(bpy.types.UIList):
    bl_idname = "IDTO3D_UL_shape_keys"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        if item == data.reference_key:
            row.label(text="neutral (Basis)", icon="PINNED")
            return
        row.label(text=item.name, icon="SHAPEKEY_DATA")
        scores = scores_for(context.active_object)
        if item.name in scores:  # identity score of this expression's renders (ArcFace cosine)
            score = scores[item.name]
            row.label(text="ID –" if score is None else f"ID {score:.2f}")
        share = side_shares_for(context.active_object).get(item.name)
        if share is not None:  # below ~0.7 the shape moves the other side of the face too
            row.label(text=f"side {share:.2f}", icon="ERROR" if share < 0.7 else "NONE")
        row.prop(item, "value", text="", slider=True)
        row.operator("idto3d.expression_solo", text="", icon="SOLO_ON").name = item.name


class IDTO3D_PT_head(SidebarPanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_head"
    bl_label = "Head"

    @classmethod
    def poll(cls, context):
        return head_key(context.active_object) is not None

    def draw(self, context):
        obj = context.active_object
        layout = self.layout
        layout.template_list(
            "IDTO3D_UL_shape_keys", "", head_key(obj), "key_blocks", obj, "active_shape_key_index", rows=5
        )
        if not scores_for(obj):
            layout.label(text="No identity scores (no quality report)", icon="INFO")
        row = layout.row(align=True)
        row.operator("idto3d.expressions_neutral", icon="LOOP_BACK")
        row.operator("idto3d.expressions_keyframe", icon="KEY_HLT")
        layout.operator("idto3d.import_live_link", icon="ANIM")
        layout.operator("idto3d.export_head", icon="EXPORT")


class IDTO3D_PT_relight(SidebarPanel, bpy.types.Panel):
    """Always shown (not only with a head active): Open Studio / Back to Scene must stay reachable
    whatever is selected, and in the studio scene itself. The settings are the user's scene's,
    also while the studio is shown."""

    bl_idname = "IDTO3D_PT_relight"
    bl_label = "Relight"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        settings = settings_scene(context.scene).idto3d
        layout = self.layout
        layout.use_property_split = True
        layout.prop(settings, "light_mode")
        if settings.light_mode == "HDRI":
            layout.prop(settings, "studio_hdri")
        layout.prop(settings, "turntable")
        if settings.turntable:
            layout.prop(settings, "turntable_frames")
        if not IDTO3D_OT_relight.poll(context):
            layout.label(text="Select a head (a mesh) to relight", icon="INFO")
        layout.operator("idto3d.relight", icon="LIGHT_AREA")
        row = layout.row(align=True)
        row.operator("idto3d.render_preview", icon="RENDER_STILL")
        in_studio = is_studio(context.scene)
        row.operator("idto3d.studio_toggle", icon="LOOP_BACK" if in_studio else "SCENE",
                     text="Back to Scene" if in_studio else "Open Studio")


CLASSES = (IDTO3D_UL_shape_keys, IDTO3D_PT_head, IDTO3D_PT_relight)
