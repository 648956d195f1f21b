"""Check GPU's code path on the CPU (fp32, the torch rasteriser), its precision choice, and the
machine profile the pipeline reads.

No GPU here. :class:`ForcedNaNHalfPrecision` is a TEST DOUBLE for a GPU whose fp16 UNet gives NaN
(GTX 16xx cards do): it wraps the real fp32 prior and, when loaded "in fp16", returns NaN noise
predictions. The full-size run (slow) is tests/prior/test_check_gpu_full_size.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine import gpu_check, machine_profile


class ForcedNaNHalfPrecision:
    """TEST DOUBLE: the real prior, except that its UNet's noise prediction is NaN (fp16 overflow)."""

    def __init__(self, prior):
        self._prior = prior

    def __getattr__(self, name):
        return getattr(self._prior, name)

    def predict_noise(self, noisy, t, cond, guidance_scale):
        eps, eps_c, eps_u = self._prior.predict_noise(noisy, t, cond, guidance_scale)
        nan = torch.full_like(eps, float("nan"))
        return nan, nan, nan


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    monkeypatch.setenv(machine_profile.PROFILE_ENV, str(folder))
    return folder


def loader_with_nan_fp16(loaded: list):
    def load(root, device, dtype, attention):
        loaded.append((dtype, attention))
        prior = gpu_check.load_prior_for_check(root, device, "fp32", attention)
        return ForcedNaNHalfPrecision(prior) if dtype == "fp16" else prior

    return load


def test_check_runs_a_real_step_and_reports_every_field(tiny_models_root, profiles):
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", steps=2)
    assert report["ok"] and report["device"] == "cpu"
    assert report["settings"] == {"dtype": "fp32", "views_per_step": 1, "attention": "sdpa"}
    assert report["seconds_per_step"] > 0 and len(report["step"]["step_seconds"]) == 2
    assert report["step"]["grid"] == 16 and report["step"]["render_resolution"] == 32 and report["step"]["faces"] > 100
    assert report["rasteriser"]["backend"] == "torch" and 0 < report["rasteriser"]["share_of_step"] < 1
    assert report["peak_vram_gib"] is None and report["memory"] is None  # nothing to measure on the CPU
    assert report["fp16_finite"] is None  # not tried on the CPU
    assert set(report["presets"]) == {"preview", "standard", "high"}
    minutes = {k: v["minutes"] for k, v in report["presets"].items()}
    assert 0 < minutes["preview"] < minutes["standard"] < minutes["high"]
    # the estimate is the measured seconds per TFLOP applied to each preset's FLOPs
    from engine.pipeline.presets import PRESETS
    from engine.prior.presets import preset_tflop, step_tflop

    expected = preset_tflop(PRESETS["standard"])["total"] * report["seconds_per_step"] / step_tflop(True) / 60
    assert minutes["standard"] == pytest.approx(expected, rel=0.01)
    profile = json.loads(open(report["profile_path"]).read())
    assert profile["dtype"] == "fp32" and profile["seconds_per_step"] == report["seconds_per_step"]
    assert profile["identity"]["device"] == "cpu" and profile["models"]["root"]
    text = gpu_check.format_report(report)
    for part in ("seconds per step:", "rasteriser: torch", "precision fp32", "standard: ~", "machine profile:"):
        assert part in text, part


def test_forced_nan_fp16_makes_it_choose_another_precision(tiny_models_root, profiles):
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "fp32"),
                                 prior_loader=loader_with_nan_fp16(loaded))
    assert [d for d, _ in loaded] == ["fp16", "fp32"]
    first, second = report["tried"]
    assert first["dtype"] == "fp16" and first["finite"] is False
    assert "non-finite" in first["why_not_finite"]
    assert second["dtype"] == "fp32" and second["finite"] is True
    assert report["ok"] and report["fp16_finite"] is False and report["settings"]["dtype"] == "fp32"
    assert "fp16 gradients: NOT finite" in gpu_check.format_report(report)


def test_every_precision_non_finite_is_reported_not_saved(tiny_models_root, profiles):
    def load(root, device, dtype, attention):
        return ForcedNaNHalfPrecision(gpu_check.load_prior_for_check(root, device, "fp32", attention))

    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "fp32"),
                                 prior_loader=load)
    assert not report["ok"] and "no precision gave a finite step" in report["problem"]
    assert not profiles.exists() or not list(profiles.iterdir())


def test_out_of_memory_in_the_check_tries_sliced_attention_then_fewer_views(tiny_models_root, profiles):
    calls = []

    def load(root, device, dtype, attention):  # TEST DOUBLE: a GPU where only sliced attention at 1 view fits
        calls.append(attention)
        return gpu_check.load_prior_for_check(root, device, "fp32", attention)

    real_measure = gpu_check.measure_step

    def measure(prior, settings, device, **kwargs):
        if prior.memory.attention != "sliced" or settings.views_per_step > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (test double)")
        return real_measure(prior, settings, device, **kwargs)

    gpu_check.measure_step, saved = measure, gpu_check.measure_step
    try:
        report = gpu_check.run_check(tiny_models_root, preset="test", overrides={"views_per_step": 4}, device="cpu",
                                     steps=1,
                                     prior_loader=load, save=False)
    finally:
        gpu_check.measure_step = saved
    assert calls == ["sdpa", "sliced", "sliced", "sliced"]
    assert [(t["attention"], t["views_per_step"], bool(t.get("out_of_memory"))) for t in report["tried"]] == [
        ("sdpa", 4, True), ("sliced", 4, True), ("sliced", 2, True), ("sliced", 1, False)]
    assert report["settings"] == {"dtype": "fp32", "views_per_step": 1, "attention": "sliced"}


def test_no_cuda_says_so_without_measuring(tiny_models_root, profiles):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    report = gpu_check.run_check(tiny_models_root, device="auto")
    assert not report["ok"] and "no usable CUDA GPU" in report["problem"]
    assert "PROBLEM: no usable CUDA GPU" in gpu_check.format_report(report)


def test_profile_is_keyed_by_device_torch_and_model_files(tiny_models_root, tmp_path, profiles):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models_root, models)
    ident = machine_profile.device_identity("cpu")
    path = machine_profile.save_profile({"dtype": "bf16"}, ident, machine_profile.models_fingerprint(models))
    found = machine_profile.load_profile("cpu", models)
    assert found["dtype"] == "bf16" and found["path"] == str(path)
    # another torch (or driver, or GPU) is another key
    other = dict(ident, torch="9.9.9")
    assert machine_profile.profile_key(other, machine_profile.models_fingerprint(models)) != path.stem
    # a replaced UNet file invalidates it
    unet = models / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes() + b"\0")
    assert machine_profile.load_profile("cpu", models) is None


def test_doctor_gpu_json_carries_the_check(tiny_models_root, profiles, capsys):
    from engine.cli import main

    code = main(["doctor", "--gpu", "--device", "cpu", "--preset", "test", "--json", "--models", str(tiny_models_root)])
    report = json.loads(capsys.readouterr().out)
    assert report["gpu_check"]["ok"] and report["gpu_check"]["settings"]["dtype"] == "fp32"
    assert report["gpu_check_text"].startswith("ID-to-3D Check GPU")
    assert code == 1  # tiny random models are never "everything required" for the doctor


def test_doctor_gpu_without_models_names_them(tmp_path, profiles, capsys):
    from engine.cli import main

    main(["doctor", "--gpu", "--device", "cpu", "--json", "--models", str(tmp_path / "none")])
    check = json.loads(capsys.readouterr().out)["gpu_check"]
    assert not check["ok"] and "Check GPU needs the models" in check["problem"] and "sd15" in check["problem"]
