"""The models catalogue and its resolver: which models exist, where their files are, whether they are sound.

One root folder holds every model, one subfolder each, in the layout its publisher uses:

``ROOT/sd15``        a diffusers Stable Diffusion 1.5 folder (VAE, tokenizer, scheduler used)
``ROOT/arc2face``    the Arc2Face repository layout: ``arc2face/`` UNet, ``encoder/``, ``arcface.onnx``
``ROOT/antelopev2``  the insightface pack, Arc2Face's ``arcface.onnx`` in place of ``glintr100.onnx``
``ROOT/loras/...``   optional LoRAs: the project's task priors (``normal``, ``albedo``) and
                     Arc2Avatar's view LoRA for Arc2Face (``view``)

Every stage finds its files through :func:`resolve` (the prior's loader, the identity step, the
doctor and ``fetch-models``), so they always agree. Checks read what the loaders read
(:func:`verify_file`). Standard library only at import time: the Blender add-on imports this
module; ``onnx`` is imported only while checking an ``.onnx`` file.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MODELS_ENV = "IDTO3D_MODELS"

# ---- pinned sources ---------------------------------------------------------------------------

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# The commit the stable-diffusion-v1-5 organisation's repository has served since the runwayml move.
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
ARC2FACE_REPO = "FoivosPar/Arc2Face"
# A commit of FoivosPar/Arc2Face that holds arcface.onnx (added after arc2face/ and encoder/), as
# pinned in several public download scripts (".../resolve/da2f1e9.../arcface.onnx"). Not checked
# against the Hub from here (no network): if a download at this commit fails, update this constant.
ARC2FACE_REVISION_UNVERIFIED = "da2f1e9aa3954dad093213acfc9ae75a68da6ffd"
ANTELOPEV2_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"
# Arc2Avatar (MIT) ships its Arc2Face view LoRA inside its GitHub repository, loaded there with
# diffusers' ``load_lora_weights`` at scale 0.45 (configs/config.yaml ``lora_scale``).
ARC2AVATAR_REPO = "dimgerogiannis/Arc2Avatar"
ARC2AVATAR_REVISION = "7821be1a492ecb144069bcf4bee309cc280aa070"
ARC2AVATAR_LORA_PATH = "guidance/lora_weights/pytorch_lora_weights.safetensors"
ARC2AVATAR_LORA_URL = f"https://github.com/{ARC2AVATAR_REPO}/raw/{ARC2AVATAR_REVISION}/{ARC2AVATAR_LORA_PATH}"
VIEW_LORA_SCALE = 0.45

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNITION_FILE = "arcface.onnx"
INSIGHTFACE_ORIGINAL_RECOGNITION = "glintr100.onnx"  # what the stock pack has instead of arcface.onnx
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


# ---- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequiredFile:
    """A file the model needs; any one of ``choices`` (relative paths) satisfies it.

    Each file is checked by its extension (:func:`kind_of`): json (an object), safetensors (header
    and length), onnx (the graph parses), torch_pickle (a torch zip archive; never unpickled here),
    anything else as UTF-8 text.
    ``required=False``: fetched and checked when present, never missing.
    """

    choices: tuple[str, ...]
    required: bool = True
    approx_mb: float = 0.0
    fetch: str = ""  # the choice fetch-models downloads (default: the first)

    @property
    def name(self) -> str:
        return " or ".join(self.choices)

    @property
    def kind(self) -> str:
        return kind_of(self.choices[0])

    @property
    def fetched(self) -> str:
        return self.fetch or self.choices[0]

    def found_in(self, folder: Path) -> Path | None:
        for choice in self.choices:
            candidate = folder / choice
            if candidate.is_file() and candidate.stat().st_size > 0:
                return candidate
        return None


def kind_of(path: str | Path) -> str:
    path = str(path)
    if path.endswith(".json"):
        return "json"
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith(".bin"):
        return "torch_pickle"
    return "text"


def _file(spec: str, approx_mb: float = 0.0, required: bool = True, fetch: str = "") -> RequiredFile:
    return RequiredFile(tuple(spec.split("|")), required, approx_mb, fetch)


@dataclass(frozen=True)
class Source:
    """Where a model comes from. ``kind``: "hf" (a Hub repository at ``revision``), "url" (a plain
    download), "train" (made by this project's trainer; nothing to download)."""

    kind: str
    repo: str = ""
    revision: str = ""
    url: str = ""

    def describe(self) -> str:
        if self.kind == "hf":
            return f"Hugging Face {self.repo} at {self.revision}"
        if self.kind == "url":
            return self.url
        return "train it with `python -m engine train-prior`"


@dataclass(frozen=True)
class ModelSpec:
    key: str  # name used by --only and in reports; also the folder under the models root
    title: str
    source: str  # one line for the user: where to get it
    required: bool
    files: tuple[RequiredFile, ...] = field(default_factory=tuple)
    origin: Source = Source("train")
    licence: str = ""
    # Files fetched from a second place (antelopev2's arcface.onnx comes from Arc2Face).
    extra_sources: tuple[tuple[str, Source, str], ...] = ()  # (relative path, source, path in source)

    @property
    def folder(self) -> str:
        return self.key

    @property
    def approx_mb(self) -> float:
        return sum(f.approx_mb for f in self.files)


ARC2FACE_LICENCE = ("Arc2Face: code MIT, model card MIT; fine-tuned from SD 1.5 (CreativeML OpenRAIL-M) on face "
                    "datasets (WebFace42M, FFHQ, CelebA-HQ) whose terms are research-only: check before any "
                    "commercial use")


def _task_lora_spec(domain: str, what: str) -> "ModelSpec":
    """The optional task-prior LoRA for ``domain``, trained by the user with ``train-prior``."""
    return ModelSpec(
        key=f"loras/{domain}",
        title=f"ID-to-3D task prior: {what} (LoRA, optional)",
        source=f"train with `python -m engine train-prior --domain {domain}`; the base prior is used without it",
        required=False,
        files=(_file(LORA_WEIGHTS_FILE), _file("prior_adapter.json", required=False)),
        licence="yours (trained by you)",
    )


MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        key="sd15",
        title="Stable Diffusion 1.5 base (VAE, tokenizer, scheduler)",
        source=f"Hugging Face: {SD15_REPO}",
        required=True,
        files=(
            _file("vae/config.json"),
            _file("vae/diffusion_pytorch_model.safetensors", 335),  # the loader reads the fp32 file
            _file("tokenizer/vocab.json", 1.1),
            _file("tokenizer/merges.txt", 0.5),
            _file("tokenizer/tokenizer_config.json", required=False),
            _file("tokenizer/special_tokens_map.json", required=False),
            _file("scheduler/scheduler_config.json"),
            # SD 1.5's own CLIP text encoder: optional, used by the prior's "blend" text mode (Arc2Avatar's recipe)
            _file("text_encoder/config.json", required=False),
            _file("text_encoder/model.safetensors", 492, required=False),
        ),
        origin=Source("hf", SD15_REPO, SD15_REVISION),
        licence="CreativeML OpenRAIL-M (use restrictions in the licence; accept it on the model page)",
    ),
    ModelSpec(
        key="arc2face",
        title="Arc2Face (identity-conditioned UNet, text encoder, ArcFace ONNX)",
        source=f"Hugging Face: {ARC2FACE_REPO} (research-only training data terms)",
        required=True,
        files=(
            _file("arc2face/config.json"),
            _file("arc2face/diffusion_pytorch_model.safetensors", 3440),
            _file("encoder/config.json"),
            # Arc2Face publishes the pickle; fetch-models converts it (weights-only) to safetensors.
            _file("encoder/model.safetensors|encoder/pytorch_model.bin", 492, fetch="encoder/pytorch_model.bin"),
            _file("arcface.onnx", 250),
        ),
        origin=Source("hf", ARC2FACE_REPO, ARC2FACE_REVISION_UNVERIFIED),
        licence=ARC2FACE_LICENCE,
    ),
    ModelSpec(
        key="antelopev2",
        title="insightface antelopev2 pack (SCRFD detector + Arc2Face's arcface.onnx)",
        source="insightface model zoo: antelopev2 (research-only licence terms); "
        "copy Arc2Face's arcface.onnx into it",
        required=True,
        files=(_file(DETECTOR_FILE, 17), _file(RECOGNITION_FILE, 250)),
        origin=Source("url", url=ANTELOPEV2_URL),
        licence="insightface pretrained models: non-commercial research use only",
        extra_sources=(
            (RECOGNITION_FILE, Source("hf", ARC2FACE_REPO, ARC2FACE_REVISION_UNVERIFIED), RECOGNITION_FILE),),
    ),
    _task_lora_spec("normal", "normal maps"),
    _task_lora_spec("albedo", "albedo"),
    ModelSpec(
        key="loras/view",
        title="Arc2Avatar view LoRA for Arc2Face (360° heads, optional)",
        source=f"GitHub {ARC2AVATAR_REPO} at {ARC2AVATAR_REVISION[:12]}: {ARC2AVATAR_LORA_PATH} "
        "(`fetch-models --only loras/view`)",
        required=False,
        files=(_file(LORA_WEIGHTS_FILE),),
        origin=Source("url", url=ARC2AVATAR_LORA_URL),
        licence="Arc2Avatar repository: MIT; applies to Arc2Face (see its terms)",
    ),
)

LORA_KEYS = tuple(s.key for s in MODEL_SPECS if s.key.startswith("loras/"))


def spec(key: str) -> ModelSpec:
    for item in MODEL_SPECS:
        if item.key == key:
            return item
    raise KeyError(f"unknown model {key!r}; known: {', '.join(s.key for s in MODEL_SPECS)}")


# ---- where models are looked for ----------------------------------------------------------------


def user_data_root() -> Path:
    """The per-user data folder of this platform (``.../id-to-3d``): models, machine profiles."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "id-to-3d"


def default_models_root() -> Path:
    """``$IDTO3D_MODELS`` if set, else the per-user data folder of this platform."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    return user_data_root() / "models"


def insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")).expanduser() / "models"


def hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return home / "hub"


def _hf_snapshots(repo: str, pinned: str) -> list[Path]:
    """Cached snapshots of ``repo``: the pinned commit first, then the newest."""
    folder = hf_cache_root() / ("models--" + repo.replace("/", "--")) / "snapshots"
    if not folder.is_dir():
        return []
    snapshots = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return sorted(snapshots, key=lambda p: p.name != pinned)


def candidate_folders(key: str, models_root: Path | str | None = None) -> list[Path]:
    """Every folder where model ``key`` is looked for, in priority order (duplicates removed):

    1. the models root the user chose (add-on preferences / ``--models``), ``ROOT/<key>``;
    2. the default root (``$IDTO3D_MODELS`` or the per-user data folder);
    3. for ``antelopev2``: insightface's own folder (``$INSIGHTFACE_HOME/models/antelopev2``);
    4. for Hub models: snapshots in the Hugging Face cache (pinned revision first).
    Unofficial mirrors are never looked at.
    """
    item = spec(key)  # unknown keys fail loudly
    found: list[Path] = []
    if models_root:
        found.append(Path(models_root).expanduser() / item.folder)
    found.append(default_models_root() / item.folder)
    if key == "antelopev2":
        found.append(insightface_root() / "antelopev2")
    if item.origin.kind == "hf":
        found += _hf_snapshots(item.origin.repo, item.origin.revision)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def missing_files(item: ModelSpec, folder: Path) -> list[str]:
    return [f.name for f in item.files if f.required and f.found_in(folder) is None]


@dataclass
class Resolution:
    """Where model ``key`` was found (``folder``; None when no candidate is complete)."""

    key: str
    folder: Path | None
    searched: list[Path]

    @property
    def primary(self) -> Path:
        """The folder the user is told to fill (the first candidate)."""
        return self.searched[0]


def resolve(key: str, models_root: Path | str | None = None) -> Resolution:
    """The first candidate folder holding every required file of model ``key`` (the one rule
    every stage uses)."""
    item = spec(key)
    searched = candidate_folders(key, models_root)
    for folder in searched:
        if folder.is_dir() and not missing_files(item, folder):
            return Resolution(key, folder, searched)
    return Resolution(key, None, searched)


def resolve_model_folder(key: str, models_root: Path | str | None = None) -> Path | None:
    return resolve(key, models_root).folder


# ---- checks that read what the loaders read ------------------------------------------------------

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                           "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_SAFETENSORS_HEADER = 100_000_000


class FileProblem(ValueError):
    """A model file that a loader would reject; ``str()`` names the file and the cause."""


def read_json_object(path: Path) -> dict:
    """A JSON config as a dict. A config holding anything else (a string such as "someone/repo"
    would make diffusers look it up on the Hub) is refused."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FileProblem(f"{path} is not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise FileProblem(f"{path} holds a JSON {type(data).__name__}, not an object (a config must be "
                          "an object of settings)")
    return data


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Check a safetensors file's structure without loading it; return ``name -> (dtype, shape)``.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the data. Every range must match its dtype and
    shape and the data must end exactly at the end of the file, as the safetensors loader requires.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise FileProblem(f"{path} is only {size} bytes: not a safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 0 or header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > size:
                raise FileProblem(f"{path} has an impossible header length ({header_len} for a {size}-byte file)")
            header = json.loads(handle.read(header_len).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, FileProblem):
            raise
        raise FileProblem(f"{path} has an unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise FileProblem(f"{path} has a header that is not a JSON object")
    tensors: dict[str, tuple[str, list[int]]] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], [int(n) for n in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FileProblem(f"{path}: tensor {name!r} has a malformed header entry") from None
        count = 1
        for n in shape:
            count *= n
        width = SAFETENSORS_DTYPE_BYTES.get(dtype)
        if width is None or start < 0 or end - start != count * width:
            raise FileProblem(f"{path}: tensor {name!r} ({dtype} {shape}) has a byte range {start}..{end} that "
                              "does not match its shape")
        tensors[name] = (dtype, shape)
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if expected > size:
        raise FileProblem(f"{path} is truncated: its header needs {expected} bytes, the file has {size}")
    if expected < size:
        raise FileProblem(f"{path} has {size - expected} bytes after its last tensor (not a safetensors file as "
                          "written, or two files joined)")
    return tensors


def _check_onnx(path: Path) -> None:
    """Parse the ONNX graph (protobuf) without external data, as onnxruntime would before running it."""
    try:
        import onnx
    except ImportError:
        raise FileProblem(f"{path} cannot be checked: the onnx package is not installed") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise FileProblem(f"{path} is not a valid ONNX file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise FileProblem(f"{path} parses as ONNX but holds no graph (no nodes, inputs or outputs)")


def _check_torch_pickle(path: Path) -> None:
    """A torch checkpoint (zip archive with a ``data.pkl``); its contents are never unpickled here."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise FileProblem(f"{path} is not a torch checkpoint archive ({exc}); it is truncated or another "
                          "file") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise FileProblem(f"{path} is a zip archive without data.pkl: not a torch checkpoint")


def verify_file(path: Path, kind: str) -> None:
    """Raise :class:`FileProblem` when ``path`` would be rejected by its loader."""
    path = Path(path)
    if not path.is_file():
        raise FileProblem(f"{path} is missing")
    if path.stat().st_size == 0:
        raise FileProblem(f"{path} is empty")
    if kind == "json":
        read_json_object(path)
    elif kind == "safetensors":
        read_safetensors_header(path)
    elif kind == "onnx":
        _check_onnx(path)
    elif kind == "torch_pickle":
        _check_torch_pickle(path)
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                handle.read(1 << 20)
        except UnicodeDecodeError as exc:
            raise FileProblem(f"{path} is not UTF-8 text ({exc})") from None


def verify_folder(key: str, folder: Path | str) -> list[str]:
    """Problems with a model folder, one sentence each: missing files and files a loader would reject."""
    item, folder = spec(key), Path(folder)
    problems = [f"{folder / name} is missing" for name in missing_files(item, folder)]
    for required in item.files:
        found = required.found_in(folder)
        if found is None:
            continue
        try:
            verify_file(found, kind_of(found))
        except FileProblem as exc:
            problems.append(str(exc))
    return problems


def broken_files(key: str, folder: Path | str) -> list[str]:
    """Relative paths of files present in ``folder`` that fail their check (to fetch again)."""
    item, folder = spec(key), Path(folder)
    broken = []
    for required in item.files:
        found = required.found_in(folder)
        if found is None:
            continue
        try:
            verify_file(found, kind_of(found))
        except FileProblem:
            broken.append(found.relative_to(folder).as_posix())
    return broken


# ---- reports ------------------------------------------------------------------------------------


@dataclass
class ModelFolderReport:
    spec: ModelSpec
    path: Path
    missing: list[str]
    problems: list[str] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)
    verified: bool = False

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def complete(self) -> bool:
        return self.exists and not self.missing and not self.problems

    @property
    def blocking(self) -> bool:
        """True when this folder is required and not usable."""
        return self.spec.required and not self.complete


def check_models(root: Path | str, overrides: dict[str, Path | str] | None = None,
                 verify: bool = False) -> list[ModelFolderReport]:
    """Report, for each model, the folder the resolver uses (or, when none is complete, the one to
    fill) and which required files it lacks; with ``verify``, also every file a loader would reject.

    ``overrides`` maps a model key to a folder used instead of the resolver's (a user pointing at
    an existing download).
    """
    overrides = {key: Path(value).expanduser() for key, value in (overrides or {}).items() if value}
    reports = []
    for item in MODEL_SPECS:
        if item.key in overrides:
            folder, searched = overrides[item.key], [overrides[item.key]]
        else:
            found = resolve(item.key, root)
            folder, searched = found.folder or found.primary, found.searched
        report = ModelFolderReport(spec=item, path=folder, missing=missing_files(item, folder), searched=searched)
        if verify and folder.is_dir():
            report.problems = [p for p in verify_folder(item.key, folder) if not p.endswith(" is missing")]
            report.verified = True
        reports.append(report)
    return reports


# ---- offline by default --------------------------------------------------------------------------

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Names of the offline variables the engine itself set (inherited by child processes with them), so
# that they are never mistaken for the user's own "no downloads".
ENGINE_SET_MARKER = "IDTO3D_OFFLINE_SET_BY_ENGINE"
_TRUE = ("1", "on", "yes", "true")


def user_offline() -> str | None:
    """The name of an offline variable the user set (their "no downloads"), if any."""
    ours = set(os.environ.get(ENGINE_SET_MARKER, "").split(","))
    return next((v for v in OFFLINE_VARIABLES
                 if v not in ours and os.environ.get(v, "").strip().lower() in _TRUE), None)


def enforce_offline() -> None:
    """Put the Hugging Face libraries in offline mode for this process (before or after they are
    imported): whatever a config file says, they may not reach the network. Only an allowed
    download (``fetch-models``) lifts it, through :func:`allow_hub_downloads`."""
    ours = {v for v in os.environ.get(ENGINE_SET_MARKER, "").split(",") if v}
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() not in _TRUE:
            ours.add(name)
            os.environ[name] = "1"
    os.environ[ENGINE_SET_MARKER] = ",".join(sorted(ours))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    # onnxruntime (identity, quality report) sends usage telemetry to Microsoft from Linux too: off.
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    ort = sys.modules.get("onnxruntime")
    if ort is not None and hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()


def allow_hub_downloads() -> None:
    """Lift :func:`enforce_offline` for an explicitly allowed download; refused when the user's own
    environment says offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``)."""
    if user_offline():
        raise OSError(f"{user_offline()} is set in your environment, so nothing is downloaded; unset it to download")
    for name in OFFLINE_VARIABLES:
        os.environ.pop(name, None)
    os.environ.pop(ENGINE_SET_MARKER, None)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = False
