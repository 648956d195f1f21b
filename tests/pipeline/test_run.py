"""Whole jobs in-process: the CLI's generate producing every result file, and each failure's own code."""

from __future__ import annotations

import errno
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import EngineError
from engine.pipeline import checkpoint
from engine.pipeline.failures import classify
from engine.pipeline.run import run_job


def test_generate_writes_job_json_and_every_result_file(tmp_path, tiny_models_root, capsys):
    from engine.cli import main

    embedding = tmp_path / "identity.npy"
    np.save(embedding, np.random.default_rng(1).normal(size=512).astype(np.float32))
    out = tmp_path / "head"
    code = main(["generate", "--embedding", str(embedding), "--expressions", "smiling", "with curly red hair",
                 "--preset", "test", "--out", str(out), "--models", str(tiny_models_root), "--texture-size", "64",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "stage 6/6 export" in err and "result:" in err and "\r" not in err  # stderr is no terminal: lines
    job = json.loads((out / "job.json").read_text())
    assert job["preset"] == "test" and job["expressions"] == ["neutral", "smiling", "with curly red hair"]
    result = out / "result"
    for name in ("head.npz", "albedo.png", "roughness.png", "result.json", "contact_sheet.png", "head.glb"):
        assert (result / name).is_file(), name
    with np.load(result / "head.npz") as mesh:
        v, f = mesh["vertices"], mesh["faces"]
        assert list(mesh["expression_names"]) == ["neutral", "smiling", "with curly red hair"]
        assert mesh["expression_offsets"].shape == (3, len(v), 3) and not mesh["expression_offsets"][0].any()
        assert mesh["uvs"].shape == (len(f), 3, 2)
    assert Image.open(result / "albedo.png").size == (64, 64)
    assert Image.open(result / "roughness.png").size == (64, 64)
    info = json.loads((result / "result.json").read_text())
    assert info["job"]["settings"]["name"] == "test" and info["job"]["texture_size"] == 64
    assert info["models"]["tiny_test_models"] is True
    # Every file the prior and the ArcFace check read, each with its own sha256 (hashed here anew)
    # and nothing else: a record that names the weights a result was made with.
    read = ["arc2face/arc2face", "arc2face/encoder", "sd15/vae", "sd15/tokenizer", "sd15/scheduler"]
    files = [f for folder in read for f in (tiny_models_root / folder).rglob("*") if f.is_file()]
    files.append(tiny_models_root / "arc2face" / "arcface.onnx")
    expected = {f.relative_to(tiny_models_root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert "arc2face/arc2face/diffusion_pytorch_model.safetensors" in expected and len(expected) >= 10
    assert info["models"]["files"] == expected
    assert set(info["timings_s"]) >= {"identity", "prior", "geometry", "texture", "quality"}
    assert set(info["quality"]["expressions"]) == {"neutral", "smiling", "with curly red hair"}
    assert (result / "head.glb").read_bytes()[:4] == b"glTF"


def test_missing_models_get_their_code(make_job, tmp_path):
    job = make_job(models=str(tmp_path / "nothing-here"))
    with pytest.raises(EngineError) as caught:
        run_job(job)
    assert caught.value.code == "prior_weights_missing"


def test_nan_loss_gets_its_code_and_the_checkpoint_stays_finite(make_job, monkeypatch):
    from engine.pipeline.geometry_stage import GeometryStage

    original = GeometryStage.sds_loss

    def diverging(self, images, name, cameras, step, azimuths):  # a prior that diverges at step 3 (injected fault)
        loss = original(self, images, name, cameras, step, azimuths)
        return loss * float("nan") if step == 3 else loss

    monkeypatch.setattr(GeometryStage, "sds_loss", diverging)
    job = make_job(stop_after="geometry", overrides={"checkpoint_every": 1})
    with pytest.raises(EngineError) as caught:
        run_job(job)
    assert caught.value.code == "nan_loss" and "step 4" in caught.value.message
    state = checkpoint.load_latest(job)
    assert state["next_step"] == 3
    assert all(torch.isfinite(t).all() for t in state["geometry"]["field"].values())


def test_disk_full_gets_its_code_and_leaves_no_file_under_a_final_name(make_job, monkeypatch):
    import engine.atomic as atomic

    real_replace = atomic.os.replace

    def full(src, dst):  # the disk fills up exactly when the first checkpoint would land (injected fault)
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    job = make_job(stop_after="geometry", overrides={"checkpoint_every": 2})
    with pytest.raises(EngineError) as caught:
        run_job(job)
    assert caught.value.code == "disk_full"
    folder = job / "checkpoints"
    assert not list(folder.glob("ckpt-*.pt")) and not list(folder.glob(".ckpt-*"))  # no final name, no temp
    assert not (folder / "latest.json").exists()


def test_classified_failures():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    err = classify(oom)
    assert err.code == "cuda_out_of_memory" and "views_per_step" in err.hint and "cpu_offload" in err.hint
    assert classify(OSError(errno.EACCES, "Permission denied", "/x")).code == "job_dir_unwritable"
    assert classify(OSError(errno.EROFS, "Read-only file system", "/x")).code == "job_dir_unwritable"
    assert classify(ValueError("boom")).code == "internal_error"


def test_unwritable_job_folder(make_job, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):  # as root the test cannot make a folder unwritable; the OS answer is injected
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    job = make_job()
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(EngineError) as caught:
        run_job(job)
    assert caught.value.code == "job_dir_unwritable"
