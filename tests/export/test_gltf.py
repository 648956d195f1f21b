"""head.glb: Khronos' glTF-Validator finds zero errors (and does find a deliberately misaligned
buffer view); what is stored reads back as the head, Y-up; Blender's own importer makes one mesh
with K+1 shape keys whose offsets match, and an image-textured material."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest

from engine.export.gltf import build_glb, from_y_up, write_glb
from engine.result_format import HeadMesh
from engine.texture import UVLayout

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "scripts" / "validate_gltf.js"


def validate(path: Path) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the glTF validator cannot run here")
    installed = REPO / ".tools" / "gltf-validator" / "node_modules" / "gltf-validator"
    assert installed.is_dir(), "gltf-validator is not installed: run scripts/setup.sh"
    run = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def read_accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc.type]
    data = gltf.binary_blob()[view.byteOffset + (acc.byteOffset or 0):][: acc.count * width * np.dtype(dtype).itemsize]
    return np.frombuffer(data, dtype=dtype).reshape(acc.count, width)


def test_validator_finds_no_errors(tmp_path, textured_head):
    head, layout, albedo, roughness = textured_head
    report = validate(write_glb(tmp_path / "head.glb", head, albedo, roughness))
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"]
    info = report["info"]
    assert info["hasMorphTargets"] and info["hasTextures"] and info["materialCount"] == 1 and info["drawCallCount"] == 1
    # With a normal map: still no error; the one warning says viewers generate the tangents
    # (no TANGENT attribute is written: see docs/export.md).
    normal = np.tile(np.array([0.5, 0.5, 1.0], np.float32), (64, 64, 1))
    report = validate(write_glb(tmp_path / "normal.glb", head, albedo, roughness, normal))
    assert report["numErrors"] == 0, report["messages"]
    assert {m["code"] for m in report["messages"]} <= {"MESH_PRIMITIVE_GENERATED_TANGENT_SPACE"}


def test_geometry_only_glb_is_valid_too(tmp_path, textured_head):
    head, *_ = textured_head
    plain = HeadMesh(head.vertices, head.faces, head.expression_names, head.expression_offsets, uvs=None)
    report = validate(write_glb(tmp_path / "plain.glb", plain))
    assert report["numErrors"] == 0, report["messages"]
    # An odd face count: the uint16 index view is 2 bytes short of a 4-byte boundary, so the morph
    # targets' floats after it are aligned only by the padding between views.
    odd = HeadMesh(head.vertices, head.faces[:-1], head.expression_names, head.expression_offsets, uvs=None)
    assert len(odd.faces) % 2 == 1
    report = validate(write_glb(tmp_path / "odd.glb", odd))
    assert report["numErrors"] == 0, report["messages"]
    # The validator does not check buffer-view alignment itself (measured): check it here.
    gltf = pygltflib.GLTF2.load_from_bytes((tmp_path / "odd.glb").read_bytes())
    assert [v.byteOffset % 4 for v in gltf.bufferViews] == [0] * len(gltf.bufferViews)


def test_validator_catches_a_misaligned_buffer_view(tmp_path, textured_head):
    head, _, albedo, roughness = textured_head
    gltf = pygltflib.GLTF2.load_from_bytes(build_glb(head, albedo, roughness))
    position = gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION]
    position.byteOffset = 2  # the positions' floats no longer start on a 4-byte boundary
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"".join(gltf.save_to_bytes()))
    report = validate(broken)
    assert report["numErrors"] > 0
    assert any("ALIGNMENT" in m["code"] for m in report["messages"]), report["messages"]


def test_stored_mesh_reads_back_as_the_head(textured_head):
    head, _, albedo, roughness = textured_head
    layout = UVLayout.from_corner_uvs(head.faces, head.uvs)  # the split the export makes from head.npz's UVs
    gltf = pygltflib.GLTF2.load_from_bytes(build_glb(head, albedo, roughness))
    assert all(view.byteOffset % 4 == 0 for view in gltf.bufferViews)
    mesh = gltf.meshes[0]
    assert len(gltf.meshes) == 1 and len(mesh.primitives) == 1
    prim = mesh.primitives[0]
    assert mesh.extras["targetNames"] == head.expression_names[1:]
    assert len(prim.targets) == len(head.expression_names) - 1 and mesh.weights == [0.0, 0.0]
    positions = read_accessor(gltf, prim.attributes.POSITION)
    acc = gltf.accessors[prim.attributes.POSITION]
    np.testing.assert_allclose(acc.min, positions.min(0), rtol=0, atol=0)
    np.testing.assert_allclose(acc.max, positions.max(0), rtol=0, atol=0)
    # Y-up: the head's height (Z in the engine) is glTF's Y, its face (-Y) glTF's +Z.
    np.testing.assert_allclose(from_y_up(positions), head.vertices[layout.vmapping], atol=1e-7)
    indices = read_accessor(gltf, prim.indices).reshape(-1, 3)
    np.testing.assert_array_equal(layout.vmapping[indices], head.faces)  # split only at seams
    uv = read_accessor(gltf, prim.attributes.TEXCOORD_0)
    np.testing.assert_allclose(uv[:, 1], 1.0 - layout.uv[:, 1], atol=1e-7)  # top-left origin
    for k, target in enumerate(prim.targets, start=1):
        index = target["POSITION"]  # pygltflib reads targets back as plain dicts
        delta = from_y_up(read_accessor(gltf, index))
        np.testing.assert_allclose(delta, head.expression_offsets[k][layout.vmapping], atol=1e-7)
        assert gltf.accessors[index].min is not None
    pbr = gltf.materials[0].pbrMetallicRoughness
    assert pbr.baseColorTexture.index == 0 and pbr.metallicRoughnessTexture.index == 1
    assert pbr.metallicFactor == 0.0


def test_blender_imports_one_mesh_with_shape_keys_and_an_image_material(tmp_path, textured_head):
    import bpy
    from scipy.spatial import cKDTree

    head, _, albedo, roughness = textured_head
    path = write_glb(tmp_path / "head.glb", head, albedo, roughness)
    scene = bpy.data.scenes.new("glb-import")
    window_scene = bpy.context.window.scene if bpy.context.window else None
    if bpy.context.window:
        bpy.context.window.scene = scene
    try:
        bpy.ops.import_scene.gltf(filepath=str(path))
        meshes = [o for o in scene.objects if o.type == "MESH"]
        assert len(meshes) == 1
        obj = meshes[0]
        keys = obj.data.shape_keys.key_blocks
        assert [k.name for k in keys][1:] == head.expression_names[1:] and len(keys) == len(head.expression_names)
        n = len(obj.data.vertices)
        basis = np.empty(n * 3, np.float32)
        keys[0].data.foreach_get("co", basis)
        basis = basis.reshape(n, 3)
        dist, nearest = cKDTree(head.vertices).query(basis)
        assert dist.max() < 1e-6  # back in the engine's Z-up frame, at real size
        for k in range(1, len(keys)):
            co = np.empty(n * 3, np.float32)
            keys[k].data.foreach_get("co", co)
            np.testing.assert_allclose(co.reshape(n, 3) - basis, head.expression_offsets[k][nearest], atol=1e-6)
        material = obj.data.materials[0]
        images = [node for node in material.node_tree.nodes if node.type == "TEX_IMAGE" and node.image is not None]
        assert len(images) >= 2 and {im.image.size[0] for im in images} == {64}
        principled = next(node for node in material.node_tree.nodes if node.type == "BSDF_PRINCIPLED")
        assert principled.inputs["Base Color"].is_linked
    finally:
        for obj in list(scene.objects):
            data = obj.data
            bpy.data.objects.remove(obj)
            if data is not None and getattr(data, "users", 1) == 0:
                bpy.data.meshes.remove(data)
        if bpy.context.window and window_scene is not None:
            bpy.context.window.scene = window_scene
        bpy.data.scenes.remove(scene)
