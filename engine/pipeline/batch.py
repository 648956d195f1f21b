"""``python -m engine batch MANIFEST --out ROOT [--ray [ADDRESS]]``: many identities, one job each.

The manifest has one row per identity (CSV with a header, JSON Lines, or a JSON list; see
docs/batch.md): ``id`` (the job folder's name), ``photos`` or ``embedding``, and optionally
``expressions``, ``preset``, ``seed``, ``texture_size``, ``overrides``, ``expression_prompts``.
Every row is checked
before anything runs; a bad row is reported with its own error (line, field, photo, what to do)
and the good rows still run. Each good row becomes an ordinary job folder ``ROOT/<id>/``
(job.json, checkpoints, result), so ``generate --out ROOT/<id> --resume`` works on it too.

The jobs run one after another on this machine, or with ``--ray`` as one Ray task each on a
cluster (engine/pipeline/batch_ray.py); either way each job is a worker process that is started
again from its last checkpoint when it dies (engine/pipeline/batch_job.py). A rerun skips the
finished jobs and resumes the others. Ctrl-C stops every running job with a checkpoint (a second
one leaves at once). ROOT gets ``index.json`` and ``index.csv`` (status, seconds, identity score,
result paths), written when the batch starts, at most every :data:`INDEX_EVERY_S` seconds while
it runs, and when it ends; one batch at a time runs in a ROOT (its lock). Exit codes: 0 every row
done, 1 a row invalid, refused or busy, or a job failed, 2 the manifest or an option cannot be used
(or the Ray runner cannot start), 3 ROOT refused (or its index cannot be written), 5 another batch
runs in ROOT, 130 interrupted (143 by SIGTERM).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NO_RESULT, EXIT_OUTPUT_REFUSED, EngineError,
                      exit_code_for, exit_code_for_signal)
from .batch_job import LOG, STALL_TIMEOUT_S, now
from .presets import PRESETS

KIND = "batch"
INDEX_JSON, INDEX_CSV = "index.json", "index.csv"
INDEX_EVERY_S = 5.0  # the index is rewritten at most this often while jobs run (plus at the start and end)
BATCH_LOCK = ".idto3d-batch.lock"  # held by the one batch that runs in ROOT
LIST_SEPARATOR = "|"  # photos / expressions inside one CSV cell
COLUMNS = ("id", "photos", "embedding", "expressions", "preset", "seed", "texture_size", "overrides",
           "expression_prompts")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ID_RULE = "ids are limited to A-Z a-z 0-9 . _ - (up to 64 characters, starting with a letter or digit)"
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_BATCH_NAMES = re.compile(r"index(-\d+)?\.(json|csv)|batch\..*")  # ROOT's own files: never a job folder's name
EXIT_SOME_FAILED = EXIT_NO_RESULT
INDEX_FIELDS = ("id", "line", "status", "note", "seconds", "compute_seconds", "attempts", "resumed_from",
                "identity_score", "judge_distance", "identity_score_note", "result", "glb", "job_dir", "log",
                "error_code", "error", "hint")


class ManifestError(EngineError):
    """The manifest as a whole cannot be read (a bad row is a :class:`Row` with an error instead)."""

    code = "batch_bad_manifest"


@dataclass
class Row:
    line: int  # where the row is: a line of the CSV/JSONL file, or an item of a JSON list
    id: str | None
    job: dict | None = None  # job.json for this identity, when the row is good
    error: dict | None = None  # {code, message, hint, field}


# ---- the manifest --------------------------------------------------------------------------------

def read_manifest(path: Path, *, models: str | None, device: str, preset: str) -> list[Row]:
    """Every row of the manifest, each with its job or its own error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # Excel writes a byte-order mark
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path} ({exc.strerror or exc})",
                            hint="give the path of a .csv, .jsonl or .json file") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest {path} is not UTF-8 text (byte {exc.start})",
                            hint="save it as UTF-8 (CSV UTF-8 in Excel)") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(text, path)
    elif suffix in (".jsonl", ".ndjson"):
        records = _jsonl_records(text)
    elif suffix == ".json":
        records = _json_records(text, path)
    else:
        raise ManifestError(f"{path.name}: a manifest is a .csv, .jsonl or .json file",
                            hint="see docs/batch.md for the format")
    if not records:
        raise ManifestError(f"the manifest {path} has no rows", hint="add one row per identity (see docs/batch.md)")
    rows, seen = [], {}
    for line, record in records:
        rows.append(_row(line, record, path.parent, seen, models=models, device=device, preset=preset))
    return rows


def _header_cells(line: str, delimiter: str) -> list[str]:
    try:
        return [c.strip().lower() for c in next(csv.reader([line], delimiter=delimiter), [])]
    except csv.Error:
        return []


def _csv_records(text: str, path: Path) -> list[tuple[int, dict]]:
    first = text.splitlines()[0] if text.strip() else ""
    # A comma, or the semicolon/tab that spreadsheets in some locales write: the one whose header
    # has an "id" column. Read as CSV, so a quoted header ("id","photos": R, pandas, LibreOffice) is one too.
    delimiter = next((d for d in (",", ";", "\t") if "id" in _header_cells(first, d)), None)
    if delimiter is None:
        raise ManifestError(f"{path.name}: the first line must be a header naming the columns, with an 'id' column "
                            f"(it is {first[:80]!r})", hint="e.g. id,photos,expressions,preset,seed")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c.strip().lower() for c in next(reader)]
    unknown = [c for c in header if c not in COLUMNS]
    if unknown or len(set(header)) != len(header):
        what = f"unknown columns {', '.join(map(repr, unknown))}" if unknown else "a column named twice"
        raise ManifestError(f"{path.name}: the header has {what}", hint=f"the columns are: {', '.join(COLUMNS)}")
    records = []
    split_photos: set[int] = set()  # lines whose photos cell was split at '|'
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # blank line
        line = reader.line_num
        if len(cells) > len(header):
            records.append((line, {"__error__": f"{len(cells)} cells for {len(header)} columns"}))
            continue
        record = {name: cell for name, cell in zip(header, cells) if cell.strip()}
        for name in ("photos", "expressions"):
            if name in record:
                record[name] = [part.strip() for part in record[name].split(LIST_SEPARATOR) if part.strip()]
                if name == "photos" and len(record[name]) > 1:
                    split_photos.add(line)
        for name in ("seed", "texture_size"):
            if name in record:
                record[name] = _integer(record[name].strip())
        for name in ("overrides", "expression_prompts"):  # JSON objects in a quoted cell
            if name in record:
                try:
                    record[name] = json.loads(record[name])
                except ValueError:
                    pass  # left as text: reported as "not an object" by the job's own check
        records.append((line, record))
    return [(line, {**record, "__split__": True} if line in split_photos else record) for line, record in records]


def _integer(text: str):
    try:
        return int(text)
    except ValueError:
        return text  # reported by the job's check with the value as written


def _jsonl_records(text: str) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            record = {"__error__": f"not valid JSON ({exc})"}
        records.append((number, record))
    return records


def _json_records(text: str, path: Path) -> list[tuple[int, dict]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path.name} is not valid JSON ({exc})", hint="fix the file, or write one row per line "
                                                                           "as JSON Lines (.jsonl)") from None
    if not isinstance(data, list):
        raise ManifestError(f"{path.name} must hold a JSON list of rows", hint='e.g. [{"id": "anna", ...}]')
    return list(enumerate(data, start=1))


def _bad(line: int, row_id, message: str, hint: str, field_name: str, code: str = "batch_bad_row") -> dict:
    who = f"line {line}" + (f" (id {row_id!r})" if isinstance(row_id, str) else "")
    return {"code": code, "message": f"{who}: {message}", "hint": hint, "field": field_name}


def _row(line: int, record, base: Path, seen: dict, *, models, device, preset) -> Row:
    from .job import JobError, JobSpec

    if not isinstance(record, dict):
        return Row(line, None, error=_bad(line, None, "a row must be an object with an 'id'", 'e.g. {"id": "anna", '
                                           '"photos": ["anna1.jpg"]}', "id"))
    row_id = record.get("id")
    if "__error__" in record:
        return Row(line, None, error=_bad(line, None, record["__error__"], "fix that line", "id"))
    split = record.pop("__split__", False)  # CSV: the photos cell held '|'
    unknown = [k for k in record if k not in COLUMNS]
    if unknown:
        return Row(line, None, error=_bad(line, row_id, f"unknown field {unknown[0]!r}",
                                          f"the fields are: {', '.join(COLUMNS)}", str(unknown[0])))
    problem = _id_problem(row_id)
    if problem:
        return Row(line, None, error=_bad(line, row_id, problem, f"ids become folder names: {ID_RULE}", "id"))
    if row_id.casefold() in seen:
        return Row(line, row_id, error=_bad(line, row_id, f"the id is used by line {seen[row_id.casefold()]} already "
                                            "(ids are compared ignoring case: they become folder names)",
                                            "give every identity its own id", "id"))
    seen[row_id.casefold()] = line
    photos = record.get("photos", [])
    if isinstance(photos, str):
        photos = [photos]
    if not isinstance(photos, list) or not all(isinstance(p, str) for p in photos):
        return Row(line, row_id, error=_bad(line, row_id, f"photos {photos!r} is not a list of paths",
                                            "list the photo files (in CSV separated by '|')", "photos"))
    resolved = [_resolve(p, base) for p in photos]
    missing = [f"{p} (given as {given!r})" if str(p) != given else str(p)
               for p, given in zip(resolved, photos) if not p.is_file()]
    if missing:
        return Row(line, row_id, error=_bad(
            line, row_id, (f"photo {missing[0]} does not exist" if len(missing) == 1 else
                           f"photos {', '.join(missing)} do not exist"),
            f"fix the path (relative paths are read from the manifest's folder, {base}) or remove the photo"
            + (f"; {joined} exists, but in a CSV manifest '|' separates photos, so a path that contains '|' cannot be "
               "written there: use a JSON Lines manifest (.jsonl) for it" if (joined := _joined(photos, base, split))
               else ""),
            "photos", code="batch_missing_photo"))
    embedding = record.get("embedding")
    job = {"photos": [str(p) for p in resolved],
           "embedding": str(_resolve(embedding, base)) if isinstance(embedding, str) and embedding.strip() else embedding,
           "expressions": record.get("expressions", ["neutral"]), "preset": record.get("preset", preset),
           "seed": record.get("seed", 0), "texture_size": record.get("texture_size"),
           "overrides": record.get("overrides", {}), "expression_prompts": record.get("expression_prompts", {}),
           "models": models, "device": device}
    try:
        JobSpec.from_dict(job, None)
    except JobError as exc:
        return Row(line, row_id, error=_bad(line, row_id, exc.message, exc.hint or "", exc.field or "", code=exc.code))
    return Row(line, row_id, job=job)


def _joined(photos: list[str], base: Path, split: bool) -> Path | None:
    """A file whose name holds '|' that a CSV cell split into several photos, or None."""
    for first in range(len(photos) if split else 0):
        for last in range(first + 2, len(photos) + 1):
            if (path := _resolve("|".join(photos[first:last]), base)).is_file():
                return path
    return None


def _id_problem(row_id) -> str | None:
    if not isinstance(row_id, str) or not row_id.strip():
        return "no id"
    if not ID_PATTERN.fullmatch(row_id):
        return f"id {row_id!r} cannot be used: {ID_RULE}"
    if row_id.split(".")[0].lower() in _RESERVED:
        return f"id {row_id!r} is a reserved device name on Windows"
    if _BATCH_NAMES.fullmatch(row_id.casefold()):
        return f"id {row_id!r} is a name the batch uses for its own files in ROOT (index.json, index.csv, batch.*)"
    return None


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


# ---- the index -----------------------------------------------------------------------------------

@dataclass
class Entry:
    """One row of the index."""

    id: str | None
    line: int
    status: str  # pending, queued, running, done, failed, cancelled, invalid, refused, busy
    job_dir: Path | None = None
    note: str = ""
    record: dict = field(default_factory=dict)
    error: dict | None = None
    log: Path | None = None  # the job's batch.log, once the job has run (stored: never looked up per write)

    def as_dict(self) -> dict:
        r, e = self.record, self.error or self.record.get("error") or {}
        return {"id": self.id, "line": self.line, "status": self.status, "note": self.note,
                "seconds": r.get("seconds"), "compute_seconds": r.get("compute_seconds"),
                "attempts": r.get("attempts", 0), "resumed_from": r.get("resumed_from", []),
                "identity_score": r.get("identity_score"), "judge_distance": r.get("judge_distance"),
                "identity_score_note": r.get("identity_score_note"), "result": r.get("result"), "glb": r.get("glb"),
                "job_dir": str(self.job_dir) if self.job_dir else None, "log": str(self.log) if self.log else None,
                "error_code": e.get("code"), "error": e.get("message"), "hint": e.get("hint")}


def index_names(root: Path) -> tuple[str, str]:
    """``index.json``/``index.csv``, or ``index-<n>.json``/``.csv`` (the smallest n from 2) when a
    file of those names is not the engine's (yours, or one you edited): that file is left alone."""
    from .. import owned

    def free(name: str) -> bool:
        path = root / name
        return not os.path.lexists(path) or (not path.is_dir() and owned.is_own(path))

    n = 1
    while True:
        names = (INDEX_JSON, INDEX_CSV) if n == 1 else (f"index-{n}.json", f"index-{n}.csv")
        if all(free(name) for name in names):
            return names
        n += 1


class Index:
    """ROOT's index of the batch: every entry's status, times, score and paths, as JSON and CSV.

    Written at once by :meth:`write` (the start, the end), and while jobs run by a thread at most
    every ``every_s`` seconds after :meth:`changed` (each rewrite is all the rows: written on every
    change, 5000 rows would cost minutes). Entries change only under :attr:`lock`.
    """

    def __init__(self, root: Path, header: dict, entries: list[Entry], names: tuple[str, str],
                 every_s: float = INDEX_EVERY_S):
        self.root, self.header, self.entries, self.names, self.every_s = root, header, entries, names, every_s
        self.lock = threading.RLock()
        self.dirty = False
        self.last = -float("inf")
        self.error: EngineError | None = None  # the last write failure, reported once at the end
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.root / self.names[0]

    def write(self) -> None:
        with self.lock:
            write_index(self.root, self.header, self.entries, self.names)
            self.dirty, self.last = False, time.monotonic()

    def changed(self) -> None:
        with self.lock:
            self.dirty = True

    def start(self) -> "Index":
        self.thread = threading.Thread(target=self._flushing, name="idto3d-batch-index", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def _flushing(self) -> None:
        while not self.stopped.wait(0.5):
            with self.lock:
                if not self.dirty or time.monotonic() - self.last < self.every_s:
                    continue
                try:
                    self.write()
                except EngineError as exc:  # a full disk, a changed index: keep running the jobs; said at the end
                    if self.error is None:
                        _say(f"warning: cannot write the index {self.path} ({exc.message}); the jobs go on")
                    self.error, self.dirty, self.last = exc, False, time.monotonic()


def write_index(root: Path, header: dict, entries: list[Entry], names: tuple[str, str] = (INDEX_JSON, INDEX_CSV)) -> None:
    from ..owned import write_owned_file

    rows = [e.as_dict() for e in entries]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    data = {**header, "updated": now(), "counts": counts, "jobs": rows}
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_owned_file(root / names[0], lambda p: p.write_text(text, encoding="utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    # utf-8-sig: Excel reads a CSV without a byte-order mark in the locale's code page (paths garbled)
    write_owned_file(root / names[1], lambda p: p.write_text(buffer.getvalue(), encoding="utf-8-sig"))


def _csv_cell(value) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, list):
        value = LIST_SEPARATOR.join(map(str, value))
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet would run it as a formula (CSV injection): shown as text
    return value


# ---- the command ---------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="the identities: a .csv (with a header), .jsonl or .json file")
    parser.add_argument("--out", type=Path, required=True, help="ROOT: one job folder per id, and the index")
    parser.add_argument("--models", type=Path, default=None,
                        help="models root (default: $IDTO3D_MODELS or per user, resolved here and written into every "
                             "job.json, so every node uses the same one)")
    parser.add_argument("--preset", default="standard", choices=list(PRESETS), help="for rows without one")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a job whose worker died is started again from its checkpoint (default 2)")
    parser.add_argument("--new", action="store_true",
                        help="replace job folders whose job differs from their row (default: such rows are refused)")
    parser.add_argument("--adopt-checkpoints", action="store_true",
                        help="ROOT is a copy that did not keep file times: check each job's checkpoints by loading "
                             "them and continue from them (docs/pipeline.md)")
    parser.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT_S, metavar="SECONDS",
                        help=f"a worker that sends nothing for this long is taken as hung: killed and retried from "
                             f"its checkpoint (default {STALL_TIMEOUT_S:g}; 0: never)")
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                        help="run the jobs on a Ray cluster: its address, 'auto' (the default: the cluster this "
                             "machine is part of, or $RAY_ADDRESS), or 'local' (start one here)")
    parser.add_argument("--cpus-per-job", type=float, default=None,
                        help="Ray: CPUs each job reserves, and its threads (default: the GPU nodes' CPUs per GPU "
                             "when the cluster has GPUs, else 1)")
    parser.add_argument("--gpus-per-job", type=float, default=None,
                        help="Ray: GPUs each job reserves (default 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between progress lines of a running job (default 30)")


def _error(exc: EngineError) -> None:
    print(f"batch: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..models import default_models_root
    from ..owned import claim_dir, record
    from .job_folder import JobLock

    if args.retries < 0 or args.progress_every <= 0 or args.stall_timeout < 0 or (
            args.cpus_per_job is not None and args.cpus_per_job <= 0) or (
            args.gpus_per_job is not None and args.gpus_per_job < 0):
        print("batch: error: --retries and --stall-timeout must be >= 0, --progress-every and --cpus-per-job > 0, "
              "--gpus-per-job >= 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Resolved here, once: a Ray node's own $IDTO3D_MODELS (or none) must not decide which models a job uses.
    models = str((args.models or default_models_root()).expanduser().resolve())
    try:
        rows = read_manifest(args.manifest.expanduser().resolve(), models=models, device=args.device,
                             preset=args.preset)
    except ManifestError as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    root = args.out.expanduser().resolve()
    try:
        claim_dir(root, KIND, shared=True)  # ROOT may also hold the manifest, photos, ...: only ours is touched
        # One batch at a time in ROOT; and a file system that cannot lock is refused here, before
        # anything runs (its job locks could not keep two machines from running one job).
        root_lock = JobLock(root, BATCH_LOCK).acquire(strict=True)
    except EngineError as exc:
        if exc.code == "job_busy":
            exc = EngineError(f"another batch is running in {root} (it holds {BATCH_LOCK})", code="batch_busy",
                              hint="wait for it to end, or give this batch another --out")
        _error(exc)
        return exit_code_for(exc)
    try:
        record(root / BATCH_LOCK)
        return _run(args, rows, root, models)
    finally:
        root_lock.release()


def _run(args, rows: list[Row], root: Path, models: str) -> int:
    from .batch_job import read_state, record_of, result_summary
    from .batch_ray import RunnerUnavailable
    from .job_folder import place_job

    header = {"format": "idto3d-batch-index", "version": 1, "manifest": str(args.manifest.expanduser().resolve()),
              "root": str(root), "runner": f"ray {args.ray}" if args.ray else "local", "retries": args.retries,
              "models": models, "batch": uuid.uuid4().hex, "started": now(), "status": "running"}
    from .. import __version__

    header["engine_version"] = __version__
    names = index_names(root)  # before any job folder is made: a file of yours there is left alone
    if names[0] != INDEX_JSON:
        _say(f"warning: {root / INDEX_JSON} or {root / INDEX_CSV} is not the engine's (yours, or edited since): left "
             f"as it is; this batch's index is {root / names[0]}")

    entries, runnable = [], []
    for row in rows:
        if row.error is not None:
            entries.append(_invalid(row, root))
            _say(f"{row.id or 'line ' + str(row.line)}: invalid: {row.error['message']}")
            continue
        job_dir = root / row.id
        try:
            placed = place_job(job_dir, row.job, new=args.new)
        except EngineError as exc:  # another job, the user's files, a worker running it now: this row only
            status = "busy" if exc.code == "job_busy" else "refused"
            entries.append(Entry(row.id, row.line, status, job_dir if job_dir.is_dir() else None, error=exc.to_dict()))
            _say(f"{row.id}: {status}: {exc.message}")
            continue
        if placed.same and placed.finished:
            state = read_state(job_dir)
            record = record_of(state) if state and state.get("status") == "done" else \
                {**result_summary(job_dir), "status": "done"}
            entries.append(Entry(row.id, row.line, "done", job_dir, note="finished in an earlier run",
                                 record=record, log=job_dir / LOG if state else None))
            _say(f"{row.id}: done already ({job_dir / 'result'})")
            continue
        note = f"continues from checkpoint step {placed.checkpoint_step}" if placed.checkpoint_step is not None else ""
        if placed.placement_changed:
            note = "; ".join(filter(None, [note, f"job.json's {', '.join(placed.placement_changed)} rewritten"]))
        entry = Entry(row.id, row.line, "pending", job_dir, note=note)
        entries.append(entry)
        runnable.append(entry)
    index = Index(root, header, entries, names)
    try:
        index.write()
    except EngineError as exc:
        _error(exc)
        _say("the job folders are made; nothing ran")
        return EXIT_OUTPUT_REFUSED

    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum, frame):
        signals.append(signum)
        if len(signals) > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the jobs' workers stop themselves)
        if not stop.is_set():
            stop.set()
            _say("stopping: every running job writes a checkpoint (Ctrl-C again to leave at once)")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def update(entry: Entry, record: dict | None = None, status: str | None = None) -> None:
        with index.lock:
            if record is not None:
                entry.record = record
                entry.status = record.get("status") or entry.status
                entry.log = entry.job_dir / LOG if entry.status != "pending" else entry.log
                deaths = record.get("deaths") or []
                if deaths:
                    entry.note = (f"worker died {len(deaths)} time(s) ({'; '.join(deaths)}); resumed from step(s) "
                                  f"{', '.join(map(str, record.get('resumed_from', [])))}" if entry.status == "done" else
                                  f"worker died {len(deaths)} time(s) ({'; '.join(deaths)})")
                elif record.get("resumed_from"):
                    entry.note = f"resumed from step {record['resumed_from'][0]}"
            if status is not None:
                entry.status = status
                if status == "running":
                    entry.log = entry.job_dir / LOG
            index.changed()
        if record is not None:
            _say(_summary(entry))

    job_options = {"adopt_checkpoints": args.adopt_checkpoints, "stall_timeout_s": args.stall_timeout or None}
    runner_error = None
    index.start()
    try:
        if runnable:
            if args.ray:
                from .batch_ray import run_on_ray

                run_on_ray(runnable, address=args.ray, batch_id=header["batch"], retries=args.retries,
                           cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                           progress_every=args.progress_every, should_stop=stop.is_set, update=update, say=_say,
                           job_options=job_options)
            else:
                _run_local(runnable, batch_id=header["batch"], retries=args.retries,
                           progress_every=args.progress_every, should_stop=stop.is_set, update=update,
                           job_options=job_options)
    except RunnerUnavailable as exc:  # no ray, no cluster: nothing ran
        index.stop()
        header["status"] = "not started"
        _write_last(index)
        _error(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stop.set()
    except EngineError as exc:  # the runner broke down while jobs ran (a Ray cluster lost, ...)
        runner_error = exc
        _error(exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        index.stop()
    why = "the runner failed" if runner_error else "left at once (a second Ctrl-C)"
    for entry in entries:
        if entry.status in ("running", "queued"):  # a second Ctrl-C, or a runner error: what the folder says
            _left(entry, header["batch"], why, read_state, record_of)
    header["status"] = "interrupted" if stop.is_set() else "runner failed" if runner_error else "finished"
    header["finished"] = now()
    if not _write_last(index):
        return EXIT_OUTPUT_REFUSED
    counts = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    _say(f"batch {header['status']}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
         + f"; index: {index.path}")
    if stop.is_set():
        _say("continue with the same command: finished jobs are skipped, the others resume")
        return exit_code_for_signal(signals[0]) if signals else EXIT_INTERRUPTED
    return 0 if all(e.status == "done" for e in entries) else EXIT_SOME_FAILED


def _write_last(index: Index) -> bool:
    try:
        index.write()
    except EngineError as exc:
        _error(EngineError(f"the batch's index cannot be written ({exc.message})", code=exc.code,
                           hint=f"{exc.hint or 'free space or fix the permissions'}; each job's own record is "
                                "ROOT/<id>/batch.json, and a rerun writes the index again"))
        return False
    if index.error is not None:
        _say(f"the index could not be written for a while ({index.error.message}); it is complete now")
    return True


def _left(entry: Entry, batch_id: str, why: str, read_state, record_of) -> None:
    """An entry still running or queued when the batch left (``why``): what its job folder says now."""
    from .batch_job import left_at_once
    from .job_folder import checkpoint_step

    state = read_state(entry.job_dir)
    if state is None or state.get("batch") != batch_id:
        entry.status, entry.note = "pending", f"{why}: nothing of it ran in this batch run"
        return
    entry.record = record_of(state)
    entry.log = entry.job_dir / LOG
    if state.get("status") in ("done", "failed", "cancelled"):  # its runner recorded its end, holding the lock
        entry.status, entry.note = state["status"], f"{why}; its runner recorded the job's end"
        return
    entry.status, entry.note = "cancelled", f"{why}; its worker stops itself with a checkpoint"
    entry.error = left_at_once(checkpoint_step(entry.job_dir))


def _invalid(row: Row, root: Path) -> Entry:
    """A bad row. When its folder still holds the result an earlier run made (the photos were
    cleaned up since, say), the entry keeps that result's paths."""
    from .batch_job import result_summary
    from .job_folder import RESULT, RESULT_JSON

    entry = Entry(row.id, row.line, "invalid", error=row.error)
    job_dir = root / row.id if row.id and not _id_problem(row.id) else None
    if job_dir is not None and (job_dir / RESULT / RESULT_JSON).is_file():
        entry.job_dir, entry.record = job_dir, result_summary(job_dir)
        entry.note = "its folder holds the result of an earlier run (the row as it is now could not run)"
    return entry


def _run_local(entries: list[Entry], *, batch_id: str, retries: int, progress_every: float, should_stop,
               update, job_options: dict) -> None:
    from .batch_job import run_one
    from .generate import HEARTBEAT_S, ProgressLines

    for entry in entries:
        if should_stop():
            break  # the rest stay "pending": nothing of theirs ran
        update(entry, status="running")
        _say(f"{entry.id}: running ({entry.job_dir})")
        printer = ProgressLines(sys.stderr, progress_every, prefix=f"{entry.id}: ",
                                heartbeat_s=max(HEARTBEAT_S, progress_every)).start_heartbeat()
        try:
            record = run_one(entry.job_dir, batch_id=batch_id, retries=retries, should_stop=should_stop,
                             on_message=lambda m: printer(m) if m["type"] in ("stage", "progress", "warning") else None,
                             progress_every=progress_every, **job_options)
        finally:
            printer.close()
        update(entry, record)


def _summary(entry: Entry) -> str:
    d = entry.as_dict()
    if entry.status == "done":
        score = d["identity_score"]
        return (f"{entry.id}: done in {d['seconds'] or 0:.0f} s"
                + (f", identity score {score:.3f}" if score is not None else f" (identity score: {d['identity_score_note']})")
                + (f"; {entry.note}" if entry.note else "") + f"; {d['result']}")
    text = f"{entry.id}: {entry.status}"
    if d["error"]:
        text += f": {d['error']}" + (f" ({d['hint']})" if d["hint"] else "")
    return text + (f"; {entry.note}" if entry.note else "")


def _say(text: str) -> None:
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} {text}", file=sys.stderr, flush=True)
