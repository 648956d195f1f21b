"""The head and the studio in a scene a user really has: Blender's default startup scene, whose
Cube sits at the origin where the 3D cursor is (a head made there is hidden inside it, and a
studio rig in that scene renders the Cube's inside: a blank frame).

End to end in a fresh Python (``default_scene_check.py``, the factory startup file, the real
worker on tiny models), plus quicker checks in this session on a head inside a cube of our own.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255


def test_generate_and_relight_in_the_default_startup_scene(tiny_models_root, photos_dir, tmp_path):
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    done = subprocess.run(
        [sys.executable, str(HERE / "default_scene_check.py"), str(HERE.parents[1]), str(tiny_models_root),
         str(photos_dir / "grace_hopper.jpg"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["startup_objects"] == ["Camera", "Cube", "Light"] and report["cursor"] == [0, 0, 0]
    assert report["job_ok"]
    # The head is not hidden inside the Cube: it went beside it, the user was told, the view shows it.
    (low, high), (cube_low, cube_high) = report["head_bounds"], report["cube_bounds"]
    assert low[0] > cube_high[0], f"the head {report['head_bounds']} is not beside the Cube {report['cube_bounds']}"
    assert report["head_overlaps"] == []
    assert "inside Cube" in report["placement_note"] and "beside" in report["placement_note"]
    assert report["view_location"] == pytest.approx(report["head_location"], abs=1e-4)
    assert report["view_distance"] < 2.0  # the head fills the view, not the whole default scene
    assert report["active"].startswith("Head")
    # ARKit names reached the shape keys; their prompts reached the job.
    assert report["shape_keys"] == ["Basis", "eyeBlinkLeft", "jawOpen", "mouthClose"]
    assert report["job_prompts"] == {"eyeBlinkLeft": "left eye closed, right eye open",
                                     "jawOpen": "mouth wide open, jaw dropped",
                                     "mouthClose": "lips closed while the jaw hangs open"}
    # mouthClose is stored as a corrective on jawOpen (as ARKit rigs drive it), and the result says so;
    # the one-sided shape has its side share in the quality report.
    assert report["correctives"] == {"mouthClose": "jawOpen"}
    assert set(report["side_shares"]) == {"eyeBlinkLeft"} and 0.0 <= report["side_shares"]["eyeBlinkLeft"] <= 1.0
    # Relight renders the head alone in its studio scene: a real image, not a blank frame ...
    assert [name for name in report["studio_objects"] if not name.startswith("Studio")] == [report["active"]]
    pixels = _pixels(report["render"])
    assert pixels.std() > 0.05, f"blank studio render (pixel std {pixels.std():.3f})"
    # ... and the user's scene and objects are exactly as they were.
    assert report["user_state_unchanged"], (report["user_state_before"], report["user_state_after"])


@pytest.fixture()
def head_inside_a_box(blender_addon, tmp_path):
    """A result head at the origin inside a 1 m box of the user's, as in the default scene."""
    import bpy

    from engine.result_format import HeadMesh, write_head_mesh

    rows, cols = 16, 24
    theta, phi = np.meshgrid(np.linspace(0.1, np.pi - 0.1, rows), np.linspace(0, 2 * np.pi, cols, endpoint=False),
                             indexing="ij")
    vertices = np.stack([0.09 * np.sin(theta) * np.cos(phi), 0.1 * np.sin(theta) * np.sin(phi),
                         0.12 * np.cos(theta)], -1).reshape(-1, 3).astype(np.float32)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1], np.roll(index, -1, 1)[:-1], index[1:], np.roll(index, -1, 1)[1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    write_head_mesh(tmp_path, HeadMesh(vertices, faces.astype(np.int32), ["neutral"], np.zeros((1, len(vertices), 3),
                                                                                                np.float32)))
    head = importlib.import_module(f"{blender_addon}.result_import").import_result(tmp_path, location=(0, 0, 0))
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0, 0, 0))
    box = bpy.context.active_object
    box.name = "User Box"
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    head.select_set(True)
    bpy.context.view_layer.objects.active = head
    bpy.context.view_layer.update()
    yield head, box
    mesh = box.data
    bpy.data.objects.remove(box)
    bpy.data.meshes.remove(mesh)
    bpy.data.objects.remove(head)


def test_the_studio_renders_a_head_hidden_in_the_users_box_and_leaves_the_scene_alone(
    blender_addon, head_inside_a_box, tmp_path
):
    import bpy

    head, box = head_inside_a_box
    scene = bpy.context.scene
    before = (scene.camera, scene.world, scene.render.engine, scene.frame_end, tuple(box.matrix_world.col[3]),
              box.hide_render, box.hide_viewport, [c.name for c in box.users_collection],
              sorted(o.name for o in scene.objects))
    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    studio = relight.studio_scene(create=False)
    assert studio is not scene and box.name not in studio.objects and head.name in studio.objects
    pixels = _pixels(relight.render_still(studio, tmp_path / "studio.png", size=48, samples=4))
    assert pixels.std() > 0.05, f"blank studio render (pixel std {pixels.std():.3f})"
    after = (scene.camera, scene.world, scene.render.engine, scene.frame_end, tuple(box.matrix_world.col[3]),
             box.hide_render, box.hide_viewport, [c.name for c in box.users_collection],
             sorted(o.name for o in scene.objects))
    assert after == before
    # Relighting another head puts that one alone into the studio; the first stays in the user's scene.
    second = head.copy()
    scene.collection.objects.link(second)
    bpy.context.view_layer.objects.active = second
    try:
        assert bpy.ops.idto3d.relight() == {"FINISHED"}
        assert [o.name for o in studio.objects if not o.get("idto3d_rig")] == [second.name]
        assert head.name in scene.objects
    finally:
        bpy.data.objects.remove(second)
        bpy.context.view_layer.objects.active = head
    # Open Studio shows it in this window, and goes back to the scene it came from.
    assert bpy.ops.idto3d.studio_toggle() == {"FINISHED"} and bpy.context.window.scene == studio
    assert bpy.ops.idto3d.studio_toggle() == {"FINISHED"} and bpy.context.window.scene == scene


def test_relight_keeps_what_the_user_put_in_the_studio(blender_addon, head_inside_a_box):
    """Open Studio invites the user to add things there (a backdrop): Relight again, or relighting
    another head, takes out only the head it staged itself."""
    import bpy

    head, box = head_inside_a_box
    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    studio = relight.studio_scene(create=False)
    backdrop = bpy.data.objects.new("Backdrop", bpy.data.meshes.new("Backdrop"))
    studio.collection.objects.link(backdrop)
    second = head.copy()
    bpy.context.scene.collection.objects.link(second)
    try:
        assert bpy.ops.idto3d.relight() == {"FINISHED"}  # again, e.g. to switch to an HDRI
        assert studio.collection in backdrop.users_collection and head.name in studio.objects
        bpy.context.view_layer.objects.active = second
        assert bpy.ops.idto3d.relight() == {"FINISHED"}  # another head replaces the first one ...
        assert head.name not in studio.objects and second.name in studio.objects
        assert studio.collection in backdrop.users_collection  # ... and the backdrop stays
        assert head.name in bpy.context.scene.objects and not head.get(relight.STUDIO_HEAD)
    finally:
        bpy.data.objects.remove(backdrop)
        bpy.data.objects.remove(second)
        bpy.context.view_layer.objects.active = head


def test_open_studio_shows_the_head_active_and_the_way_back(blender_addon, head_inside_a_box):
    """In the studio the head is the active object, the toggle does not depend on a selection, the
    panels that edit the user's scene are hidden and the studio panel leads back; Relight pressed
    there uses the settings of the user's scene, not the studio's own defaults."""
    import bpy

    head, box = head_inside_a_box
    scene = bpy.context.scene
    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    panels = {name: importlib.import_module(f"{blender_addon}.panels.{name}")
              for name in ("generate", "head", "studio", "references", "expressions", "settings")}
    assert bpy.ops.idto3d.relight() == {"FINISHED"}
    studio = relight.studio_scene(create=False)
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    bpy.context.view_layer.objects.active = None  # nothing selected in the user's scene
    saved_mode = scene.idto3d.light_mode
    scene.idto3d.light_mode = "HDRI"
    try:
        assert bpy.ops.idto3d.studio_toggle.poll()
        assert bpy.ops.idto3d.studio_toggle() == {"FINISHED"} and bpy.context.window.scene == studio
        assert bpy.context.view_layer.objects.active == head and head.select_get()
        assert panels["studio"].IDTO3D_PT_studio.poll(bpy.context)
        assert panels["head"].IDTO3D_PT_head.poll(bpy.context)  # the head's expressions, here too
        hidden = [panels["generate"].IDTO3D_PT_generate, panels["references"].IDTO3D_PT_references,
                  panels["expressions"].IDTO3D_PT_expressions, panels["settings"].IDTO3D_PT_settings]
        assert not any(panel.poll(bpy.context) for panel in hidden)
        assert studio.idto3d.light_mode == "AREA"  # the studio's own default ...
        assert bpy.ops.idto3d.relight() == {"FINISHED"}  # ... is not what Relight uses there
        background = next(n for n in studio.world.node_tree.nodes if n.type == "BACKGROUND")
        assert [link.from_node.type for link in background.inputs["Color"].links] == ["TEX_ENVIRONMENT"]
        assert bpy.ops.idto3d.studio_toggle() == {"FINISHED"} and bpy.context.window.scene == scene
        assert not panels["studio"].IDTO3D_PT_studio.poll(bpy.context)
        assert all(panel.poll(bpy.context) for panel in hidden)
    finally:
        bpy.context.window.scene = scene
        scene.idto3d.light_mode = saved_mode


def test_a_head_that_arrives_later_takes_the_selection_only_if_the_user_has_not_moved_on(blender_addon):
    """The head appears with the first snapshot or the result, seconds to minutes after the press.
    It becomes the active object only where the selection is what it was at the press and nothing
    is in Edit Mode; otherwise the user's object stays active (and never stuck in Edit Mode)."""
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    scene, layer = bpy.context.scene, bpy.context.view_layer
    bpy.ops.mesh.primitive_cube_add(location=(30, 0, 0))
    cube = bpy.context.active_object
    other = bpy.data.objects.new("Other", None)
    scene.collection.objects.link(other)
    heads = []

    def new_head():
        head = bpy.data.objects.new("Head", bpy.data.meshes.new("Head"))
        scene.collection.objects.link(head)
        heads.append(head)
        return head

    try:
        press = generation.selection_of(scene)  # the cube is active and selected at the press
        bpy.ops.object.mode_set(mode="EDIT")  # the user edits the cube meanwhile
        head = new_head()
        assert generation.hand_over_selection(scene, head, press) == 0
        assert layer.objects.active == cube and cube.mode == "EDIT" and bpy.context.mode == "EDIT_MESH"
        assert not head.select_get()
        bpy.ops.object.mode_set(mode="OBJECT")

        press = generation.selection_of(scene)
        layer.objects.active = other  # the user selected something else meanwhile
        other.select_set(True)
        head = new_head()
        assert generation.hand_over_selection(scene, head, press) == 0
        assert layer.objects.active == other and not head.select_get() and cube.select_get()

        press = generation.selection_of(scene)  # nothing changes until the head arrives
        head = new_head()
        assert generation.hand_over_selection(scene, head, press) == 1
        assert layer.objects.active == head and head.select_get()
        assert not cube.select_get() and not other.select_get()
    finally:
        if cube.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        for obj in (cube, other, *heads):
            bpy.data.objects.remove(obj)


def test_placement_goes_beside_what_is_at_the_cursor_or_warns(blender_addon, head_inside_a_box, monkeypatch):
    import bpy
    from mathutils import Vector

    placement = importlib.import_module(f"{blender_addon}.placement")
    head, box = head_inside_a_box
    scene = bpy.context.scene
    cursor = Vector((0.0, 0.0, 0.0))
    outside = [Vector((6.0, -6.0, 4.0))]  # a viewer outside the box, as the default Camera is
    measured = []
    real = placement.world_bounds
    monkeypatch.setattr(placement, "world_bounds", lambda obj: measured.append(obj) or real(obj))
    location, note = placement.place_head(scene, cursor, viewers=outside)
    assert "User Box" in note and "beside" in note and "so it can be seen" in note
    assert location.x >= 0.5 + placement.HEAD_HALF_EXTENT  # past the box's +X face
    assert len(measured) == len(set(measured))  # every object's bounds computed once, not once per step
    bounds = placement.scene_bounds(scene, bpy.context.view_layer)
    assert not placement.hiding(bounds, location, outside)
    kept, warning = placement.place_head(scene, cursor, beside=False, viewers=outside)
    assert kept == cursor and "User Box" in warning and "hidden" in warning
    far = Vector((50.0, 50.0, 50.0))
    assert placement.place_head(scene, far, viewers=outside) == (far, "")  # nothing there: the cursor, no note
    # The camera inside the box (a room, a set) sees the head: the box no longer counts (only the
    # fixture's own head at the cursor does).
    _, inside_note = placement.place_head(scene, cursor, viewers=[Vector((0.3, -0.3, 0.2))])
    assert "User Box" not in inside_note and head.name in inside_note


@pytest.fixture()
def user_objects(blender_addon):
    """Objects of the user's made in the test, removed afterwards with their data and collections."""
    import bpy

    made, collections = [], []

    def add(kind, *, collection=None, **options):
        getattr(bpy.ops.mesh, f"primitive_{kind}_add")(**options)
        obj = bpy.context.active_object
        if collection is not None:
            for owner in list(obj.users_collection):
                owner.objects.unlink(obj)
            collection.objects.link(obj)
        made.append(obj)
        return obj

    def new_collection(name):
        collection = bpy.data.collections.new(name)
        bpy.context.scene.collection.children.link(collection)
        collections.append(collection)
        return collection

    yield add, new_collection
    for obj in made:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
    for collection in collections:
        bpy.data.collections.remove(collection)


def test_a_floor_a_room_the_camera_is_in_and_hidden_collections_do_not_push_the_head_away(
    blender_addon, user_objects
):
    """Ordinary scenes: the head is made at the cursor on a 40 m ground plane, inside a room the
    camera is in, or where only objects of excluded or hidden collections are."""
    import bpy
    from mathutils import Vector

    placement = importlib.import_module(f"{blender_addon}.placement")
    add, new_collection = user_objects
    scene, layer = bpy.context.scene, bpy.context.view_layer
    camera = [Vector((7.4, -6.9, 5.0))]
    add("plane", size=40, location=(-40, 0, 0))  # far from the origin, where other tests leave objects
    for cursor in ((-40, 0, 0), (-40, 0, 0.5), (-40, 3, 0.1)):
        assert placement.place_head(scene, cursor, viewers=camera, view_layer=layer) == (Vector(cursor), "")
    room = add("cube", size=10, location=(-40, 0, 5))  # the camera inside it, the cursor too
    assert placement.place_head(scene, (-40, 0, 1.5), viewers=[Vector((-43, -4, 2))], view_layer=layer)[1] == ""
    # Seen from outside, the same room hides the head: it goes beside it.
    location, note = placement.place_head(scene, (-40, 0, 1.5), viewers=camera, view_layer=layer)
    assert room.name in note and location.x > -35
    # Objects that neither show nor render where the user works do not count.
    refs = new_collection("Refs")
    add("cube", size=2, location=(-80, 0, 0), collection=refs)
    layer.layer_collection.children[refs.name].exclude = True
    assert placement.place_head(scene, (-80, 0, 0), viewers=camera, view_layer=layer) == (Vector((-80, 0, 0)), "")
    layer.layer_collection.children[refs.name].exclude = False
    assert placement.place_head(scene, (-80, 0, 0), viewers=camera, view_layer=layer)[1]  # now it hides the head
    refs.hide_viewport = refs.hide_render = True
    assert placement.place_head(scene, (-80, 0, 0), viewers=camera, view_layer=layer)[1] == ""
    refs.hide_viewport = refs.hide_render = False
    # The view layer the user works in counts, not the scene's first one.
    other_layer = scene.view_layers.new("Other Layer")
    try:
        other_layer.layer_collection.children[refs.name].exclude = True
        assert placement.place_head(scene, (-80, 0, 0), viewers=camera, view_layer=other_layer)[1] == ""
        assert placement.place_head(scene, (-80, 0, 0), viewers=camera, view_layer=layer)[1]
    finally:
        scene.view_layers.remove(other_layer)


def test_frame_in_views_points_the_3d_view_at_the_head(blender_addon):
    import bpy

    placement = importlib.import_module(f"{blender_addon}.placement")
    areas = [a for w in bpy.context.window_manager.windows for a in w.screen.areas if a.type == "VIEW_3D"]
    if not areas:
        pytest.skip("this Blender has no 3D view (no UI)")
    region = areas[0].spaces.active.region_3d
    saved = region.view_location.copy(), region.view_distance
    try:
        assert placement.frame_in_views(bpy.context.window_manager, (3.0, -2.0, 1.5)) == len(areas)
        assert tuple(region.view_location) == pytest.approx((3.0, -2.0, 1.5))
        assert region.view_distance == pytest.approx(2 * placement.HEAD_HALF_EXTENT * placement.VIEW_MARGIN)
    finally:
        region.view_location, region.view_distance = saved
