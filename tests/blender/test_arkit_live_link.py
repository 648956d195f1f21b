"""The ARKit 52 expression set and Import Live Link Face CSV, in real Blender.

The recordings are written here in the app's real layout: ``Timecode`` (HH:MM:SS:FF.fraction),
``BlendShapeCount``, the 52 blendshapes in the app's UpperCamelCase and order, then head and eye
yaw/pitch/roll.
"""

from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest

# Apple's ARFaceAnchor.BlendShapeLocation constants by their Swift names (eyeBlinkLeft; the raw
# string values a device reports are eyeBlink_L, mouthUpperUp_R, ...), written out here from ARKit's
# documentation (not taken from the add-on), in the Live Link Face app's column order.
APPLE_NAMES = """
eyeBlinkLeft eyeLookDownLeft eyeLookInLeft eyeLookOutLeft eyeLookUpLeft eyeSquintLeft eyeWideLeft
eyeBlinkRight eyeLookDownRight eyeLookInRight eyeLookOutRight eyeLookUpRight eyeSquintRight eyeWideRight
jawForward jawRight jawLeft jawOpen mouthClose mouthFunnel mouthPucker mouthRight mouthLeft
mouthSmileLeft mouthSmileRight mouthFrownLeft mouthFrownRight mouthDimpleLeft mouthDimpleRight
mouthStretchLeft mouthStretchRight mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper
mouthPressLeft mouthPressRight mouthLowerDownLeft mouthLowerDownRight mouthUpperUpLeft mouthUpperUpRight
browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft
cheekSquintRight noseSneerLeft noseSneerRight tongueOut
""".split()
TRAILING = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
            "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]


def live_link_csv(path, fps=60, rows=90, start=(16, 29, 52, 41), values=None, bad=None, extra=()):
    """A take as the app writes it; ``values(k) -> dict(column -> value)`` overrides zeros;
    ``extra`` adds columns after the app's own."""
    header = ["Timecode", "BlendShapeCount", *[n[0].upper() + n[1:] for n in APPLE_NAMES], *TRAILING, *extra]
    lines = [",".join(header)]
    h, m, s, f = start
    for k in range(rows):
        frame = f + k
        second = s + frame // fps
        timecode = f"{h:02d}:{m:02d}:{second:02d}:{frame % fps:02d}.{(k * 37) % 1000:03d}"
        row = {name: 0.0 for name in header[2:]}
        row.update(values(k) if values else {})
        cells = [timecode, "61", *[f"{row[name]:.6f}" for name in header[2:]]]
        lines.append(",".join(cells))
    if bad:
        bad(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def arkit_head(blender_addon, tmp_path):
    """A head imported from a result folder whose expressions are neutral + the ARKit 52."""
    import bpy

    from engine.result_format import HeadMesh, write_head_mesh

    rows, cols = 10, 12
    theta, phi = np.meshgrid(np.linspace(0.2, np.pi - 0.2, rows), np.linspace(0, 2 * np.pi, cols, endpoint=False),
                             indexing="ij")
    vertices = np.stack([0.09 * np.sin(theta) * np.cos(phi), 0.1 * np.sin(theta) * np.sin(phi),
                         0.12 * np.cos(theta)], -1).reshape(-1, 3).astype(np.float32)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1], np.roll(index, -1, 1)[:-1], index[1:], np.roll(index, -1, 1)[1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    names = ["neutral", *APPLE_NAMES]
    offsets = np.zeros((len(names), len(vertices), 3), np.float32)
    offsets[1:, :, 2] = 0.001 * np.arange(1, len(names))[:, None]
    write_head_mesh(tmp_path, HeadMesh(vertices, faces.astype(np.int32), names, offsets))
    obj = importlib.import_module(f"{blender_addon}.result_import").import_result(tmp_path)
    bpy.context.view_layer.objects.active = obj
    scene = bpy.context.scene
    saved = scene.render.fps, scene.render.fps_base, scene.frame_end
    scene.render.fps, scene.render.fps_base = 30, 1.0
    yield obj
    scene.render.fps, scene.render.fps_base, scene.frame_end = saved
    if obj.animation_data and obj.animation_data.action:
        bpy.data.actions.remove(obj.animation_data.action)
    key_action = obj.data.shape_keys.animation_data and obj.data.shape_keys.animation_data.action
    if key_action:
        bpy.data.actions.remove(key_action)
    bpy.data.objects.remove(obj)


def _value_at(datablock, data_path, frame, index=0):
    import sys

    animation = next(module for name, module in sys.modules.items() if name.endswith("id_to_3d.animation"))
    return animation.find_fcurve(datablock, data_path, index).evaluate(frame)


# --------------------------------------------------------------------------------------- ARKit 52


def test_the_arkit_set_lists_apples_52_names_each_with_its_own_prompt(blender_addon):
    import bpy

    from engine.pipeline.job import check_expression_names

    settings = bpy.context.scene.idto3d
    try:
        assert bpy.ops.idto3d.expressions_reset(expression_set="ARKIT52") == {"FINISHED"}
        names = [item.text for item in settings.expressions]
        prompts = [item.prompt for item in settings.expressions]
        assert names[0] == "neutral" and len(names) == 53
        assert sorted(names[1:]) == sorted(APPLE_NAMES) and len(set(APPLE_NAMES)) == 52
        assert check_expression_names(names) == []
        assert all(p.strip() for p in prompts[1:]) and len(set(prompts[1:])) == 52  # 52 distinct descriptions
        generation = importlib.import_module(f"{blender_addon}.generation")
        # The prompt is user-visible and editable: the job carries what the user wrote.
        settings.expressions[names.index("jawOpen")].prompt = "jaw dropped, mouth open very wide"
        settings.expressions[names.index("tongueOut")].enabled = False
        in_use = [n for n, item in zip(names, settings.expressions) if item.enabled]
        sent = generation.expression_prompts(settings, in_use)
        assert sent["jawOpen"] == "jaw dropped, mouth open very wide"
        assert "tongueOut" not in sent and len(sent) == 51 and "neutral" not in sent
        assert sent["eyeBlinkLeft"] == prompts[names.index("eyeBlinkLeft")]
    finally:
        bpy.ops.idto3d.expressions_reset()
    assert [item.prompt for item in settings.expressions] == [""] * 7  # the basic set has no prompts


def test_the_panel_warns_how_few_steps_each_arkit_shape_gets(blender_addon):
    """The estimate is checked against the engine's own choice of expression per geometry step
    (pick_expression with the per-step seeds), not against the formula it uses."""
    from collections import Counter

    import bpy

    from engine.pipeline.geometry_stage import CHOICE
    from engine.pipeline.presets import PRESETS
    from engine.pipeline.seeds import GEOMETRY, pick_expression, step_rng

    generation = importlib.import_module(f"{blender_addon}.generation")
    preset = PRESETS["standard"]
    names = ["neutral", *APPLE_NAMES]
    picks = Counter(pick_expression(names, preset.neutral_fraction, step_rng(0, GEOMETRY, step, CHOICE))
                    for step in range(preset.geometry_steps))
    measured = np.mean([picks[name] for name in APPLE_NAMES])
    assert generation.steps_per_expression("STANDARD", 52) == pytest.approx(measured, rel=0.05)
    settings = bpy.context.scene.idto3d
    saved = settings.preset
    try:
        settings.preset = "STANDARD"
        bpy.ops.idto3d.expressions_reset(expression_set="ARKIT52")
        note = generation.step_budget_note(settings)
        each, six = generation.steps_per_expression("STANDARD", 52), generation.steps_per_expression("STANDARD", 6)
        assert f"52 expressions share the Standard preset's geometry steps: about {each} each ({six} with six)" in note
        assert six >= 8 * each and "High preset" in note
        for item in list(settings.expressions)[15:]:  # neutral and the eyes only: 14 shapes
            item.enabled = False
        assert "14 expressions" in generation.step_budget_note(settings)
        bpy.ops.idto3d.expressions_reset()
        assert generation.step_budget_note(settings) == ""  # the six emotions: what the presets are set for
    finally:
        settings.preset = saved


def test_renaming_an_item_of_a_set_drops_the_sets_prompt_but_keeps_the_users(blender_addon):
    import bpy

    settings = bpy.context.scene.idto3d
    try:
        bpy.ops.idto3d.expressions_reset(expression_set="ARKIT52")
        items = {item.text: item for item in settings.expressions}
        jaw, smile = items["jawOpen"], items["mouthSmileLeft"]
        jaw.text = "yawning"  # the set's "mouth wide open, jaw dropped" described jawOpen, not this
        assert jaw.prompt == ""
        smile.prompt = "a crooked grin on the left"  # the user's own prompt
        smile.text = "grin"
        assert smile.prompt == "a crooked grin on the left"
        assert items["eyeBlinkLeft"].prompt  # untouched items keep theirs
    finally:
        bpy.ops.idto3d.expressions_reset()


# ------------------------------------------------------------------------------- Live Link Face


def test_a_live_link_take_keys_every_shape_key_at_its_real_time(arkit_head, tmp_path, blender_addon):
    import bpy

    def values(k):
        return {"JawOpen": 0.5 + 0.5 * math.sin(k / 7), "EyeBlinkLeft": (k % 10) / 10, "TongueOut": 0.25,
                "HeadYaw": 0.1, "LeftEyeYaw": 0.3}

    take = live_link_csv(tmp_path / "take.csv", fps=60, rows=90, values=values)
    assert bpy.ops.idto3d.import_live_link(filepath=str(take), start_frame=10) == {"FINISHED"}
    key = arkit_head.data.shape_keys
    # 60 fps take into a 30 fps scene: row k lands on scene frame 10 + k/2, at its fraction of a frame.
    fraction = [(k * 37) % 1000 / 1000 for k in range(90)]
    for k in (0, 13, 40, 89):
        frame = 10 + (k + fraction[k] - fraction[0]) * 30 / 60
        assert _value_at(key, 'key_blocks["jawOpen"].value', frame) == pytest.approx(
            0.5 + 0.5 * math.sin(k / 7), abs=1e-5)
        assert _value_at(key, 'key_blocks["eyeBlinkLeft"].value', frame) == pytest.approx((k % 10) / 10, abs=1e-5)
    bpy.context.scene.frame_set(30)
    assert key.key_blocks["tongueOut"].value == pytest.approx(0.25)
    assert bpy.context.scene.frame_end >= 10 + 45
    assert arkit_head.animation_data is None  # rotation was not asked for


def test_unmatched_columns_are_named_in_one_message_and_skipped(arkit_head, tmp_path, blender_addon):
    live_link = importlib.import_module(f"{blender_addon}.operators.live_link")
    keyed = live_link.key_take(arkit_head, live_link_csv(tmp_path / "take.csv"), start_frame=1, scene_fps=30,
                               head_rotation=False)
    assert keyed.fps == 60 and keyed.fps_from_timecode  # read from the timecode's frame numbers
    # The app's own rotation columns are no shape keys: listed apart, not a warning.
    assert len(keyed.shape_keys) == 52 and keyed.skipped == [] and keyed.rotation_not_keyed == TRAILING
    assert "no matching shape key" not in keyed.message()
    assert "Rotation columns not keyed (9): HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw" in keyed.message()
    keyed = live_link.key_take(arkit_head, live_link_csv(tmp_path / "more.csv", extra=["MyCurve", "Smirk"]),
                               start_frame=1, scene_fps=30, head_rotation=True)
    assert keyed.skipped == ["MyCurve", "Smirk"] and keyed.rotation == ["HeadYaw", "HeadPitch", "HeadRoll"]
    assert "Skipped 2 columns with no matching shape key: MyCurve, Smirk" in keyed.message()
    assert keyed.rotation_not_keyed == TRAILING[3:]


def test_the_frame_rate_comes_from_the_timecode(arkit_head, tmp_path, blender_addon):
    live_link = importlib.import_module(f"{blender_addon}.operators.live_link")
    take = live_link_csv(tmp_path / "take24.csv", fps=24, rows=40, start=(10, 0, 5, 20))
    keyed = live_link.key_take(arkit_head, take, start_frame=1, scene_fps=30, head_rotation=False)
    assert keyed.fps == 24
    # row 39 is 39 frames of 24 fps (plus the fraction) after row 0: 1.625 s -> 48.75 scene frames
    assert keyed.last_frame == pytest.approx(1 + (39 + ((39 * 37) % 1000 - 0) / 1000) * 30 / 24, abs=1e-3)


def test_head_rotation_columns_drive_the_head_object_as_an_option(arkit_head, tmp_path, blender_addon):
    """Expected angles by the cited convention, not by the add-on's constant: Epic's ARKit face
    support writes the tracked rotation as degrees / 180 (ToBlendShapeMap, "Map the -180..180
    range to -1..1"), so a HeadYaw of 30/180 is a 30° turn."""
    import bpy

    arkit_head.rotation_euler = (0.0, 0.0, 0.2)  # the user's own orientation stays the rest pose
    take = live_link_csv(tmp_path / "take.csv", rows=30,
                         values=lambda k: {"HeadYaw": (k / 29) * 30 / 180, "HeadPitch": -45 / 180,
                                           "HeadRoll": 18 / 180})
    assert bpy.ops.idto3d.import_live_link(filepath=str(take), start_frame=1, head_rotation=True) == {"FINISHED"}
    frame = 1 + (29 + ((29 * 37) % 1000) / 1000) * 30 / 60  # the last row
    assert _value_at(arkit_head, "rotation_euler", frame, 2) == pytest.approx(0.2 + math.radians(30), abs=1e-4)
    assert _value_at(arkit_head, "rotation_euler", frame, 0) == pytest.approx(math.radians(-45), abs=1e-4)
    assert _value_at(arkit_head, "rotation_euler", frame, 1) == pytest.approx(math.radians(18), abs=1e-4)
    # Importing the same take again keys the same angles around the same rest pose (not doubled) ...
    bpy.context.scene.frame_set(int(frame))
    assert bpy.ops.idto3d.import_live_link(filepath=str(take), start_frame=1, head_rotation=True) == {"FINISHED"}
    assert _value_at(arkit_head, "rotation_euler", frame, 2) == pytest.approx(0.2 + math.radians(30), abs=1e-4)
    assert _value_at(arkit_head, "rotation_euler", frame, 0) == pytest.approx(math.radians(-45), abs=1e-4)
    # ... and a take recorded mirrored turns the other way, at the scale the user chose.
    assert bpy.ops.idto3d.import_live_link(filepath=str(take), start_frame=1, head_rotation=True, mirror=True,
                                           rotation_degrees=90) == {"FINISHED"}
    assert _value_at(arkit_head, "rotation_euler", frame, 2) == pytest.approx(0.2 - math.radians(15), abs=1e-4)
    assert _value_at(arkit_head, "rotation_euler", frame, 0) == pytest.approx(math.radians(-22.5), abs=1e-4)
    assert _value_at(arkit_head, "rotation_euler", frame, 1) == pytest.approx(math.radians(-9), abs=1e-4)


def test_mirror_and_on_device_names_match_the_other_side_and_raw_arkit_spellings(arkit_head, tmp_path,
                                                                                 blender_addon):
    live_link = importlib.import_module(f"{blender_addon}.operators.live_link")
    take = live_link_csv(tmp_path / "take.csv", rows=30, values=lambda k: {"EyeBlinkLeft": 0.8, "JawLeft": 0.3})
    keyed = live_link.key_take(arkit_head, take, start_frame=1, scene_fps=30, head_rotation=False, mirror=True)
    key = arkit_head.data.shape_keys
    assert _value_at(key, 'key_blocks["eyeBlinkRight"].value', 3) == pytest.approx(0.8)
    assert _value_at(key, 'key_blocks["eyeBlinkLeft"].value', 3) == pytest.approx(0.0)
    assert _value_at(key, 'key_blocks["jawRight"].value', 3) == pytest.approx(0.3) and len(keyed.shape_keys) == 52
    # A take whose columns use ARKit's raw on-device values (eyeBlink_L, mouthUpperUp_R).
    raw = tmp_path / "raw.csv"
    raw.write_text("Timecode,BlendShapeCount,eyeBlink_L,mouthUpperUp_R,jawOpen\n"
                   "10:00:00:00.000,3,0.25,0.5,0.75\n10:00:00:01.000,3,0.25,0.5,0.75\n", encoding="utf-8")
    keyed = live_link.key_take(arkit_head, raw, start_frame=1, scene_fps=30, head_rotation=False)
    assert sorted(keyed.shape_keys) == ["eyeBlinkLeft", "jawOpen", "mouthUpperUpRight"] and not keyed.skipped
    assert _value_at(key, 'key_blocks["mouthUpperUpRight"].value', 1) == pytest.approx(0.5)


def _timecode_take(path, timecodes, *, newline="\n", bom=False, value=lambda k: k / 100):
    lines = ["Timecode,BlendShapeCount,JawOpen"] + [f"{tc},1,{value(k):.6f}" for k, tc in enumerate(timecodes)]
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))
    return path


def _drop_frame_label(n: int) -> str:
    """SMPTE 29.97 drop-frame timecode of frame ``n`` (the standard frames-to-timecode formula:
    two labels skipped each minute, except every tenth), written out here, not taken from the add-on."""
    tens, rest = divmod(n, 17982)
    n += 18 * tens + (2 * ((rest - 2) // 1798) if rest >= 2 else 0)
    return f"{n // 108000:02d}:{n // 1800 % 60:02d}:{n // 30 % 60:02d};{n % 30:02d}"


def test_real_timecode_layouts_put_every_row_at_its_time(arkit_head, tmp_path, blender_addon):
    """60 fps captured on a 30 fps timecode (.5 subframes), drop-frame 29.97 across minute
    boundaries (the tenth minute keeps its labels), a take over midnight, CRLF line ends, a BOM."""
    read = importlib.import_module(f"{blender_addon}.live_link").read_recording
    sixty = [f"12:00:{k // 60:02d}:{k // 2 % 30:02d}.{500 if k % 2 else 0:03d}" for k in range(150)]
    take = read(_timecode_take(tmp_path / "sixty.csv", sixty))
    assert take.fps == 30 and take.seconds() == pytest.approx(np.arange(150) / 60)
    for first, boundary in ((1790, ("00:00:59;29", "00:01:00;02")), (17972, ("00:09:59;29", "00:10:00;00"))):
        labels = [_drop_frame_label(n) for n in range(first, first + 40)]
        assert tuple(labels[9:11]) == boundary  # the labels skipped (or kept, every tenth minute)
        take = read(_timecode_take(tmp_path / f"df{first}.csv", labels))
        assert take.drop_frame and take.rate == pytest.approx(29.97, abs=0.001)
        assert take.seconds() == pytest.approx(np.arange(40) * 1001 / 30000, abs=1e-9)
    midnight = [f"23:59:59:{f:02d}" for f in range(50, 60)] + [f"00:00:00:{f:02d}" for f in range(10)]
    assert read(_timecode_take(tmp_path / "midnight.csv", midnight)).seconds() == pytest.approx(np.arange(20) / 60)
    plain = _timecode_take(tmp_path / "lf.csv", sixty)
    for name, options in (("crlf.csv", {"newline": "\r\n"}), ("bom.csv", {"bom": True})):
        other = read(_timecode_take(tmp_path / name, sixty, **options))
        assert other.columns == ["JawOpen"] and other.values.tolist() == read(plain).values.tolist()
    # The whole path into the scene: a CRLF take with a BOM keys the shape key at the rows' times.
    live_link = importlib.import_module(f"{blender_addon}.operators.live_link")
    keyed = live_link.key_take(arkit_head, _timecode_take(tmp_path / "both.csv", sixty, newline="\r\n", bom=True),
                               start_frame=1, scene_fps=30, head_rotation=False)
    assert keyed.shape_keys == ["jawOpen"] and keyed.last_frame == pytest.approx(1 + 149 / 2)
    assert _value_at(arkit_head.data.shape_keys, 'key_blocks["jawOpen"].value', 1 + 77 / 2) == pytest.approx(0.77)


def test_a_take_before_the_scene_start_moves_the_start(arkit_head, tmp_path):
    import bpy

    scene = bpy.context.scene
    saved = scene.frame_start
    scene.frame_start = 50
    try:
        take = live_link_csv(tmp_path / "take.csv", rows=20)
        assert bpy.ops.idto3d.import_live_link(filepath=str(take), start_frame=10) == {"FINISHED"}
        assert scene.frame_start == 10 and scene.frame_end >= 19
    finally:
        scene.frame_start = saved


def test_a_new_take_replaces_the_keys_inside_its_range_and_keeps_the_rest(arkit_head, tmp_path, blender_addon):
    live_link = importlib.import_module(f"{blender_addon}.operators.live_link")
    first = live_link_csv(tmp_path / "first.csv", fps=60, rows=60, values=lambda k: {"JawOpen": 0.1})
    live_link.key_take(arkit_head, first, start_frame=1, scene_fps=30, head_rotation=False)  # frames 1 .. ~30.5
    second = live_link_csv(tmp_path / "second.csv", fps=24, rows=12, start=(1, 0, 0, 0),
                           values=lambda k: {"JawOpen": 0.9})
    keyed = live_link.key_take(arkit_head, second, start_frame=1, scene_fps=30, head_rotation=False)
    key = arkit_head.data.shape_keys
    action = key.animation_data.action
    curve = (action.fcurve_ensure_for_datablock(key, 'key_blocks["jawOpen"].value')
             if hasattr(action, "fcurve_ensure_for_datablock") else action.fcurves.find('key_blocks["jawOpen"].value'))
    frames = [point.co.x for point in curve.keyframe_points]
    kept = [f for f in frames if f > keyed.last_frame + 1e-3]
    assert len(frames) == 12 + len(kept) and kept  # the first take's keys after the second's range stay
    assert curve.evaluate(5) == pytest.approx(0.9) and curve.evaluate(kept[-1]) == pytest.approx(0.1)
    longer = live_link_csv(tmp_path / "longer.csv", fps=50, rows=100, values=lambda k: {"JawOpen": 0.5})
    live_link.key_take(arkit_head, longer, start_frame=1, scene_fps=30, head_rotation=False)  # covers all
    assert len(curve.keyframe_points) == 100 and curve.evaluate(5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        (lambda lines: lines.__setitem__(5, lines[5].replace("0.000000", "abc", 1)), "line 6, column"),
        (lambda lines: lines.__setitem__(3, lines[3] + ",0.5"), "line 4: 64 values where the header names 63"),
        (lambda lines: lines.__setitem__(7, "16:29:5x:10.000" + lines[7][15:]), "line 8: timecode"),
        (lambda lines: lines.__setitem__(0, lines[0].replace("Timecode", "Time")), "line 1: the first column"),
        (lambda lines: lines.__setitem__(9, lines[2]), "line 10: timecode"),  # goes back in time
        (lambda lines: lines.__setitem__(4, lines[4].replace("0.000000", "nan", 1)), "line 5, column"),
        (lambda lines: lines.__setitem__(0, lines[0].replace("JawOpen", "EyeBlinkLeft")), "appears twice"),
        (lambda lines: lines.__delitem__(slice(1, None)), "no frames"),
        (lambda lines: lines.__setitem__(6, lines[5]), "line 7: timecode .* is not later"),  # a repeated row
        (lambda lines: lines.__setitem__(3, lines[3][:8] + ";" + lines[3][9:]), "line 4: timecode .* mixes drop-frame"),
    ],
    ids=["text value", "extra value", "bad timecode", "no Timecode", "backwards", "nan", "duplicate", "empty take",
         "repeated row", "mixed drop-frame"],
)
def test_a_malformed_take_is_refused_naming_the_line_and_keys_nothing(arkit_head, tmp_path, breakage, fragment):
    import bpy

    take = live_link_csv(tmp_path / "bad.csv", rows=12, values=lambda k: {"JawOpen": 0.5}, bad=breakage)
    with pytest.raises(RuntimeError, match="bad.csv") as raised:
        bpy.ops.idto3d.import_live_link(filepath=str(take))
    assert re.search(fragment, str(raised.value)), str(raised.value)
    assert arkit_head.data.shape_keys.animation_data is None and arkit_head.animation_data is None


def test_a_head_without_matching_keys_is_told_to_use_the_arkit_set(blender_addon, tmp_path):
    import bpy

    bpy.ops.mesh.primitive_cube_add(location=(5, 5, 5))
    cube = bpy.context.active_object
    cube.shape_key_add(name="Basis")
    cube.shape_key_add(name="smiling")
    try:
        with pytest.raises(RuntimeError, match="ARKit 52 expression set"):
            bpy.ops.idto3d.import_live_link(filepath=str(live_link_csv(tmp_path / "take.csv", rows=5)))
        assert cube.data.shape_keys.animation_data is None
    finally:
        mesh = cube.data
        bpy.data.objects.remove(cube)
        bpy.data.meshes.remove(mesh)
