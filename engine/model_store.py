"""``python -m engine fetch-models``: the one download path, and the identity step's file lookup.

Where files are looked for is :mod:`engine.models` (the catalogue and its resolver); this module
downloads what the catalogue lists, at its pinned revisions, only when the user asked for it:
without ``--yes`` it prints what it would fetch (sources, licences, sizes, destination) and, when
stdin is not a terminal, stops there. Files that fail their check (truncated, garbage, a pickle
in place of an ONNX graph) are fetched again. Standard library only at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .atomic import copy_file_atomic, write_to_path_atomic
from .errors import EngineError
from .models import (ANTELOPEV2_URL, ARC2FACE_REPO, DETECTOR_FILE, INSIGHTFACE_ORIGINAL_RECOGNITION, MODEL_SPECS,
                     RECOGNITION_FILE, SD15_REPO, ModelSpec, Source, allow_hub_downloads, broken_files,
                     candidate_folders, check_models, default_models_root, enforce_offline, missing_files,
                     resolve, user_offline, resolve_model_folder, spec, verify_folder)

__all__ = ["ARC2FACE_REPO", "SD15_REPO", "ANTELOPEV2_URL", "DETECTOR_FILE", "RECOGNITION_FILE", "ModelsMissing",
           "IdentityModels", "resolve_identity_models", "candidate_folders", "resolve_model_folder", "fetch_models",
           "verify_folder", "plan_fetch", "FIX_HINT"]


class ModelsMissing(EngineError):
    code = "models_missing"


class ModelsRootUnusable(EngineError):
    code = "models_root_unusable"


# ---- the identity step's files -------------------------------------------------------------------


@dataclass
class IdentityModels:
    """The two files the identity step can use, each possibly missing, and where they were sought."""

    detector: Path | None
    recognition: Path | None
    searched: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def missing_message(self, need_detector: bool = True) -> str:
        missing = []
        if need_detector and self.detector is None:
            missing.append(f"antelopev2/{DETECTOR_FILE} (SCRFD face detector)")
        if self.recognition is None:
            missing.append(f"antelopev2/{RECOGNITION_FILE} (Arc2Face's ArcFace recogniser)")
        where = ", ".join(str(p) for p in self.searched) or "nowhere"
        text = f"missing model files: {'; '.join(missing)}. Looked in: {where}."
        if self.notes:
            text += " " + " ".join(self.notes)
        return text


FIX_HINT = ("run `python -m engine fetch-models --only antelopev2 --yes` while online, or copy the insightface "
            "antelopev2 pack into MODELS/antelopev2 and Arc2Face's arcface.onnx beside it "
            "(see docs/models.md)")


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def resolve_identity_models(models_root: Path | str | None = None) -> IdentityModels:
    """The SCRFD detector and the ArcFace recogniser, by the resolver's rule.

    When a complete antelopev2 folder is resolved, both files come from it (the folder the doctor
    reports). Otherwise each file is taken from the first candidate holding it, the recogniser
    also from the resolved Arc2Face folder (it ships the same ``arcface.onnx``), so the dlib
    backend can still make an embedding. A stock pack's ``glintr100.onnx`` is never used
    (Arc2Face was trained on its own ArcFace); a note says so.
    """
    found = resolve("antelopev2", models_root)
    searched = list(found.searched)
    notes: list[str] = []
    for folder in searched:
        if (folder / INSIGHTFACE_ORIGINAL_RECOGNITION).is_file() and not _nonempty(folder / RECOGNITION_FILE):
            notes.append(f"{folder} has insightface's {INSIGHTFACE_ORIGINAL_RECOGNITION}; Arc2Face needs "
                         f"its own {RECOGNITION_FILE} there instead.")
    if found.folder is not None:
        return IdentityModels(found.folder / DETECTOR_FILE, found.folder / RECOGNITION_FILE, searched, notes)
    detector = next((f / DETECTOR_FILE for f in searched if _nonempty(f / DETECTOR_FILE)), None)
    recognition = next((f / RECOGNITION_FILE for f in searched if _nonempty(f / RECOGNITION_FILE)), None)
    if recognition is None:
        arc2face = resolve("arc2face", models_root)
        for folder in ([arc2face.folder] if arc2face.folder else []) + arc2face.searched:
            if folder not in searched:
                searched.append(folder)
            if _nonempty(folder / RECOGNITION_FILE):
                recognition = folder / RECOGNITION_FILE
                break
    return IdentityModels(detector=detector, recognition=recognition, searched=searched, notes=notes)


# ---- downloading ---------------------------------------------------------------------------------


class Downloader:
    """Downloads over the network: Hugging Face files and plain URLs, with progress on stderr.
    Only :func:`fetch_models` uses it, after the user allowed the download."""

    def hf_file(self, repo: str, filename: str, target: Path, revision: str | None = None) -> None:
        allow_hub_downloads()
        from huggingface_hub import hf_hub_download

        # Into a staging folder beside the target (same file system), then renamed into place:
        # an interrupted download never leaves a half file under the real name.
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
            got = Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_dir=tmp))
            os.replace(got, target)

    def url(self, url: str, target: Path) -> None:
        import urllib.request

        allow_hub_downloads()  # the same "offline" switch for plain URLs

        def fetch(path: Path) -> None:
            with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if total:
                        print(f"\r  {target.name}: {done / 2**20:.0f}/{total / 2**20:.0f} MiB", end="",
                              file=sys.stderr)
                print(file=sys.stderr)

        write_to_path_atomic(target, fetch)


@dataclass
class PlannedFile:
    key: str
    relative: str  # under ROOT/<key>
    source: Source
    source_path: str  # path inside the repository / archive
    reason: str  # "missing" or the check that failed
    approx_mb: float


def _files_of(item: ModelSpec) -> list[tuple[str, Source, str, float]]:
    """(relative path, source, path in source, size) of every file fetch-models can get for ``item``."""
    rows = []
    extra = {rel: (source, path) for rel, source, path in item.extra_sources}
    for required in item.files:
        name = required.fetched
        if name in extra:
            rows.append((name, extra[name][0], extra[name][1], required.approx_mb))
        elif item.origin.kind == "hf":
            rows.append((name, item.origin, name, required.approx_mb))
        elif item.origin.kind == "url":  # antelopev2: one member of the zip; the view LoRA: the file itself
            member = DETECTOR_FILE if item.key == "antelopev2" else ""
            rows.append((name, item.origin, member, required.approx_mb))
    return rows


def plan_fetch(models_root: Path | str, keys: list[str]) -> list[PlannedFile]:
    """What :func:`fetch_models` would download into ``models_root`` for ``keys``: missing files and
    present files that fail their check (nothing is read from the network to decide)."""
    root = Path(models_root).expanduser()
    plan: list[PlannedFile] = []
    for key in keys:
        item = spec(key)
        folder = root / item.folder
        missing = set(missing_files(item, folder))
        broken = set(broken_files(key, folder)) if folder.is_dir() else set()
        for relative, source, source_path, size in _files_of(item):
            required = next(f for f in item.files if relative in f.choices)
            present = required.found_in(folder)
            if required.name in missing or (present is None and not required.required):
                reason = "missing"
            elif present is not None and present.relative_to(folder).as_posix() in broken:
                if (folder / relative).is_file() and relative not in broken:
                    continue  # e.g. a broken encoder/model.safetensors: converted again from the sound .bin
                reason = "fails its check"
            else:
                continue
            if source.kind == "train":
                continue
            plan.append(PlannedFile(key, relative, source, source_path, reason, size))
    return plan


def _fetch_antelopev2_detector(folder: Path, downloader) -> None:
    """The insightface zip -> its SCRFD detector (the pack's other models are not needed)."""
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp:
        archive = Path(tmp) / "antelopev2.zip"
        downloader.url(ANTELOPEV2_URL, archive)
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith("/" + DETECTOR_FILE) or n == DETECTOR_FILE]
            if not names:
                raise ModelsMissing(f"{ANTELOPEV2_URL} did not contain {DETECTOR_FILE}")
            with zf.open(names[0]) as src, open(Path(tmp) / DETECTOR_FILE, "wb") as out:
                shutil.copyfileobj(src, out)
        copy_file_atomic(Path(tmp) / DETECTOR_FILE, folder / DETECTOR_FILE)


def _convert_pickled_encoder(folder: Path) -> None:
    """Arc2Face ships its encoder as a pickle: convert it once (weights-only) to safetensors."""
    encoder = folder / "encoder"
    converted = encoder / "model.safetensors"
    if (encoder / "pytorch_model.bin").is_file() and (
            not converted.is_file() or "encoder/model.safetensors" in broken_files("arc2face", folder)):
        from .prior.weights import convert_encoder_to_safetensors

        convert_encoder_to_safetensors(encoder)


def _check_root(root: Path) -> None:
    """A models root that is a file, or a folder this user cannot write, gets a clear error."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ModelsRootUnusable(f"the models folder {root} cannot be used: {probe} is a file, not a folder",
                                 hint="pass --models with a folder (new or existing), e.g. ~/id-to-3d-models")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ModelsRootUnusable(f"the models folder {root} cannot be written: no write permission on {probe}",
                                 hint="choose a folder you own with --models, or fix the folder's permissions")


def _is_required(item: ModelSpec, relative: str) -> bool:
    return next(f for f in item.files if relative in f.choices).required


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p`` that returns the folders it created (outermost first)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def fetch_models(models_root: Path | str, keys: list[str] | None = None, *, downloader=None,
                 log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Download what is missing or broken for each model ``key`` into ``models_root``, then verify.

    Returns ``{key: problems}`` after verification (empty lists = all good). Raises
    :class:`ModelsMissing` naming every file it could not get when downloading fails (offline, ...),
    :class:`ModelsRootUnusable` when the root is a file or not writable. Calling it is the user's
    permission to download.
    """
    root = Path(models_root).expanduser()
    _check_root(root)
    keys = keys or [item.key for item in MODEL_SPECS if item.required]
    if user_offline():
        planned = plan_fetch(root, keys)
        if planned:
            raise ModelsMissing(
                f"could not download the models: {user_offline()} is set in your environment, so nothing was "
                "downloaded; "
                f"{len(planned)} file(s) are missing or broken: "
                + ", ".join(str(root / spec(p.key).folder / p.relative) for p in planned),
                hint=f"unset {user_offline()} and run `python -m engine fetch-models --yes` again, or copy the files "
                     "there by hand (docs/models.md lists their sources)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelsRootUnusable(f"the models folder {root} cannot be created ({exc.strerror or exc})",
                                 hint="choose a folder you can write with --models") from None
    downloader = downloader or Downloader()
    failures: list[tuple[Path, str]] = []
    made: list[Path] = []
    results: dict[str, list[str]] = {}
    try:
        for key in keys:
            item = spec(key)
            folder = root / item.folder
            todo = plan_fetch(root, [key])
            if not todo:
                log(f"{key}: complete in {folder}")
            for planned in todo:
                target = folder / planned.relative
                log(f"{key}: fetching {planned.relative} ({planned.reason}) from {planned.source.describe()}")
                try:
                    made += _make_parents(target.parent)
                    local_copy = root / "arc2face" / planned.source_path  # Arc2Face's arcface.onnx serves both
                    if key != "arc2face" and planned.source.repo == ARC2FACE_REPO and not verify_folder_file(
                            "arc2face", root / "arc2face", planned.source_path):
                        copy_file_atomic(local_copy, target)
                    elif planned.source.kind == "hf":
                        downloader.hf_file(planned.source.repo, planned.source_path, target,
                                           revision=planned.source.revision)
                    elif key == "antelopev2":
                        _fetch_antelopev2_detector(folder, downloader)
                    else:
                        downloader.url(planned.source.url, target)
                except Exception as exc:  # network errors come in many classes; the message says which
                    if not _is_required(item, planned.relative):
                        log(f"{key}: optional {planned.relative} not fetched ({type(exc).__name__}: {exc}); "
                            "the engine works without it")
                        continue
                    failures.append((target, f"{type(exc).__name__}: {exc}"))
            if key == "arc2face" and folder.is_dir():
                try:
                    _convert_pickled_encoder(folder)
                except EngineError as exc:
                    failures.append((folder / "encoder", exc.message))
            results[key] = verify_folder(key, folder)
    finally:
        enforce_offline()  # the downloader lifted it: on every way out (Ctrl-C, a bug), offline again
    for folder in reversed(made):  # folders made for downloads that did not come: not left behind empty
        with contextlib.suppress(OSError):
            folder.rmdir()
    if failures:
        causes = list(dict.fromkeys(cause for _, cause in failures))
        raise ModelsMissing(
            "could not download the models: " + ", ".join(str(path) for path, _ in failures)
            + " (" + "; ".join(causes[:3]) + (f"; +{len(causes) - 3} more causes" if len(causes) > 3 else "") + ")",
            hint="connect to the internet (and accept each model's licence on its page) and run "
                 "`python -m engine fetch-models --yes` again, or download the files by hand into those paths "
                 "(sources: " + "; ".join(f"{s.key}: {s.source}" for s in MODEL_SPECS if s.key in keys) + ")")
    return results


def ensure_models(models_root: Path | str, keys: list[str], *, downloader=None,
                  log: Callable[[str], None] = print) -> list[str]:
    """For a caller allowed to download: fetch into ``models_root`` each model of ``keys`` that the
    resolver cannot find, or whose resolved folder fails its checks. Returns the keys fetched."""
    todo = []
    for key in keys:
        found = resolve(key, models_root)
        if found.folder is None or verify_folder(key, found.folder):
            todo.append(key)
    if todo:
        fetch_models(models_root, todo, downloader=downloader, log=log)
    return todo


def verify_folder_file(key: str, folder: Path, relative: str) -> list[str]:
    """Problems of one catalogue file of ``key`` in ``folder`` (empty: present and sound)."""
    from .models import FileProblem, kind_of, verify_file

    try:
        verify_file(folder / relative, kind_of(relative))
    except FileProblem as exc:
        return [str(exc)]
    return []


# ---- command line --------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", "--prior", "--out", dest="models", type=Path, default=None,
                        help=f"models root folder (default: {default_models_root()}, or $IDTO3D_MODELS)")
    parser.add_argument("--only", nargs="+", choices=[s.key for s in MODEL_SPECS if s.origin.kind != "train"],
                        default=None, help="fetch only these models (default: every required one)")
    parser.add_argument("--verify", action="store_true",
                        help="only check what is there (and where else it was found); download nothing")
    parser.add_argument("--yes", action="store_true",
                        help="download without asking (needed when stdin is not a terminal)")


def describe_plan(plan: list[PlannedFile], root: Path) -> str:
    lines = [f"fetch-models would download into {root}:"]
    for key in dict.fromkeys(p.key for p in plan):
        item = spec(key)
        rows = [p for p in plan if p.key == key]
        size = sum(p.approx_mb for p in rows)
        lines.append(f"  {key} ({item.title}), about {size:,.0f} MB" if size else f"  {key} ({item.title})")
        lines.append(f"    licence: {item.licence}")
        for p in rows:
            origin = p.source.describe() + (f" ({p.source_path})" if p.source_path else "")
            lines.append(f"    {root / item.folder / p.relative}  <- {origin}  [{p.reason}]")
    return "\n".join(lines)


def _verify(root: Path, keys: list[str]) -> int:
    bad = 0
    for report in check_models(root, verify=True):
        if report.spec.key not in keys:
            continue
        problems = [f"{report.path / m} is missing" for m in report.missing] + report.problems
        if not problems:
            print(f"{report.spec.key}: ok ({report.path})")
            continue
        bad += 1
        print(f"{report.spec.key}: " + "; ".join(problems))
        print(f"  fix: run `python -m engine fetch-models --models {root} --only {report.spec.key} --yes` "
              "(it fetches exactly these files again), or copy sound files from " + report.spec.source)
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    enforce_offline()  # nothing goes online until the user has said yes
    root = (args.models or default_models_root()).expanduser()
    keys = args.only or [s.key for s in MODEL_SPECS if s.required]
    if args.verify:
        return _verify(root, keys)
    try:
        _check_root(root)
        plan = plan_fetch(root, keys)
    except EngineError as exc:
        print(f"error: {exc.message}\nfix: {exc.hint}", file=sys.stderr)
        return 2
    if plan and not args.yes:
        print(describe_plan(plan, root), file=sys.stderr)
        if not sys.stdin.isatty():
            print("not downloading: pass --yes to agree to these licences and downloads", file=sys.stderr)
            return 3
        answer = input("Download these files and accept their licences? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing downloaded", file=sys.stderr)
            return 3
    try:
        results = fetch_models(root, keys, log=lambda text: print(text, file=sys.stderr))
    except EngineError as exc:
        print(f"error: {exc.message}\nfix: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, ModelsRootUnusable) else 1
    bad = {key: problems for key, problems in results.items() if problems}
    for key, problems in results.items():
        print(f"{key}: " + ("ok" if not problems else "; ".join(problems)))
    return 1 if bad else 0
