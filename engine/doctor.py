"""``python -m engine doctor``: a truthful report of what this Python can and cannot do.

Checks the Python version, the key packages (versions read from their metadata, so a broken
package is reported rather than crashing the report), whether torch sees a usable CUDA device,
whether the optional nvdiffrast backend imports, and each model of the catalogue
(``engine.models``): the folder the resolver uses, the files it lacks and every file its loader
would reject (safetensors headers and lengths, configs that are not JSON objects, ONNX graphs
that do not parse). Reads local files only.
Exits 1 when anything required is missing, 0 otherwise. ``--json`` prints one JSON object, which
the Blender add-on reads.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .models import check_models, default_models_root, enforce_offline

# (distribution name, import name, required, why)
PACKAGES = (
    ("torch", "torch", True, "optimisation and rendering"),
    ("numpy", "numpy", True, "arrays everywhere"),
    ("diffusers", "diffusers", True, "Stable Diffusion / Arc2Face priors"),
    ("transformers", "transformers", True, "CLIP text encoder"),
    ("peft", "peft", True, "LoRA task priors"),
    ("safetensors", "safetensors", True, "safe weight files"),
    ("huggingface-hub", "huggingface_hub", True, "model folders and downloads"),
    ("pillow", "PIL", True, "reading photos, writing textures"),
    ("insightface", "insightface", True, "production face detection and ArcFace"),
    ("onnxruntime", "onnxruntime", True, "runs the ArcFace and detector ONNX models"),
    ("dlib-bin", "dlib", False, "offline face detection and the independent identity judge"),
    ("face-recognition-models", "face_recognition_models", False, "dlib's face model files"),
    ("xatlas", "xatlas", False, "UV unwrapping for the texture stage"),
    ("nvdiffrast", "nvdiffrast", False, "optional CUDA rasteriser (the built-in one is used without it)"),
)


@dataclass
class Check:
    name: str
    ok: bool
    required: bool
    detail: str


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", "--prior", dest="models", type=Path, default=None,
        help=f"models root folder (default: {default_models_root()}, or $IDTO3D_MODELS)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--no-models", action="store_true",
        help="do not count missing model folders as failures (checking an environment only)",
    )
    parser.add_argument(
        "--gpu", action="store_true",
        help="also run one real SDS step of --preset with the models (Check GPU): seconds per step, peak VRAM, "
             "whether fp16 stays finite, minutes per preset; saves the machine profile the pipeline reads",
    )
    parser.add_argument("--preset", default="standard", help="preset whose step --gpu measures (default: standard)")
    parser.add_argument("--device", default="auto", help="--gpu on 'auto' (CUDA when usable), 'cuda', 'cuda:N' or 'cpu'")


def _package_check(dist: str, module: str, required: bool, why: str) -> Check:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if importlib.util.find_spec(module) is None:
        return Check(dist, False, required, f"not installed ({why})")
    if required:
        # Installed is not enough: a version clash shows up only when the package is imported.
        try:
            importlib.import_module(module)
        except Exception as exc:
            return Check(dist, False, required, f"{version or '?'} installed but does not import: "
                                                f"{type(exc).__name__}: {exc}")
    return Check(dist, True, required, f"{version or 'unknown version'} ({why})")


def _torch_check() -> tuple[Check, dict[str, Any]]:
    info: dict[str, Any] = {"cuda_available": False}
    try:
        import torch
    except Exception as exc:  # a broken install must still produce a report
        return Check("cuda", False, False, f"torch does not import: {exc}"), info
    info["torch_cuda_build"] = torch.version.cuda
    if not torch.cuda.is_available():
        why = "CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
        return Check("cuda", False, False, f"not usable ({why}); the engine runs on CPU, slowly"), info
    try:
        name = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info(0)
        torch.zeros(1, device="cuda").add_(1)  # proves a kernel actually runs
    except Exception as exc:
        return Check("cuda", False, False, f"device present but unusable: {exc}"), info
    info.update(cuda_available=True, device=name, memory_total_gb=round(total / 2**30, 1),
                memory_free_gb=round(free / 2**30, 1))
    return Check("cuda", True, False, f"{name}, {free / 2**30:.1f}/{total / 2**30:.1f} GiB free"), info


def _nvdiffrast_check() -> Check:
    if importlib.util.find_spec("nvdiffrast") is None:
        return Check("nvdiffrast", False, False, "not installed (optional): the built-in torch rasteriser runs, "
                                                 "on the GPU too; Check GPU measures its share of a step")
    try:
        importlib.import_module("nvdiffrast.torch")
    except Exception as exc:
        return Check("nvdiffrast", False, False, f"installed but does not import: {exc}")
    return Check("nvdiffrast", True, False, "imports (CUDA backend available)")


def _dlib_models_check() -> Check:
    from .errors import EngineError
    from .identity.detect_dlib import dlib_models_folder  # the identity step's own lookup

    try:
        folder = dlib_models_folder()
    except EngineError as exc:
        return Check("dlib face models", False, False, exc.message)
    return Check("dlib face models", True, False, f"{folder} ({len(list(folder.glob('*.dat')))} model files)")


def collect(models_root: Path | None, count_models: bool = True) -> dict[str, Any]:
    """Gather the whole report as plain data."""
    enforce_offline()  # the package imports below must not reach the network either
    root = Path(models_root).expanduser() if models_root else default_models_root()
    checks: list[Check] = [
        Check("python", sys.version_info[:2] >= (3, 10), True,
              f"{platform.python_version()} at {sys.executable}"),
    ]
    checks += [_package_check(*row) for row in PACKAGES if row[0] != "nvdiffrast"]
    cuda_check, cuda_info = _torch_check()
    checks += [cuda_check, _nvdiffrast_check(), _dlib_models_check()]
    from .tiny_models import is_tiny

    models = []
    for report in check_models(root, verify=True):  # the resolver every stage uses
        models.append({
            "key": report.spec.key,
            "title": report.spec.title,
            "path": str(report.path),
            "exists": report.exists,
            "required": report.spec.required,
            "missing": report.missing,
            "problems": report.problems,
            "complete": report.complete,
            "source": report.spec.source,
            "licence": report.spec.licence,
            "searched": [str(p) for p in report.searched],
        })
    failed = [c.name for c in checks if c.required and not c.ok]
    tiny = is_tiny(root)
    if count_models:
        failed += [f"models/{m['key']}" for m in models if m["required"] and not m["complete"]]
        if tiny:
            failed.append("models (tiny random test models, not real weights)")
    return {
        "engine_version": __version__,
        "platform": platform.platform(),
        "models_root": str(root),
        "checks": [c.__dict__ for c in checks],
        "cuda": cuda_info,
        "models": models,
        "tiny_models": tiny,
        "failed": failed,
        "ok": not failed,
    }


def format_text(report: dict[str, Any]) -> str:
    lines = [f"ID-to-3D engine {report['engine_version']} on {report['platform']}", ""]
    for check in report["checks"]:
        mark = "ok " if check["ok"] else ("MISSING" if check["required"] else "-- ")
        lines.append(f"  [{mark:^7}] {check['name']:<24} {check['detail']}")
    lines += ["", f"Models root: {report['models_root']}"]
    if report["tiny_models"]:
        lines.append("  TINY RANDOM-WEIGHT TEST MODELS: fine for tests and smoke runs, useless for real heads")
    for model in report["models"]:
        if model["complete"]:
            state = "ok"
        elif not model["exists"]:
            state = "folder not found"
        elif model["missing"]:
            state = "lacks " + ", ".join(model["missing"])
        else:
            state = "broken files"
        need = "required" if model["required"] else "optional"
        mark = "ok " if model["complete"] else ("MISSING" if model["required"] else "-- ")
        lines.append(f"  [{mark:^7}] {model['key']:<12} ({need}) {model['path']}: {state}")
        for problem in model["problems"]:
            lines.append(f"  {'':9} {problem}")
        if model["problems"]:
            lines.append(f"  {'':9} fix: `python -m engine fetch-models --models {report['models_root']} "
                         f"--only {model['key']} --yes` fetches exactly these files again")
        if not model["complete"] and model["required"]:
            lines.append(f"  {'':9} get it from {model['source']}")
    lines.append("")
    if report["ok"]:
        lines.append("Everything required is present.")
    else:
        lines.append("Missing: " + ", ".join(report["failed"]))
        if any(name.startswith("models/") for name in report["failed"]):
            lines.append("Put the model folders under the models root (or pass --models ROOT); "
                         "docs/models.md lists where each comes from.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(args.models, count_models=not args.no_models)
    if getattr(args, "gpu", False):
        report["gpu_check"] = gpu_check(report, args.preset, args.device)
        report["gpu_check_text"] = _gpu_text(report["gpu_check"])
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_text(report))
        if "gpu_check" in report:
            print("\n" + report["gpu_check_text"])
    ok = report["ok"] and report.get("gpu_check", {"ok": True})["ok"]
    return 0 if ok else 1


def gpu_check(report: dict, preset: str, device: str) -> dict:
    """Check GPU (engine.gpu_check) when the models it needs are there; a clear problem otherwise."""
    needed = [m for m in report["models"] if m["key"] in ("sd15", "arc2face") and not m["complete"]]
    if needed:
        return {"ok": False, "preset": preset, "problem": "Check GPU needs the models: "
                + ", ".join(f"{m['key']} ({m['path']})" for m in needed) + " incomplete; run `python -m engine "
                "fetch-models` or set the models folder"}
    from .gpu_check import run_check

    try:
        return run_check(Path(report["models_root"]), preset=preset, device=device)
    except Exception as exc:  # the report must still come back, naming what failed
        from .errors import EngineError

        message = exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        return {"ok": False, "preset": preset, "problem": f"the SDS step failed: {message[:400]}"}


def _gpu_text(check: dict) -> str:
    from .gpu_check import format_report

    if "tried" not in check and "device" not in check:
        return f"Check GPU: {check['problem']}"
    return format_report(check)
