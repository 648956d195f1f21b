"""Read a Live Link Face recording (the CSV Epic's iPhone app writes for each take). No bpy here.

The file's first line names the columns: ``Timecode``, ``BlendShapeCount``, the 52 ARKit
blendshapes in UpperCamelCase (``EyeBlinkLeft`` … ``TongueOut``: ARKit spells them
``eyeBlinkLeft``, hence matching by case-insensitive name), then ``HeadYaw``, ``HeadPitch``,
``HeadRoll`` and the eyes' yaw/pitch/roll. Every further line is one captured frame.

Timecode ``HH:MM:SS:FF.fff`` is hours, minutes, seconds, the frame number within the second and
the fraction of a frame. The frame rate is not written anywhere else, so it comes from the frame
numbers: they count 0 … rate-1 inside each second and start again at 0 when the seconds roll
over, so the rate is the highest frame number + 1 (:attr:`Recording.fps`), trusted once at least
one rollover was seen (a clip shorter than a second only gives a lower bound). Each row's time is
then ``HH·3600 + MM·60 + SS + (FF + fraction) / rate``.

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
# Live Link Face writes head (and eye) rotation as -1 … 1 for -90° … +90°.
ROTATION_SCALE_RAD = math.pi / 2
_TIMECODE = re.compile(r"^\s*(\d{1,2}):(\d{2}):(\d{2})[:;](\d{1,3})(\.\d+)?\s*$")
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

    @property
    def highest_frame(self) -> int:
        return int(np.floor(self.frame_numbers.max()))

    @property
    def fps(self) -> int:
        """Frames per second from the timecode: the highest frame number + 1."""
        return self.highest_frame + 1

    @property
    def rollovers(self) -> int:
        """How often the seconds changed from one row to the next."""
        return int(np.count_nonzero(np.diff(self.whole_seconds) > 0))

    @property
    def rate_is_certain(self) -> bool:
        """At least one rollover: the frame numbers ran through a whole second."""
        return self.rollovers > 0

    def seconds(self, fps: int | None = None) -> np.ndarray:
        """Each row's time in seconds after the first row, at ``fps`` (default: the timecode's)."""
        times = self.whole_seconds + self.frame_numbers / (fps or self.fps)
        return times - times[0]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def _timecode(text: str, where: str) -> tuple[int, float]:
    """(whole seconds since midnight, frame number + fraction)."""
    match = _TIMECODE.match(text)
    if not match:
        raise LiveLinkError(f"{where}: timecode {text.strip()[:40]!r} is not HH:MM:SS:FF(.fraction)")
    hours, minutes, seconds, frame = (int(g) for g in match.groups()[:4])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise LiveLinkError(f"{where}: timecode {text.strip()!r} is not a time of day")
    fraction = float(match.group(5)) if match.group(5) else 0.0
    return hours * 3600 + minutes * 60 + seconds, frame + fraction


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
    for index, name in enumerate(folded):
        if not name:
            raise LiveLinkError(f"{path.name}, line 1: column {index + 1} has no name")
        if folded.index(name) != index:
            raise LiveLinkError(f"{path.name}, line 1: column {names[index]!r} appears twice")
    value_columns = [i for i, name in enumerate(folded) if name not in (TIMECODE, COUNT)]
    if not value_columns:
        raise LiveLinkError(f"{path.name}, line 1: no blendshape columns after Timecode")
    whole, frame_part, values, lines = [], [], [], []
    for line_number, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue  # a trailing empty line
        where = f"{path.name}, line {line_number}"
        if len(row) != len(names):
            raise LiveLinkError(f"{where}: {len(row)} values where the header names {len(names)} columns")
        seconds, frame = _timecode(row[0], where)
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
    highest = int(np.floor(frame_s.max()))
    ordered = whole_s + frame_s / (highest + 1)
    backwards = np.flatnonzero(np.diff(ordered) < 0)
    if len(backwards):
        first = int(backwards[0]) + 1
        raise LiveLinkError(
            f"{path.name}, line {lines[first]}: timecode {row_text(text, lines[first])!r} is earlier than the "
            "line before it (rows must be in recording order)"
        )
    return Recording(path, [names[i] for i in value_columns], np.asarray(values, np.float32), whole_s, frame_s, lines)


def row_text(text: str, line_number: int) -> str:
    """The timecode cell of ``line_number`` (for error messages)."""
    line = text.splitlines()[line_number - 1]
    return line.split(",", 1)[0].strip()


def match_columns(columns: list[str], targets: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map recording columns to ``targets`` by case-insensitive name: ({column: target}, unmatched columns)."""
    by_fold = {target.casefold(): target for target in targets}
    matched, unmatched = {}, []
    for column in columns:
        target = by_fold.get(column.casefold())
        if target is None:
            unmatched.append(column)
        else:
            matched[column] = target
    return matched, unmatched
