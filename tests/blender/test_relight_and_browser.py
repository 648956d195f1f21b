"""Relight in Cycles and the expression browser, on a head-sized object in real Blender."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest


@pytest.fixture()
def head(blender_addon, tmp_path):
    """A head-sized sphere imported as a result (3 expressions, a quality report)."""
    import bpy

    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.11, segments=24, ring_count=12, location=(0, 0, 0))
    sphere = bpy.context.active_object
    count = len(sphere.data.vertices)
    co = np.zeros(count * 3, np.float32)
    sphere.data.vertices.foreach_get("co", co)
    faces = np.array(
        [list(p.vertices) for p in sphere.data.polygons if len(p.vertices) == 3]
        + [
            [p.vertices[0], p.vertices[1], p.vertices[2]]
            for p in sphere.data.polygons
            if len(p.vertices) == 4
        ]
        + [
            [p.vertices[0], p.vertices[2], p.vertices[3]]
            for p in sphere.data.polygons
            if len(p.vertices) == 4
        ],
        np.int32,
    )
    mesh = sphere.data
    bpy.data.objects.remove(sphere)
    bpy.data.meshes.remove(mesh)
    from engine.result_format import HeadMesh, write_head_mesh

    vertices = co.reshape(-1, 3) + np.array([0, 0, 1.6], np.float32)
    names = ["neutral", "smiling", "angry", "surprised"]
    offsets = np.zeros((4, count, 3), np.float32)
    for i in range(1, 4):
        offsets[i, :, i - 1] = 0.005 * i
    write_head_mesh(tmp_path, HeadMesh(vertices, faces, names, offsets))
    quality = {"expressions": {n: {"mean_arcface_cosine": 0.1 * i} for i, n in enumerate(names)}}
    quality["expressions"]["smiling"]["side_share"] = 0.9  # as if it were a one-sided shape
    quality["expressions"]["angry"]["side_share"] = "0.4"  # not a number: ignored
    (tmp_path / "result.json").write_text(json.dumps({"format": "idto3d-result", "quality": quality}))
    importer = importlib.import_module(f"{blender_addon}.result_import")
    obj = importer.import_result(tmp_path)
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    yield obj
    bpy.data.objects.remove(obj)


def _rig_objects():
    import bpy

    collection = bpy.data.collections.get("ID-to-3D Studio")
    return sorted(o.name for o in collection.objects) if collection else []


def _render(blender_addon, path):
    import bpy
    from PIL import Image

    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    relight.render_still(relight.studio_scene(create=False), path, size=64, samples=8)
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def test_relight_frames_the_head_renders_it_and_the_key_light_matters(blender_addon, head, tmp_path):
    import bpy

    settings = bpy.context.scene.idto3d
    settings.light_mode, settings.turntable = "AREA", False
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    parts = _rig_objects()
    assert len(parts) == 5  # pivot, camera, key, fill, rim
    studio = importlib.import_module(f"{blender_addon}.operators.relight").studio_scene(create=False)
    assert studio.camera.name in parts and studio.render.engine == "CYCLES"
    image = _render(blender_addon, tmp_path / "a.png")
    centre, corner = image[24:40, 24:40].mean(), image[:6, :6].mean()
    assert centre > corner + 0.05, "the head is not lit in the middle of the frame"
    key = next(o for o in bpy.data.collections["ID-to-3D Studio"].objects if o.get("idto3d_rig") == "key")
    key.rotation_euler.z += math.radians(120)  # turn the key light away
    turned = _render(blender_addon, tmp_path / "b.png")
    assert np.abs(turned - image).mean() > 0.005
    # Running it again updates the same rig (and puts the key light back) instead of adding one.
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    assert _rig_objects() == parts
    again = _render(blender_addon, tmp_path / "c.png")
    assert np.abs(again - image).mean() < np.abs(turned - image).mean()


def test_hdri_mode_and_turntable(blender_addon, head):
    import bpy

    settings = bpy.context.scene.idto3d
    settings.light_mode, settings.studio_hdri, settings.turntable, settings.turntable_frames = (
        "HDRI",
        "forest.exr",
        True,
        48,
    )
    try:
        assert bpy.ops.idto3d.relight() == {"FINISHED"}
        studio = importlib.import_module(f"{blender_addon}.operators.relight").studio_scene(create=False)
        world = studio.world
        environment = next(n for n in world.node_tree.nodes if n.type == "TEX_ENVIRONMENT")
        assert environment.image.filepath.endswith("forest.exr")
        lights = [o for o in bpy.data.collections["ID-to-3D Studio"].objects if o.type == "LIGHT"]
        assert lights and all(o.hide_render for o in lights)
        pivot = next(
            o for o in bpy.data.collections["ID-to-3D Studio"].objects if o.get("idto3d_rig") == "pivot"
        )
        animation = importlib.import_module(f"{blender_addon}.animation")
        turn = animation.find_fcurve(pivot, "rotation_euler", 2)
        assert turn.evaluate(studio.frame_start + 12) == pytest.approx(math.pi / 2, abs=1e-4)  # a quarter turn
        assert studio.frame_end == studio.frame_start + 47
        assert head.animation_data is None  # the head itself is never animated
    finally:
        settings.light_mode, settings.turntable = "AREA", False


def test_browser_solo_reset_reel_and_scores(blender_addon, head):
    import bpy

    keys = head.data.shape_keys.key_blocks
    assert bpy.ops.idto3d.expression_solo(name="angry") == {"FINISHED"}
    assert [k.value for k in keys[1:]] == [0.0, 1.0, 0.0]
    assert bpy.ops.idto3d.expressions_neutral() == {"FINISHED"}
    assert [k.value for k in keys[1:]] == [0.0, 0.0, 0.0]
    scene = bpy.context.scene
    scene.frame_set(1)
    assert bpy.ops.idto3d.expressions_keyframe(hold=10) == {"FINISHED"}
    scene.frame_set(1 + 5)
    assert [k.value for k in keys[1:]] == pytest.approx([1.0, 0.0, 0.0])
    scene.frame_set(1 + 10 + 5)
    assert [k.value for k in keys[1:]] == pytest.approx([0.0, 1.0, 0.0])
    assert scene.frame_end >= 31
    panel = importlib.import_module(f"{blender_addon}.panels.head")
    assert panel.scores_for(head) == pytest.approx(
        {"neutral": 0.0, "smiling": 0.1, "angry": 0.2, "surprised": 0.3}
    )
    assert panel.side_shares_for(head) == {"smiling": pytest.approx(0.9)}
    head.data.shape_keys.animation_data_clear()
    scene.frame_set(1)


def test_render_preview_from_a_script_renders_the_studio_and_keeps_the_image(blender_addon, head, monkeypatch,
                                                                              tmp_path):
    """Scripts (EXEC, and INVOKE in background Blender) render in place and load the preview;
    nothing is left listening for a render job (the UI path renders through Blender's render job)."""
    import bpy

    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    monkeypatch.setattr(relight, "render_folder", lambda: tmp_path)
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    studio = relight.studio_scene(create=False)
    saved = studio.render.resolution_x, studio.render.resolution_y, studio.cycles.samples
    studio.render.resolution_x = studio.render.resolution_y = 40
    studio.cycles.samples = 2
    try:
        assert bpy.ops.idto3d.render_preview("INVOKE_DEFAULT") == {"FINISHED"}
        image = bpy.data.images["ID-to-3D Preview"]
        assert tuple(image.size) == (40, 40) and bpy.path.abspath(image.filepath) == str(tmp_path / "preview.png")
        assert relight._preview_finished not in bpy.app.handlers.render_complete
    finally:
        studio.render.resolution_x, studio.render.resolution_y = saved[:2]
        studio.cycles.samples = saved[2]
