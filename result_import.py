"""Turn engine output into Blender data: one head object, one shape key per expression.

The only add-on module that builds scene data from engine output. A result folder's ``head.npz``
is read through :mod:`engine.result_format` (numpy only), its ``albedo.png`` / ``roughness.png``
/ ``normal.png`` feed a Principled BSDF. Everything is built with ``foreach_set`` (no per-vertex
Python loops), nothing is linked into the scene until all of it was built, and whatever was built
is removed again on failure, so a bad result never leaves an orphan datablock behind. A ``.glb``
goes through Blender's own glTF importer.

Mesh snapshots streamed while the head optimises replace the geometry of the head object in
place (:func:`update_mesh_in_place`); the topology may change between snapshots.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np

from .engine.result_format import HeadMesh, ResultFormatError, read_head_mesh_verified_later

BASIS_NAME = "Basis"
# image file, BSDF socket, colour space; normal goes through a Normal Map node
TEXTURES = (
    ("albedo.png", "Base Color", "sRGB"),
    ("roughness.png", "Roughness", "Non-Color"),
    ("normal.png", "Normal", "Non-Color"),
)


def _add_geometry(mesh: bpy.types.Mesh, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Triangles into an empty mesh through its attribute arrays (the fast foreach_set paths);
    the mesh has no edges yet (:func:`_finish_geometry`)."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    mesh.vertices.add(len(vertices))
    mesh.loops.add(faces.size)
    mesh.polygons.add(len(faces))
    mesh.attributes["position"].data.foreach_set("vector", vertices.ravel())
    mesh.attributes[".corner_vert"].data.foreach_set("value", faces.ravel())
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))


def _finish_geometry(mesh: bpy.types.Mesh) -> None:
    mesh.update()  # edges from the faces
    mesh.shade_smooth()


def _fill_geometry(mesh: bpy.types.Mesh, vertices: np.ndarray, faces: np.ndarray) -> None:
    _add_geometry(mesh, vertices, faces)
    _finish_geometry(mesh)


def _geometry_problem(faces: np.ndarray) -> str | None:
    """What Blender's mesh validation would remove from these triangles (checked in numpy: the
    full ``Mesh.validate`` costs more than the rest of an import of a 100k-vertex head)."""
    if len(faces) == 0:
        return None
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if repeated.any():
        return f"{int(repeated.sum())} face(s) use a vertex twice (first: face {int(np.argmax(repeated))})"
    a, b, c = (faces[:, k].astype(np.int64) for k in range(3))
    low, high = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    middle = a + b + c - low - high  # each face's corners in order, without sorting every row
    count = int(high.max()) + 1
    if count < 2**21:  # one int64 key per face: sorting keys is far faster than unique rows
        keys = np.sort((low * count + middle) * count + high)
        repeats = bool((keys[1:] == keys[:-1]).any())
    else:
        repeats = len(np.unique(np.stack([low, middle, high], 1), axis=0)) != len(faces)
    if repeats:
        return "some faces repeat another face"
    return None


def build_mesh(name: str, head: HeadMesh) -> bpy.types.Mesh:
    """A new mesh datablock from ``head``; nothing is created (no orphan) when Blender would reject it."""
    problem = _geometry_problem(np.asarray(head.faces))
    if problem:
        raise ResultFormatError(
            f"{name}: Blender would reject the mesh ({problem}); generate the head again or report the result "
            "folder as a bug"
        )
    mesh = bpy.data.meshes.new(name)
    try:
        _fill_geometry(mesh, head.vertices, head.faces)
        if head.uvs is not None:
            mesh.uv_layers.new(name="UVMap")
            mesh.attributes["UVMap"].data.foreach_set(
                "vector", np.ascontiguousarray(head.uvs, np.float32).ravel()
            )
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def check_shape_key_names(names: list[str]) -> None:
    """Refuse names Blender would change: shape keys carry the expression names exactly.

    The engine's own rule (:func:`engine.pipeline.job.check_expression_names`), applied again
    to what a result folder holds, since the folder may come from anywhere.
    """
    from .engine.pipeline.job import check_expression_names

    problems = check_expression_names(names)
    if problems:
        raise ResultFormatError(
            f"expression names in the result cannot become shape keys: {'; '.join(problems)}"
        )


def add_shape_keys(obj: bpy.types.Object, head: HeadMesh) -> None:
    """Basis = the first expression (neutral); one key per other expression, named exactly after it."""
    check_shape_key_names(head.expression_names)
    basis = obj.shape_key_add(name=BASIS_NAME, from_mix=False)
    basis.points.foreach_set(
        "co", np.ascontiguousarray(head.vertices + head.expression_offsets[0], np.float32).ravel()
    )
    for name, offsets in zip(head.expression_names[1:], head.expression_offsets[1:]):
        key = obj.shape_key_add(name=name, from_mix=False)
        if key.name != name:  # belt and braces: never a silently renamed expression
            raise ResultFormatError(f"Blender renamed the shape key {name!r} to {key.name!r}")
        key.points.foreach_set("co", np.ascontiguousarray(head.vertices + offsets, np.float32).ravel())
        key.value = 0.0


def build_material(name: str, folder: Path) -> bpy.types.Material:
    """Principled BSDF fed by the result's texture images (albedo sRGB; roughness, normal Non-Color)."""
    material = bpy.data.materials.new(name)
    images = []
    try:
        if bpy.app.version < (5, 0, 0):  # 5.0 materials always have node trees (use_nodes is deprecated)
            material.use_nodes = True
        tree = material.node_tree
        bsdf = tree.nodes.get("Principled BSDF")
        bsdf.inputs["Base Color"].default_value = (0.72, 0.55, 0.46, 1.0)  # a result without textures
        bsdf.inputs["Roughness"].default_value = 0.55
        for row, (file_name, socket, colour) in enumerate(TEXTURES):
            path = folder / file_name
            if not path.is_file():
                continue
            image = bpy.data.images.load(str(path), check_existing=False)  # never shared with earlier heads
            images.append(image)
            image.colorspace_settings.name = colour
            node = tree.nodes.new("ShaderNodeTexImage")
            node.image, node.label = image, file_name
            node.location = (bsdf.location.x - 600, bsdf.location.y - 300 * row)
            if socket == "Normal":
                normal_map = tree.nodes.new("ShaderNodeNormalMap")
                normal_map.location = (bsdf.location.x - 250, bsdf.location.y - 300 * row)
                tree.links.new(node.outputs["Color"], normal_map.inputs["Color"])
                tree.links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
            else:
                tree.links.new(node.outputs["Color"], bsdf.inputs[socket])
    except BaseException:
        for image in images:
            bpy.data.images.remove(image)
        bpy.data.materials.remove(material)
        raise
    return material


def _remove_material(material) -> None:
    for node in material.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None and node.image.users <= 1:
            bpy.data.images.remove(node.image)
    bpy.data.materials.remove(material)


def _quality_expressions(folder: Path | str) -> dict:
    try:
        info = json.loads((Path(folder) / "result.json").read_text(encoding="utf-8"))
        per_expression = info["quality"]["expressions"]
        return per_expression if isinstance(per_expression, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def quality_scores(folder: Path | str) -> dict[str, float | None]:
    """Mean identity score (ArcFace cosine) per expression from result.json's quality report;
    None for an expression whose renders showed no face the recogniser could find."""
    return {str(name): _number(entry.get("mean_arcface_cosine")) if isinstance(entry, dict) else None
            for name, entry in _quality_expressions(folder).items()}


def quality_side_shares(folder: Path | str) -> dict[str, float]:
    """For expressions named for one side (eyeBlinkLeft): the share of their movement on that
    side of the face, from result.json's quality report (1.0: only that side)."""
    shares = {}
    for name, entry in _quality_expressions(folder).items():
        share = _number(entry.get("side_share")) if isinstance(entry, dict) else None
        if share is not None:
            shares[str(name)] = share
    return shares


def import_result(
    folder: Path | str,
    name: str = "Head",
    collection=None,
    *,
    location=None,
    into: bpy.types.Object | None = None,
) -> bpy.types.Object:
    """The head object from result ``folder``.

    A new object linked into ``collection`` (default: the scene's) at ``location`` (default: the
    3D cursor), or, with ``into``, the streaming object of a job given the result's mesh in place
    of its preview geometry. Raises ResultFormatError (and leaves no datablock behind) otherwise.
    """
    folder = Path(folder)
    head, verify = read_head_mesh_verified_later(folder)  # its CRC-32 is checked while Blender builds
    check_shape_key_names(head.expression_names)
    mesh = material = obj = None
    old_mesh = into.data if into is not None else None
    try:
        mesh = build_mesh(name, head)
        material = build_material(f"{name} Skin", folder)
        mesh.materials.append(material)
        if into is not None:
            obj = into
            obj.data = mesh
        else:
            obj = bpy.data.objects.new(name, mesh)
        add_shape_keys(obj, head)
        obj["idto3d_result"] = str(folder)
        verify()  # before anything is linked into the scene: a damaged file leaves nothing behind
    except BaseException:
        if into is not None:
            into.data = old_mesh
        elif obj is not None:
            bpy.data.objects.remove(obj)
        if mesh is not None:
            bpy.data.meshes.remove(mesh)  # its shape-key datablock goes with it
        if material is not None:
            _remove_material(material)
        raise
    if into is None:
        (collection or bpy.context.scene.collection).objects.link(obj)
        obj.location = location if location is not None else bpy.context.scene.cursor.location
    elif old_mesh is not None and old_mesh.users == 0:
        bpy.data.meshes.remove(old_mesh)
    return obj


def import_glb(path: Path | str, collection=None, *, location=None) -> bpy.types.Object:
    """A ``.glb`` written by the engine, through Blender's glTF importer; one mesh object at the cursor."""
    path = Path(path)
    if not path.is_file():
        raise ResultFormatError(f"{path} not found")
    before = set(bpy.data.objects)
    result = bpy.ops.import_scene.gltf(filepath=str(path))
    created = [obj for obj in bpy.data.objects if obj not in before]
    meshes = [obj for obj in created if obj.type == "MESH"]
    if "FINISHED" not in result or len(meshes) != 1:
        for obj in created:
            bpy.data.objects.remove(obj)
        raise ResultFormatError(f"{path}: expected one head mesh in the glTF file, found {len(meshes)}")
    obj = meshes[0]
    for extra in created:  # glTF node parents: keep only the head
        if extra is not obj:
            bpy.data.objects.remove(extra)
    obj.parent = None
    if collection is not None and obj.name not in collection.objects:
        for owner in list(obj.users_collection):
            owner.objects.unlink(obj)
        collection.objects.link(obj)
    obj.location = location if location is not None else bpy.context.scene.cursor.location
    obj["idto3d_result"] = str(path.parent)
    return obj


def update_mesh_in_place(obj: bpy.types.Object, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Replace ``obj``'s geometry with a snapshot (any topology) at once, keeping the datablock and
    material (scripts; a running job spreads the work over ticks with :class:`SnapshotBuild`)."""
    mesh = obj.data
    if mesh.shape_keys is not None:  # a snapshot has no expressions; the final result brings them
        obj.shape_key_clear()
    mesh.clear_geometry()
    _fill_geometry(mesh, vertices, faces)


class SnapshotBuild:
    """A streamed snapshot brought into the head object over a few timer ticks, so that no tick
    carries all of it (a 100k-vertex head: face offsets ~7 ms, edges ~10 ms of main-thread CPU).

    The geometry goes into a new mesh datablock that no object uses until it is complete, so
    Blender never draws a half-built mesh: :meth:`advance` builds it (tick 1), computes its edges
    (tick 2) and swaps it into the object, removing the one it replaces (tick 3). A snapshot with
    the same faces as the one shown only moves the vertices, in one tick."""

    def __init__(self, obj: bpy.types.Object, vertices: np.ndarray, faces: np.ndarray):
        self.object_name = obj.name
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(faces, dtype=np.int32)
        self.mesh: bpy.types.Mesh | None = None
        self.step = 0
        self.done = False
        self.same_faces = same_faces(obj.data, len(self.vertices), self.faces)

    def advance(self) -> bool:
        """One tick of work; True once the object shows the snapshot."""
        obj = bpy.data.objects.get(self.object_name)
        if obj is None or obj.type != "MESH":  # the user deleted the head meanwhile
            self.discard()
            return True
        if self.same_faces and obj.data.shape_keys is None:
            obj.data.attributes["position"].data.foreach_set("vector", self.vertices.ravel())
            obj.data.update()
            self.done = True
            return True
        if self.step == 0:
            self.mesh = bpy.data.meshes.new(obj.data.name)
            _add_geometry(self.mesh, self.vertices, self.faces)
        elif self.step == 1:
            _finish_geometry(self.mesh)
        else:
            old, name = obj.data, obj.data.name
            for material in old.materials:
                self.mesh.materials.append(material)
            obj.data, self.mesh = self.mesh, None
            if old.users == 0:
                bpy.data.meshes.remove(old)
                obj.data.name = name
            self.done = True
            return True
        self.step += 1
        return False

    def finish(self) -> None:
        """Do what is left now (the result arrived: it replaces the geometry in this same tick)."""
        while not self.advance():
            pass

    def discard(self) -> None:
        if self.mesh is not None:
            bpy.data.meshes.remove(self.mesh)
            self.mesh = None


def same_faces(mesh: bpy.types.Mesh, vertex_count: int, faces: np.ndarray) -> bool:
    """The mesh is these triangles on as many vertices (same corners), so only its vertices need moving."""
    if len(mesh.vertices) != vertex_count or len(mesh.polygons) != len(faces) or len(mesh.loops) != faces.size:
        return False
    corners = np.empty(faces.size, np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corners)
    return bool(np.array_equal(corners, faces.ravel()))


def read_snapshot(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``vertices`` float [V,3] and ``faces`` int [F,3] of a streamed snapshot, checked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            vertices, faces = np.asarray(data["vertices"]), np.asarray(data["faces"])
    except (OSError, ValueError, KeyError) as exc:
        raise ResultFormatError(f"snapshot {path} is unreadable ({exc})") from exc
    if vertices.ndim != 2 or vertices.shape[1:] != (3,) or vertices.dtype.kind != "f":
        raise ResultFormatError(
            f"snapshot {path}: vertices must be float [V, 3], got {vertices.dtype} {list(vertices.shape)}"
        )
    if faces.ndim != 2 or faces.shape[1:] != (3,) or faces.dtype.kind not in "iu":
        raise ResultFormatError(
            f"snapshot {path}: faces must be integer [F, 3], got {faces.dtype} {list(faces.shape)}"
        )
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ResultFormatError(f"snapshot {path}: face indices outside 0..{len(vertices) - 1}")
    if not np.isfinite(vertices).all():
        raise ResultFormatError(f"snapshot {path}: vertices contain NaN/inf")
    return vertices, faces
