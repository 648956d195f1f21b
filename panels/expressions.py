"""Expressions panel: the list of expressions, one shape key each (neutral = Basis)."""

from __future__ import annotations

import textwrap

import bpy

from . import UserScenePanel
from ..generation import step_budget_note
from ..properties import BASIS_EXPRESSION


class IDTO3D_UL_expressions(bpy.types.UIList):
    bl_idname = "IDTO3D_UL_expressions"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        if item.text.strip().lower() == BASIS_EXPRESSION:
            # The Basis shape key: always generated, never renamed (editing it here would bypass that).
            row.label(text="", icon="CHECKBOX_HLT")
            row.label(text=f"{item.text} (Basis)", icon="PINNED")
            return
        row.prop(item, "enabled", text="")
        row.prop(item, "text", text="", emboss=False, icon="SHAPEKEY_DATA")
        if item.prompt:
            row.label(text="", icon="TEXT")  # the prior sees its prompt (shown below the list)


class IDTO3D_PT_expressions(UserScenePanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_expressions"
    bl_label = "Expressions"

    def draw(self, context):
        settings = context.scene.idto3d
        layout = self.layout
        if len(settings.expressions) == 0:
            # A scene made after the add-on was enabled: offer the defaults (draw() may not edit data).
            layout.operator("idto3d.expressions_reset", text="Load Default Expressions", icon="ADD")
        row = layout.row()
        row.template_list("IDTO3D_UL_expressions", "", settings, "expressions", settings,
                          "expression_index", rows=5)
        column = row.column(align=True)
        column.operator("idto3d.expression_add", icon="ADD", text="")
        column.operator("idto3d.expression_remove", icon="REMOVE", text="")
        column.separator()
        column.menu("IDTO3D_MT_expression_sets", icon="PRESET", text="")  # Basic Emotions, ARKit 52
        if 0 <= settings.expression_index < len(settings.expressions):
            item = settings.expressions[settings.expression_index]
            if item.text.strip().lower() != BASIS_EXPRESSION:
                # The shape key keeps the name; the prior sees the prompt (ARKit: "jawOpen" is a name).
                layout.prop(item, "prompt", text="Prompt", icon="TEXT")
        enabled = sum(1 for item in settings.expressions if item.enabled)
        layout.label(text=f"{enabled} shape keys (neutral is the Basis)", icon="INFO")
        note = step_budget_note(settings)
        if note:
            column = layout.column(align=True)
            column.scale_y = 0.8
            for index, line in enumerate(textwrap.wrap(note, 48)):
                column.label(text=line, icon="ERROR" if index == 0 else "BLANK1")


CLASSES = (IDTO3D_UL_expressions, IDTO3D_PT_expressions)
