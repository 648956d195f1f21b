"""A job folder as the engine's own: who may run it, what the engine wrote in it, and whether a
new job may be placed there.

    JOB_DIR/
      .idto3d-owned.json   marker (kind "job") + manifest of every file the engine wrote here
      .idto3d-job.lock     locked by the one process that runs the job (run_job)
      job.json             the job
      checkpoints/         ckpt-<step>.pt + latest.json: written, recorded and pruned by the engine
      live/                preview-*.png, snapshot-*.npz: the same
      identity/, result/   owned folders with markers of their own
      batch.json            the batch runner's record of the job (engine.pipeline.batch_job)
      batch.log             its log: appended to, so never recorded (and never deleted by the engine)

Everything the engine deletes here is a file it recorded and nobody changed since: a user's file
that happens to match a pattern (``ckpt-7.pt`` dropped into checkpoints/) is never touched.

Which job a folder holds is decided by the job's *identity* (what it makes: photos, expressions,
preset, overrides, seed, ...), not by where and how it runs (*placement*: device, models root,
dtype, memory options, ...): a job continued on another GPU or with the models mounted elsewhere
is the same job, and its job.json is rewritten with the new placement.
Standard library only: the add-on, ``generate`` and the batch driver import it without torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import owned
from ..atomic import temporary_target
from ..errors import EngineError
from .job import JOB_FILE, JobError, JobSpec, load_job

log = logging.getLogger(__name__)

KIND = "job"
LOCK = ".idto3d-job.lock"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)\.pt")
LIVE = "live"
RESULT = "result"
IDENTITY = "identity"
RESULT_JSON = "result.json"
RUN_LOCK_WAIT_S = 10.0  # a cancelled worker finishing its checkpoint lets go within a step
# job.json's fields: what the job makes (two jobs with equal identities make the same head) ...
IDENTITY_FIELDS = ("job_version", "photos", "embedding", "expressions", "expression_prompts", "preset", "overrides",
                   "seed", "texture_size", "output", "stop_after")
# ... and where and how it runs (may change between runs of one job: another GPU, another mount)
PLACEMENT_FIELDS = ("models", "device", "dtype", "memory", "snapshot_interval_s", "allow_download")
LOCK_HINT = ("on Lustre mount with `-o flock` (not `localflock`), on NFS without `nolock` (NFSv4, or NFSv3 with "
             "lockd/statd running); see docs/batch.md")


class JobBusyError(EngineError):
    """Another process is running this job (it holds the job's lock)."""

    code = "job_busy"


class OtherJobError(EngineError):
    """The folder holds another job (or files that are not a job), and the user did not say --new."""

    code = "job_folder_other_job"


class LockUnavailableError(EngineError):
    """The file system cannot lock files, so it cannot keep two processes from running one job."""

    code = "lock_unavailable"


# ---- one process per job ------------------------------------------------------------------------

class JobLock:
    """An exclusive lock on ``JOB_DIR/.idto3d-job.lock`` (flock; on NFS the kernel maps it to a
    POSIX lock the server holds). The lock goes with the process: a killed holder frees it.

    A file system that refuses locks (``ENOLCK``: NFSv3 without lockd, some FUSE mounts) is
    reported with :class:`LockUnavailableError` when ``strict`` (the batch: several machines may
    run its jobs), else with a warning (one machine, one user). A lock that a mount makes
    node-local (Lustre ``localflock``, NFS ``nolock``) cannot be told apart from here: docs/batch.md.
    """

    def __init__(self, job_dir: Path | str, name: str = LOCK):
        self.path = Path(job_dir) / name
        self.fd: int | None = None

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2, *, strict: bool = False) -> "JobLock":
        deadline = time.monotonic() + wait_s
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        while True:
            try:
                lock_file(fd)
                self.fd = fd
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise JobBusyError(
                        f"another process is running the job in {self.path.parent} (it holds {self.path.name})",
                        hint="wait for it to finish or stop it; two runs of one job would overwrite each "
                             "other's checkpoints") from None
                time.sleep(poll_s)
            except OSError as exc:  # a file system without locks
                if strict:
                    os.close(fd)
                    raise LockUnavailableError(
                        f"the file system of {self.path.parent} cannot lock files ({exc.strerror or exc}), so "
                        "nothing would keep two machines from running one job at the same time; nothing was run",
                        hint=LOCK_HINT) from None
                log.warning("cannot lock %s (%s): make sure no other process runs this job at the same time",
                            self.path, exc.strerror or exc)
                self.fd = fd
                return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None

    def __enter__(self) -> "JobLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_file(fd: int) -> None:
    """Lock the open file ``fd`` exclusively, without waiting (BlockingIOError when it is held)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError("locked") from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_running(job_dir: Path | str) -> bool:
    """True while some process holds the job's lock."""
    if not (Path(job_dir) / LOCK).exists():
        return False
    try:
        JobLock(job_dir).acquire().release()
    except JobBusyError:
        return True
    return False


def open_for_run(job_dir: Path | str, *, wait_s: float | None = None, adopt=None) -> JobLock:
    """Make ``job_dir`` ready for :func:`engine.pipeline.run.run_job` and return its held lock.

    Claims the folder as kind "job" (one without a marker, e.g. job.json written by hand, is
    claimed *shared*: its files stay the user's and only what the engine writes from now on is
    ever deleted), removes half-written temporaries a killed run left (exact names only), and
    refuses, before any work, what would fail later: checkpoint names the engine did not record
    (it could neither continue from nor overwrite them) and a result/ or identity/ holding the
    user's files. ``adopt(job_dir)``, when given, runs first, under the lock: it takes a copied
    folder's files back as the engine's (``--adopt-checkpoints``, engine.pipeline.checkpoint.adopt).
    """
    job_dir = Path(job_dir)
    shared = owned.read_manifest(job_dir) is None
    owned.check_claimable(job_dir, KIND, shared=shared)
    lock = JobLock(job_dir).acquire(RUN_LOCK_WAIT_S if wait_s is None else wait_s)
    try:
        owned.claim_dir(job_dir, KIND, shared=shared)
        lock_entry = owned.read_manifest(job_dir)["entries"].get(LOCK)
        if lock_entry is None:
            owned.record(job_dir / LOCK)
        remove_leftovers(job_dir)
        if adopt is not None:
            adopt(job_dir)
        foreign = foreign_checkpoints(job_dir)
        if foreign:
            raise owned.ForeignFolderError(
                f"{job_dir / CHECKPOINTS} holds checkpoint files this engine did not record "
                f"({', '.join(p.name for p in foreign[:4])}): a copy that did not keep file times (cp -r, scp -r, "
                "an object store), an older engine version, or an edit made them; nothing was changed",
                code="foreign_entries",
                hint="if the folder is a copy of a job folder, continue it with --adopt-checkpoints (each checkpoint "
                     "is loaded and checked first; copy with `cp -a` or `rsync -a` to keep file times); else move "
                     f"{job_dir / CHECKPOINTS} away (the job then starts over)")
        for name in (RESULT, IDENTITY):
            if (job_dir / name).exists():
                owned.check_replaceable(job_dir / name, name)
    except BaseException:
        lock.release()
        raise
    return lock


def remove_leftovers(job_dir: Path) -> list[Path]:
    """Delete the half-written temporaries (exact :mod:`engine.atomic` names) a killed run left in
    the job folder, checkpoints/ and live/: a killed checkpoint write leaves hundreds of MB."""
    removed = []
    for folder in (job_dir, job_dir / CHECKPOINTS, job_dir / LIVE):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if temporary_target(path.name) is not None and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def foreign_checkpoints(job_dir: Path) -> list[Path]:
    """Files under the engine's checkpoint names that the engine did not record (or that changed)."""
    folder = Path(job_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    named = [p for p in folder.iterdir() if p.name == LATEST or CHECKPOINT_NAME.fullmatch(p.name)]
    if owned.read_manifest(job_dir) is None:
        return sorted(named)  # the job folder is unclaimed: the engine recorded none of them
    foreign = set(owned.foreign_entries(folder)) if named else set()
    return sorted(p for p in named if p in foreign)


def checkpoint_step(job_dir: Path | str) -> int | None:
    """The global step of the job's newest checkpoint (from latest.json), or None."""
    try:
        info = json.loads((Path(job_dir) / CHECKPOINTS / LATEST).read_text(encoding="utf-8"))
        return int(info["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---- which job a folder holds --------------------------------------------------------------------

def identity(spec: JobSpec) -> dict:
    """What the job makes, as a dict in which equal jobs are equal: paths resolved (an embedding
    given relative to the job folder and the same file given absolute are one job), the texture
    size as it runs (null means the preset's own)."""
    data = spec.to_dict()
    out = {name: data[name] for name in IDENTITY_FIELDS}
    path = spec.embedding_path()
    out["embedding"] = str(path.resolve()) if path is not None else None
    out["photos"] = [str(Path(p).resolve()) for p in spec.photos]
    out["texture_size"] = spec.resolved_texture_size
    return out


def placement(spec: JobSpec) -> dict:
    """Where and how the job runs (may change from one run of the job to the next)."""
    data = spec.to_dict()
    out = {name: data[name] for name in PLACEMENT_FIELDS}
    out["models"] = str(Path(spec.models).expanduser().resolve()) if spec.models else None
    return out


def differences(new: dict, old: dict, fields=None) -> list[str]:
    """Names of the fields (all, or only ``fields``) whose values differ."""
    names = fields if fields is not None else sorted(set(new) | set(old))
    return [name for name in names if new.get(name) != old.get(name)]


def finished(job_dir: Path | str, spec: JobSpec) -> bool:
    """True when result/result.json was made from this very job (its identity: where it ran does
    not matter)."""
    try:
        result = json.loads((Path(job_dir) / RESULT / RESULT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    made_from = result.get("job") if isinstance(result, dict) else None
    if not isinstance(made_from, dict):
        return False
    try:
        made = JobSpec.from_dict({k: v for k, v in made_from.items() if k != "settings"}, Path(job_dir))
    except JobError:
        return False
    return identity(made) == identity(spec)


@dataclass
class Placed:
    spec: JobSpec
    same: bool  # the folder already held this very job
    checkpoint_step: int | None  # its newest checkpoint (same job only)
    finished: bool  # its result was made from this job (same job only)
    placement_changed: list[str] = field(default_factory=list)  # job.json fields rewritten (device, models, ...)


def place_job(job_dir: Path | str, job: dict, *, new: bool = False, restart: bool = False) -> Placed:
    """Put ``job`` (a job.json dict) into ``job_dir``, claimed as the engine's; nothing is
    changed when it is refused.

    - a missing or empty folder, or one the engine claimed with no job yet: the job is written;
    - a folder holding the same job (equal :func:`identity`): kept, checkpoints and result usable
      (``same``); job.json is rewritten when the placement differs (another device or models
      root: ``placement_changed``); with ``restart`` its checkpoints, previews, identity and result
      (what the engine recorded) are deleted first, so it starts over;
    - a folder holding another job, an unreadable job.json, or files and no job: refused with
      :class:`OtherJobError` naming the differences, unless ``new``: then the other job's
      checkpoints, previews, identity and result (only what the engine recorded) are deleted and
      job.json is replaced; every other file stays as it is.

    Changes are made holding the job's lock: :class:`JobBusyError` while a worker runs the job.
    """
    job_dir = Path(job_dir).expanduser()
    if job_dir.exists() and not job_dir.is_dir():
        raise owned.ForeignFolderError(f"{job_dir} is a file, not a folder; nothing was changed",
                                       code="out_not_a_folder", hint="choose a folder path")
    spec = JobSpec.from_dict(job, job_dir)  # a bad job is refused before anything is touched
    existing_file = job_dir / JOB_FILE
    if existing_file.is_file():
        try:
            old = load_job(job_dir)
        except JobError as exc:
            old, reason = None, f"a job.json this engine cannot use ({exc.message})"
        if old is not None and identity(old) == identity(spec):
            return _keep_same(job_dir, spec, old, restart=restart)
        if old is not None:
            fields = differences(identity(spec), identity(old))
            theirs, ours = identity(old), identity(spec)
            reason = "another job (it differs in " + ", ".join(
                f"{name}: {_short(theirs.get(name))} there, {_short(ours.get(name))} here" for name in fields[:4]) + \
                (f" and {len(fields) - 4} more" if len(fields) > 4 else "") + ")"
        if not new:
            raise OtherJobError(f"{job_dir} holds {reason}; nothing was changed",
                                hint="continue that job with --resume, replace it with --new (your own files in "
                                     "the folder stay), or choose another folder")
    elif job_dir.is_dir() and not new:
        if owned.read_manifest(job_dir) is None and any(job_dir.iterdir()):
            shown = ", ".join(sorted(p.name for p in job_dir.iterdir())[:5])
            raise OtherJobError(f"{job_dir} is not empty and holds no job ({shown}); nothing was changed",
                                hint="choose an empty or new folder, or add --new to use it anyway (its files stay)")
        if any((job_dir / name).exists() for name in (CHECKPOINTS, RESULT)):
            raise OtherJobError(f"{job_dir} holds the checkpoints or result of a job whose job.json is gone; "
                                "nothing was changed",
                                hint="add --new to replace them with this job, or choose another folder")
    shared = owned.read_manifest(job_dir) is None and job_dir.is_dir() and any(job_dir.iterdir())
    owned.check_claimable(job_dir, KIND, shared=shared)
    replacing = existing_file.exists() or any((job_dir / name).exists() for name in (CHECKPOINTS, LIVE, RESULT, IDENTITY))
    if replacing:
        _check_clearable(job_dir)
    with _locked(job_dir, shared):
        if replacing:
            _clear_engine_outputs(job_dir)
        _write_job(job_dir, spec.to_dict())
    return Placed(load_job(job_dir), False, None, False)


def _keep_same(job_dir: Path, spec: JobSpec, old: JobSpec, *, restart: bool) -> Placed:
    shared = owned.read_manifest(job_dir) is None
    owned.check_claimable(job_dir, KIND, shared=shared)
    changed = differences(placement(spec), placement(old), PLACEMENT_FIELDS)
    if restart:
        _check_clearable(job_dir)
    if changed or restart:
        with _locked(job_dir, shared):
            if restart:
                _clear_engine_outputs(job_dir)
            if changed:  # the job as job.json spells it, run where and how the caller says now
                wanted = spec.to_dict()
                _write_job(job_dir, {**old.to_dict(), **{name: wanted[name] for name in PLACEMENT_FIELDS}})
    else:
        owned.claim_dir(job_dir, KIND, shared=shared)
    if restart:
        return Placed(load_job(job_dir), True, None, False, changed)
    return Placed(load_job(job_dir), True, checkpoint_step(job_dir), finished(job_dir, spec), changed)


class _locked:
    """Claim ``job_dir`` and hold its lock while job.json and the engine's outputs change (not
    while a worker runs the job: :class:`JobBusyError`)."""

    def __init__(self, job_dir: Path, shared: bool):
        self.job_dir, self.shared, self.lock = job_dir, shared, None

    def __enter__(self):
        if not self.job_dir.is_dir():
            owned.claim_dir(self.job_dir, KIND, shared=self.shared)  # a new folder: nobody can hold its lock
        self.lock = JobLock(self.job_dir).acquire()
        try:
            owned.claim_dir(self.job_dir, KIND, shared=self.shared)
            if LOCK not in owned.read_manifest(self.job_dir)["entries"]:
                owned.record(self.job_dir / LOCK)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _write_job(job_dir: Path, data: dict) -> None:
    """job.json, atomically and recorded before its rename. The caller replaces it on purpose
    (--new, or a placement the user gave): one written by hand is taken as the engine's first."""
    path = job_dir / JOB_FILE
    if path.exists() and not owned.is_own(path):
        owned.record(path)
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    owned.write_owned_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _check_clearable(job_dir: Path) -> None:
    """Refuse (changing nothing) when deleting the job's engine-written outputs would leave
    something of the user's behind where it would be mistaken for the new job's: a checkpoint the
    engine did not record, a file inside result/ or identity/."""
    blocking = foreign_checkpoints(job_dir)
    for name in (RESULT, IDENTITY):
        if (job_dir / name).exists():
            blocking += owned.foreign_entries(job_dir / name) if owned.read_manifest(job_dir / name) \
                else [job_dir / name]
    if blocking:
        shown = ", ".join(str(p) for p in blocking[:4]) + (f" and {len(blocking) - 4} more" if len(blocking) > 4 else "")
        raise owned.ForeignFolderError(
            f"cannot replace the job in {job_dir}: {shown} would stay behind and the engine did not write "
            "them (or they changed); nothing was changed", code="foreign_entries",
            hint="move those files elsewhere, or choose another folder")


def _clear_engine_outputs(job_dir: Path) -> None:
    """Delete the previous run's engine-written outputs (recorded, unchanged files only); the
    caller holds the job's lock and ran :func:`_check_clearable`."""
    for name in (CHECKPOINTS, LIVE):
        if (job_dir / name).is_dir():
            owned.prune_owned(job_dir / name, re.compile(r".*", re.DOTALL), 0)
    for name in (RESULT, IDENTITY):
        if (job_dir / name).exists():
            owned.remove_owned(job_dir / name)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
