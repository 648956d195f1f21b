"""One whole job at the standard preset's sizes on full-size random-weight models (CPU).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_full_size_job.py [--expressions 13] [--steps 2]

identity (a real photo, dlib detection, the models' ArcFace ONNX) -> geometry (tet grid 128,
512^2 renders, 2 views per step, the standard pretraining) -> decimation (to 40 000 faces) ->
texture (2048^2 maps, 512^2 renders) -> quality report -> export, through ``run_job`` with the
full-size random-weight SD 1.5 / Arc2Face / CLIP models (engine/prior/fullsize_models.py, written
once into ``.cache/fullsize-models``), ``--steps`` SDS steps per stage. Prints the seconds of each
stage and of each SDS step (wall and CPU seconds side by side: their ratio shows how shared the
machine was), the texture step against the geometry step measured in the same run, the sizes of
what was written and the peak RSS of the process (``ru_maxrss``). The heads mean nothing (random
weights): this measures sizes, time and memory.
tests/pipeline/test_full_size_job.py (slow) runs the same job and checks every file.
Figures: docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_MODELS = REPO_ROOT / ".cache" / "fullsize-models"
EXPRESSIONS = ["neutral", "smiling", "angry", "surprised", "sad", "disgusted", "afraid", "laughing", "shouting",
               "winking", "pouting", "sneering", "yawning"]  # 13: the performance goal's head


def full_size_models(root: Path = DEFAULT_MODELS) -> Path:
    """The full-size random-weight models root, written once (~2.1 GB, atomically) when absent."""
    from engine.prior.fullsize_models import FULLSIZE_MARKER, write_fullsize_models

    if not (root / FULLSIZE_MARKER).is_file():
        write_fullsize_models(root)
    return root


def real_photo(folder: Path) -> Path:
    """Grace Hopper's portrait, shipped with matplotlib (a real face the dlib detector finds)."""
    import importlib.util

    source = Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "grace_hopper.jpg"
    shutil.copyfile(source, target)
    return target


def write_full_size_job(job_dir: Path, models: Path, photo: Path, expressions: list[str], steps: int) -> Path:
    """job.json for the standard preset at its real sizes, ``steps`` SDS steps per stage."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps({
        "photos": [str(photo)], "expressions": expressions, "preset": "standard",
        "overrides": {"geometry_steps": steps, "texture_steps": steps},
        "models": str(models), "device": "cpu", "snapshot_interval_s": 0.2}), encoding="utf-8")
    return job_dir


def run(job_dir: Path) -> dict:
    """Run the job; returns the stage seconds, the SDS step seconds and the messages."""
    from engine.pipeline import run_job

    messages, stage_start, step_times = [], {}, {"geometry": [], "texture": []}
    step_cpu = {"geometry": [], "texture": []}
    last = {"t": time.perf_counter(), "cpu": time.process_time()}

    def emit(msg):
        now, cpu = time.perf_counter(), time.process_time()
        messages.append(msg)
        if msg["type"] == "stage":
            stage_start[msg["name"]] = (now, cpu)
        elif msg["type"] == "progress":
            step_times[msg["stage"]].append(now - last["t"])
            step_cpu[msg["stage"]].append(cpu - last["cpu"])
        last["t"], last["cpu"] = now, cpu

    started, cpu_started = time.perf_counter(), time.process_time()
    folder = run_job(job_dir, emit=emit)
    total, cpu_total = time.perf_counter() - started, time.process_time() - cpu_started
    order = sorted(stage_start.items(), key=lambda kv: kv[1][0])
    ends = [t for _, t in order[1:]] + [(started + total, cpu_started + cpu_total)]
    stages = {name: end[0] - t0[0] for (name, t0), end in zip(order, ends)}
    stages_cpu = {name: end[1] - t0[1] for (name, t0), end in zip(order, ends)}
    return {"folder": folder, "total_s": total, "cpu_s": cpu_total, "stages_s": stages, "stages_cpu_s": stages_cpu,
            "steps_s": step_times, "steps_cpu_s": step_cpu, "messages": messages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--expressions", type=int, default=13, help="how many expressions (neutral included)")
    parser.add_argument("--steps", type=int, default=2, help="SDS steps per stage")
    parser.add_argument("--keep", type=Path, default=None, help="write the job here and keep it")
    args = parser.parse_args()
    import torch

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (cores {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()})")
    models = full_size_models(args.models)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-full-size-job-"))
    photo = real_photo(work / "photos")
    job = write_full_size_job(work / "job", models, photo, EXPRESSIONS[:args.expressions], args.steps)
    result = run(job)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"\nwhole job, standard preset sizes, {args.expressions} expressions, {args.steps} SDS steps per stage, "
          f"full-size random-weight models, CPU fp32: {result['total_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU "
          f"(CPU / wall {result['cpu_s'] / result['total_s']:.2f}; {torch.get_num_threads()} threads)")
    for name, seconds in result["stages_s"].items():
        steps = result["steps_s"].get(name)
        extra = (f"  (step by step: {', '.join(f'{s:.0f} s' for s in steps)}; the first includes the stage's "
                 "set-up: pretraining / unwrap)") if steps else ""
        print(f"  {name:<9} {seconds:7.0f} s wall {result['stages_cpu_s'][name]:7.0f} s CPU{extra}")
    geo, tex = result["steps_cpu_s"]["geometry"][1:], result["steps_cpu_s"]["texture"][1:]
    if geo and tex:  # the steps after each stage's first (which includes its set-up), side by side
        print(f"  texture step / geometry step, CPU time, same run: {(sum(tex) / len(tex)) / (sum(geo) / len(geo)):.2f}")
    print(f"  peak RSS {peak:.2f} GiB")
    folder = result["folder"]
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(folder)}: {path.stat().st_size / 2**20:.2f} MiB")
    warnings = [m for m in result["messages"] if m["type"] == "warning"]
    for w in warnings:
        print(f"  warning {w['code']}: {w['message'][:160]}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
