"""sha256 of the model files a job reads, for result.json, without re-reading gigabytes at every start.

``result.json`` records the digest of every file the prior reads (which weights made this head).
The real weights are several GB; hashing them took tens of seconds at every start and every
``--resume``. The digests are therefore cached per user, keyed by the file's identity:

- the real path (symbolic links resolved: Hugging Face cache snapshots share one blob);
- size, ``mtime_ns``, ``ctime_ns`` and inode. Size and mtime alone miss a file replaced by a copy
  that kept the old mtime (``cp -p``, ``rsync -t``, an unpacked archive); on POSIX the change time
  cannot be set by programs and moves on any rewrite or rename, the inode on any replacement. Any
  difference means the file is read and hashed again. On Windows ``st_ctime`` is the creation
  time and FAT/exFAT report inode 0, so a file rewritten in place with the same size and a
  restored mtime keeps a stale digest there (the record in result.json, not the generation, would
  be wrong): delete the cache file after such a copy.

The cache is one JSON file in the per-user cache folder (``$IDTO3D_CACHE`` if set, else
``$XDG_CACHE_HOME/id-to-3d``, ``~/Library/Caches/id-to-3d``, ``%LOCALAPPDATA%\\id-to-3d\\cache``),
not beside the models: a models folder may be read-only or shared. It is written atomically
(``engine.atomic``) after re-reading the current version and merging into it, so jobs that start
at the same time never leave a torn file; at worst one's new entries are lost and hashed again at
its next start. A cache that cannot be read or parsed is ignored (and rewritten); one that cannot
be written only costs the next start its speed. A file that changes while it is hashed is not
cached. Entries of files that no longer exist are dropped on write.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "IDTO3D_CACHE"
CACHE_FILE = "model-digests.json"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 16 * 2**20  # a larger file is not ours (thousands of entries would be ~1 MB)
_STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "inode")


def cache_folder() -> Path:
    """``$IDTO3D_CACHE``, else this platform's per-user cache folder for id-to-3d."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "id-to-3d" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "id-to-3d"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "id-to-3d"


def model_files(root: Path | str) -> list[Path]:
    """Every file the prior reads: its component folders as the models resolver finds them, the
    LoRAs under ``ROOT/loras`` and Arc2Face's ``arcface.onnx``; sorted, each once."""
    from .prior.weights import resolve_components

    root = Path(root).expanduser()
    components = {name: Path(p) for name, p in resolve_components(root).items()}
    found = {f for d in components.values() if d.is_dir() for f in d.rglob("*") if f.is_file()}
    arcface = components["unet"].parent / "arcface.onnx"  # beside the UNet in Arc2Face's layout
    if arcface.is_file():
        found.add(arcface)
    return sorted(found)


def model_file_digests(root: Path | str, cache: Path | None = None) -> dict[str, str]:
    """{name: sha256 hex} of :func:`model_files` (name: the path relative to ``root``, or the full
    path for a model found elsewhere, e.g. in the Hugging Face cache), through the digest cache."""
    root = Path(root).expanduser()
    digests = file_digests(model_files(root), cache)
    return {_name(f, root): digests[f] for f in digests}


def _name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # resolved outside the models root (default root, Hugging Face cache)
        return path.as_posix()


def file_digests(files, cache: Path | None = None) -> dict[Path, str]:
    """{file: sha256 hex}, from the cache where a file's identity is unchanged, else read and hashed
    (and the cache updated). ``cache``: the cache file (default ``cache_folder()/model-digests.json``)."""
    cache = Path(cache) if cache is not None else cache_folder() / CACHE_FILE
    known = _read_cache(cache)
    out, fresh = {}, {}
    for f in files:
        f = Path(f)
        real = os.path.realpath(f)
        stat = _identity(real)
        entry = known.get(real)
        if entry is not None and all(entry.get(k) == stat[k] for k in _STAT_KEYS):
            out[f] = entry["sha256"]
            continue
        digest = sha256_file(real)
        out[f] = digest
        if _identity(real) == stat:  # not changed while it was read
            fresh[real] = {**stat, "sha256": digest}
    if fresh:
        _update_cache(cache, fresh)
    return out


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_cache(cache: Path) -> dict[str, dict]:
    """The cache's valid entries ({} when missing, unreadable, too large or not ours)."""
    try:
        if cache.stat().st_size > MAX_CACHE_BYTES:
            log.warning("ignoring the model digest cache %s: larger than %d bytes", cache, MAX_CACHE_BYTES)
            return {}
        data = json.loads(cache.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the model digest cache %s: %s", cache, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {path: entry for path, entry in data["files"].items() if _valid_entry(entry)}


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict) or not all(type(entry.get(k)) is int for k in _STAT_KEYS):
        return False
    digest = entry.get("sha256")
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def _update_cache(cache: Path, fresh: dict[str, dict]) -> None:
    """Merge ``fresh`` into the cache as it is on disk now, drop entries of vanished files, write
    atomically. Never raises for the cache's sake (a failed write only costs speed next time)."""
    from .atomic import write_text_atomic

    try:
        merged = _read_cache(cache)  # again: another job may have written since we read it
        merged.update(fresh)
        merged = {path: entry for path, entry in merged.items() if os.path.exists(path)}
        text = json.dumps({"version": CACHE_VERSION, "files": merged}, indent=1, sort_keys=True)
        write_text_atomic(cache, text + "\n")
    except OSError as exc:
        log.warning("could not update the model digest cache %s (%s): the next start hashes the model "
                    "files again", cache, exc)
