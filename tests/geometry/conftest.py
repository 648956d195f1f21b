"""Fit targets made by Blender itself (the bpy wheel): Suzanne and a bevelled, subdivided box.

Both are placed at head size (largest extent 0.25 m) at the origin, facing -Y as Blender makes
them. Returned as torch tensors (verts float32 [V,3], faces int64 [F,3], quads/n-gons fanned).
"""

import numpy as np
import pytest


def _blender_mesh(kind: str) -> tuple[np.ndarray, np.ndarray]:
    import bpy

    # Not read_factory_settings(): that would also reset the preferences and so disable the add-on
    # other tests in this session enabled. The target goes into a scene of its own, removed after.
    scene = bpy.data.scenes.new("fit-target")
    window_scene = bpy.context.window.scene if bpy.context.window else None
    if bpy.context.window:
        bpy.context.window.scene = scene
    try:
        return _make_target(kind)
    finally:
        for obj in list(scene.objects):
            bpy.data.objects.remove(obj)
        if bpy.context.window and window_scene is not None:
            bpy.context.window.scene = window_scene
        bpy.data.scenes.remove(scene)


def _make_target(kind: str) -> tuple[np.ndarray, np.ndarray]:
    import bpy

    if kind == "suzanne":
        bpy.ops.mesh.primitive_monkey_add(size=2.0)
        obj = bpy.context.active_object
    else:  # a rounded box: not head-like, flat sides and sharp-ish rounded edges
        bpy.ops.mesh.primitive_cube_add(size=2.0)
        obj = bpy.context.active_object
        obj.scale = (0.8, 0.65, 1.0)
        bevel = obj.modifiers.new("bevel", "BEVEL")
        bevel.width, bevel.segments = 0.35, 4
        obj.modifiers.new("subsurf", "SUBSURF").levels = 1
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    mesh.transform(obj.matrix_world)
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    loops = np.empty(len(mesh.loops), np.int64)
    mesh.loops.foreach_get("vertex_index", loops)
    starts = np.empty(len(mesh.polygons), np.int64)
    mesh.polygons.foreach_get("loop_start", starts)
    totals = np.empty(len(mesh.polygons), np.int64)
    mesh.polygons.foreach_get("loop_total", totals)
    evaluated.to_mesh_clear()
    tris = [
        (loops[s], loops[s + k], loops[s + k + 1]) for s, n in zip(starts, totals) for k in range(1, n - 1)
    ]
    verts = co.reshape(-1, 3)
    lo, hi = verts.min(0), verts.max(0)
    verts = (verts - (lo + hi) / 2) * (0.25 / (hi - lo).max())
    return verts.astype(np.float32), np.asarray(tris, np.int64)


@pytest.fixture(scope="session")
def blender_target():
    import torch

    cache = {}

    def get(kind: str):
        if kind not in cache:
            v, f = _blender_mesh(kind)
            cache[kind] = (torch.from_numpy(v), torch.from_numpy(f))
        return cache[kind]

    return get
