"""The device acceptance run (scripts/gpu_check.sh calls it on the GPU machine; figures: docs/gpu.md).

    python3 bench/gpu_acceptance.py [--models DIR] [--geometry-steps 40] [--texture-steps 20] [--out DIR]
    python3 bench/gpu_acceptance.py --tiny     # the same path on the CPU with tiny models (checks the script)

1. nvdiffrast vs the built-in rasteriser at 512^2 on a head-sized mesh, 4 views: triangle ids,
   depth and normals where both see the same triangle, mask totals, and forward+backward ms per
   view of each (bench/timing.best_of). nvdiffrast must import (it is built from source on the
   GPU machine: docs/gpu.md); without it this section FAILS (``--no-nvdiffrast`` makes it a skip).
2. Check GPU (engine.gpu_check.run_check) on the full-size random-weight models, standard preset.
3. The standard preset's job on those models (ready identity embedding, 13 expressions, no
   quality report -- dlib is not on the GPU image), ``--geometry-steps``/``--texture-steps`` SDS
   steps: seconds per step of each kind (mean over the steps after the first two), peak memory
   (allocated, reserved, and the GPU's used memory at the peak: what users see), and the minutes
   a whole standard head takes (set-up measured once + each kind of step x the preset's count).
   Judged against the goal: <= 5 minutes and <= 12 GB used on the GPU.
4. A real CUDA out-of-memory error: the standard job at 4 views per step with the process capped
   (``torch.cuda.set_per_process_memory_fraction``) to the models + 1.5 views of activations: it
   must finish by falling back (fewer views, then VAE checkpointing / CPU offload), recorded in
   result.json.

Each section's verdict is written to ``OUT/gpu_acceptance.json`` as soon as it is known (a
timeout that kills the run keeps what was reached); the exit status is 0 only when every
section passed (1: a section failed, 2: no CUDA device).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
GiB = 2 ** 30
GOAL_MINUTES, GOAL_GB = 5.0, 12.0  # a standard head with 13 expressions on one H100


class Results:
    """Each section's figures and verdict, written to ``gpu_acceptance.json`` after every section."""

    def __init__(self, out: Path | None):
        self.path = None if out is None else out / "gpu_acceptance.json"
        self.sections: dict[str, dict] = {}
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def record(self, name: str, verdict: str, why: str = "", **figures) -> None:
        """``verdict``: "pass", "fail" or "skip"."""
        self.sections[name] = {"verdict": verdict, "why": why, **figures}
        print(f"  -> {name}: {verdict.upper()}" + (f" ({why})" if why else ""))
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.sections, indent=1, default=str))
            tmp.replace(self.path)

    @property
    def failed(self) -> list[str]:
        return [name for name, s in self.sections.items() if s["verdict"] == "fail"]


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def rasteriser_parity(device, size: int = 512) -> dict:
    import torch
    from timing import best_of

    from engine.geometry.fit import DMTet
    from engine.geometry.head_init import head_sdf, pretrain_field
    from engine.geometry.sdf_field import VertexSDF
    from engine.geometry.tetgrid import make_tet_grid
    from engine.render import available_backends, orbit_cameras, radius_for_fill, render, sample_lights

    grid = make_tet_grid(96, device=device)
    field = VertexSDF(grid.vertices.shape[0], max_deformation=0.0).to(device)
    pretrain_field(field, head_sdf, grid.vertices)
    with torch.no_grad():
        verts, faces = DMTet(grid, field).mesh()
    cams = orbit_cameras([0.0, 60.0, 180.0, -90.0], [10.0, 0.0, 20.0, 5.0], radius=radius_for_fill(0.32, 30.0, 0.7),
                         fov_deg=30.0, resolution=(size, size), device=device)
    lights = sample_lights(4, seed=0, device=device)
    passes = ("mask", "depth", "normal_camera", "shaded", "triangle_id")
    backends = ["torch"] + (["nvdiffrast"] if device.type == "cuda" and "nvdiffrast" in available_backends() else [])
    print(f"mesh: {verts.shape[0]} vertices, {faces.shape[0]} faces (procedural head, grid 96); 4 views at {size}^2")
    out, ms = {}, {}
    for name in backends:
        last = {}

        def fwd_bwd():
            v = verts.clone().requires_grad_(True)
            r = render(v, faces, cams, passes=passes, lights=lights, backend=name)
            (r["mask"].sum() + r["shaded"].sum()).backward()
            sync(device)
            last["r"] = r

        fwd_bwd()  # warm-up (kernels, allocator)
        ms[name] = best_of(5, fwd_bwd, before=lambda: sync(device)) * 1000 / 4
        out[name] = {k: t.detach() for k, t in last["r"].items()}
        print(f"  {name:<10} fwd+bwd {ms[name]:.2f} ms per view (best of 5 after a warm-up)")
    if "nvdiffrast" not in out:
        return {"ran": False, "ms_per_view": ms}
    a, b = out["torch"], out["nvdiffrast"]
    same = (a["triangle_id"] == b["triangle_id"])[..., 0] & (a["triangle_id"][..., 0] >= 0)
    figures = {"ids_equal": float((a["triangle_id"] == b["triangle_id"]).float().mean()),
               "max_depth_diff": float((a["depth"][same] - b["depth"][same]).abs().max()),
               "max_normal_diff": float((a["normal_camera"][same] - b["normal_camera"][same]).abs().max()),
               "mask_ratio": float(a["mask"].sum() / b["mask"].sum()),
               "mean_shaded_diff": float((a["shaded"] - b["shaded"]).abs().mean())}
    figures["pass"] = (figures["ids_equal"] > 0.99 and figures["max_depth_diff"] < 2e-3
                       and figures["max_normal_diff"] < 2e-2 and abs(figures["mask_ratio"] - 1) < 0.005
                       and figures["mean_shaded_diff"] < 0.01)
    print(f"  parity: triangle ids equal {figures['ids_equal']:.4%}, max |depth| diff {figures['max_depth_diff']:.2e} m, "
          f"max |normal| diff {figures['max_normal_diff']:.2e}, mask total ratio {figures['mask_ratio']:.5f}, "
          f"mean |shaded| diff {figures['mean_shaded_diff']:.4f}")
    return {"ran": True, "ms_per_view": ms, **figures}


def memory_now(cuda: bool) -> dict:
    """Peak allocated and reserved (PyTorch), and the GPU's used memory at the peak: the memory
    that is not PyTorch's now (CUDA context, other programs) plus PyTorch's reserved peak."""
    import torch

    if not cuda:
        return {}
    free, total = torch.cuda.mem_get_info()
    outside = (total - free) - torch.cuda.memory_reserved()
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
            "used_at_peak_gb": (outside + torch.cuda.max_memory_reserved()) / 1e9,
            "used_now_gib": (total - free) / GiB}


def standard_job(models: Path, device: str, geometry_steps: int, texture_steps: int, preset: str) -> dict:
    import numpy as np
    import torch

    from bench_full_size_job import EXPRESSIONS
    from engine.pipeline import run_job
    from engine.pipeline.presets import PRESETS

    job = Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
    np.save(job / "embedding.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    (job / "job.json").write_text(json.dumps({
        "photos": [], "embedding": "embedding.npy", "expressions": EXPRESSIONS, "preset": preset,
        "overrides": {"geometry_steps": geometry_steps, "texture_steps": texture_steps}, "models": str(models),
        "device": device, "output": {"quality_report": False}, "snapshot_interval_s": 3.0}))
    marks, stage_at, warnings = {"geometry": [], "texture": []}, {}, []
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def emit(msg):
        now = time.perf_counter()
        if msg["type"] == "stage":
            stage_at[msg["name"]] = now
        elif msg["type"] == "progress":
            marks[msg["stage"]].append((msg["step"], now))
        elif msg["type"] == "warning":
            warnings.append(msg)

    started = time.perf_counter()
    folder = run_job(job, emit=emit)
    total = time.perf_counter() - started
    memory = memory_now(cuda)
    preset_row = PRESETS[preset]
    shortcut = int(round(geometry_steps * preset_row.geometry_shortcut_fraction))

    def per_step(points, lo, hi):
        # Progress messages come at most every 0.2 s (first and last step always): the mean over the
        # span of steps seen, the first two of the range left out (warm-up, allocator growth).
        inside = [(s, t) for s, t in points if lo < s <= hi]
        span = [(s, t) for s, t in inside if s > lo + 2] if len([1 for s, _ in inside if s > lo + 2]) >= 2 else inside
        if len(span) < 2:
            return float("nan")
        (s0, t0), (s1, t1) = span[0], span[-1]
        return (t1 - t0) / (s1 - s0)

    geo_short = per_step(marks["geometry"], 0, shortcut)
    geo_vae = per_step(marks["geometry"], shortcut, geometry_steps)
    tex = per_step(marks["texture"], 0, texture_steps)
    stepped = (shortcut * geo_short if shortcut > 1 else 0) + (geometry_steps - shortcut) * geo_vae + texture_steps * tex
    setup = total - stepped  # loading, pretraining, decimation, unwrap, export: paid once per head
    full = PRESETS["standard"]
    full_short = int(round(full.geometry_steps * full.geometry_shortcut_fraction))
    minutes = (setup + full_short * geo_short + (full.geometry_steps - full_short) * geo_vae
               + full.texture_steps * tex) / 60.0
    info = json.loads((folder / "result.json").read_text())
    return {"total_s": total, "geometry_shortcut_s": geo_short, "geometry_vae_s": geo_vae, "texture_s": tex,
            "setup_s": setup, **memory, "minutes_standard_head": minutes,
            "warnings": [(w["code"], w["message"][:140]) for w in warnings], "memory": info["memory"],
            "timings": info["timings_s"]}


def capped_job(models: Path, device: str) -> dict:
    """The standard job at 4 views per step, 6 geometry steps, on the capped GPU: must finish by
    falling back, recorded in result.json."""
    import numpy as np

    from engine.errors import EngineError
    from engine.pipeline import run_job

    job = Path(tempfile.mkdtemp(prefix="gpu-oom-"))
    np.save(job / "embedding.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    (job / "job.json").write_text(json.dumps({
        "photos": [], "embedding": "embedding.npy", "expressions": ["neutral", "smiling"], "preset": "standard",
        "overrides": {"geometry_steps": 6, "views_per_step": 4, "checkpoint_every": 2, "pretrain_steps": 100},
        "models": str(models), "device": device, "stop_after": "geometry", "snapshot_interval_s": 3.0}))
    warnings = []
    try:
        folder = run_job(job, emit=lambda m: warnings.append(m) if m["type"] == "warning" else None)
    except EngineError as exc:
        return {"ok": False, "record": f"{exc.code}: {exc.message}", "warnings": [(w["code"], w["message"][:140])
                                                                                  for w in warnings]}
    record = json.loads((folder / "result.json").read_text())["memory"]["fallback"]
    return {"ok": True, "record": record, "warnings": [(w["code"], w["message"][:140]) for w in warnings]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/tmp/fullsize-models"))
    parser.add_argument("--geometry-steps", type=int, default=40)
    parser.add_argument("--texture-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="CPU + tiny models + test preset (checks the script)")
    parser.add_argument("--no-nvdiffrast", action="store_true", help="a missing nvdiffrast skips parity, not fails it")
    args = parser.parse_args()
    import torch

    from engine import gpu_check

    results = Results(args.out)
    device = "cpu" if args.tiny else "cuda"
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: this is the GPU acceptance run (use --tiny to check the script on a CPU)")
        return 2
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}); device "
          f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    t0 = time.perf_counter()
    if args.tiny:
        from engine.tiny_models import write_tiny_models

        models, preset = write_tiny_models(Path(tempfile.mkdtemp(prefix="tiny-"))), "test"
        args.geometry_steps, args.texture_steps = 6, 4
    else:
        from bench_full_size_job import full_size_models

        models, preset = full_size_models(args.models), "standard"
    print(f"models ready in {time.perf_counter() - t0:.0f} s: {models}")

    print("\n== rasteriser parity and cost")
    parity = rasteriser_parity(torch.device(device), 64 if args.tiny else 512)
    if parity["ran"]:
        results.record("parity", "pass" if parity["pass"] else "fail", "" if parity["pass"] else "outside the bounds",
                       **parity)
    else:
        skip = args.no_nvdiffrast or args.tiny
        results.record("parity", "skip" if skip else "fail",
                       "nvdiffrast does not import here: install it in this Python first (docs/gpu.md)", **parity)

    print("\n== Check GPU")
    t0 = time.perf_counter()
    report = gpu_check.run_check(models, preset=preset, device=device, save=False)
    print(gpu_check.format_report(report))
    print(f"(Check GPU took {time.perf_counter() - t0:.0f} s)")
    results.record("check_gpu", "pass" if report.get("ok") else "fail", report.get("problem", ""), report=report)

    print(f"\n== {preset} job, {args.geometry_steps} + {args.texture_steps} SDS steps, 13 expressions")
    try:
        job = standard_job(models, device, args.geometry_steps, args.texture_steps, preset)
    except Exception as exc:  # the verdict says why; the traceback goes to the log
        import traceback

        traceback.print_exc()
        results.record("standard_job", "fail", f"{type(exc).__name__}: {str(exc)[:200]}")
        job = None
    if job is not None:
        print(f"  whole run {job['total_s']:.0f} s; stage seconds {job['timings']}")
        print(f"  s/step: geometry shortcut {job['geometry_shortcut_s']:.3f}, geometry through the VAE "
              f"{job['geometry_vae_s']:.3f}, texture {job['texture_s']:.3f}; set-up paid once {job['setup_s']:.0f} s")
        if device == "cuda":
            print(f"  GPU memory: peak allocated {job['peak_allocated_gib']:.2f} GiB, peak reserved "
                  f"{job['peak_reserved_gib']:.2f} GiB, used on the GPU at the peak {job['used_at_peak_gb']:.2f} GB "
                  "(with the CUDA context)")
        print(f"  memory record {json.dumps(job['memory'])}")
        print(f"  minutes per standard head (13 expressions): {job['minutes_standard_head']:.1f} "
              f"(goal: <= {GOAL_MINUTES:g} min and <= {GOAL_GB:g} GB on one H100)")
        for code, message in job["warnings"]:
            print(f"  warning {code}: {message}")
        misses = []
        if not job["minutes_standard_head"] <= GOAL_MINUTES:
            misses.append(f"{job['minutes_standard_head']:.1f} min per head > {GOAL_MINUTES:g}")
        if device == "cuda" and not job["used_at_peak_gb"] <= GOAL_GB:
            misses.append(f"{job['used_at_peak_gb']:.1f} GB used > {GOAL_GB:g}")
        verdict = "skip" if args.tiny else ("fail" if misses else "pass")
        results.record("standard_job", verdict, "; ".join(misses) if not args.tiny else "CPU with tiny models",
                       **{k: v for k, v in job.items() if k != "warnings"})
    if device == "cuda" and report.get("ok") and report.get("memory"):
        print("\n== a real CUDA out-of-memory error: 4 views per step on a GPU capped (per-process memory "
              "fraction) to the models + 1.5 views")
        mem = report["memory"]
        cap = mem["model_bytes"] + 1.5 * mem["activation_bytes_per_view"] + 1.0 * GiB
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / mem["total_bytes"]))
        try:
            capped = capped_job(models, device)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        print(f"  finished: {capped['ok']}; fallback record {json.dumps(capped['record'])}")
        for code, message in capped["warnings"]:
            print(f"  warning {code}: {message}")
        fell_back = capped["ok"] and bool(capped["record"]["changes"])
        results.record("capped_job", "pass" if fell_back else "fail",
                       "" if fell_back else ("it did not finish" if not capped["ok"] else "no fallback was taken"),
                       **capped)
    elif device == "cuda":
        results.record("capped_job", "fail", "not run: Check GPU measured no memory figures")
    print("\n== verdicts: " + ", ".join(f"{name} {s['verdict'].upper()}" for name, s in results.sections.items()))
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
