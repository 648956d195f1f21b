"""Write files and folders so that readers see the old version or the new one, never half of one.

Everything the engine writes goes through here: a temporary name in the target's own folder (so
the final rename stays on one file system), then ``os.replace``. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_to_path_atomic(target: Path | str, write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)`` then rename it to ``target`` (for APIs that take a file name)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def write_file_atomic(target: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """``write(binary_stream)`` into a temporary file, then rename it to ``target``."""

    def to_stream(path: Path) -> None:
        with open(path, "wb") as stream:
            write(stream)

    return write_to_path_atomic(target, to_stream)


def write_text_atomic(target: Path | str, text: str) -> Path:
    return write_file_atomic(target, lambda stream: stream.write(text.encode("utf-8")))


def copy_file_atomic(source: Path | str, target: Path | str) -> Path:
    return write_to_path_atomic(target, lambda path: shutil.copyfile(source, path))


def replace_dir_atomic(target: Path | str, write: Callable[[Path], None]) -> Path:
    """``write(staging_folder)`` then swap it in for ``target`` (an old ``target`` is removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
