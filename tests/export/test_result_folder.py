"""The result folder: every file present, PNGs at the configured size, head.npz's K offset arrays
on the canonical faces, result.json readable with json alone, the whole folder replaced at once,
and a folder the engine did not write left untouched."""

import json

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError
from engine.export import write_result
from engine.result_format import HeadMesh, read_head_mesh

INFO = {"job": {"preset": "test", "expressions": ["neutral", "smiling", "with curly red hair"]}, "seed": 7,
        "timings_s": {"texture": 1.5}, "quality": {"tiny_test_models": True, "note": "smoke"}}


@pytest.mark.parametrize("size", [64, 128])
def test_every_file_is_written_at_the_configured_size(tmp_path, textured_head, size):
    head, _, albedo, roughness = textured_head
    from engine.texture import resize_map

    sheet = np.zeros((40, 60, 3), np.uint8)
    files = write_result(tmp_path / "result", head, albedo=resize_map(albedo, size),
                         roughness=resize_map(roughness, size), info=INFO, contact_sheet=sheet)
    folder = tmp_path / "result"
    expected = {"head.npz", "albedo.png", "roughness.png", "result.json", "contact_sheet.png", "head.glb"}
    assert set(files) == expected and all(files[name].is_file() for name in expected)
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == expected
    for name, mode in (("albedo.png", "RGB"), ("roughness.png", "L")):
        with Image.open(folder / name) as im:
            assert im.size == (size, size) and im.mode == mode
    with Image.open(folder / "contact_sheet.png") as im:
        assert im.size == (60, 40)
    mesh = read_head_mesh(folder)
    assert mesh.expression_names == head.expression_names
    assert mesh.expression_offsets.shape == (3, len(head.vertices), 3)  # K + 1 arrays, one per expression
    np.testing.assert_array_equal(mesh.faces, head.faces)  # every expression on the canonical faces
    np.testing.assert_allclose(mesh.expression_offsets, head.expression_offsets)
    assert mesh.uvs.shape == (len(head.faces), 3, 2)
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    assert result["format"] == "idto3d-result" and result["format_version"] == 1
    assert result["seed"] == 7 and result["job"]["preset"] == "test" and result["quality"]["tiny_test_models"]
    assert result["mesh"] == {"vertices": len(head.vertices), "faces": len(head.faces),
                              "expressions": head.expression_names, "uvs": True}
    assert result["textures"]["size"] == size and result["textures"]["albedo"] == "albedo.png"


def test_albedo_png_is_srgb_encoded_and_dilated(tmp_path, textured_head):
    head, layout, _, _ = textured_head
    from engine.texture import coverage_mask

    albedo = np.zeros((64, 64, 3), np.float32)
    covered = coverage_mask(layout, 64)
    albedo[covered] = 0.214  # linear; sRGB 0.5
    write_result(tmp_path / "r", head, albedo=albedo, roughness=np.full((64, 64), 0.5, np.float32), info={},
                 glb=False)
    png = np.asarray(Image.open(tmp_path / "r" / "albedo.png"))
    assert np.abs(png[covered].astype(int) - 128).max() <= 1
    # No texel stays black: the empty ones took the charts' colour (mipmaps cannot darken the seams).
    assert np.abs(png[~covered].astype(int) - 128).max() <= 1


def test_geometry_only_result_has_no_textures(tmp_path, textured_head):
    head, *_ = textured_head
    plain = HeadMesh(head.vertices, head.faces, head.expression_names, head.expression_offsets)
    files = write_result(tmp_path / "result", plain, info={"stop_after": "geometry"})
    assert set(files) == {"head.npz", "result.json", "head.glb"}
    result = json.loads((tmp_path / "result" / "result.json").read_text(encoding="utf-8"))
    assert result["textures"] is None and result["mesh"]["uvs"] is False


def test_a_new_result_replaces_the_old_one_whole(tmp_path, textured_head):
    head, _, albedo, roughness = textured_head
    folder = tmp_path / "result"
    write_result(folder, head, albedo=albedo, roughness=roughness, info={}, contact_sheet=np.zeros((8, 8, 3)))
    write_result(folder, HeadMesh(head.vertices, head.faces, head.expression_names, head.expression_offsets),
                 info={"run": 2})
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    assert names == {"head.npz", "result.json", "head.glb"}  # the old textures went with the old result
    assert json.loads((folder / "result.json").read_text())["run"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no staging folder left beside it


def test_a_folder_the_engine_did_not_write_is_refused_unchanged(tmp_path, textured_head):
    head, *_ = textured_head
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    with pytest.raises(EngineError) as err:
        write_result(folder, head, info={})
    assert err.value.code == "foreign_folder"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_bad_inputs_are_refused_with_the_reason(tmp_path, textured_head):
    head, _, albedo, roughness = textured_head
    with pytest.raises(EngineError, match="outside"):
        write_result(tmp_path / "a", head, albedo=albedo * 2.0, roughness=roughness, info={})
    with pytest.raises(EngineError, match="may not set"):
        write_result(tmp_path / "b", head, info={"mesh": {}})
    swapped = HeadMesh(head.vertices, head.faces, head.expression_names[::-1], head.expression_offsets, head.uvs)
    with pytest.raises(EngineError, match="neutral"):
        write_result(tmp_path / "c", swapped, info={})
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_mouth_close_is_stored_relative_to_jaw_open_as_arkit_rigs_drive_it(textured_head):
    """ARKit rigs drive mouthClose on top of jawOpen: the generated whole face (jaw open, lips
    closed) is stored as mouthClose - jawOpen, so jawOpen + mouthClose at 1 give that face."""
    from engine.result_format import HeadMesh, as_correctives

    head = textured_head[0]
    rng = np.random.default_rng(1)
    names = ["neutral", "jawOpen", "mouthClose", "smiling"]
    whole = rng.normal(0, 0.002, (len(names), len(head.vertices), 3)).astype(np.float32)
    whole[0] = 0
    arkit = HeadMesh(head.vertices, head.faces, names, whole.copy(), head.uvs)
    stored, applied = as_correctives(arkit)
    assert applied == {"mouthClose": "jawOpen"}
    np.testing.assert_allclose(stored.expression_offsets[1] + stored.expression_offsets[2], whole[2], atol=1e-7)
    np.testing.assert_array_equal(stored.expression_offsets[[0, 1, 3]], whole[[0, 1, 3]])
    np.testing.assert_array_equal(arkit.expression_offsets, whole)  # the input is left as it was
    alone = HeadMesh(head.vertices, head.faces, ["neutral", "mouthClose"], whole[[0, 2]], head.uvs)
    assert as_correctives(alone) == (alone, {})  # without jawOpen it stays the whole face
