"""Where the model files are, and ``python -m engine fetch-models`` to get them.

Resolution (first complete candidate wins, so a user's own folder always beats a cache):

1. the models root the user chose (add-on preferences / ``--models``), ``ROOT/<key>``;
2. the engine's default root (``$IDTO3D_MODELS`` or the per-user data folder);
3. for ``antelopev2``: insightface's own root, ``~/.insightface/models/antelopev2``
   (``$INSIGHTFACE_HOME`` respected);
4. the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``):
   snapshots of the repositories each model is published in.

Nothing here downloads unless ``fetch-models`` is run, and that reports exactly what is missing
and how to fix it when it cannot reach the network. Standard library only at module level.
"""

from __future__ import annotations

import argparse
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
from .models import MODEL_SPECS, ModelSpec, check_models, default_models_root, spec

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNITION_FILE = "arcface.onnx"
INSIGHTFACE_ORIGINAL_RECOGNITION = "glintr100.onnx"  # what the stock pack has instead of arcface.onnx

# Where each model is published (used for the HF cache lookup and by fetch-models).
ARC2FACE_REPO = "FoivosPar/Arc2Face"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ANTELOPEV2_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"
HF_REPOS = {
    "sd15": (SD15_REPO,),
    "arc2face": (ARC2FACE_REPO,),
    # antelopev2 is not published on the Hub by its authors; unofficial mirrors are never used.
}
# Files fetch-models downloads per model: (repo, filename in repo, path under ROOT/key).
HF_FILES = {
    "arc2face": tuple((ARC2FACE_REPO, name, name) for name in (
        "arc2face/config.json", "arc2face/diffusion_pytorch_model.safetensors",
        "encoder/config.json", "encoder/pytorch_model.bin", "arcface.onnx")),
    "sd15": tuple((SD15_REPO, name, name) for name in (
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json")),
    "antelopev2": ((ARC2FACE_REPO, "arcface.onnx", "arcface.onnx"),),
}


class ModelsMissing(EngineError):
    code = "models_missing"


def insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")).expanduser() / "models"


def hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return home / "hub"


def _hf_snapshots(repo: str) -> list[Path]:
    folder = hf_cache_root() / ("models--" + repo.replace("/", "--")) / "snapshots"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def candidate_folders(key: str, models_root: Path | str | None = None) -> list[Path]:
    """Every folder where model ``key`` is looked for, in priority order (duplicates removed)."""
    spec(key)  # unknown keys fail loudly
    found: list[Path] = []
    if models_root:
        found.append(Path(models_root).expanduser() / key)
    found.append(default_models_root() / key)
    if key == "antelopev2":
        found.append(insightface_root() / "antelopev2")
    for repo in HF_REPOS.get(key, ()):
        for snapshot in _hf_snapshots(repo):
            found.append(snapshot / "antelopev2" if (snapshot / "antelopev2").is_dir() else snapshot)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def _missing(item: ModelSpec, folder: Path) -> list[str]:
    return [f.name for f in item.files if f.found_in(folder) is None]


def resolve_model_folder(key: str, models_root: Path | str | None = None) -> Path | None:
    """The first candidate folder holding every required file of model ``key``, or None."""
    item = spec(key)
    for folder in candidate_folders(key, models_root):
        if folder.is_dir() and not _missing(item, folder):
            return folder
    return None


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


FIX_HINT = ("run `python -m engine fetch-models --only antelopev2` while online, or copy the insightface "
            "antelopev2 pack into MODELS/antelopev2 and Arc2Face's arcface.onnx beside it "
            "(see docs/identity.md)")


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def resolve_identity_models(models_root: Path | str | None = None) -> IdentityModels:
    """Find the SCRFD detector and the ArcFace recogniser across all candidate folders.

    The recogniser may also come from the Arc2Face folder (it ships the same ``arcface.onnx``).
    A stock antelopev2 pack has ``glintr100.onnx`` instead: it is not used (Arc2Face was trained
    on its own ArcFace), and a note says so.
    """
    searched = candidate_folders("antelopev2", models_root)
    detector = recognition = None
    notes: list[str] = []
    for folder in searched:
        if detector is None and _nonempty(folder / DETECTOR_FILE):
            detector = folder / DETECTOR_FILE
        if recognition is None and _nonempty(folder / RECOGNITION_FILE):
            recognition = folder / RECOGNITION_FILE
        if (folder / INSIGHTFACE_ORIGINAL_RECOGNITION).is_file() and not _nonempty(folder / RECOGNITION_FILE):
            notes.append(f"{folder} has insightface's {INSIGHTFACE_ORIGINAL_RECOGNITION}; Arc2Face needs "
                         f"its own {RECOGNITION_FILE} there instead.")
    if recognition is None:
        for folder in candidate_folders("arc2face", models_root):
            searched.append(folder)
            if _nonempty(folder / RECOGNITION_FILE):
                recognition = folder / RECOGNITION_FILE
                break
    return IdentityModels(detector=detector, recognition=recognition, searched=searched, notes=notes)


# ---------------------------------------------------------------------------------------------
# fetch-models


class Downloader:
    """Downloads over the network: Hugging Face files and plain URLs, with progress on stderr."""

    def hf_file(self, repo: str, filename: str, target: Path, revision: str | None = None) -> None:
        from huggingface_hub import hf_hub_download

        # hf_hub_download shows its own progress bar on stderr and resumes partial downloads.
        # Written straight into the models folder (no second multi-GB copy in the HF cache).
        target_text = target.as_posix()
        if target_text.endswith("/" + filename):
            hf_hub_download(repo_id=repo, filename=filename, revision=revision,
                            local_dir=target_text[: -len(filename) - 1])
        else:
            copy_file_atomic(Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision)), target)

    def url(self, url: str, target: Path) -> None:
        import urllib.request

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


def _fetch_antelopev2_pack(folder: Path, downloader) -> None:
    """The insightface zip -> its SCRFD detector (the pack's other models are not needed)."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        archive = Path(tmp) / "antelopev2.zip"
        downloader.url(ANTELOPEV2_URL, archive)
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith("/" + DETECTOR_FILE) or n == DETECTOR_FILE]
            if not names:
                raise ModelsMissing(f"{ANTELOPEV2_URL} did not contain {DETECTOR_FILE}")
            with zf.open(names[0]) as src, open(Path(tmp) / DETECTOR_FILE, "wb") as out:
                shutil.copyfileobj(src, out)
        copy_file_atomic(Path(tmp) / DETECTOR_FILE, folder / DETECTOR_FILE)


def _pinned_revision(repo: str) -> str | None:
    """The commit the prior's loader is pinned to for ``repo`` (None: not pinned yet)."""
    from .prior.weights import HF_SOURCES

    return next((source["revision"] for source in HF_SOURCES.values() if source["repo_id"] == repo), None)


def _convert_pickled_encoder(folder: Path) -> None:
    """Arc2Face ships its encoder as a pickle: convert it once (weights-only) to safetensors."""
    if (folder / "encoder" / "pytorch_model.bin").is_file() and not (folder / "encoder" / "model.safetensors").is_file():
        from .prior.weights import convert_encoder_to_safetensors

        convert_encoder_to_safetensors(folder / "encoder")


def verify_folder(key: str, folder: Path) -> list[str]:
    """Problems with a model folder: missing files, and ONNX files that do not parse."""
    problems = [f"{folder / name} is missing" for name in _missing(spec(key), folder)]
    for onnx_file in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
        try:
            import onnx

            onnx.load(str(onnx_file), load_external_data=False)
        except ImportError:
            break
        except Exception as exc:
            problems.append(f"{onnx_file} is not a valid ONNX file ({exc}); delete it and fetch again")
    return problems


def fetch_models(models_root: Path | str, keys: list[str] | None = None, *, downloader=None,
                 log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Download what is missing for each model ``key`` into ``models_root`` and verify it.

    Returns ``{key: problems}`` after verification (empty lists = all good). Raises
    :class:`ModelsMissing` naming every missing file when downloading fails (offline, ...).
    """
    root = Path(models_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    keys = keys or [item.key for item in MODEL_SPECS if item.required]
    downloader = downloader or Downloader()
    failures: list[str] = []
    results: dict[str, list[str]] = {}
    for key in keys:
        item = spec(key)
        folder = root / key
        missing = _missing(item, folder)
        if not missing:
            log(f"{key}: complete in {folder}")
        else:
            log(f"{key}: fetching {', '.join(missing)} into {folder}")
            try:
                if key == "antelopev2" and DETECTOR_FILE in missing:
                    _fetch_antelopev2_pack(folder, downloader)
                for repo, filename, relative in HF_FILES.get(key, ()):
                    if (folder / relative).is_file():
                        continue
                    already = root / "arc2face" / filename  # Arc2Face's arcface.onnx serves both folders
                    if key != "arc2face" and repo == ARC2FACE_REPO and already.is_file():
                        copy_file_atomic(already, folder / relative)
                        continue
                    downloader.hf_file(repo, filename, folder / relative, revision=_pinned_revision(repo))
                _convert_pickled_encoder(folder)
            except Exception as exc:  # network errors come in many classes; the message says which
                failures.append(f"{key}: {', '.join(str(folder / m) for m in _missing(item, folder))} "
                                f"({type(exc).__name__}: {exc})")
        results[key] = verify_folder(key, folder)
    if failures:
        raise ModelsMissing(
            "could not download the models: " + "; ".join(failures),
            hint="connect to the internet (and accept each model's licence on its page) and run "
                 "`python -m engine fetch-models` again, or download the files by hand into those paths "
                 "(sources: " + "; ".join(f"{s.key}: {s.source}" for s in MODEL_SPECS if s.key in keys) + ")")
    return results


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", "--prior", dest="models", type=Path, default=None,
                        help=f"models root folder (default: {default_models_root()}, or $IDTO3D_MODELS)")
    parser.add_argument("--only", nargs="+", choices=[s.key for s in MODEL_SPECS if s.files], default=None,
                        help="fetch only these model folders (default: every required one)")
    parser.add_argument("--verify", action="store_true",
                        help="only check what is there (and where else it was found); download nothing")


def run(args: argparse.Namespace) -> int:
    root = args.models or default_models_root()
    keys = args.only or [s.key for s in MODEL_SPECS if s.required]
    if args.verify:
        bad = 0
        for report in check_models(root):
            if report.spec.key not in keys:
                continue
            elsewhere = resolve_model_folder(report.spec.key, root)
            problems = verify_folder(report.spec.key, report.path)
            if not problems:
                print(f"{report.spec.key}: ok ({report.path})")
            elif elsewhere is not None:
                print(f"{report.spec.key}: found complete in {elsewhere}")
            else:
                bad += 1
                print(f"{report.spec.key}: " + "; ".join(problems))
        return 1 if bad else 0
    try:
        results = fetch_models(root, keys, log=lambda text: print(text, file=sys.stderr))
    except ModelsMissing as exc:
        print(f"error: {exc.message}\nfix: {exc.hint}", file=sys.stderr)
        return 1
    bad = {key: problems for key, problems in results.items() if problems}
    for key, problems in results.items():
        print(f"{key}: " + ("ok" if not problems else "; ".join(problems)))
    return 1 if bad else 0
