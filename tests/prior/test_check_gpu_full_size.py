"""Check GPU's code path on the full-size random-weight models, on the CPU (fp32, the torch
rasteriser), at the standard preset Check GPU runs by default (grid 128, 512^2 renders, 2 views
per step): what a user's machine runs, except the device (slow: 10-20 minutes on a shared
2-core machine, ~11 GiB)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.mark.slow
def test_check_gpu_on_full_size_models(tmp_path, monkeypatch):
    import bench_full_size_job as full

    from engine import gpu_check, machine_profile

    monkeypatch.setenv(machine_profile.PROFILE_ENV, str(tmp_path / "profiles"))
    models = full.full_size_models()
    report = gpu_check.run_check(models, preset="standard", device="cpu", steps=1, warmup=0)
    print("\n" + gpu_check.format_report(report))
    assert report["ok"], report.get("problem")
    assert report["settings"] == {"dtype": "fp32", "views_per_step": 2, "attention": "sdpa",
                                  "vae_checkpointing": False, "cpu_offload": False}
    step = report["step"]
    assert (step["grid"], step["render_resolution"], step["views_per_step"]) == (128, 512, 2)
    assert step["faces"] > 100_000  # the procedural head at grid 128
    assert report["rasteriser"]["backend"] == "torch"
    minutes = {k: v["minutes"] for k, v in report["presets"].items()}
    assert minutes["preview"] < minutes["standard"] < minutes["high"]
    tried = report["tried"]
    assert len(tried) == 1 and tried[0]["finite"] and tried[0]["loss"] > 0
    saved = json.loads(Path(report["profile_path"]).read_text())
    assert saved["presets"]["standard"]["dtype"] == "fp32"
    assert saved["models"]["arc2face/arc2face/diffusion_pytorch_model.safetensors"][0] > 1e9
    found = machine_profile.load_profile("cpu", models)
    assert found is not None and found["exact"] and found["key"] == saved["key"]
