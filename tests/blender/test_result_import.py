"""A result folder becomes one mesh object with a shape key per expression, or nothing at all."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from engine.result_format import HeadMesh, ResultFormatError, read_head_mesh, write_head_mesh

CUBE_VERTICES = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (0.0, 0.2)], np.float32)
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)


def _head(names=("neutral", "smiling", "angry")) -> HeadMesh:
    offsets = np.zeros((len(names), 8, 3), np.float32)
    for i in range(1, len(names)):
        offsets[i, :, 2] = 0.01 * i * np.arange(8)
    return HeadMesh(CUBE_VERTICES, CUBE_FACES, list(names), offsets)


def _importer(blender_addon):
    return importlib.import_module(f"{blender_addon}.result_import")


def test_npz_round_trip_without_the_engine(tmp_path):
    with pytest.raises(ResultFormatError, match="not found"):
        read_head_mesh(tmp_path)
    write_head_mesh(tmp_path, _head())
    with np.load(tmp_path / "head.npz") as raw:  # readable with numpy alone
        assert sorted(raw.files) == ["expression_names", "expression_offsets", "faces", "vertices"]
    head = read_head_mesh(tmp_path)
    assert head.expression_names == ["neutral", "smiling", "angry"]
    np.testing.assert_array_equal(head.faces, CUBE_FACES)
    assert not list(tmp_path.glob(".head-*"))  # no temporary left behind


def test_import_builds_mesh_shape_keys_and_material(blender_addon, tmp_path):
    import bpy

    write_head_mesh(tmp_path, _head())
    obj = _importer(blender_addon).import_result(tmp_path, name="Test Head")
    try:
        assert obj.name in bpy.context.scene.objects
        co = np.zeros(8 * 3, np.float32)
        obj.data.vertices.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(8, 3), CUBE_VERTICES, atol=1e-7)
        assert len(obj.data.polygons) == 12
        keys = obj.data.shape_keys.key_blocks
        assert [k.name for k in keys] == ["Basis", "smiling", "angry"]
        angry = np.zeros(8 * 3, np.float32)
        keys["angry"].data.foreach_get("co", angry)
        np.testing.assert_allclose(angry.reshape(8, 3)[:, 2], CUBE_VERTICES[:, 2] + 0.02 * np.arange(8), atol=1e-6)
        bsdf = obj.data.materials[0].node_tree.nodes["Principled BSDF"]
        assert bsdf.inputs["Roughness"].default_value == pytest.approx(0.55)
    finally:
        bpy.data.objects.remove(obj)


@pytest.mark.parametrize("damage", ["truncated", "missing", "bad_offsets"])
def test_a_bad_result_raises_and_leaves_no_data_behind(blender_addon, tmp_path, damage):
    import bpy

    if damage == "truncated":
        write_head_mesh(tmp_path, _head())
        data = (tmp_path / "head.npz").read_bytes()
        (tmp_path / "head.npz").write_bytes(data[: len(data) // 2])
    elif damage == "bad_offsets":
        write_head_mesh(tmp_path, _head())
        with np.load(tmp_path / "head.npz") as raw:
            arrays = dict(raw)
        arrays["expression_offsets"] = arrays["expression_offsets"][:, :5]
        np.savez(tmp_path / "head.npz", **arrays)
    before = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials))
    # The add-on raises its own copy of the engine's class (bl_ext.….engine.result_format).
    addon_error = importlib.import_module(f"{blender_addon}.engine.result_format").ResultFormatError
    with pytest.raises(addon_error, match="head.npz"):
        _importer(blender_addon).import_result(tmp_path)
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials)) == before
