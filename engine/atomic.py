"""Write files and folders so that readers see the old version or the new one, never half of one.

Everything the engine writes goes through here: a temporary name in the target's own folder (so
the final rename stays on one file system), then a rename. Files and folders get the permissions
an ordinary ``open``/``mkdir`` would give under the user's umask (``mkstemp``/``mkdtemp`` alone
would leave them private to the user, so a shared models or results folder became unreadable).
Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

# Names of the two temporary folders of a folder swap, beside the target: ".<name><TAG><random>".
NEW_TAG = ".idto3d-new-"
TMP_TAG = ".idto3d-tmp-"  # a file being written: ".<name><TMP_TAG><random><suffix>"
OLD_TAG = ".idto3d-old-"
_USE_EXCHANGE = True  # tests switch it off to exercise the portable rename-aside path
# The exact shape of those names: tempfile's 8 random characters (a-z, 0-9, _) for a file being
# written and a staging folder, secrets.token_hex(4) for an old folder; a file keeps its target's
# suffix. Anything else that merely contains a tag is someone's file.
_TEMPORARY = re.compile(r"\.(?P<target>.+)(?P<tag>\.idto3d-(?:tmp|new|old)-)(?P<random>[a-z0-9_]{8})(?P<suffix>.*)",
                        re.DOTALL)


def temporary_target(name: str) -> tuple[str, str] | None:
    """``(target name, tag)`` when ``name`` is exactly a temporary name this module makes for
    ``target`` (see the tags above), else None."""
    m = _TEMPORARY.fullmatch(name)
    if m is None:
        return None
    target, tag, random, suffix = m.group("target", "tag", "random", "suffix")
    if tag == TMP_TAG:
        ok = suffix == Path(target).suffix
    elif tag == OLD_TAG:
        ok = suffix == "" and re.fullmatch(r"[0-9a-f]{8}", random) is not None
    else:
        ok = suffix == ""
    return (target, tag) if ok else None


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    return 0o777 & ~current_umask()


def write_to_path_atomic(target: Path | str, write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)`` then rename it to ``target`` (for APIs that take a file name)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}{TMP_TAG}", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        os.chmod(temporary, file_mode())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def to_path(write: Callable[[BinaryIO], None]) -> Callable[[Path], None]:
    """A writer that takes a path, from one that takes an open binary stream (``np.savez``, PIL)."""

    def to_stream(path: Path) -> None:
        with open(path, "wb") as stream:
            write(stream)

    return to_stream


def write_file_atomic(target: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """``write(binary_stream)`` into a temporary file, then rename it to ``target``."""
    return write_to_path_atomic(target, to_path(write))


def write_text_atomic(target: Path | str, text: str) -> Path:
    return write_file_atomic(target, lambda stream: stream.write(text.encode("utf-8")))


def copy_file_atomic(source: Path | str, target: Path | str) -> Path:
    return write_to_path_atomic(target, lambda path: shutil.copyfile(source, path))


def replace_dir_atomic(target: Path | str, write: Callable[[Path], None]) -> Path:
    """``write(staging_folder)`` then swap it in for ``target``; the old ``target`` is deleted last.

    Order: build the new folder beside the target, then swap (one atomic exchange where the system
    has one, else rename the old folder aside and the new one in), then delete the old version. An
    interruption at any moment leaves the old or the new version complete: before the swap the
    target is untouched; in the one gap of the portable path the old version waits, complete, under
    its aside name and :func:`recover_dir` (run at the start of every replace) puts it back.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        from .errors import EngineError

        raise EngineError(f"{target} is a file, not a folder; nothing was changed", code="out_not_a_folder",
                          hint="choose a folder path (or move that file away)")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{NEW_TAG}", dir=target.parent))
    try:
        write(staging)
        _ordinary_modes(staging)
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            pass  # staging now holds the old version; deleted below
        else:
            aside = target.parent / f".{target.name}{OLD_TAG}{secrets.token_hex(4)}"
            try:
                os.rename(target, aside)
                os.rename(staging, target)
            except BaseException:  # Ctrl-C or an error in the gap: put the old version back at once
                if not target.exists() and aside.exists():
                    os.rename(aside, target)
                raise
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _ordinary_modes(folder: Path) -> None:
    """Give everything in a freshly written folder the modes plain open/mkdir would have (some
    libraries write through private temporary files, which stay 0600 after their rename)."""
    files, folders = file_mode(), folder_mode()
    os.chmod(folder, folders)
    for base, dirs, names in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(base, name)):
                os.chmod(os.path.join(base, name), folders)
        for name in names:
            path = os.path.join(base, name)
            if not os.path.islink(path):
                os.chmod(path, files)


def recover_dir(target: Path | str) -> None:
    """Finish a folder swap that was interrupted: restore the old version if the target is missing,
    and delete left-over staging/old folders of this target (only names this module makes)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    leftovers = [p for p in target.parent.iterdir()
                 if temporary_target(p.name) in ((target.name, NEW_TAG), (target.name, OLD_TAG)) and p.is_dir()]
    olds = sorted((p for p in leftovers if temporary_target(p.name)[1] == OLD_TAG), key=lambda p: p.stat().st_mtime_ns)
    if not target.exists() and olds:
        # Only the portable path leaves the target missing, and only after the old version was
        # moved aside whole: that is the complete version to restore.
        os.rename(olds[-1], target)
        leftovers.remove(olds[-1])
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _renameat2
    if not _USE_EXCHANGE or not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2 = libc.renameat2
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot swap
        return False
    raise OSError(err, os.strerror(err), str(b))
