"""F-curves of a datablock, in Blender's layered actions (4.4+) and the plain actions before them.

One place for that difference: Live Link Face keys, the studio's turntable and the tests all go
through these two functions.
"""

from __future__ import annotations

import bpy


def fcurves_of(datablock) -> list:
    """Every F-curve of the datablock's action (none without one)."""
    animation = datablock.animation_data
    action = animation.action if animation else None
    if action is None:
        return []
    if hasattr(action, "layers") and len(action.layers):
        curves = []
        for layer in action.layers:
            for strip in layer.strips:
                for bag in strip.channelbags:
                    curves.extend(bag.fcurves)
        return curves
    return list(getattr(action, "fcurves", []))


def find_fcurve(datablock, data_path: str, index: int = 0):
    """The F-curve of ``datablock.data_path[index]``, or None; never makes one."""
    return next((c for c in fcurves_of(datablock) if c.data_path == data_path and c.array_index == index), None)


def ensure_fcurve(datablock, data_path: str, index: int = 0, *, action_name: str = ""):
    """The F-curve of ``datablock.data_path[index]`` in its action, made (with the action) if missing."""
    animation = datablock.animation_data or datablock.animation_data_create()
    if animation.action is None:
        animation.action = bpy.data.actions.new(action_name or f"{datablock.name} Action")
    action = animation.action
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions
        return action.fcurve_ensure_for_datablock(datablock, data_path, index=index)
    return action.fcurves.find(data_path, index=index) or action.fcurves.new(data_path, index=index)
