"""Edit the list of expressions (one shape key each; neutral is the Basis and always kept)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from . import has_active, remove_active
from ..properties import BASIS_EXPRESSION, EXPRESSION_SETS, reset_expressions


def _clean(text: str) -> str:
    return " ".join(text.split())


class IDTO3D_OT_expression_add(bpy.types.Operator):
    bl_idname = "idto3d.expression_add"
    bl_label = "Add Expression"
    bl_description = 'Add an expression or an edit ("laughing", "with curly red hair")'
    bl_options = {"REGISTER", "UNDO"}

    text: StringProperty(name="Expression", default="laughing")

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        settings = context.scene.idto3d
        text = _clean(self.text)
        if not text:
            self.report({"ERROR"}, "An expression needs some words, e.g. 'smiling'")
            return {"CANCELLED"}
        if any(_clean(item.text).lower() == text.lower() for item in settings.expressions):
            self.report({"WARNING"}, f"'{text}' is already in the list")
            return {"CANCELLED"}
        settings.expressions.add().text = text
        settings.expression_index = len(settings.expressions) - 1
        settings.expressions_initialised = True
        return {"FINISHED"}


class IDTO3D_OT_expression_remove(bpy.types.Operator):
    bl_idname = "idto3d.expression_remove"
    bl_label = "Remove Expression"
    bl_description = "Remove the selected expression (neutral is the Basis and stays)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return has_active(context.scene.idto3d, "expressions", "expression_index")

    def execute(self, context):
        settings = context.scene.idto3d
        index = settings.expression_index
        if _clean(settings.expressions[index].text).lower() == BASIS_EXPRESSION:
            self.report({"ERROR"}, "Neutral is the Basis shape key and cannot be removed")
            return {"CANCELLED"}
        remove_active(settings, "expressions", "expression_index")
        return {"FINISHED"}


class IDTO3D_OT_expressions_reset(bpy.types.Operator):
    bl_idname = "idto3d.expressions_reset"
    bl_label = "Load Expression Set"
    bl_description = "Replace the list with a set of expressions (your own entries are removed)"
    bl_options = {"REGISTER", "UNDO"}

    expression_set: EnumProperty(
        name="Set",
        items=[(key, label, description) for key, (label, description, _) in EXPRESSION_SETS.items()],
        default="DEFAULT",
    )

    def execute(self, context):
        reset_expressions(context.scene.idto3d, self.expression_set)
        count = len(EXPRESSION_SETS[self.expression_set][2]) - 1
        self.report({"INFO"}, f"{EXPRESSION_SETS[self.expression_set][0]}: {count} expressions besides neutral")
        return {"FINISHED"}


class IDTO3D_MT_expression_sets(bpy.types.Menu):
    bl_idname = "IDTO3D_MT_expression_sets"
    bl_label = "Expression Sets"

    def draw(self, context):
        for key, (label, _, _) in EXPRESSION_SETS.items():
            self.layout.operator("idto3d.expressions_reset", text=label).expression_set = key


CLASSES = (
    IDTO3D_OT_expression_add,
    IDTO3D_OT_expression_remove,
    IDTO3D_OT_expressions_reset,
    IDTO3D_MT_expression_sets,
)
