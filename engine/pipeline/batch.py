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
finished jobs and resumes the others. Ctrl-C stops every running job with a checkpoint. ROOT
gets ``index.json`` and ``index.csv`` (status, seconds, identity score, result paths), rewritten
as jobs end. Exit codes: 0 every row done, 1 a row invalid or a job failed, 2 the manifest cannot
be read, 3 ROOT refused, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import re
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, EXIT_OUTPUT_REFUSED, EngineError
from .presets import PRESETS

KIND = "batch"
INDEX_JSON, INDEX_CSV = "index.json", "index.csv"
LIST_SEPARATOR = "|"  # photos / expressions inside one CSV cell
COLUMNS = ("id", "photos", "embedding", "expressions", "preset", "seed", "texture_size", "overrides",
           "expression_prompts")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
EXIT_SOME_FAILED, EXIT_INTERRUPTED = 1, 130
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


def _csv_records(text: str, path: Path) -> list[tuple[int, dict]]:
    first = text.splitlines()[0] if text.strip() else ""
    # A comma, or the semicolon/tab that spreadsheets in some locales write: the one whose header
    # has an "id" column.
    delimiter = next((d for d in (",", ";", "\t") if "id" in [c.strip().lower() for c in first.split(d)]), None)
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
    return records


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
    unknown = [k for k in record if k not in COLUMNS]
    if unknown:
        return Row(line, None, error=_bad(line, row_id, f"unknown field {unknown[0]!r}",
                                          f"the fields are: {', '.join(COLUMNS)}", str(unknown[0])))
    problem = _id_problem(row_id)
    if problem:
        return Row(line, None, error=_bad(line, row_id, problem, "ids become folder names: letters, digits, '.', '_', "
                                          "'-' (up to 64, starting with a letter or digit)", "id"))
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
            f"fix the path (relative paths are read from the manifest's folder, {base}) or remove the photo",
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


def _id_problem(row_id) -> str | None:
    if not isinstance(row_id, str) or not row_id.strip():
        return "no id"
    if not ID_PATTERN.fullmatch(row_id):
        return f"id {row_id!r} cannot be a folder name"
    if row_id.split(".")[0].lower() in _RESERVED:
        return f"id {row_id!r} is a reserved device name on Windows"
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
    status: str  # pending, running, done, failed, cancelled, invalid, refused
    job_dir: Path | None = None
    note: str = ""
    record: dict = field(default_factory=dict)
    error: dict | None = None

    def as_dict(self) -> dict:
        r, e = self.record, self.error or self.record.get("error") or {}
        log = self.job_dir / "batch.log" if self.job_dir is not None and (self.job_dir / "batch.log").exists() else None
        return {"id": self.id, "line": self.line, "status": self.status, "note": self.note,
                "seconds": r.get("seconds"), "compute_seconds": r.get("compute_seconds"),
                "attempts": r.get("attempts", 0), "resumed_from": r.get("resumed_from", []),
                "identity_score": r.get("identity_score"), "judge_distance": r.get("judge_distance"),
                "identity_score_note": r.get("identity_score_note"), "result": r.get("result"), "glb": r.get("glb"),
                "job_dir": str(self.job_dir) if self.job_dir else None, "log": str(log) if log else None,
                "error_code": e.get("code"), "error": e.get("message"), "hint": e.get("hint")}


def write_index(root: Path, header: dict, entries: list[Entry]) -> None:
    from ..owned import write_owned_file

    rows = [e.as_dict() for e in entries]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    data = {**header, "updated": _now(), "counts": counts, "jobs": rows}
    write_owned_file(root / INDEX_JSON, lambda p: p.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n",
                                                               encoding="utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (LIST_SEPARATOR.join(map(str, v)) if isinstance(v, list) else ("" if v is None else v))
                         for k, v in row.items()})
    write_owned_file(root / INDEX_CSV, lambda p: p.write_text(buffer.getvalue(), encoding="utf-8"))


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---- the command ---------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="the identities: a .csv (with a header), .jsonl or .json file")
    parser.add_argument("--out", type=Path, required=True, help="ROOT: one job folder per id, and the index")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: $IDTO3D_MODELS or per user)")
    parser.add_argument("--preset", default="standard", choices=list(PRESETS), help="for rows without one")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a job whose worker died is started again from its checkpoint (default 2)")
    parser.add_argument("--new", action="store_true",
                        help="replace job folders whose job differs from their row (default: such rows are refused)")
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                        help="run the jobs on a Ray cluster: its address, 'auto' (the default: the cluster this "
                             "machine is part of, or $RAY_ADDRESS), or 'local' (start one here)")
    parser.add_argument("--cpus-per-job", type=float, default=1.0, help="Ray: CPUs each job reserves (default 1)")
    parser.add_argument("--gpus-per-job", type=float, default=None,
                        help="Ray: GPUs each job reserves (default 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between progress lines of a running job (default 30)")


def run(args: argparse.Namespace) -> int:
    from ..owned import ForeignFolderError, claim_dir
    from .batch_job import read_state, record_of, result_summary
    from .job import JobError
    from .job_folder import OtherJobError, place_job

    if args.retries < 0 or args.progress_every <= 0 or args.cpus_per_job <= 0 or (
            args.gpus_per_job is not None and args.gpus_per_job < 0):
        print("batch: error: --retries must be >= 0, --progress-every and --cpus-per-job > 0, --gpus-per-job >= 0",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    models = str(args.models.expanduser().resolve()) if args.models else None
    try:
        rows = read_manifest(args.manifest.expanduser().resolve(), models=models, device=args.device,
                             preset=args.preset)
    except ManifestError as exc:
        print(f"batch: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    root = args.out.expanduser().resolve()
    try:
        claim_dir(root, KIND, shared=True)  # ROOT may also hold the manifest, photos, ...: only ours is touched
    except EngineError as exc:
        print(f"batch: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return EXIT_OUTPUT_REFUSED
    header = {"format": "idto3d-batch-index", "version": 1, "manifest": str(args.manifest.expanduser().resolve()),
              "root": str(root), "runner": f"ray {args.ray}" if args.ray else "local", "retries": args.retries,
              "batch": uuid.uuid4().hex, "started": _now(), "status": "running"}
    from .. import __version__

    header["engine_version"] = __version__

    entries, runnable = [], []
    for row in rows:
        if row.error is not None:
            entries.append(Entry(row.id, row.line, "invalid", error=row.error))
            _say(f"{row.id or 'line ' + str(row.line)}: invalid: {row.error['message']}")
            continue
        job_dir = root / row.id
        try:
            placed = place_job(job_dir, row.job, new=args.new)
        except (OtherJobError, ForeignFolderError, JobError) as exc:
            entries.append(Entry(row.id, row.line, "refused", job_dir if job_dir.is_dir() else None,
                                 error=exc.to_dict()))
            _say(f"{row.id}: refused: {exc.message}")
            continue
        if placed.same and placed.finished:
            state = read_state(job_dir)
            record = record_of(state) if state and state.get("status") == "done" else \
                {**result_summary(job_dir), "status": "done"}
            entries.append(Entry(row.id, row.line, "done", job_dir, note="finished in an earlier run",
                                 record=record))
            _say(f"{row.id}: done already ({job_dir / 'result'})")
            continue
        entry = Entry(row.id, row.line, "pending", job_dir,
                      note=f"continues from checkpoint step {placed.checkpoint_step}"
                      if placed.checkpoint_step is not None else "")
        entries.append(entry)
        runnable.append(entry)
    write_index(root, header, entries)

    stop = threading.Event()
    interrupts = []

    def on_signal(signum, frame):
        interrupts.append(signum)
        if len(interrupts) > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the jobs' workers stop themselves)
        stop.set()
        _say("stopping: every running job writes a checkpoint (Ctrl-C again to leave at once)")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def update(entry: Entry, record: dict | None = None, status: str | None = None) -> None:
        if record is not None:
            entry.record = record
            entry.status = record.get("status") or entry.status
            deaths = record.get("deaths") or []
            if deaths:
                entry.note = (f"worker died {len(deaths)} time(s) ({'; '.join(deaths)}); resumed from step(s) "
                              f"{', '.join(map(str, record.get('resumed_from', [])))}" if entry.status == "done" else
                              f"worker died {len(deaths)} time(s) ({'; '.join(deaths)})")
            elif record.get("resumed_from"):
                entry.note = f"resumed from step {record['resumed_from'][0]}"
        if status is not None:
            entry.status = status
        write_index(root, header, entries)
        if record is not None:
            _say(_summary(entry))

    try:
        if runnable:
            if args.ray:
                from .batch_ray import run_on_ray

                run_on_ray(runnable, address=args.ray, batch_id=header["batch"], retries=args.retries,
                           cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                           progress_every=args.progress_every, should_stop=stop.is_set, update=update)
            else:
                _run_local(runnable, batch_id=header["batch"], retries=args.retries,
                           progress_every=args.progress_every, should_stop=stop.is_set, update=update)
    except EngineError as exc:  # the Ray runner could not start (no ray, no cluster): nothing ran
        header["status"] = "not started"
        write_index(root, header, entries)
        print(f"batch: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stop.set()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    header["status"] = "interrupted" if stop.is_set() else "finished"
    header["finished"] = _now()
    write_index(root, header, entries)
    counts = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    _say(f"batch {header['status']}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
         + f"; index: {root / INDEX_JSON}")
    if stop.is_set():
        _say("continue with the same command: finished jobs are skipped, the others resume")
        return EXIT_INTERRUPTED
    return 0 if all(e.status == "done" for e in entries) else EXIT_SOME_FAILED


def _run_local(entries: list[Entry], *, batch_id: str, retries: int, progress_every: float, should_stop,
               update) -> None:
    from .batch_job import run_one
    from .generate import ProgressLines

    for entry in entries:
        if should_stop():
            break  # the rest stay "pending": nothing of theirs ran
        update(entry, status="running")
        _say(f"{entry.id}: running ({entry.job_dir})")
        printer = ProgressLines(sys.stderr, progress_every, prefix=f"{entry.id}: ")
        record = run_one(entry.job_dir, batch_id=batch_id, retries=retries, should_stop=should_stop,
                         on_message=lambda m: printer(m) if m["type"] in ("stage", "progress", "warning") else None,
                         progress_every=progress_every)
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
