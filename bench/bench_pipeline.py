"""Pipeline benchmark: steps/s per stage, peak RSS, the share of each part of a step, host syncs per step.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_pipeline.py [--preset preview] [--geometry-steps 12]
        [--grids 64 128] [--baseline 62fda1c | --baseline none] [--no-whole-job]

Runs the preset (default "preview": grid 96, 256^2 renders) on the CPU with tiny random-weight
priors, with the step counts reduced by overrides so it finishes in a minute or two:

1. a whole job through ``run_job`` (stop_after none): seconds and steps/s per stage, from the
   progress messages; peak RSS of this process (``ru_maxrss``). ``--no-whole-job`` skips it.
2. a profiled stage-1 loop (at each of ``--grids``, default the preset's grid) and stage-2 loop:
   wall time of marching tets (field + extraction), render, VAE encode, UNet, backward (VAE +
   render + field), optimiser, and the rest; then, in extra steps after the timed ones, the host
   syncs per step counted by ``bench/host_syncs.py`` (read-backs of device tensors -- the goal is
   one per step, the pipeline's ``float(loss)`` --, read-backs of host tensors (Adam's step
   counters, cameras before they move: not device syncs), and data-dependent-size ops
   (``nonzero``, ``unique``, boolean indexing...: each a sync on a GPU), with the call sites.
3. the same profile with the engine as it was at ``--baseline`` (a git commit; default the one
   before the host-sync and narrow-band work), extracted with ``git archive`` into a temporary
   folder and run in a subprocess, so before and after are measured side by side in one run;
   after this tree's profile, or with ``--concurrent`` at the same time, one thread each (on a
   shared machine the load then changes both alike; on a quiet one, run them in turn).
The machine's load average is printed with the figures (2 shared cores: numbers move a lot).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_BASELINE = "62fda1c"  # the engine before the host-sync and narrow-band work (issue 16)
if __name__ == "__main__" and os.environ.get("BENCH_ENGINE_ROOT"):
    sys.path.insert(0, os.environ["BENCH_ENGINE_ROOT"])  # the baseline engine, in the subprocess
else:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(BENCH))


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
    """Accumulates wall and CPU time per named part by wrapping callables (CPU: no device sync
    needed). CPU time (this process, all threads) moves far less than wall time when other jobs
    share the cores, so side-by-side ratios are taken from it."""

    def __init__(self):
        self.ms = collections.defaultdict(float)
        self.cpu_ms = collections.defaultdict(float)

    def clear(self) -> None:
        self.ms.clear()
        self.cpu_ms.clear()

    def wrap(self, owner, name: str, label: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.ms[label] += (time.perf_counter() - t) * 1e3
                self.cpu_ms[label] += (time.process_time() - c) * 1e3

        setattr(owner, name, timed)
        return original


def _profile_loop(label: str, run_step, parts: Parts, steps: int, counter, count_steps: int) -> dict:
    """Time ``steps`` steps (after a warm-up), then count host syncs in ``count_steps`` more."""
    run_step(0)  # warm-up
    parts.clear()
    t, c = time.perf_counter(), time.process_time()
    for i in range(1, steps + 1):
        run_step(i)
    wall = (time.perf_counter() - t) * 1e3 / steps
    cpu = (time.process_time() - c) * 1e3 / steps
    part_ms = {k: v / steps for k, v in parts.ms.items()}
    part_cpu_ms = {k: v / steps for k, v in parts.cpu_ms.items()}
    counter.install()
    counter.reset()
    with counter.counting():
        for i in range(steps + 1, steps + 1 + count_steps):
            run_step(i)
    counter.uninstall()
    per = lambda c: {k: v / count_steps for k, v in c.items()}  # noqa: E731
    return {"label": label, "ms_per_step": wall, "cpu_ms_per_step": cpu, "parts": part_ms,
            "cpu_parts": part_cpu_ms,
            "device_read_backs": per(counter.device_read_backs()),
            "host_read_backs": per(counter.host_read_backs()),
            "data_dependent": per(counter.data_dependent)}


def profile_stages(models: Path, preset: str, overrides: dict, steps: int, grids: list[int],
                   count_steps: int = 1) -> list:
    import numpy as np
    import torch

    import engine.pipeline.geometry_stage as gs
    from engine.geometry import fit
    from engine.pipeline.presets import resolve_preset
    from engine.pipeline.run import deterministic_on_cpu
    from engine.prior import load_prior
    from engine.prior.model import Prior
    from host_syncs import SyncCounter

    prior = load_prior(models, device="cpu")
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    parts = Parts()
    parts.wrap(fit.DMTet, "forward", "marching tets (field + extraction)")
    parts.wrap(gs, "render", "render")
    parts.wrap(Prior, "encode_images", "VAE encode")
    parts.wrap(Prior, "predict_noise", "UNet (CFG batch)")
    parts.wrap(torch.Tensor, "backward", "backward (VAE, render, field)")
    counter = SyncCounter()
    results = []
    stage = None
    with deterministic_on_cpu("cpu"):  # as run_job runs the CPU
        for grid in grids:
            settings = resolve_preset(preset, {**overrides, **({"grid": grid} if grid else {})})
            stage = gs.GeometryStage(settings, prior, embedding, ["neutral", "smiling", "angry"], seed=0,
                                     device="cpu", normal_maps=False)
            stage.initialise()
            parts.wrap(stage.optimiser, "step", "optimiser")
            stage.shortcut_steps = 0  # profile the VAE path (the later, costlier part of stage 1)
            results.append(_profile_loop(f"geometry (VAE path), grid {settings.grid}",
                                         lambda i: float(stage.step(i).loss), parts, steps, counter,
                                         count_steps))
        # stage 2 on the last canonical mesh
        from engine.pipeline.texture_stage import TextureStage
        import engine.texture.render as tr

        v, f, offsets = stage.canonical(settings.target_faces)
        tex = TextureStage(settings, prior, embedding, v, f, offsets, size=settings.texture_size, seed=0,
                           device="cpu", albedo_lora=False)
        parts.wrap(tr, "render", "render")
        parts.wrap(tex.optimiser, "step", "optimiser")
        results.append(_profile_loop(f"texture ({len(f)} faces)", lambda i: float(tex.step(i)[0]), parts,
                                     steps, counter, count_steps))
    return results


def start_baseline(ref: str, models: Path, args, overrides: dict):
    """Start the same profile with the engine as it was at ``ref``, in a subprocess (its own
    imports); returns a function that waits for it and returns its results."""
    tree = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref, "engine"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    out = tree / "profile.json"
    cmd = [sys.executable, __file__, "--profile-only", str(out), "--models", str(models),
           "--preset", args.preset, "--profile-steps", str(args.profile_steps),
           "--grids", *[str(g) for g in args.grids], "--overrides-json", json.dumps(overrides)]
    env = {**os.environ, "BENCH_ENGINE_ROOT": str(tree)}
    if args.concurrent:
        env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(cmd, env=env)

    def result() -> list:
        if process.wait() != 0:
            raise RuntimeError(f"the baseline profile failed (exit {process.returncode})")
        return json.loads(out.read_text())

    return result


def _total(counts: dict) -> float:
    return sum(counts.values())


def print_profile(results: list, title: str) -> None:
    print(f"\n{title}")
    for r in results:
        print(f"\n{r['label']}: {r['ms_per_step']:.0f} ms/step wall, {r['cpu_ms_per_step']:.0f} ms CPU; "
              f"host syncs per step: device read-backs {_total(r['device_read_backs']):g}, data-dependent sizes "
              f"{_total(r['data_dependent']):g} (host-tensor read-backs, not device syncs: "
              f"{_total(r['host_read_backs']):g})")
        accounted = 0.0
        for part, ms in sorted(r["cpu_parts"].items(), key=lambda kv: -kv[1]):
            accounted += ms
            print(f"  {part:<36} {ms:8.1f} ms CPU  {100 * ms / r['cpu_ms_per_step']:5.1f} %  "
                  f"(wall {r['parts'].get(part, 0):.1f} ms)")
        other = max(r["cpu_ms_per_step"] - accounted, 0.0)
        print(f"  {'other (SDS noise, regularisers, Python)':<36} {other:8.1f} ms CPU  "
              f"{100 * other / r['cpu_ms_per_step']:5.1f} %")
        for kind in ("device_read_backs", "data_dependent", "host_read_backs"):
            if r[kind]:
                sites = ", ".join(f"{k} x{v:g}" for k, v in sorted(r[kind].items()))
                print(f"  {kind.replace('_', ' ')}: {sites}")


def print_side_by_side(before: list, after: list, ref: str) -> None:
    print(f"\nside by side (before = engine at {ref}, after = this tree; same run, same machine; CPU time of "
          "this process, steady under shared cores, with wall time in brackets):")
    print("| step | ms/step before | after | ratio | device read-backs before | after "
          "| data-dependent sizes before | after |")
    print("|---|---|---|---|---|---|---|---|")
    for b, a in zip(before, after):
        print(f"| {a['label']} | {b['cpu_ms_per_step']:.0f} ({b['ms_per_step']:.0f}) | "
              f"{a['cpu_ms_per_step']:.0f} ({a['ms_per_step']:.0f}) | {b['cpu_ms_per_step'] / a['cpu_ms_per_step']:.2f}x | "
              f"{_total(b['device_read_backs']):g} | {_total(a['device_read_backs']):g} | "
              f"{_total(b['data_dependent']):g} | {_total(a['data_dependent']):g} |")
        for part in sorted(set(b["cpu_parts"]) | set(a["cpu_parts"])):
            pb, pa = b["cpu_parts"].get(part, 0.0), a["cpu_parts"].get(part, 0.0)
            print(f"|   {part} | {pb:.0f} | {pa:.0f} | {pb / max(pa, 1e-9):.2f}x | | | | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--geometry-steps", type=int, default=12)
    parser.add_argument("--texture-steps", type=int, default=6)
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--grids", type=int, nargs="+", default=[0],
                        help="stage-1 profile grids (0: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="extra preset override, e.g. --set grid=48 --set render_resolution=128")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: tiny models written here)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="git commit whose engine is profiled beside this one ('none': skip)")
    parser.add_argument("--no-whole-job", action="store_true")
    parser.add_argument("--concurrent", action="store_true",
                        help="profile the baseline at the same time, one thread each (for a shared machine)")
    parser.add_argument("--profile-only", type=Path, help=argparse.SUPPRESS)  # subprocess mode: JSON out
    parser.add_argument("--overrides-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    from engine.tiny_models import write_tiny_models

    if args.profile_only:
        import engine

        print(f"baseline engine: {Path(engine.__file__).parent}", flush=True)
        results = profile_stages(args.models, args.preset, json.loads(args.overrides_json),
                                 args.profile_steps, args.grids)
        args.profile_only.write_text(json.dumps(results))
        return 0
    print(f"load average before: {load()}  (cores: {os.cpu_count()}, torch threads {torch.get_num_threads()})")
    models = args.models or write_tiny_models(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    overrides = {"geometry_steps": args.geometry_steps, "texture_steps": args.texture_steps,
                 "pretrain_steps": args.pretrain_steps, "checkpoint_every": 10**6}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if not args.no_whole_job:
        job = whole_job(models, args.preset, overrides)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(f"\nwhole job, preset {args.preset!r} with {overrides} (CPU, tiny priors): {job['total_s']:.1f} s")
        starts = sorted(job["stage_start"].items(), key=lambda kv: kv[1])
        for (name, t0), (_, t1) in zip(starts, starts[1:] + [("end", job["stage_start"][starts[0][0]] + job["total_s"])]):
            rate = f", {job[name]:.2f} steps/s" if name in job else ""
            print(f"  {name:<9} {t1 - t0:7.1f} s{rate}")
        print(f"  peak RSS {rss:.0f} MiB")
    baseline = None
    if args.baseline != "none" and args.concurrent:
        # Both at once, one thread each: whatever else loads the machine loads both alike.
        torch.set_num_threads(1)
        baseline = start_baseline(args.baseline, models, args, overrides)
    after = profile_stages(models, args.preset, overrides, args.profile_steps, args.grids)
    print_profile(after, "profile, this tree:")
    if args.baseline != "none":
        print(f"\nload average before the baseline profile's results: {load()}")
        before = (baseline or start_baseline(args.baseline, models, args, overrides))()
        print_profile(before, f"profile, engine at {args.baseline}:")
        print_side_by_side(before, after, args.baseline)
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
