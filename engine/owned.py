"""Folders the engine owns: it deletes or replaces only what it wrote there.

A folder the engine writes into carries a marker file, :data:`MARKER`, holding the folder's kind
("job", "result", "identity", "prior-dataset", "lora", "models", ...) and a manifest of every
entry the engine wrote (for a file: its size and modification time when written). The rules:

- :func:`claim_dir` creates a folder, or accepts an empty one or one already marked with the same
  kind. Any other non-empty folder is refused with :class:`ForeignFolderError`, before anything is
  changed (``shared=True`` accepts a folder that also holds the user's things, e.g. a models root
  filled by hand: then only the engine's recorded entries are ever touched).
- :func:`record` adds what the engine just wrote to the manifest; :func:`write_owned_file` and
  :func:`replace_owned_entry` write and record in one go; :func:`prune_owned` keeps the newest
  few of a series (checkpoints, previews) and deletes only recorded, unchanged ones.
- :func:`remove_owned` deletes recorded entries only, and only when they are unchanged: a file
  the user added or replaced is never deleted (refused, or kept with ``keep_foreign=True``).
- :func:`replace_owned_dir` swaps a whole owned folder (old or new version, never neither).

Standard library only (the add-on may import it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from .atomic import (NEW_TAG, recover_dir, replace_dir_atomic, temporary_target, write_text_atomic,
                     write_to_path_atomic)
from .errors import EngineError

MARKER = ".idto3d-owned.json"
FORMAT = "idto3d-owned"


class ForeignFolderError(EngineError):
    """A folder (or entry) the engine did not write, so it will not change it."""

    code = "foreign_folder"


def _is_leftover(name: str) -> bool:
    """A half-written thing of an interrupted write (the engine's own): exactly the temporary names
    :mod:`engine.atomic` makes, never a user's file that merely contains a tag."""
    return temporary_target(name) is not None


def _signature(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns]  # kept by a rename and by a copy that keeps times; changed by an edit


def _rel(path: Path, owner: Path) -> str:
    return Path(os.path.relpath(path, owner)).as_posix()


def read_manifest(folder: Path | str) -> dict | None:
    """The folder's marker as a dict, or None when it has none (or an unreadable one)."""
    marker = Path(folder) / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("kind"), str) \
            or not isinstance(data.get("entries"), dict):
        return None
    return data


def _write_manifest(folder: Path, manifest: dict) -> None:
    # ensure_ascii keeps names that are not valid UTF-8 (surrogate-escaped) writable and exact.
    write_text_atomic(folder / MARKER, json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=True))


def _new_manifest(kind: str, shared: bool) -> dict:
    return {"format": FORMAT, "version": 1, "kind": kind, "shared": shared, "entries": {}}


def _not_writable(path: Path, exc: OSError) -> EngineError:
    return EngineError(f"cannot write to {path} ({exc.strerror or exc}); nothing was changed", code="out_not_writable",
                       hint="choose a folder you can write to, or fix its permissions")


def claim_dir(path: Path | str, kind: str, *, shared: bool = False) -> Path:
    """Create ``path`` (or accept it) as a folder of ``kind`` that the engine owns; see the module doc."""
    path = Path(path)
    if check_claimable(path, kind, shared=shared):
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        _write_manifest(path, _new_manifest(kind, shared))
    except OSError as exc:
        raise _not_writable(path, exc) from None
    return path


def check_claimable(path: Path | str, kind: str, *, shared: bool = False) -> bool:
    """Raise :class:`ForeignFolderError` (changing nothing) unless :func:`claim_dir` would accept
    ``path``; True when it is already claimed with that kind. Call it before long work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ForeignFolderError(f"{path} is a file, not a folder; nothing was changed",
                                 code="out_not_a_folder", hint="choose a folder path (or move that file away)")
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        if manifest["kind"] != kind:
            raise ForeignFolderError(
                f"{path} holds engine output of another kind ({manifest['kind']!r}, not {kind!r}); nothing was changed",
                hint=f"choose a separate folder for the {kind} output")
        if shared and not manifest.get("shared"):
            manifest["shared"] = True
            _write_manifest(path, manifest)
        return True
    if path.is_dir() and not shared:
        try:
            contents = [p.name for p in path.iterdir()]
        except OSError as exc:
            raise _not_writable(path, exc) from None
        if contents:
            shown = ", ".join(sorted(contents)[:5]) + (" ..." if len(contents) > 5 else "")
            raise ForeignFolderError(
                f"{path} is not empty and was not written by the engine (it holds {shown}); nothing was changed",
                hint="choose an empty or new folder (the engine only replaces folders it wrote itself)")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise _not_writable(path, PermissionError(13, "Permission denied" if existing.is_dir() else
                                                  f"{existing} is not a folder"))
    return False


def owner_of(path: Path | str) -> Path | None:
    """The nearest folder above ``path`` (or ``path`` itself) that carries a marker."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if read_manifest(folder) is not None:
            return folder
    return None


def _require_owner(path: Path) -> tuple[Path, dict]:
    owner = owner_of(path.parent)
    if owner is None:
        raise ForeignFolderError(f"{path} is not inside a folder the engine owns; nothing was changed",
                                 code="not_owned", hint="claim the folder first (engine bug)")
    return owner, read_manifest(owner)


def _entries_of(path: Path, owner: Path) -> dict[str, dict]:
    """Manifest entries for everything at and under ``path`` as it is now on disk. A sub-folder
    with a marker of its own is one entry ("owned"): its own manifest speaks for its contents."""
    found: dict[str, dict] = {}
    if path.is_symlink() or not path.is_dir():
        found[_rel(path, owner)] = {"type": "file", "sig": [_signature(path)]}
        return found
    found[_rel(path, owner)] = {"type": "dir"}
    for folder, dirs, files in os.walk(path):
        base = Path(folder)
        for name in list(dirs):
            sub = base / name
            if sub.is_symlink():  # a link is an entry of its own; never followed
                dirs.remove(name)
                files.append(name)
            elif read_manifest(sub) is not None:
                dirs.remove(name)
                found[_rel(sub, owner)] = {"type": "owned"}
            else:
                found[_rel(sub, owner)] = {"type": "dir"}
        for name in files:
            if base == path and name == MARKER and read_manifest(path) is not None:
                continue
            found[_rel(base / name, owner)] = {"type": "file", "sig": [_signature(base / name)]}
    return found


def record(path: Path | str) -> None:
    """Add ``path`` (a file, or a folder and everything in it) to its owner's manifest."""
    path = Path(os.path.abspath(path))
    owner, manifest = _require_owner(path)
    manifest["entries"].update(_entries_of(path, owner))
    for parent in path.parents:  # the folders on the way were made by the engine too, unless recorded otherwise
        if parent == owner or owner not in parent.parents:
            break
        manifest["entries"].setdefault(_rel(parent, owner), {"type": "dir"})
    _write_manifest(owner, manifest)


def _is_own(path: Path, owner: Path, entries: dict) -> bool:
    if path.is_dir() and not path.is_symlink() and read_manifest(path) is not None:
        return True  # a nested owned folder: judged by its own manifest
    entry = entries.get(_rel(path, owner))
    if entry is None:
        return _is_leftover(path.name)
    if entry.get("type") in ("dir", "owned"):
        return path.is_dir() and not path.is_symlink()
    try:
        return _signature(path) in entry.get("sig", [])
    except OSError:
        return False


def is_own(path: Path | str) -> bool:
    """True when the engine wrote ``path`` (recorded in its owner's manifest) and nobody changed it since."""
    path = Path(os.path.abspath(path))
    owner = owner_of(path.parent)
    return owner is not None and os.path.lexists(path) and _is_own(path, owner, read_manifest(owner)["entries"])


def restamp(folder: Path | str, *, skip: Callable[[Path], bool] = lambda path: False) -> list[Path]:
    """Record again the files of the owned ``folder`` (and of the owned folders inside it) that a
    copy changed in time only: recorded there, their size on disk one the manifest recorded, their
    modification time not. A copy that does not keep file times (``cp -r``, ``scp -r``, an object
    store, a file system with coarser times) makes every file look changed; only an explicit
    request of the user's calls this (``generate --adopt-checkpoints``). ``skip(path)``: files the
    caller checks its own way. Returns the files recorded again."""
    folder = Path(os.path.abspath(folder))
    manifest = read_manifest(folder)
    if manifest is None:
        return []
    taken = []
    for rel, entry in manifest["entries"].items():
        path = folder / rel
        if entry.get("type") != "file" or skip(path) or not os.path.lexists(path) or os.path.isdir(path):
            continue
        signature = _signature(path)
        if signature not in entry["sig"] and signature[0] in [sig[0] for sig in entry["sig"]]:
            entry["sig"] = [signature]
            taken.append(path)
    if taken:
        _write_manifest(folder, manifest)
    for base, dirs, _files in os.walk(folder):
        for name in list(dirs):
            sub = Path(base) / name
            if sub.is_symlink():
                dirs.remove(name)
            elif read_manifest(sub) is not None:
                dirs.remove(name)
                taken += restamp(sub, skip=skip)
    return sorted(taken)


def foreign_entries(path: Path | str) -> list[Path]:
    """What at or under ``path`` the engine did not write (or was changed since): never to be deleted."""
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        return []
    owner = path if path.is_dir() and read_manifest(path) is not None else owner_of(path.parent)
    if owner is None:
        return [path]
    entries = read_manifest(owner)["entries"]
    foreign = []
    for rel, entry in _entries_of(path, owner).items():
        candidate = owner / rel
        if candidate == owner:
            continue
        if entry["type"] == "owned":
            foreign += foreign_entries(candidate)
        elif not _is_own(candidate, owner, entries):
            foreign.append(candidate)
    return sorted(foreign)


def _foreign_error(path: Path, foreign: list[Path], action: str) -> ForeignFolderError:
    shown = ", ".join(str(p) for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return ForeignFolderError(
        f"will not {action} {path}: it holds files the engine did not write or that were changed since "
        f"({shown}); nothing was changed",
        code="foreign_entries", hint="move those files elsewhere (or choose another folder), then run again")


def remove_owned(path: Path | str, *, keep_foreign: bool = False) -> list[Path]:
    """Delete what the engine wrote at or under ``path``; return what was kept (the user's).

    With foreign content and ``keep_foreign=False`` nothing is deleted and
    :class:`ForeignFolderError` is raised. Removing an owned folder itself also removes its marker
    once nothing else is left in it.
    """
    path = Path(os.path.abspath(path))
    is_owner = path.is_dir() and read_manifest(path) is not None
    owner = path if is_owner else owner_of(path.parent)
    if owner is None:
        raise ForeignFolderError(f"{path} is not inside a folder the engine owns; nothing was changed",
                                 code="not_owned", hint="delete it yourself if you no longer need it")
    manifest = read_manifest(owner)
    rel = _rel(path, owner)
    if not os.path.lexists(path):
        _forget(manifest, rel if not is_owner else None)
        _write_manifest(owner, manifest)
        return []
    if not is_owner and rel not in manifest["entries"] and not _is_leftover(path.name):
        raise ForeignFolderError(f"{path} was not written by the engine; nothing was changed", code="foreign_entries",
                                 hint="delete it yourself if you no longer need it")
    foreign = foreign_entries(path)
    if foreign and not keep_foreign:
        raise _foreign_error(path, foreign, "delete")
    kept = set(foreign)
    entries = manifest["entries"]
    targets = sorted(_entries_of(path, owner), key=lambda r: r.count("/"), reverse=True)
    found = _entries_of(path, owner)
    for item_rel in targets:  # deepest first, so folders are empty when their turn comes
        item = owner / item_rel
        if item == owner or item in kept:
            continue
        if found[item_rel]["type"] == "owned":
            remove_owned(item, keep_foreign=keep_foreign)
        elif any(item in k.parents for k in kept):
            continue  # a folder that still holds the user's files
        elif item.is_dir() and not item.is_symlink():
            os.rmdir(item)
        else:
            os.unlink(item)
        entries.pop(item_rel, None)
    if is_owner and not kept:
        os.unlink(owner / MARKER)
        os.rmdir(owner)
        return []
    _write_manifest(owner, manifest)
    return sorted(kept)


def _forget(manifest: dict, rel: str | None) -> None:
    entries = manifest["entries"]
    for key in [k for k in entries if rel is None or k == rel or k.startswith(rel + "/")]:
        del entries[key]


def write_owned_file(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Write one file atomically inside an owned folder (``write(temporary_path)``) and record it.
    An existing file of that name that the engine did not write is refused, unchanged."""
    path = Path(os.path.abspath(path))
    owner, manifest = _require_owner(path)
    if os.path.lexists(path) and not _is_own(path, owner, manifest["entries"]):
        raise _foreign_error(path, [path], "overwrite")
    if os.path.isdir(path) and not os.path.islink(path):
        raise ForeignFolderError(f"{path} is a folder; nothing was changed", code="out_not_a_folder",
                                 hint="move that folder away")

    def write_then_record(temporary: Path) -> None:
        write(temporary)
        # Recorded before the rename, with the old version's signature too: killed at any point,
        # the manifest accepts whichever version is on disk (a rename keeps size and mtime).
        current = read_manifest(owner) or manifest
        signatures = [_signature(path)] if os.path.lexists(path) else []
        current["entries"][_rel(path, owner)] = {"type": "file", "sig": signatures + [_signature(temporary)]}
        for parent in path.parents:
            if parent == owner or owner not in parent.parents:
                break
            current["entries"].setdefault(_rel(parent, owner), {"type": "dir"})
        _write_manifest(owner, current)

    write_to_path_atomic(path, write_then_record)
    return path


def prune_owned(folder: Path | str, pattern: re.Pattern, keep: int, *, newest_last=None) -> list[Path]:
    """Delete all but the newest ``keep`` of the files in ``folder`` whose names match ``pattern``
    and that the engine wrote and nobody changed since; return what was deleted. "Newest" is the
    order of ``newest_last(path)`` (default: the name).

    A file that merely matches the pattern (the user's, or one changed since) is neither counted
    nor deleted. One manifest write, and only when something was deleted.
    """
    folder = Path(os.path.abspath(folder))
    owner, manifest = _require_owner(folder / MARKER)
    entries = manifest["entries"]
    mine = sorted((p for p in folder.iterdir()
                   if pattern.fullmatch(p.name) and _rel(p, owner) in entries and not p.is_dir()
                   and _is_own(p, owner, entries)), key=newest_last or (lambda p: p.name))
    doomed = mine[:-keep] if keep > 0 else mine
    for path in doomed:
        os.unlink(path)
        entries.pop(_rel(path, owner), None)
    if doomed:
        _write_manifest(owner, manifest)
    return doomed


def replace_owned_entry(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Replace (or create) the sub-folder ``path`` of an owned folder with ``write(staging)``'s.

    Refused, unchanged, when the old sub-folder holds anything the engine did not write. The new
    entries are recorded before the swap and the old ones forgotten after it, so an interruption
    at any point leaves a manifest that matches whichever version is on disk.
    """
    path = Path(os.path.abspath(path))
    owner, manifest = _require_owner(path)
    recover_dir(path)
    if os.path.lexists(path):
        if _rel(path, owner) not in manifest["entries"]:
            raise _foreign_error(path, [path], "replace")
        foreign = foreign_entries(path)
        if foreign:
            raise _foreign_error(path, foreign, "replace")

    def staged(staging: Path) -> None:
        write(staging)
        fresh = {_rel(path / Path(os.path.relpath(owner / rel, staging)), owner): entry
                 for rel, entry in _entries_of(staging, owner).items()}
        current = read_manifest(owner)
        for rel, entry in fresh.items():  # accept either version while the swap is under way
            old = current["entries"].get(rel)
            if old is not None and old.get("type") == "file" == entry["type"]:
                entry = {"type": "file", "sig": old["sig"] + entry["sig"]}
            current["entries"][rel] = entry
        _write_manifest(owner, current)

    replace_dir_atomic(path, staged)
    after = read_manifest(owner)
    _forget(after, _rel(path, owner))
    after["entries"].update(_entries_of(path, owner))
    _write_manifest(owner, after)
    return path


def replace_owned_dir(target: Path | str, kind: str, write: Callable[[Path], None]) -> Path:
    """Replace the whole owned folder ``target`` (of ``kind``) with what ``write(staging)`` makes.

    ``target`` may be missing, empty, or a folder of that kind holding only what the engine wrote
    there; otherwise nothing is changed (:class:`ForeignFolderError`). The new folder's manifest is
    written inside the staging folder, so the swap replaces files and manifest together.
    """
    target = check_replaceable(target, kind)

    def staged(staging: Path) -> None:
        write(staging)
        manifest = _new_manifest(kind, False)
        entries = _entries_of(staging, staging)
        entries.pop(".", None)
        manifest["entries"] = entries
        _write_manifest(staging, manifest)

    return replace_dir_atomic(target, staged)


def check_replaceable(target: Path | str, kind: str) -> Path:
    """Raise (changing nothing) unless :func:`replace_owned_dir` may replace ``target``: call it
    before long work whose result goes there, so a refusal comes first, not after an hour."""
    target = Path(os.path.abspath(target))
    recover_dir(target)
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise ForeignFolderError(f"{target} is a file, not a folder; nothing was changed",
                                     code="out_not_a_folder", hint="choose a folder path (or move that file away)")
        manifest = read_manifest(target)
        with os.scandir(target) as contents:
            empty = next(contents, None) is None
        if (manifest is None and not empty) or (manifest is not None and manifest["kind"] != kind):
            claim_dir(target, kind)  # raises (foreign or another kind) before writing anything
        foreign = foreign_entries(target) if manifest is not None else []
        if foreign:
            raise _foreign_error(target, foreign, "replace")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{target.name}{NEW_TAG}", dir=parent))
        os.rmdir(probe)
    except OSError as exc:
        raise _not_writable(parent, exc) from None
    return target

