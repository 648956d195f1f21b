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


def test_stored_and_deflated_head_npz_read_the_same(tmp_path):
    """head.npz is written stored (fast to read); folders written deflated before still read alike."""
    import zipfile

    rng = np.random.default_rng(0)
    head = _head()
    head.uvs = rng.random((len(CUBE_FACES), 3, 2)).astype(np.float32)
    write_head_mesh(tmp_path / "stored", head)
    with zipfile.ZipFile(tmp_path / "stored" / "head.npz") as archive:
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_STORED}
    (tmp_path / "deflated").mkdir()
    with np.load(tmp_path / "stored" / "head.npz") as raw:
        np.savez_compressed(tmp_path / "deflated" / "head.npz", **raw)
    stored, deflated = read_head_mesh(tmp_path / "stored"), read_head_mesh(tmp_path / "deflated")
    for field in ("vertices", "faces", "expression_offsets", "uvs"):
        np.testing.assert_array_equal(getattr(stored, field), getattr(head, field))
        np.testing.assert_array_equal(getattr(deflated, field), getattr(head, field))
        assert getattr(stored, field).dtype == getattr(head, field).dtype
    assert stored.expression_names == deflated.expression_names == head.expression_names


def _edit_stored(path, old: bytes, new: bytes) -> None:
    """Replace bytes inside a stored head.npz in place (the same length: numpy pads its headers)."""
    data = path.read_bytes()
    at = data.rindex(old)
    path.write_bytes(data[:at] + new.ljust(len(old), b" ") + data[at + len(old):])


@pytest.mark.parametrize("damage, reason", [
    ("array longer than its member", "claims 452 bytes .* the zip holds 416"),
    ("a header claiming 300 GB", "claims 320000000096 bytes"),
    ("a flipped bit in the offsets", "CRC-32 mismatch"),
    ("object array", "holds Python objects|Object arrays"),
])
def test_a_damaged_stored_head_npz_is_the_format_error(tmp_path, damage, reason):
    """A damaged file is a clear ResultFormatError: never a MemoryError (a header that claims more
    than the machine has), never silently imported (bit rot in the data)."""
    write_head_mesh(tmp_path, _head())
    path = tmp_path / "head.npz"
    if damage == "array longer than its member":
        _edit_stored(path, b"'shape': (3, 8, 3)", b"'shape': (3, 9, 3)")
    elif damage == "a header claiming 300 GB":
        _edit_stored(path, b"'shape': (3, 8, 3), }" + b" " * 10, b"'shape': (1, 8, 9999999999), }")
    elif damage == "a flipped bit in the offsets":
        _flip_a_bit_in_the_offsets(path)
    else:
        with np.load(path) as raw:
            arrays = dict(raw)
        arrays["expression_offsets"] = np.array([object()] * 3, dtype=object)
        np.savez(path, **arrays)
    with pytest.raises(ResultFormatError, match="unreadable or incomplete") as raised:
        read_head_mesh(tmp_path)
    assert raised.match(reason)


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


def _flip_a_bit_in_the_offsets(path) -> None:
    data = bytearray(path.read_bytes())
    with np.load(path) as raw:
        offsets = raw["expression_offsets"].tobytes()
    at = bytes(data).index(offsets) + len(offsets) - 5  # inside the last expression's offsets
    data[at] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "missing", "bad_offsets", "flipped bit"])
def test_a_bad_result_raises_and_leaves_no_data_behind(blender_addon, tmp_path, damage):
    """Also bit rot, found by the CRC-32 check that runs while Blender builds the datablocks:
    they are removed again."""
    import bpy

    if damage == "flipped bit":
        write_head_mesh(tmp_path, _head())
        _flip_a_bit_in_the_offsets(tmp_path / "head.npz")
    elif damage == "truncated":
        write_head_mesh(tmp_path, _head())
        data = (tmp_path / "head.npz").read_bytes()
        (tmp_path / "head.npz").write_bytes(data[: len(data) // 2])
    elif damage == "bad_offsets":
        write_head_mesh(tmp_path, _head())
        with np.load(tmp_path / "head.npz") as raw:
            arrays = dict(raw)
        arrays["expression_offsets"] = arrays["expression_offsets"][:, :5]
        np.savez(tmp_path / "head.npz", **arrays)
    before = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials), len(bpy.data.shape_keys))
    # The add-on raises its own copy of the engine's class (bl_ext.….engine.result_format).
    addon_error = importlib.import_module(f"{blender_addon}.engine.result_format").ResultFormatError
    with pytest.raises(addon_error, match="head.npz"):
        _importer(blender_addon).import_result(tmp_path)
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials), len(bpy.data.shape_keys)) == before


def _datablock_counts():
    import bpy

    return {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "meshes", "materials", "images", "shape_keys")}


def _write_textures(folder, size=16):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / "albedo.png")
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / "roughness.png")
    Image.fromarray(np.full((size, size, 3), (128, 128, 255), np.uint8)).save(folder / "normal.png")


def test_textures_feed_the_principled_bsdf_in_the_right_colour_spaces_at_the_cursor(blender_addon, tmp_path):
    import bpy

    head = _head()
    head.uvs = np.random.default_rng(1).random((12, 3, 2)).astype(np.float32)
    write_head_mesh(tmp_path, head)
    _write_textures(tmp_path)
    bpy.context.scene.cursor.location = (0.5, -1.0, 2.0)
    obj = _importer(blender_addon).import_result(tmp_path, name="Textured")
    try:
        assert tuple(obj.location) == pytest.approx((0.5, -1.0, 2.0))
        tree = obj.data.materials[0].node_tree
        bsdf = tree.nodes["Principled BSDF"]

        def source(socket):
            links = bsdf.inputs[socket].links
            return links[0].from_node if links else None

        assert source("Base Color").type == "TEX_IMAGE"
        assert source("Base Color").image.colorspace_settings.name == "sRGB"
        assert source("Roughness").image.colorspace_settings.name == "Non-Color"
        normal_map = source("Normal")
        assert normal_map.type == "NORMAL_MAP"
        assert normal_map.inputs["Color"].links[0].from_node.image.colorspace_settings.name == "Non-Color"
        uv = np.zeros(12 * 3 * 2, np.float32)
        obj.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
        np.testing.assert_allclose(uv.reshape(12, 3, 2), head.uvs, atol=1e-6)
        smooth = np.zeros(12, bool)
        obj.data.polygons.foreach_get("use_smooth", smooth)
        assert smooth.all()
    finally:
        bpy.data.objects.remove(obj)
        bpy.context.scene.cursor.location = (0, 0, 0)


def test_a_second_import_never_touches_the_first_head(blender_addon, tmp_path):
    import bpy

    write_head_mesh(tmp_path, _head())
    _write_textures(tmp_path)
    importer = _importer(blender_addon)
    first = importer.import_result(tmp_path, name="Head")
    first.data.materials[0].node_tree.nodes["Principled BSDF"].inputs["Metallic"].default_value = 0.3  # a user edit
    second = importer.import_result(tmp_path, name="Head")
    try:
        assert first.name != second.name and first.data != second.data
        assert first.data.materials[0] != second.data.materials[0]
        images = lambda o: {n.image for n in o.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE"}  # noqa: E731
        assert not images(first) & images(second)
        assert first.data.materials[0].node_tree.nodes["Principled BSDF"].inputs["Metallic"].default_value == pytest.approx(0.3)
    finally:
        bpy.data.objects.remove(first)
        bpy.data.objects.remove(second)


@pytest.mark.parametrize("bad_face, reason", [((0, 0, 1), "use a vertex twice"), ((2, 0, 3), "repeat another face")])
def test_a_mesh_blender_rejects_leaves_no_orphan_datablock(blender_addon, tmp_path, bad_face, reason):
    faces = CUBE_FACES.copy()
    faces[0] = bad_face  # Blender's validate() would delete such a face
    write_head_mesh(tmp_path, HeadMesh(CUBE_VERTICES, faces, ["neutral"], np.zeros((1, 8, 3), np.float32)))
    _write_textures(tmp_path)
    before = _datablock_counts()
    addon_error = importlib.import_module(f"{blender_addon}.engine.result_format").ResultFormatError
    with pytest.raises(addon_error, match=f"Blender would reject the mesh .*{reason}"):
        _importer(blender_addon).import_result(tmp_path)
    assert _datablock_counts() == before


@pytest.mark.parametrize("field, value, reason", [
    ("faces", CUBE_FACES.astype(np.float32) + 0.4, "faces must hold integers, got float32"),
    ("vertices", np.full((8, 3), "a"), "vertices must hold floating-point numbers"),
    ("expression_names", np.array("neutral"), "expression_names must be a list of text"),
    ("expression_names", np.array([1.0, 2.0, 3.0]), "expression_names must be a list of text"),
    ("expression_offsets", np.zeros((3, 8, 3), np.int64), "expression_offsets must hold floating-point"),
])
def test_malformed_head_npz_is_the_format_error_never_a_type_error(tmp_path, field, value, reason):
    write_head_mesh(tmp_path, _head())
    with np.load(tmp_path / "head.npz") as raw:
        arrays = dict(raw)
    arrays[field] = value
    np.savez(tmp_path / "head.npz", **arrays)
    with pytest.raises(ResultFormatError, match=reason):
        read_head_mesh(tmp_path)


@pytest.mark.parametrize("names, reason", [
    (("neutral", "Basis"), "reserved"),
    (("neutral", "é" * 32), "longer than 63 bytes"),
    (("neutral", "smiling", "Smiling"), "differ only by case"),
])
def test_names_a_shape_key_cannot_carry_are_refused_with_nothing_left(blender_addon, tmp_path, names, reason):
    write_head_mesh(tmp_path, _head(names))
    before = _datablock_counts()
    addon_error = importlib.import_module(f"{blender_addon}.engine.result_format").ResultFormatError
    with pytest.raises(addon_error, match=reason):
        _importer(blender_addon).import_result(tmp_path)
    assert _datablock_counts() == before


def test_unusual_names_survive_exactly_into_shape_keys(blender_addon, tmp_path):
    import bpy

    names = ("neutral", "with curly red hair", "--steps=99999999", "sourire ébahi 😮", "a" * 63)
    write_head_mesh(tmp_path, _head(names))
    obj = _importer(blender_addon).import_result(tmp_path)
    try:
        assert [k.name for k in obj.data.shape_keys.key_blocks] == ["Basis", *names[1:]]
    finally:
        bpy.data.objects.remove(obj)


def test_a_glb_comes_in_as_one_head_with_its_shape_keys_at_the_cursor(blender_addon, tmp_path):
    """The .glb path: Blender's own exporter writes the file here; the engine's writer is tested with the worker."""
    import bpy

    write_head_mesh(tmp_path, _head())
    importer = _importer(blender_addon)
    source = importer.import_result(tmp_path, name="Exported")
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    source.select_set(True)
    bpy.ops.export_scene.gltf(filepath=str(tmp_path / "head.glb"), export_format="GLB", export_morph=True,
                              use_selection=True)
    bpy.data.objects.remove(source)
    bpy.context.scene.cursor.location = (0.0, 0.3, 0.0)
    obj = importer.import_glb(tmp_path / "head.glb")
    try:
        assert obj.type == "MESH" and obj.parent is None
        assert [k.name for k in obj.data.shape_keys.key_blocks] == ["Basis", "smiling", "angry"]
        assert tuple(obj.location) == pytest.approx((0.0, 0.3, 0.0))
    finally:
        bpy.data.objects.remove(obj)
        bpy.context.scene.cursor.location = (0, 0, 0)


def test_import_head_result_operator_takes_a_folder_or_a_file_in_it(blender_addon, tmp_path):
    import bpy

    write_head_mesh(tmp_path, _head())
    assert bpy.ops.idto3d.import_head_result(filepath=str(tmp_path / "head.npz")) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    try:
        assert obj.get("idto3d_result") == str(tmp_path) and obj.select_get()
        assert [k.name for k in obj.data.shape_keys.key_blocks] == ["Basis", "smiling", "angry"]
    finally:
        bpy.data.objects.remove(obj)
    with pytest.raises(RuntimeError, match="not found: is this a result folder"):
        bpy.ops.idto3d.import_head_result(directory=str(tmp_path / "elsewhere"))


def _grid(rows, cols, z=0.0):
    """A grid of triangles rows x cols vertices: a stand-in for a streamed DMTet snapshot."""
    x, y = np.meshgrid(np.linspace(0, 0.2, cols), np.linspace(0, 0.2, rows))
    vertices = np.stack([x, y, np.full_like(x, z)], -1).reshape(-1, 3).astype(np.float32)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return vertices, faces.astype(np.int32)


def test_a_snapshot_reaches_the_head_over_three_ticks_and_is_never_shown_half_built(blender_addon):
    """The heavy parts of a new topology (face offsets, edges) go to separate timer ticks, into a
    mesh no object shows until it is complete; a snapshot with the same faces only moves vertices."""
    import bpy

    importer = _importer(blender_addon)
    obj = bpy.data.objects.new("Streaming", bpy.data.meshes.new("Head (generating)"))
    bpy.context.scene.collection.objects.link(obj)
    meshes, name = len(bpy.data.meshes), obj.data.name  # "Head (generating)", or .001 beside another
    try:
        for vertices, faces in (_grid(20, 30), _grid(25, 22)):  # two topologies, one after the other
            before = len(obj.data.vertices)
            build, ticks = importer.SnapshotBuild(obj, vertices, faces), 0
            while True:
                ticks += 1
                done = build.advance()
                shown = obj.data
                assert len(shown.vertices) in ((before, len(vertices)) if not done else (len(vertices),))
                assert len(shown.edges) > 0 or len(shown.polygons) == 0  # never faces without edges
                if done:
                    break
            assert ticks == 3 and len(bpy.data.meshes) == meshes  # the replaced mesh is gone, no orphan
            assert obj.data.validate(verbose=False) is False and obj.data.name == name  # the head's mesh name kept
            corners = np.empty(faces.size, np.int32)
            obj.data.attributes[".corner_vert"].data.foreach_get("value", corners)
            np.testing.assert_array_equal(corners, faces.ravel())
        mesh = obj.data
        moved = vertices + np.float32(0.01)
        build = importer.SnapshotBuild(obj, moved, faces)
        assert build.advance() and obj.data == mesh  # the same faces: one tick, the same datablock
        co = np.empty(moved.size, np.float32)
        obj.data.vertices.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(-1, 3), moved)
    finally:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
