"""Check GPU's code path on the CPU (fp32, the torch rasteriser), its precision and memory choices,
and the machine profile the pipeline reads.

No GPU here. Named TEST DOUBLES stand in for what only a GPU shows:
:class:`ForcedNaNHalfPrecision` is a GPU whose fp16 UNet gives NaN (GTX 16xx cards do): it wraps
the real fp32 prior and, when loaded "in fp16", returns NaN noise predictions; ``OutOfMemoryAt``
raises a real ``torch.cuda.OutOfMemoryError`` at the settings a small GPU could not fit; a
STAND-IN GPU identity (``STANDIN_GPU``) and free-memory probe let the pipeline read a machine
profile while it computes on the CPU. The full-size run (slow) is tests/prior/test_check_gpu_full_size.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from engine import gpu_check, machine_profile
from engine.cuda_wheels import Gpu
from engine.pipeline import memory_fallback
from engine.pipeline.presets import Preset, resolve_preset

GiB = 2 ** 30
STANDIN_GPU = {"device": "cuda:0", "torch": torch.__version__, "torch_cuda": "13.0", "engine": "stand-in",
               "name": "NVIDIA Stand-in 8GB", "memory_bytes": 8 * GiB, "capability": "8.6", "driver": "580.82.07"}


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


class OutOfMemoryAt:
    """TEST DOUBLE for a small GPU: ``measure_step`` raises a real ``torch.cuda.OutOfMemoryError``
    unless ``fits(dtype, attention, views, vae_checkpointing, cpu_offload)`` says the setting fits
    (read from the loaded prior's dtype and memory options and the step's views)."""

    def __init__(self, monkeypatch, fits):
        self.fits, self.measured = fits, []
        real = gpu_check.measure_step

        def measure(prior, settings, device, **kwargs):
            m = prior.memory
            setting = (getattr(prior, "check_dtype", "fp32"), m.attention, settings.views_per_step,
                       m.vae_checkpointing, m.cpu_offload)
            if not self.fits(*setting):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (test double)")
            self.measured.append(setting)
            return real(prior, settings, device, **kwargs)

        monkeypatch.setattr(gpu_check, "measure_step", measure)


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    monkeypatch.setenv(machine_profile.PROFILE_ENV, str(folder))
    return folder


def loader(loaded: list, nan_in: tuple = ("fp16",)):
    """The real prior (always fp32 on the CPU), NaN in the precisions ``nan_in``; records each load."""

    def load(root, device, dtype, memory):
        loaded.append((dtype, memory.attention))
        prior = gpu_check.load_prior_for_check(root, device, "fp32", memory)
        prior.check_dtype = dtype  # what the double "loaded"
        return ForcedNaNHalfPrecision(prior) if dtype in nan_in else prior

    return load


def test_check_runs_a_real_step_and_reports_every_field(tiny_models_root, profiles):
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", steps=2)
    assert report["ok"] and report["device"] == "cpu"
    assert report["settings"] == {"dtype": "fp32", "views_per_step": 1, "attention": "sdpa",
                                  "vae_checkpointing": False, "cpu_offload": False}
    assert len(report["step"]["step_seconds"]) == 2
    assert report["step"]["grid"] == 16 and report["step"]["render_resolution"] == 32 and report["step"]["faces"] > 100
    assert report["rasteriser"]["backend"] == "torch"
    assert report["peak_vram_gib"] is None and report["memory"] is None  # nothing to measure on the CPU
    assert report["fp16_finite"] is None and report["precisions"] == {"fp32": "finite"}  # fp16 not tried on the CPU
    assert set(report["presets"]) == {"preview", "standard", "high"}
    minutes = {k: v["minutes"] for k, v in report["presets"].items()}
    assert 0 < minutes["preview"] < minutes["standard"] < minutes["high"]
    profile = json.loads(open(report["profile_path"]).read())
    entry = profile["presets"]["test"]
    assert entry["dtype"] == "fp32" and entry["seconds_per_step"] == report["seconds_per_step"]
    assert entry["views_per_step"] == 1 and entry["preset_views_per_step"] == 1
    assert profile["identity"]["device"] == "cpu" and profile["models"]["root"]
    text = gpu_check.format_report(report)
    for part in ("seconds per step:", "rasteriser: torch", "forward + backward", "test jobs will use",
                 "fp32, 1 view(s), sdpa attention", "standard: ~", "machine profile:"):
        assert part in text, part


def test_minutes_per_head_follow_the_step_counts():
    """Independent of the FLOP model's code: a preset whose every step goes through the VAE costs
    (geometry steps x views + texture steps x texture views) one-view steps."""
    flat = resolve_preset("preview", {"geometry_steps": 600, "geometry_shortcut_fraction": 0.0, "views_per_step": 2,
                                      "texture_steps": 300, "texture_views_per_step": 1})
    assert isinstance(flat, Preset)
    expected = (600 * 2 + 300 * 1) * 3.0 / 60.0  # 75.0 minutes at 3 s per one-view step
    at_one_view = gpu_check.preset_estimates(3.0, 1, None, None, presets={"flat": flat})["flat"]["minutes"]
    at_two_views = gpu_check.preset_estimates(6.0, 2, None, None, presets={"flat": flat})["flat"]["minutes"]
    assert at_one_view == pytest.approx(expected, abs=0.05) and at_two_views == pytest.approx(expected, abs=0.05)
    # shortcut steps skip the VAE: the same preset with half of its geometry steps shortcut costs less
    short = resolve_preset("preview", {"geometry_steps": 600, "geometry_shortcut_fraction": 0.5, "views_per_step": 2,
                                       "texture_steps": 300, "texture_views_per_step": 1})
    assert gpu_check.preset_estimates(3.0, 1, None, None, presets={"s": short})["s"]["minutes"] < expected


def test_forced_nan_fp16_makes_it_choose_another_precision(tiny_models_root, profiles):
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "fp32"),
                                 prior_loader=loader(loaded))
    assert [d for d, _ in loaded] == ["fp16", "fp32"]
    first, second = report["tried"]
    assert first["dtype"] == "fp16" and first["finite"] is False
    assert "non-finite" in first["why_not_finite"]
    assert second["dtype"] == "fp32" and second["finite"] is True
    assert report["ok"] and report["fp16_finite"] is False and report["settings"]["dtype"] == "fp32"
    assert "fp16 gradients: not finite" in gpu_check.format_report(report)


def test_every_precision_non_finite_is_reported_not_saved(tiny_models_root, profiles):
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "fp32"),
                                 prior_loader=loader([], nan_in=("fp16", "fp32")))
    assert not report["ok"] and "fp16 not finite" in report["problem"] and "fp32 not finite" in report["problem"]
    assert not profiles.exists() or not list(profiles.iterdir())


def test_fp16_nan_then_fp32_out_of_memory_says_so(tiny_models_root, profiles, monkeypatch):
    # a GTX 1660 6 GB stand-in: fp16 runs but gives NaN, fp32 fits at no setting
    OutOfMemoryAt(monkeypatch, lambda dtype, *rest: dtype != "fp32")
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "fp32"),
                                 prior_loader=loader(loaded), save=False)
    assert not report["ok"]
    assert report["precisions"]["fp16"].startswith("not finite")
    assert report["precisions"]["fp32"] == "out of memory at every setting"
    assert "fp16 not finite" in report["problem"] and "fp32 out of memory at every setting" in report["problem"]
    assert "no precision gave a finite step" not in report["problem"]
    assert [d for d, _ in loaded] == ["fp16", "fp32", "fp32"]  # fp32 reloaded once, for sliced attention


def test_out_of_memory_at_every_setting_in_fp16_tries_no_larger_precision(tiny_models_root, profiles, monkeypatch):
    OutOfMemoryAt(monkeypatch, lambda *setting: False)
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", device="cpu", precisions=("fp16", "bf16", "fp32"),
                                 prior_loader=loader(loaded), save=False)
    assert [d for d, _ in loaded] == ["fp16", "fp16"]  # sdpa, then sliced as the last resort; no bf16, no fp32
    assert report["precisions"]["fp16"] == "out of memory at every setting"
    assert report["precisions"]["bf16"].startswith("skipped") and report["precisions"]["fp32"].startswith("skipped")
    assert "Preview" in report["problem"] and "Device to CPU" in report["problem"]
    text = gpu_check.format_report(report)
    assert "bf16: not tried (fp16 did not fit at any setting" in text


def test_out_of_memory_halves_the_views_first_with_the_fused_attention(tiny_models_root, profiles, monkeypatch):
    # a GPU where 1 view fits with SDPA: sdpa@4 -> sdpa@2 -> sdpa@1; sliced attention never needed
    double = OutOfMemoryAt(monkeypatch, lambda dtype, attention, views, ckpt, offload: views == 1)
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", overrides={"views_per_step": 4}, device="cpu",
                                 steps=1, prior_loader=loader(loaded), precisions=("fp32",), save=False)
    assert loaded == [("fp32", "sdpa")]  # loaded once: views and memory options change on the loaded prior
    assert [(t["attention"], t["views_per_step"], "out_of_memory" in t) for t in report["tried"]] == [
        ("sdpa", 4, True), ("sdpa", 2, True), ("sdpa", 1, False)]
    assert report["settings"] == {"dtype": "fp32", "views_per_step": 1, "attention": "sdpa",
                                  "vae_checkpointing": False, "cpu_offload": False}
    assert double.measured == [("fp32", "sdpa", 1, False, False)]


def test_sliced_attention_only_after_checkpointing_and_offload(tiny_models_root, profiles, monkeypatch):
    OutOfMemoryAt(monkeypatch, lambda dtype, attention, views, ckpt, offload: attention == "sliced")
    loaded = []
    report = gpu_check.run_check(tiny_models_root, preset="test", overrides={"views_per_step": 2}, device="cpu",
                                 steps=1, prior_loader=loader(loaded), precisions=("fp32",), save=False)
    assert loaded == [("fp32", "sdpa"), ("fp32", "sliced")]
    rungs = [(t["attention"], t["views_per_step"], t["vae_checkpointing"], t["cpu_offload"]) for t in report["tried"]]
    assert rungs == [
        ("sdpa", 2, False, False), ("sdpa", 1, False, False), ("sdpa", 1, True, False), ("sdpa", 1, True, True),
        ("sliced", 1, True, True)]
    assert report["settings"]["attention"] == "sliced" and report["settings"]["cpu_offload"] is True


def test_no_cuda_says_so_without_measuring(tiny_models_root, profiles):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    report = gpu_check.run_check(tiny_models_root, device="auto")
    assert not report["ok"] and "no usable CUDA GPU" in report["problem"]
    assert "PROBLEM: no usable CUDA GPU" in gpu_check.format_report(report)


def test_cpu_only_torch_on_a_computer_with_an_nvidia_gpu_points_at_install_engine():
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    rtx = [Gpu("NVIDIA GeForce RTX 3060", "560.35.03", (8, 6), 12288)]
    text = gpu_check.no_cuda_problem(query_gpus=lambda: rtx)
    assert "Torch Build: CUDA" in text and "Install Engine" in text and "RTX 3060" in text
    assert "--device cpu" not in text
    assert "--device cpu" in gpu_check.no_cuda_problem(query_gpus=lambda: [])


def test_profile_is_keyed_by_device_torch_engine_and_model_files_with_one_entry_per_preset(
        tiny_models_root, tmp_path, profiles):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models_root, models)
    ident = machine_profile.device_identity("cpu")
    assert ident["engine"]  # the engine's version is part of the key
    fingerprint = machine_profile.models_fingerprint(models)
    path = machine_profile.save_profile({"dtype": "bf16", "attention": "sliced"}, "high", ident, fingerprint)
    machine_profile.save_profile({"dtype": "bf16", "attention": "sdpa"}, "preview", ident, fingerprint)
    found = machine_profile.load_profile("cpu", models)
    assert found["path"] == str(path) and found["exact"]
    assert machine_profile.entry_for(found, "high")["attention"] == "sliced"  # a later check of another preset kept it
    assert machine_profile.entry_for(found, "preview")["attention"] == "sdpa"
    assert machine_profile.entry_for(found, "standard") is None
    # another torch, driver, GPU or engine version is another key
    for field, value in (("torch", "9.9.9"), ("engine", "0.0.0")):
        assert machine_profile.profile_key(dict(ident, **{field: value}), fingerprint) != path.stem
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


# ---- the pipeline reads the profile (a STAND-IN GPU: the job computes on the CPU) ------------------

@pytest.fixture
def standin_gpu(monkeypatch, profiles):
    """The job's device is described as ``STANDIN_GPU`` (a CUDA card with 5 GiB free) while it
    computes on the CPU; returns the kwargs of every ``load_prior`` call."""
    import engine.prior
    from engine.pipeline import run as run_module

    monkeypatch.setattr(run_module._Job, "_profiled_device", lambda self: True)
    monkeypatch.setattr(machine_profile, "device_identity", lambda device: dict(STANDIN_GPU))
    monkeypatch.setattr(memory_fallback, "free_memory_bytes", lambda device: 5 * GiB)
    calls = []
    real = engine.prior.load_prior

    def spy(root, **kwargs):
        calls.append(kwargs)
        return real(root, **kwargs)

    monkeypatch.setattr(engine.prior, "load_prior", spy)
    return calls


ENTRY = {"dtype": "fp32", "attention": "sliced", "views_per_step": 1, "preset_views_per_step": 1,
         "vae_checkpointing": False, "cpu_offload": False, "activation_bytes_per_view": 2 * GiB,
         "model_bytes": GiB, "fp16_finite": False}


def run_collecting(job):
    from engine.pipeline.run import run_job

    messages = []
    folder = run_job(job, emit=messages.append)
    return json.loads((folder / "result.json").read_text()), messages


def test_the_pipeline_takes_the_profiles_precision_attention_and_measured_memory(
        make_job, tiny_models_root, standin_gpu):
    machine_profile.save_profile(ENTRY, "test", STANDIN_GPU, machine_profile.models_fingerprint(tiny_models_root))
    info, messages = run_collecting(make_job(stop_after="geometry", overrides={"views_per_step": 4}))
    (call,) = standin_gpu
    assert call["dtype"] == "fp32" and call["memory"].attention == "sliced"  # job.json: "auto" and "sdpa"
    note = next(m for m in messages if m.get("code") == "machine_profile")["message"]
    assert "sliced attention" in note and "fp16 gave non-finite gradients" in note
    # measured 2 GiB per view (the arithmetic says 3.28): 2 views + 0.75 GiB fit in 5 GiB, 4 do not
    estimate = [(m["old"], m["new"]) for m in messages if m.get("code") == "memory_estimate"]
    assert estimate == [(4, 2)]
    assert info["memory"]["before_launch"]["source"] == "measured by Check GPU on this machine"
    assert info["memory"]["machine_profile"]["exact"] and info["memory"]["machine_profile"]["attention"] == "sliced"


def test_the_profiles_views_and_memory_options_apply_to_its_preset_only(make_job, tiny_models_root, standin_gpu):
    fingerprint = machine_profile.models_fingerprint(tiny_models_root)
    # checked at 2 views, only 1 fitted, and only with VAE checkpointing: the job starts there
    machine_profile.save_profile({**ENTRY, "attention": "sdpa", "preset_views_per_step": 2, "vae_checkpointing": True},
                                 "test", STANDIN_GPU, fingerprint)
    machine_profile.save_profile({**ENTRY, "dtype": "bf16", "attention": "sliced"}, "high", STANDIN_GPU, fingerprint)
    info, messages = run_collecting(make_job(stop_after="geometry", overrides={"views_per_step": 2}))
    changes = [(c["field"], c["old"], c["new"], c["reason"]) for c in info["memory"]["fallback"]["changes"]]
    assert ("views_per_step", 2, 1, "machine_profile") in changes
    assert ("vae_checkpointing", False, True, "machine_profile") in changes
    (call,) = standin_gpu
    assert call["memory"].attention == "sdpa" and call["dtype"] == "fp32"  # "high"'s entry is not this job's


def test_after_a_driver_update_the_same_gpus_profile_still_gives_the_precision(
        make_job, tiny_models_root, standin_gpu):
    old_driver = dict(STANDIN_GPU, driver="575.64.05")
    machine_profile.save_profile(ENTRY, "test", old_driver, machine_profile.models_fingerprint(tiny_models_root))
    info, messages = run_collecting(make_job(stop_after="geometry", overrides={"views_per_step": 4}))
    (call,) = standin_gpu
    assert call["dtype"] == "fp32"  # the precision still holds for this card
    assert call["memory"].attention == "sdpa"  # the rest was measured under another driver: not used
    outdated = next(m for m in messages if m.get("code") == "machine_profile_outdated")["message"]
    assert "run Check GPU again" in outdated
    assert info["memory"]["before_launch"]["source"] == "estimated"
    assert info["memory"]["machine_profile"]["exact"] is False


def test_nan_loss_on_fp16_cuda_points_at_check_gpu(make_job, monkeypatch):
    from engine.errors import EngineError
    from engine.pipeline import run as run_module
    from engine.pipeline.failures import nan_loss
    from engine.pipeline.geometry_stage import GeometryStage

    assert "Check GPU" in nan_loss("geometry", 3, fp16_on_cuda=True).hint
    assert '"dtype": "fp32"' in nan_loss("geometry", 3, fp16_on_cuda=True).hint
    assert "Check GPU" not in nan_loss("geometry", 3).hint
    # the run passes its prior's precision: a STAND-IN fp16-on-CUDA prior whose step gives NaN
    monkeypatch.setattr(run_module._Job, "fp16_on_cuda", lambda self, prior: True)
    real = GeometryStage.step

    def nan_step(stage, i):
        return dataclasses.replace(real(stage, i), loss=torch.tensor(float("nan")))

    monkeypatch.setattr(GeometryStage, "step", nan_step)
    with pytest.raises(EngineError) as caught:
        run_module.run_job(make_job(stop_after="geometry"))
    assert caught.value.code == "nan_loss" and "Check GPU" in caught.value.hint
