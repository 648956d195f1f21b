"""The expression browser's operators: solo one shape key, reset to neutral, keyframe a reel."""

from __future__ import annotations

import bpy
from bpy.props import IntProperty, StringProperty


def head_key(obj):
    """The shape-key datablock of a head object, or None."""
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        return None
    return obj.data.shape_keys


def expression_blocks(key) -> list:
    """Every shape key but the Basis (the reference key)."""
    return [block for block in key.key_blocks if block != key.reference_key]


def solo(obj, name: str) -> None:
    for block in expression_blocks(head_key(obj)):
        block.value = 1.0 if block.name == name else 0.0


def reset_to_neutral(obj) -> None:
    for block in expression_blocks(head_key(obj)):
        block.value = 0.0


def keyframe_reel(obj, start: int, hold: int) -> int:
    """One expression after another: each rises to 1 and falls back over ``hold`` frames.

    Returns the last frame of the reel. Keys already on those frames are overwritten.
    """
    blocks = expression_blocks(head_key(obj))
    frame = start
    for block in blocks:
        for at, value in ((frame, 0.0), (frame + hold // 2, 1.0), (frame + hold, 0.0)):
            block.value = value
            block.keyframe_insert("value", frame=at)
        frame += hold
    for block in blocks:
        block.value = 0.0
    return frame


class _HeadOperator:
    @classmethod
    def poll(cls, context):
        return head_key(context.active_object) is not None


class IDTO3D_OT_expression_solo(_HeadOperator, bpy.types.Operator):
    bl_idname = "idto3d.expression_solo"
    bl_label = "Solo Expression"
    bl_description = "Show only this expression (its shape key at 1, every other at 0)"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Shape Key")

    def execute(self, context):
        obj = context.active_object
        if self.name not in head_key(obj).key_blocks:
            self.report({"ERROR"}, f"{obj.name} has no shape key {self.name!r}")
            return {"CANCELLED"}
        solo(obj, self.name)
        obj.active_shape_key_index = head_key(obj).key_blocks.find(self.name)
        return {"FINISHED"}


class IDTO3D_OT_expressions_neutral(_HeadOperator, bpy.types.Operator):
    bl_idname = "idto3d.expressions_neutral"
    bl_label = "Reset to Neutral"
    bl_description = "Set every expression shape key to 0 (the Basis: neutral)"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        reset_to_neutral(context.active_object)
        return {"FINISHED"}


class IDTO3D_OT_expressions_keyframe(_HeadOperator, bpy.types.Operator):
    bl_idname = "idto3d.expressions_keyframe"
    bl_label = "Keyframe Expressions"
    bl_description = "Animate a short reel: each expression in turn, from the current frame"
    bl_options = {"REGISTER", "UNDO"}

    hold: IntProperty(name="Frames per Expression", default=24, min=2, max=1000)

    def execute(self, context):
        scene = context.scene
        end = keyframe_reel(context.active_object, scene.frame_current, self.hold)
        scene.frame_end = max(scene.frame_end, end)
        self.report({"INFO"}, f"Expression reel keyed from frame {scene.frame_current} to {end}")
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_expression_solo, IDTO3D_OT_expressions_neutral, IDTO3D_OT_expressions_keyframe)
