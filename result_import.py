"""Turn a result folder into Blender data: one mesh object, one shape key per expression.

The only add-on module that builds scene data from engine output. Reads ``head.npz`` through
:mod:`engine.result_format` (numpy only) and, if present, ``albedo.png`` / ``roughness.png`` for a
Principled BSDF material. Nothing is linked into the scene until everything was built, and what
was built is removed again on failure, so a bad result never leaves half an object behind.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .engine.result_format import HeadMesh, read_head_mesh


def build_mesh(name: str, head: HeadMesh) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    vertices = head.vertices.astype(np.float32)
    faces = head.faces.astype(np.int32)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
    if head.uvs is not None:
        layer = mesh.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", head.uvs.astype(np.float32).ravel())
    mesh.update()
    if mesh.validate(verbose=False):
        raise ValueError(f"{name}: the mesh in the result had invalid geometry that Blender had to fix")
    return mesh


def add_shape_keys(obj: bpy.types.Object, head: HeadMesh) -> None:
    """Basis = neutral; one key per other expression, holding the deformed positions."""
    obj.shape_key_add(name="Basis", from_mix=False)
    for name, offsets in zip(head.expression_names, head.expression_offsets):
        if name.strip().lower() == "neutral":
            continue
        key = obj.shape_key_add(name=name, from_mix=False)
        key.data.foreach_set("co", (head.vertices + offsets).astype(np.float32).ravel())
        key.value = 0.0


def build_material(name: str, folder: Path) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # 5.0 materials always have node trees (use_nodes is deprecated)
        material.use_nodes = True
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (0.72, 0.55, 0.46, 1.0)  # until the texture stage runs
    bsdf.inputs["Roughness"].default_value = 0.55
    for file_name, socket, colour in (("albedo.png", "Base Color", "sRGB"), ("roughness.png", "Roughness", "Non-Color")):
        path = folder / file_name
        if path.is_file():
            image = bpy.data.images.load(str(path), check_existing=True)
            image.colorspace_settings.name = colour
            node = material.node_tree.nodes.new("ShaderNodeTexImage")
            node.image = image
            material.node_tree.links.new(node.outputs["Color"], bsdf.inputs[socket])
    return material


def import_result(folder: Path | str, name: str = "Head", collection=None) -> bpy.types.Object:
    """Create the head object from ``folder`` and link it into ``collection`` (default: the scene's)."""
    folder = Path(folder)
    head = read_head_mesh(folder)
    created_mesh = created_material = obj = None
    try:
        created_mesh = build_mesh(name, head)
        created_material = build_material(f"{name} Skin", folder)
        created_mesh.materials.append(created_material)
        obj = bpy.data.objects.new(name, created_mesh)
        add_shape_keys(obj, head)
        obj["idto3d_result"] = str(folder)
    except BaseException:
        if obj is not None:
            bpy.data.objects.remove(obj)
        if created_mesh is not None:
            bpy.data.meshes.remove(created_mesh)
        if created_material is not None:
            bpy.data.materials.remove(created_material)
        raise
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj
