"""Import Live Link Face CSV: key the head's shape keys (and optionally its rotation) from a take.

The file is read and checked whole first (:mod:`live_link`), so a malformed file keys nothing.
Columns are matched to shape keys by case-insensitive name (the app writes ``JawOpen``, ARKit and
the ARKit 52 set say ``jawOpen``); every column without a key is named in one message and skipped.
Keys land at the take's real times in the scene's frame rate (fractional frames where the two
rates differ), from the chosen start frame, linearly interpolated as the samples are. Keys already
on those channels inside the take's frame range are replaced; keys outside it stay. The head and
eye rotation columns are not shape keys: they are listed apart (the head's drive the object's
rotation when asked), and only blendshape columns without a key make the report a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from ..animation import ensure_fcurve, find_fcurve
from ..live_link import (ROTATION_COLUMNS, ROTATION_DEGREES, LiveLinkError, arkit_key, match_columns,
                         read_recording)
from .head import expression_blocks, head_key

# HeadYaw turns about Z (up), HeadPitch about X (the ear-to-ear axis), HeadRoll about Y (the face
# looks toward -Y): the Euler channel each drives. Positive values are positive Blender angles.
ROTATION_AXIS = {"headpitch": 0, "headroll": 1, "headyaw": 2}
# Mirroring a take swaps the sides: yaw and roll change sign, pitch does not (as Epic's ARKit
# support does between a mirrored and an unmirrored face).
MIRROR_SIGN = {"headpitch": 1.0, "headroll": -1.0, "headyaw": -1.0}
# The head's rotation before Live Link first keyed it: re-importing a take keys around this rest
# pose, not around the already animated rotation.
REST_ROTATION = "idto3d_live_link_rest"
_ROTATION_KEYS = {arkit_key(name) for name in ROTATION_COLUMNS}


@dataclass
class KeyedTake:
    fps: float  # the take's frame rate
    fps_from_timecode: bool  # False: a clip under one second, keyed at the scene's rate
    first_frame: float
    last_frame: float
    rows: int
    shape_keys: list[str] = field(default_factory=list)
    rotation: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # blendshape columns with no matching shape key
    rotation_not_keyed: list[str] = field(default_factory=list)  # head/eye rotation columns left alone

    def message(self) -> str:
        rate = f"{self.fps:.4g} fps" + ("" if self.fps_from_timecode else " (the scene's; the take is under a second)")
        text = (
            f"Keyed {len(self.shape_keys)} shape keys"
            + (" and the head's rotation" if self.rotation else "")
            + f" from {self.rows} frames at {rate}, frames {self.first_frame:g}–{self.last_frame:g}"
        )
        if self.skipped:
            text += f". Skipped {len(self.skipped)} columns with no matching shape key: {', '.join(self.skipped)}"
        if self.rotation_not_keyed:
            text += (f". Rotation columns not keyed ({len(self.rotation_not_keyed)}): "
                     f"{', '.join(self.rotation_not_keyed)}")
        return text


def _write_keys(fcurve, frames: np.ndarray, values: np.ndarray) -> None:
    """Replace the curve's keys inside [frames[0], frames[-1]] by (frames, values), linear."""
    linear = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
    points = fcurve.keyframe_points
    low, high = float(frames[0]) - 1e-4, float(frames[-1]) + 1e-4
    if len(points):
        co = np.empty(len(points) * 2, np.float32)
        points.foreach_get("co", co)
        inside = (co[0::2] >= low) & (co[0::2] <= high)
        if inside.all():
            points.clear()
        else:
            for index in np.flatnonzero(inside)[::-1]:
                points.remove(points[int(index)], fast=True)
    start = len(points)
    points.add(len(frames))
    co = np.empty(len(points) * 2, np.float32)
    points.foreach_get("co", co)
    co[start * 2 :: 2] = frames
    co[start * 2 + 1 :: 2] = values
    points.foreach_set("co", co)
    interpolation = np.empty(len(points), np.int32)
    points.foreach_get("interpolation", interpolation)
    interpolation[start:] = linear
    points.foreach_set("interpolation", interpolation)
    fcurve.update()  # sorted by frame, handles recalculated


def rest_rotation(obj) -> tuple[float, float, float]:
    """The head's rotation to key a take around: the one stored when Live Link first keyed it,
    while its rotation is still animated; otherwise its rotation now (stored for next time)."""
    stored = obj.get(REST_ROTATION)
    animated = any(find_fcurve(obj, "rotation_euler", axis) is not None for axis in range(3))
    if stored is not None and len(stored) == 3 and animated:
        return tuple(float(value) for value in stored)
    rest = tuple(float(value) for value in obj.rotation_euler)
    obj[REST_ROTATION] = rest
    return rest


def key_take(obj, path: Path | str, *, start_frame: float, scene_fps: float, head_rotation: bool,
             rotation_degrees: float = ROTATION_DEGREES, mirror: bool = False) -> KeyedTake:
    """Key ``obj``'s shape keys (and rotation) from the Live Link Face CSV at ``path``.

    ``rotation_degrees``: the angle of 1.0 in a rotation column. ``mirror``: a take of a mirrored
    capture (each *Left column drives the *Right shape key, yaw and roll change sign)."""
    key = head_key(obj)
    if key is None:
        raise LiveLinkError(f"{getattr(obj, 'name', 'the active object')} has no shape keys: select a generated head")
    take = read_recording(path)
    matched, unmatched = match_columns(take.columns, [block.name for block in expression_blocks(key)], mirror=mirror)
    rotation = [c for c in unmatched if head_rotation and c.casefold() in ROTATION_AXIS]
    rotation_not_keyed = [c for c in unmatched if arkit_key(c) in _ROTATION_KEYS and c not in rotation]
    skipped = [c for c in unmatched if c not in rotation and c not in rotation_not_keyed]
    if not matched and not rotation:
        raise LiveLinkError(
            f"None of the {len(take.columns)} columns of {Path(path).name} matches a shape key of {obj.name}: "
            "generate the head with the ARKit 52 expression set (Expressions panel) to drive it from Live Link Face"
        )
    if rotation and obj.rotation_mode in ("QUATERNION", "AXIS_ANGLE"):
        raise LiveLinkError(
            f"{obj.name} uses {obj.rotation_mode.replace('_', ' ').lower()} rotation: set its rotation mode to an "
            "Euler mode, or import without the head rotation"
        )
    fps, from_timecode = take.rate, take.rate_is_certain
    if not from_timecode:
        if scene_fps <= take.highest_frame:
            raise LiveLinkError(
                f"{Path(path).name} is shorter than a second, so its frame rate cannot be read from the timecode, "
                f"and its frame numbers reach {take.highest_frame}, more than the scene's {scene_fps:g} fps allows"
            )
        fps = scene_fps
    frames = (start_frame + take.seconds(None if from_timecode else fps) * scene_fps).astype(np.float32)
    for column, name in matched.items():
        _write_keys(ensure_fcurve(key, f'key_blocks["{bpy.utils.escape_identifier(name)}"].value',
                                  action_name=f"{key.name} Live Link"), frames, take.column(column))
    if rotation:
        rest = rest_rotation(obj)
        scale = np.radians(rotation_degrees)
        for column in rotation:
            axis = ROTATION_AXIS[column.casefold()]
            sign = MIRROR_SIGN[column.casefold()] if mirror else 1.0
            _write_keys(ensure_fcurve(obj, "rotation_euler", axis, action_name=f"{obj.name} Live Link"), frames,
                        rest[axis] + sign * take.column(column).astype(np.float64) * scale)
    return KeyedTake(fps, from_timecode, float(frames[0]), float(frames[-1]), len(frames),
                     shape_keys=list(matched.values()), rotation=rotation, skipped=skipped,
                     rotation_not_keyed=rotation_not_keyed)


class IDTO3D_OT_import_live_link(bpy.types.Operator):
    bl_idname = "idto3d.import_live_link"
    bl_label = "Import Live Link Face CSV"
    bl_description = (
        "Key the active head's shape keys from a Live Link Face recording (columns matched to shape "
        "keys by name; a head made with the ARKit 52 set matches every blendshape)"
    )
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN"})
    head_rotation: BoolProperty(
        name="Head Rotation",
        description="Also key the head object's rotation from HeadYaw (about Z), HeadPitch (X) and HeadRoll (Y), "
                    "on top of its rotation before the first take",
        default=False,
    )
    rotation_degrees: FloatProperty(
        name="Rotation Scale",
        description="The angle of 1.0 in a rotation column. 180° is Epic's ARKit face support (-180..180° "
                    "written as -1..1); some importers assume 90°",
        default=ROTATION_DEGREES, min=1.0, max=360.0, soft_min=45.0, soft_max=180.0,
    )
    mirror: BoolProperty(
        name="Mirror L/R",
        description="The take is mirrored (as the phone's front camera sees the face): each *Left column drives "
                    "the *Right shape key and the other way round, head yaw and roll change sign",
        default=False,
    )
    start_frame: IntProperty(name="Start Frame", description="Scene frame of the take's first row", default=1)

    @classmethod
    def poll(cls, context):
        return head_key(context.active_object) is not None

    def invoke(self, context, event):
        self.start_frame = context.scene.frame_current
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        scene = context.scene
        try:
            keyed = key_take(
                context.active_object,
                bpy.path.abspath(self.filepath),
                start_frame=self.start_frame,
                scene_fps=scene.render.fps / scene.render.fps_base,
                head_rotation=self.head_rotation,
                rotation_degrees=self.rotation_degrees,
                mirror=self.mirror,
            )
        except LiveLinkError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        scene.frame_start = min(scene.frame_start, max(0, int(np.floor(keyed.first_frame))))
        scene.frame_end = max(scene.frame_end, int(np.ceil(keyed.last_frame)))
        self.report({"WARNING"} if keyed.skipped else {"INFO"}, keyed.message())
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_import_live_link,)
