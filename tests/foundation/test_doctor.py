"""`python -m engine doctor`: truthful report, missing model files named, non-zero exit for them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _doctor(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    # Hermetic: the user's own default models folder and insightface folder must not be found.
    env = {**os.environ, "IDTO3D_MODELS": str(REPO_ROOT / "no-such-models"),
           "INSIGHTFACE_HOME": str(REPO_ROOT / "no-such-insightface")}
    if home is not None:
        env["INSIGHTFACE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "engine", "doctor", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180, env=env)


def test_doctor_names_every_missing_model_file_and_fails(tiny_models_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")
    (root / "arc2face" / "arcface.onnx").unlink()
    (root / "arc2face" / "encoder" / "model.safetensors").write_bytes(b"")  # empty counts as missing
    done = _doctor("--models", str(root), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    models = {m["key"]: m for m in report["models"]}
    assert models["arc2face"]["missing"] == ["encoder/model.safetensors or encoder/pytorch_model.bin",
                                             "arcface.onnx"]
    assert models["sd15"]["exists"] is False and "vae/config.json" in models["sd15"]["missing"]
    assert models["antelopev2"]["missing"] == ["scrfd_10g_bnkps.onnx", "arcface.onnx"]
    assert all(models[k]["required"] is False for k in ("loras/normal", "loras/albedo", "loras/view"))
    assert set(report["failed"]) == {"models/sd15", "models/arc2face", "models/antelopev2"}

    text = _doctor("--models", str(root))
    assert text.returncode == 1
    assert "lacks encoder/model.safetensors or encoder/pytorch_model.bin, arcface.onnx" in text.stdout
    assert "Missing: models/sd15, models/arc2face, models/antelopev2" in text.stdout


def test_doctor_reports_the_real_environment(tmp_path):
    import torch

    done = _doctor("--models", str(tmp_path), "--json", "--no-models")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["torch"]["ok"] and torch.__version__.split("+")[0] in checks["torch"]["detail"]
    assert checks["cuda"]["ok"] is torch.cuda.is_available()
    assert checks["nvdiffrast"]["required"] is False
    assert report["models_root"] == str(tmp_path)


def test_doctor_passes_with_complete_model_folders(tiny_models_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")
    shutil.copytree(tiny_models_root / "sd15", root / "sd15")
    (root / "antelopev2").mkdir()
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):
        shutil.copy(tiny_models_root / "arc2face" / "arcface.onnx", root / "antelopev2" / name)
    done = _doctor("--models", str(root), "--json")
    report = json.loads(done.stdout)
    assert report["failed"] == [] and done.returncode == 0


def test_doctor_refuses_tiny_random_models_as_real_ones(tiny_models_root):
    done = _doctor("--models", str(tiny_models_root), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["tiny_models"] is True
    assert any("tiny random" in name for name in report["failed"])
    text = _doctor("--models", str(tiny_models_root))
    assert "TINY RANDOM-WEIGHT TEST MODELS" in text.stdout


def test_doctor_finds_antelopev2_where_the_identity_step_finds_it(tiny_models_root, tmp_path):
    pack = tmp_path / "insightface" / "models" / "antelopev2"
    pack.mkdir(parents=True)
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):
        shutil.copy(tiny_models_root / "arc2face" / "arcface.onnx", pack / name)
    report = json.loads(_doctor("--models", str(tmp_path / "models"), "--json", home=tmp_path / "insightface").stdout)
    antelope = next(m for m in report["models"] if m["key"] == "antelopev2")
    assert antelope["complete"] and antelope["path"] == str(pack)
    assert "models/antelopev2" not in report["failed"]


def test_doctor_does_not_call_broken_files_ok(tiny_models_root, tmp_path):
    import pickle

    root = tmp_path / "models"
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")
    shutil.copytree(tiny_models_root / "sd15", root / "sd15")
    (root / "antelopev2").mkdir()
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):  # pickles where ONNX graphs belong
        (root / "antelopev2" / name).write_bytes(pickle.dumps({"not": "onnx"}))
    unet = root / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-4096])  # a truncated download
    (root / "sd15" / "vae" / "config.json").write_text("garbage, not JSON")
    done = _doctor("--models", str(root), "--json")
    report = json.loads(done.stdout)
    models = {m["key"]: m for m in report["models"]}
    assert done.returncode == 1
    assert set(report["failed"]) == {"models/sd15", "models/arc2face", "models/antelopev2"}
    assert any("is truncated" in p for p in models["arc2face"]["problems"])
    assert any("vae/config.json is not a readable JSON file" in p for p in models["sd15"]["problems"])
    assert sum("not a valid ONNX file" in p for p in models["antelopev2"]["problems"]) == 2
    assert all(m["missing"] == [] for m in models.values() if m["required"])  # present, yet not ok
