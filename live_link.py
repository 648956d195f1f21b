"""Read a Live Link Face recording (the CSV Epic's iPhone app writes for each take). No bpy here.

The file's first line names the columns: ``Timecode``, ``BlendShapeCount``, the 52 ARKit
blendshapes in UpperCamelCase (``EyeBlinkLeft`` … ``TongueOut``: ARKit spells them
``eyeBlinkLeft``, hence matching by case-insensitive name), then ``HeadYaw``, ``HeadPitch``,
``HeadRoll`` and the eyes' yaw/pitch/roll. Every further line is one captured frame.

Timecode ``HH:MM:SS:FF.fff`` is hours, minutes, seconds, the frame number within the second and
the fraction of a frame (a 60 fps capture on a 30 fps timecode writes ``.5`` for every other
row). The frame rate is not written anywhere else, so it comes from the frame numbers: they count
0 … rate-1 inside each second and start again at 0 when the seconds roll over, so the rate is the
highest frame number + 1 (:attr:`Recording.fps`), trusted once at least one rollover was seen (a
clip shorter than a second only gives a lower bound). Each row's time is then
``HH·3600 + MM·60 + SS + (FF + fraction) / rate``. A take that runs past midnight counts on.

Drop-frame timecode (``HH:MM:SS;FF``, SMPTE 12M) is 29.97 or 59.94 fps: frame numbers 0 and 1
(0 … 3 at 59.94) are skipped at the start of every minute except every tenth, so that the
timecode keeps up with the clock. Its rows are counted back to real frames and timed at
30000/1001 (60000/1001) fps.

Head and eye rotation (``HeadYaw`` … ``RightEyeRoll``) are written as -1 … 1 for -180° … 180°:
Epic's ARKit face support maps the tracked rotator that way before the values reach Live Link
(``ToBlendShapeMap`` in Unreal Engine's AppleARKitFaceSupport plugin,
``AppleARKitFaceMeshConversion.h``: "Map the -180..180 range to -1..1", yaw and roll negated when
the face is not mirrored). :data:`ROTATION_DEGREES` is that scale.

A malformed file is refused as a whole with :class:`LiveLinkError` naming the line, before
anything is keyed.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TIMECODE = "timecode"
COUNT = "blendshapecount"
HEAD_ROTATION = ("HeadYaw", "HeadPitch", "HeadRoll")
# Every rotation column the app writes (not shape keys): the head's, and each eye's.
ROTATION_COLUMNS = (*HEAD_ROTATION, "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                    "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
# Degrees for 1.0 in a rotation column (see the module docstring: Epic's -180..180 -> -1..1).
ROTATION_DEGREES = 180.0
_TIMECODE = re.compile(r"^\s*(\d{1,2}):(\d{2}):(\d{2})([:;])(\d{1,3})(\.\d+)?\s*$")
MAX_BYTES = 512 * 1024 * 1024  # a one-hour take at 60 fps is ~150 MB


class LiveLinkError(ValueError):
    """The file is not a Live Link Face recording this importer can read; the message names the line."""


@dataclass
class Recording:
    path: Path
    columns: list[str]  # every value column, as the file spells it (not Timecode, BlendShapeCount)
    values: np.ndarray  # float32 [rows, columns]
    whole_seconds: np.ndarray  # float64 [rows]: HH:MM:SS of each row, in seconds
    frame_numbers: np.ndarray  # float64 [rows]: FF plus its fraction
    lines: list[int] = field(default_factory=list)  # the file line of each row (the header is line 1)
    drop_frame: bool = False  # HH:MM:SS;FF timecode (29.97 / 59.94 fps)

    @property
    def highest_frame(self) -> int:
        return int(np.floor(self.frame_numbers.max()))

    @property
    def fps(self) -> int:
        """Frames per second from the timecode: the highest frame number + 1 (drop-frame: the
        nominal 30 or 60)."""
        if self.drop_frame:
            return 30 if self.highest_frame < 30 else 60
        return self.highest_frame + 1

    @property
    def rate(self) -> float:
        """The real frame rate: :attr:`fps`, or 30000/1001 and 60000/1001 for drop-frame timecode."""
        return self.fps * 1000 / 1001 if self.drop_frame else float(self.fps)

    @property
    def rollovers(self) -> int:
        """How often the seconds changed from one row to the next."""
        return int(np.count_nonzero(np.diff(self.whole_seconds) > 0))

    @property
    def rate_is_certain(self) -> bool:
        """At least one rollover: the frame numbers ran through a whole second (drop-frame rates
        are one of two, told apart by the frame numbers themselves)."""
        return self.rollovers > 0 or self.drop_frame

    def seconds(self, fps: float | None = None) -> np.ndarray:
        """Each row's time in seconds after the first row, at ``fps`` (default: the timecode's)."""
        if self.drop_frame:
            nominal = self.fps
            minutes = np.floor(self.whole_seconds / 60)
            dropped = nominal // 15 * (minutes - np.floor(minutes / 10))  # 2 (4) labels a minute, not every tenth
            frames = self.whole_seconds * nominal + self.frame_numbers - dropped
            times = frames * 1001 / (nominal * 1000)
        else:
            times = self.whole_seconds + self.frame_numbers / (fps or self.fps)
        return times - times[0]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def _timecode(text: str, where: str) -> tuple[int, float, bool]:
    """(whole seconds since midnight, frame number + fraction, drop-frame)."""
    match = _TIMECODE.match(text)
    if not match:
        raise LiveLinkError(f"{where}: timecode {text.strip()[:40]!r} is not HH:MM:SS:FF(.fraction)")
    hours, minutes, seconds = (int(g) for g in match.groups()[:3])
    frame = int(match.group(5))
    if hours > 23 or minutes > 59 or seconds > 59:
        raise LiveLinkError(f"{where}: timecode {text.strip()!r} is not a time of day")
    fraction = float(match.group(6)) if match.group(6) else 0.0
    return hours * 3600 + minutes * 60 + seconds, frame + fraction, match.group(4) == ";"


def read_recording(path: Path | str) -> Recording:
    """The recording in ``path``, checked line by line (see the module docstring)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise LiveLinkError(f"{path.name} is {size / 1e6:.0f} MB: more than a Live Link Face take can be")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LiveLinkError(f"{path.name} is not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LiveLinkError(f"{path} cannot be read ({exc.strerror or exc})") from None
    rows = csv.reader(text.splitlines())
    try:
        header = next(rows)
    except StopIteration:
        raise LiveLinkError(f"{path.name} is empty: a Live Link Face recording starts with its column names") from None
    names = [name.strip() for name in header]
    folded = [name.casefold() for name in names]
    if not names or folded[0] != TIMECODE:
        raise LiveLinkError(
            f"{path.name}, line 1: the first column is {names[0][:40] if names else ''!r}, not Timecode: "
            "this is not a Live Link Face recording (export the take's CSV from the app)"
        )
    seen: set[str] = set()
    for index, name in enumerate(folded):
        if not name:
            raise LiveLinkError(f"{path.name}, line 1: column {index + 1} has no name")
        if name in seen:
            raise LiveLinkError(f"{path.name}, line 1: column {names[index]!r} appears twice")
        seen.add(name)
    value_columns = [i for i, name in enumerate(folded) if name not in (TIMECODE, COUNT)]
    if not value_columns:
        raise LiveLinkError(f"{path.name}, line 1: no blendshape columns after Timecode")
    whole, frame_part, values, lines, drop = [], [], [], [], []
    for line_number, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue  # a trailing empty line
        where = f"{path.name}, line {line_number}"
        if len(row) != len(names):
            raise LiveLinkError(f"{where}: {len(row)} values where the header names {len(names)} columns")
        seconds, frame, drop_frame = _timecode(row[0], where)
        if drop and drop_frame != drop[0]:
            raise LiveLinkError(f"{where}: timecode {row[0].strip()!r} mixes drop-frame (;) and non-drop-frame (:) "
                                "timecode with the lines before it")
        drop.append(drop_frame)
        numbers = []
        for i in value_columns:
            try:
                number = float(row[i])
            except ValueError:
                raise LiveLinkError(f"{where}, column {names[i]}: {row[i].strip()[:40]!r} is not a number") from None
            if not math.isfinite(number):
                raise LiveLinkError(f"{where}, column {names[i]}: {row[i].strip()!r} is not a finite number")
            numbers.append(number)
        whole.append(seconds)
        frame_part.append(frame)
        values.append(numbers)
        lines.append(line_number)
    if not values:
        raise LiveLinkError(f"{path.name}: the header has no frames after it (an empty take)")
    whole_s = np.asarray(whole, np.float64)
    for i in range(1, len(whole_s)):  # a take that runs past midnight counts on
        if whole_s[i] < whole_s[i - 1] - 12 * 3600:
            whole_s[i:] += 24 * 3600
    frame_s = np.asarray(frame_part, np.float64)
    recording = Recording(path, [names[i] for i in value_columns], np.asarray(values, np.float32), whole_s, frame_s,
                          lines, drop_frame=drop[0])
    if recording.drop_frame and recording.highest_frame >= 60:
        raise LiveLinkError(f"{path.name}: drop-frame timecode with frame numbers up to {recording.highest_frame}: "
                            "drop-frame is 29.97 or 59.94 fps only")
    not_later = np.flatnonzero(np.diff(recording.seconds()) <= 0)
    if len(not_later):
        first = int(not_later[0]) + 1
        raise LiveLinkError(
            f"{path.name}, line {lines[first]}: timecode {row_text(text, lines[first])!r} is not later than the "
            "line before it (rows must be in recording order, one per captured frame)"
        )
    return recording


def row_text(text: str, line_number: int) -> str:
    """The timecode cell of ``line_number`` (for error messages)."""
    line = text.splitlines()[line_number - 1]
    return line.split(",", 1)[0].strip()


def arkit_key(name: str) -> str:
    """The name as column matching compares it: case-folded, with the on-device suffixes ``_L`` /
    ``_R`` (ARKit's raw ``BlendShapeLocation`` values: ``eyeBlink_L``) read as ``Left`` / ``Right``."""
    key = name.strip().casefold()
    if key.endswith("_l"):
        return key[:-2] + "left"
    if key.endswith("_r"):
        return key[:-2] + "right"
    return key


def mirrored_key(key: str) -> str:
    """An :func:`arkit_key` with its side swapped (``eyeblinkleft`` <-> ``eyeblinkright``)."""
    if key.endswith("left"):
        return key[:-4] + "right"
    if key.endswith("right"):
        return key[:-5] + "left"
    return key


def match_columns(columns: list[str], targets: list[str], *, mirror: bool = False
                  ) -> tuple[dict[str, str], list[str]]:
    """Map recording columns to ``targets`` by :func:`arkit_key`: ({column: target}, unmatched columns).

    ``mirror``: each *Left column drives the *Right target and the other way round (a take of a
    mirrored capture, as Epic's ARKit support swaps the sides when the face is not mirrored)."""
    by_key = {arkit_key(target): target for target in targets}
    matched, unmatched = {}, []
    for column in columns:
        key = arkit_key(column)
        target = by_key.get(mirrored_key(key) if mirror else key)
        if target is None:
            unmatched.append(column)
        else:
            matched[column] = target
    return matched, unmatched
