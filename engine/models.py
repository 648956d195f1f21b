"""The models folder: one root, one subfolder per model, in the layout its publisher uses.

``ROOT/sd15``       a diffusers Stable Diffusion 1.5 folder (VAE, tokenizer, scheduler used)
``ROOT/arc2face``   the Arc2Face repository layout: ``arc2face/`` UNet, ``encoder/``, ``arcface.onnx``
``ROOT/antelopev2`` the insightface pack, Arc2Face's ``arcface.onnx`` in place of ``glintr100.onnx``
``ROOT/loras``      task priors (normal, albedo) saved with ``save_lora_adapter`` (optional)

This module only knows the layout and checks which files are present (standard library only);
loading lives with the stage that uses each model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

MODELS_ENV = "IDTO3D_MODELS"


@dataclass(frozen=True)
class RequiredFile:
    """A file the model needs; any one of ``choices`` (relative paths) satisfies it."""

    choices: tuple[str, ...]

    @property
    def name(self) -> str:
        return " or ".join(self.choices)

    def found_in(self, folder: Path) -> Path | None:
        for choice in self.choices:
            candidate = folder / choice
            if candidate.is_file() and candidate.stat().st_size > 0:
                return candidate
        return None


def _files(*specs: str) -> tuple[RequiredFile, ...]:
    return tuple(RequiredFile(tuple(spec.split("|"))) for spec in specs)


@dataclass(frozen=True)
class ModelSpec:
    key: str  # subfolder name under the models root
    title: str
    source: str  # where the user gets it
    required: bool
    files: tuple[RequiredFile, ...] = field(default_factory=tuple)


MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        key="sd15",
        title="Stable Diffusion 1.5 base (VAE, tokenizer, scheduler)",
        source="Hugging Face: stable-diffusion-v1-5/stable-diffusion-v1-5",
        required=True,
        files=_files(
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",  # the loader reads the fp32 file (cast as needed)
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
        ),
    ),
    ModelSpec(
        key="arc2face",
        title="Arc2Face (identity-conditioned UNet, text encoder, ArcFace ONNX)",
        source="Hugging Face: FoivosPar/Arc2Face (research-only licence terms)",
        required=True,
        files=_files(
            "arc2face/config.json",
            "arc2face/diffusion_pytorch_model.safetensors",
            "encoder/config.json",
            "encoder/model.safetensors|encoder/pytorch_model.bin",
            "arcface.onnx",
        ),
    ),
    ModelSpec(
        key="antelopev2",
        title="insightface antelopev2 pack (SCRFD detector + Arc2Face's arcface.onnx)",
        source="insightface model zoo: antelopev2 (research-only licence terms); "
        "copy Arc2Face's arcface.onnx into it",
        required=True,
        files=_files("scrfd_10g_bnkps.onnx", "arcface.onnx"),
    ),
    ModelSpec(
        key="loras",
        title="ID-to-3D task priors (normal and albedo LoRAs)",
        source="train with `python -m engine train-prior`; the base prior is used without them",
        required=False,
        files=(),
    ),
)


def spec(key: str) -> ModelSpec:
    for item in MODEL_SPECS:
        if item.key == key:
            return item
    raise KeyError(f"unknown model folder {key!r}; known: {', '.join(s.key for s in MODEL_SPECS)}")


def default_models_root() -> Path:
    """``$IDTO3D_MODELS`` if set, else the per-user data folder of this platform."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "id-to-3d" / "models"


@dataclass
class ModelFolderReport:
    spec: ModelSpec
    path: Path
    missing: list[str]

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def complete(self) -> bool:
        return self.exists and not self.missing

    @property
    def blocking(self) -> bool:
        """True when this folder is required and not usable."""
        return self.spec.required and not self.complete


def check_models(root: Path | str, overrides: dict[str, Path | str] | None = None) -> list[ModelFolderReport]:
    """Report, for each model folder, where it is looked for and which required files it lacks.

    ``overrides`` maps a model key to a folder used instead of ``root/key`` (a user pointing at an
    existing download).
    """
    root = Path(root).expanduser()
    overrides = {key: Path(value).expanduser() for key, value in (overrides or {}).items() if value}
    reports = []
    for item in MODEL_SPECS:
        folder = overrides.get(item.key, root / item.key)
        missing = [f.name for f in item.files if f.found_in(folder) is None]
        reports.append(ModelFolderReport(spec=item, path=folder, missing=missing))
    return reports
