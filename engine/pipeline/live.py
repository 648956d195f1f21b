"""Live output for the viewport: preview PNGs and mesh snapshots in ``JOB_DIR/live``, at a bounded rate.

Each file is written under a temporary name and renamed before it is announced, so the add-on
never opens half a file, and recorded in the job folder's manifest (engine/owned.py). Only the
newest :data:`KEEP` of each kind stay: pruning deletes only recorded, unchanged files, never a
user's file that matches ``preview-*.png`` / ``snapshot-*.npz``.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np

from ..atomic import to_path
from ..owned import prune_owned, write_owned_file
from .job_folder import LIVE as FOLDER

KEEP = 3
_KINDS = {"preview": (".png", re.compile(r"preview-(\d+)\.png")),
          "snapshot": (".npz", re.compile(r"snapshot-(\d+)\.npz"))}


class LiveOutput:
    """Writes at most one preview + snapshot per ``interval_s`` (``clock`` is injectable for tests)."""

    def __init__(self, job_dir: Path, interval_s: float, emit, *, clock=time.monotonic):
        self.folder = Path(job_dir) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.interval_s, self.emit, self.clock = float(interval_s), emit, clock
        self.last = -float("inf")
        existing = [int(m.group(1)) for p in self.folder.iterdir() for _, rx in _KINDS.values()
                    if (m := rx.fullmatch(p.name))]
        self.seq = max(existing, default=0)  # a resumed job continues the numbering

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval_s

    def write(self, step: int, *, image: np.ndarray | None, vertices: np.ndarray | None = None,
              faces: np.ndarray | None = None, expression: str | None = None) -> None:
        """``image`` [H, W, 3] float in [0, 1]; ``vertices`` [V, 3], ``faces`` [F, 3] for the snapshot."""
        self.last = self.clock()
        self.seq += 1
        if image is not None:
            path = self._write("preview", lambda s: _png(s, image))
            self.emit("preview", path=str(path), step=step)
        if vertices is not None and faces is not None:
            arrays = {"vertices": np.asarray(vertices, np.float32), "faces": np.asarray(faces, np.int32),
                      "step": np.int64(step)}
            if expression is not None:
                arrays["expression"] = np.array(expression)
            path = self._write("snapshot", lambda s: np.savez(s, **arrays))
            self.emit("snapshot", path=str(path), step=step, **({"expression": expression} if expression else {}))

    def _write(self, kind: str, write) -> Path:
        suffix, rx = _KINDS[kind]
        path = write_owned_file(self.folder / f"{kind}-{self.seq:06d}{suffix}", to_path(write))
        prune_owned(self.folder, rx, KEEP)
        return path


def _png(stream, image: np.ndarray) -> None:
    from PIL import Image

    pixels = (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    stream.write(buffer.getvalue())
