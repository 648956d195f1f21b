"""``python -m engine batch``: the local runner vs the Ray runner per job, side by side, and the cost
of the batch's index with many rows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_batch.py [--jobs 4] [--repeats 3] [--ray-cpus 1]
                                                          [--index-rows 1000 5000] [--skip-runners]

Runners: the same N tiny jobs (test preset, tiny random-weight models, ready embeddings) through
the batch command as a user runs it, ``--repeats`` times each, the two runners interleaved (local,
Ray, local, Ray, ...) so that the machine's load hits both alike; medians are reported (with the
range). The Ray cluster is a local one this script starts (engine.pipeline.batch_ray.PrivateCluster:
``ray start --head``, its own token and temp folder, stopped by its pid); with ``--ray-cpus 1`` (the
default) it runs one job at a time like the local runner, so the difference is Ray's own cost. Per
job the index gives its wall time in the runner (worker process start to exit) and the compute the
job itself reports (result.json timings); their difference is the in-job overhead (interpreter,
imports, model loading checks), the same for both runners. The batch's wall time divided by N adds
everything around the jobs (manifest, job folders, index; for Ray: connecting, shipping the engine,
scheduling, result collection).

Index: one rewrite of ROOT/index.json + index.csv with N rows, and what a batch of N jobs spends on
its index when it is rewritten at every change (each job queued, each job's end: 2N + 2 rewrites,
as before) against the throttled Index (at most one rewrite per INDEX_EVERY_S, plus the start and
the end), the same write function, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_batch(manifest: Path, out: Path, models: Path, env: dict, *extra: str) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", "batch", str(manifest), "--out", str(out), "--models",
                           str(models), "--device", "cpu", "--progress-every", "600", *extra],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"batch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    jobs = json.loads((out / "index.json").read_text())["jobs"]
    return wall, jobs


def summary(wall: float, jobs: list[dict]) -> dict:
    job_wall = [j["seconds"] for j in jobs]
    compute = [j["compute_seconds"] for j in jobs]
    n = len(jobs)
    return {"batch wall / job (s)": wall / n,
            "job wall in runner, mean (s)": statistics.mean(job_wall),
            "job compute, mean (s)": statistics.mean(compute),
            "in-job overhead, mean (s)": statistics.mean(w - c for w, c in zip(job_wall, compute)),
            "around-job overhead / job (s)": (wall - sum(job_wall)) / n,
            "total overhead / job (s)": (wall - sum(compute)) / n}


def runners(args, work: Path) -> None:
    import numpy as np

    from engine.pipeline.batch_ray import PrivateCluster

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    models = args.models
    if models is None:
        subprocess.run([sys.executable, "-m", "engine", "make-tiny-models", str(work / "models")], env=env,
                       check=True, capture_output=True)
        models = work / "models"
    rows = []
    for i in range(args.jobs):
        np.save(work / f"id{i}.npy", np.random.default_rng(i).normal(size=512).astype(np.float32))
        rows.append({"id": f"id{i}", "embedding": f"id{i}.npy", "expressions": ["smiling"], "preset": "test",
                     "seed": i})
    manifest = work / "faces.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    cluster = PrivateCluster(num_cpus=args.ray_cpus, env=env)
    print(f"Ray cluster start (`ray start --head`, not in the batch figures): {cluster.start_seconds:.1f} s",
          flush=True)
    results: dict[str, list[dict]] = {"local": [], "ray": []}
    try:
        for repeat in range(args.repeats):
            for name, extra, run_env in (("local", (), env), ("ray", ("--ray", cluster.address), cluster.env)):
                results[name].append(summary(*run_batch(manifest, work / f"{name}-{repeat}", models,
                                                        {**run_env, "PYTHONPATH": str(ROOT)}, *extra)))
                print(f"  repeat {repeat + 1}/{args.repeats}, {name}: batch wall / job "
                      f"{results[name][-1]['batch wall / job (s)']:.2f} s; load average {load()}", flush=True)
    finally:
        cluster.stop()
    print(f"\nmedian of {args.repeats} interleaved runs each ({args.jobs} jobs per run; range in brackets)")
    print(f"{'':34} {'local':>18} {'ray':>18} {'ray - local':>12}")
    for key in results["local"][0]:
        local = [r[key] for r in results["local"]]
        ray = [r[key] for r in results["ray"]]
        cell = lambda v: f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"  # noqa: E731
        print(f"{key:34} {cell(local):>18} {cell(ray):>18} {statistics.median(ray) - statistics.median(local):>+12.2f}")


def index_cost(row_counts: list[int], work: Path) -> None:
    from engine import owned
    from engine.pipeline import batch

    print(f"\nindex with many rows (write = index.json + index.csv; median of 5 writes; load average {load()})")
    print(f"{'rows':>6} {'one write ms':>13} {'rewrite per change: writes':>27} {'s (x one)':>10} "
          f"{'throttled: writes':>18} {'s (x one)':>10} {'ratio':>7}")
    for n in row_counts:
        root = owned.claim_dir(work / f"index-{n}", "batch", shared=True)
        entries = [batch.Entry(f"id{i:05d}", i + 2, "pending", root / f"id{i:05d}", note="continues from checkpoint "
                               "step 400") for i in range(n)]
        header = {"format": "idto3d-batch-index", "status": "running"}
        times = []
        for _ in range(5):
            started = time.perf_counter()
            batch.write_index(root, header, entries)
            times.append(time.perf_counter() - started)
        one = statistics.median(times)
        every_change = 2 * n + 2  # every job queued, every job's end, the start and the end
        # The throttled index, really run: N changes at once (queued), then N more (the ends)
        # spread over 3 s, with a 1 s interval (INDEX_EVERY_S is 5 s in the product).
        writes = []
        real = batch.write_index
        batch.write_index = lambda *a: (writes.append(1), real(*a))
        try:
            index = batch.Index(root, header, entries, batch.index_names(root), every_s=1.0)
            started = time.perf_counter()
            index.write()
            index.start()
            for entry in entries:
                with index.lock:
                    entry.status = "queued"
                    index.changed()
            for i, entry in enumerate(entries):
                if i % max(1, n // 100) == 0:
                    time.sleep(0.03)
                with index.lock:
                    entry.status = "done"
                    index.changed()
            index.stop()
            index.write()
            throttled = time.perf_counter() - started
        finally:
            batch.write_index = real
        spent = len(writes) * one  # the index's share of that time (the rest is the 3 s of "jobs")
        print(f"{n:>6} {one * 1000:>13.1f} {every_change:>27} {every_change * one:>10.1f} {len(writes):>18} "
              f"{spent:>10.2f} {every_change / len(writes):>6.0f}x   (the throttled run took {throttled:.1f} s in all)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each runner, interleaved (median reported)")
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs of the Ray cluster (1: one job at a time)")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: tiny models written here)")
    parser.add_argument("--index-rows", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--skip-runners", action="store_true", help="only the index figures")
    args = parser.parse_args()
    print(f"load average before: {load()}  (cores: {os.cpu_count()})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        if not args.skip_runners:
            runners(args, work)
        index_cost(args.index_rows, work)
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
