"""Pipeline benchmark: steps/s per stage, peak RSS, the share of each part of a step, host syncs per step.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_pipeline.py [--preset preview] [--geometry-steps 12]

Runs the preset (default "preview": grid 96, 256^2 renders) on the CPU with tiny random-weight
priors, with the step counts reduced by overrides so it finishes in a minute or two:

1. a whole job through ``run_job`` (stop_after none): seconds and steps/s per stage, from the
   progress messages; peak RSS of this process (``ru_maxrss``).
2. a profiled stage-1 loop and stage-2 loop: wall time of marching tets (field + extraction),
   render, VAE encode, UNet, backward (VAE + render + field), optimiser, and the rest; and the
   host syncs per step: calls of ``Tensor.item``/``__float__``/``__bool__``/``__int__``/``tolist``
   (read-backs that stall a GPU; on the CPU they cost nothing but are counted the same), with
   the call sites.
The machine's load average is printed with the figures (2 shared cores: numbers move a lot).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def whole_job(models: Path, preset: str, overrides: dict) -> dict:
    import numpy as np

    from engine.pipeline import run_job

    job = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    np.save(job / "embedding.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    (job / "job.json").write_text(json.dumps({
        "photos": [], "embedding": "embedding.npy", "expressions": ["neutral", "smiling", "angry"],
        "preset": preset, "overrides": overrides, "models": str(models), "device": "cpu",
        "output": {"quality_report": False}, "snapshot_interval_s": 3.0}))
    marks: dict[str, list[float]] = collections.defaultdict(list)
    stage_start: dict[str, float] = {}

    def emit(msg):
        now = time.perf_counter()
        if msg["type"] == "stage":
            stage_start[msg["name"]] = now
        elif msg["type"] == "progress":
            marks[msg["stage"]].append(now)

    started = time.perf_counter()
    run_job(job, emit=emit)
    total = time.perf_counter() - started
    out = {"total_s": total, "stage_start": stage_start}
    for stage, times in marks.items():
        # from the first reported step to the last: excludes pretraining and unwrap
        if len(times) > 1:
            out[stage] = (len(times) - 1) / (times[-1] - times[0])
    return out


class Parts:
    """Accumulates wall time per named part by wrapping callables (CPU: no device sync needed)."""

    def __init__(self):
        self.ms = collections.defaultdict(float)

    def wrap(self, owner, name: str, label: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.ms[label] += (time.perf_counter() - t) * 1e3

        setattr(owner, name, timed)
        return original


class SyncCounter:
    METHODS = ("item", "__float__", "__bool__", "__int__", "tolist")

    def __init__(self):
        import torch

        self.torch = torch
        self.count = 0
        self.sites = collections.Counter()
        self.saved = {}
        self.on = False

    def install(self):
        for name in self.METHODS:
            original = getattr(self.torch.Tensor, name)
            self.saved[name] = original

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.on:
                    self.count += 1
                    frame = traceback.extract_stack(limit=3)[0]
                    self.sites[f"{Path(frame.filename).name}:{frame.lineno} {_name}"] += 1
                return _original(tensor, *args, **kwargs)

            setattr(self.torch.Tensor, name, counted)


def profile_stages(models: Path, preset: str, overrides: dict, steps: int) -> dict:
    import numpy as np
    import torch

    import engine.pipeline.geometry_stage as gs
    from engine.geometry import fit
    from engine.pipeline.presets import resolve_preset
    from engine.prior import load_prior
    from engine.prior.model import Prior

    settings = resolve_preset(preset, overrides)
    prior = load_prior(models, device="cpu")
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    parts = Parts()
    parts.wrap(fit.DMTet, "forward", "marching tets (field + extraction)")
    parts.wrap(gs, "render", "render")
    parts.wrap(Prior, "encode_images", "VAE encode")
    parts.wrap(Prior, "predict_noise", "UNet (CFG batch)")
    parts.wrap(torch.Tensor, "backward", "backward (VAE, render, field)")
    counter = SyncCounter()
    counter.install()

    stage = gs.GeometryStage(settings, prior, embedding, ["neutral", "smiling", "angry"], seed=0, device="cpu",
                             normal_maps=False)
    stage.initialise()
    parts.wrap(stage.optimiser, "step", "optimiser")
    stage.shortcut_steps = 0  # profile the VAE path (the later, costlier part of stage 1)
    results = {}
    for label, run_step in (("geometry (VAE path)", lambda i: float(stage.step(i).loss)),):
        run_step(0)  # warm-up
        parts.ms.clear()
        counter.count, counter.on = 0, True
        counter.sites.clear()
        t = time.perf_counter()
        for i in range(1, steps + 1):
            run_step(i)
        wall = (time.perf_counter() - t) * 1e3 / steps
        counter.on = False
        results[label] = {"ms_per_step": wall, "parts": {k: v / steps for k, v in parts.ms.items()},
                          "syncs_per_step": counter.count / steps, "sites": dict(counter.sites)}
    # stage 2 on the canonical mesh
    from engine.pipeline.texture_stage import TextureStage
    import engine.texture.render as tr

    v, f, offsets = stage.canonical()
    tex = TextureStage(settings, prior, embedding, v, f, offsets, size=settings.texture_size, seed=0, device="cpu",
                       albedo_lora=False)
    parts.ms.clear()
    parts.wrap(tr, "render", "render")
    parts.wrap(tex.optimiser, "step", "optimiser")
    tex.step(0)
    parts.ms.clear()
    counter.count, counter.on = 0, True
    counter.sites.clear()
    t = time.perf_counter()
    for i in range(1, steps + 1):
        float(tex.step(i)[0])
    wall = (time.perf_counter() - t) * 1e3 / steps
    counter.on = False
    results["texture"] = {"ms_per_step": wall, "parts": {k: v / steps for k, v in parts.ms.items()},
                          "syncs_per_step": counter.count / steps, "sites": dict(counter.sites)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--geometry-steps", type=int, default=12)
    parser.add_argument("--texture-steps", type=int, default=6)
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="extra preset override, e.g. --set grid=48 --set render_resolution=128")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: tiny models written here)")
    args = parser.parse_args()
    import torch

    from engine.tiny_models import write_tiny_models

    print(f"load average before: {load()}  (cores: {os.cpu_count()}, torch threads {torch.get_num_threads()})")
    models = args.models or write_tiny_models(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    overrides = {"geometry_steps": args.geometry_steps, "texture_steps": args.texture_steps,
                 "pretrain_steps": args.pretrain_steps, "checkpoint_every": 10**6}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    job = whole_job(models, args.preset, overrides)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"\nwhole job, preset {args.preset!r} with {overrides} (CPU, tiny priors): {job['total_s']:.1f} s")
    starts = sorted(job["stage_start"].items(), key=lambda kv: kv[1])
    for (name, t0), (_, t1) in zip(starts, starts[1:] + [("end", job["stage_start"][starts[0][0]] + job["total_s"])]):
        rate = f", {job[name]:.2f} steps/s" if name in job else ""
        print(f"  {name:<9} {t1 - t0:7.1f} s{rate}")
    print(f"  peak RSS {rss:.0f} MiB")
    prof = profile_stages(models, args.preset, overrides, args.profile_steps)
    for label, r in prof.items():
        print(f"\n{label}: {r['ms_per_step']:.0f} ms/step, host syncs/step {r['syncs_per_step']:.1f}")
        accounted = 0.0
        for part, ms in sorted(r["parts"].items(), key=lambda kv: -kv[1]):
            accounted += ms
            print(f"  {part:<36} {ms:8.1f} ms  {100 * ms / r['ms_per_step']:5.1f} %")
        other = max(r["ms_per_step"] - accounted, 0.0)
        print(f"  {'other (SDS noise, regularisers, Python)':<36} {other:8.1f} ms  {100 * other / r['ms_per_step']:5.1f} %")
        print("  sync sites: " + ", ".join(f"{k} x{v / args.profile_steps:g}" for k, v in r["sites"].items()))
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
