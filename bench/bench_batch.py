"""Per-job overhead of ``python -m engine batch``: the local runner vs the Ray runner, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_batch.py [--jobs 4] [--ray-cpus 1] [--models ROOT]

Runs the same N tiny jobs (test preset, tiny random-weight models, ready embeddings) through the
batch command twice, as a user would: once with the local runner, once with ``--ray`` on a local
cluster this script starts with ``ray start --head`` (its own token and temp folder, stopped by
its pid). With ``--ray-cpus 1`` (the default) Ray runs one job at a time like the local runner,
so the difference is Ray's own cost per job. Per job the index gives its wall time in the runner
(worker process start to exit) and the compute the job itself reports (result.json timings);
their difference is the in-job overhead (interpreter, imports, model loading checks), the same
for both runners. The batch's wall time divided by N adds everything around the jobs (manifest,
job folders, index; for Ray: connecting, shipping the engine, scheduling, result collection).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def start_cluster(cpus: int, env: dict) -> tuple[subprocess.Popen, str, str, float]:
    base = tempfile.mkdtemp(prefix="idto3d-ray-", dir="/tmp")
    started = time.perf_counter()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus",
                             str(cpus), "--port", "0", "--temp-dir", base, "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    address = None
    for line in head.stdout:
        found = re.search(r"ray start --address='([^']+)'", line)
        address = found.group(1) if found else address
        if address and line.rstrip().endswith("--block"):
            break
    if not address:
        raise SystemExit("the Ray head did not start")
    threading.Thread(target=head.stdout.read, daemon=True).start()
    return head, address, base, time.perf_counter() - started


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
    inside = [w - c for w, c in zip(job_wall, compute)]
    n = len(jobs)
    return {"batch wall (s)": wall, "batch wall / job (s)": wall / n,
            "job wall in runner, mean (s)": statistics.mean(job_wall),
            "job compute, mean (s)": statistics.mean(compute),
            "in-job overhead, mean (s)": statistics.mean(inside),
            "in-job overhead, min-max (s)": (min(inside), max(inside)),
            "around-job overhead / job (s)": (wall - sum(job_wall)) / n,
            "total overhead / job (s)": (wall - sum(compute)) / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs of the Ray cluster (1: one job at a time)")
    parser.add_argument("--models", type=Path, default=None, help="models root (default: tiny models written here)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"load average before: {load()}  (cores: {os.cpu_count()}, {args.jobs} jobs, Ray cluster of "
          f"{args.ray_cpus} CPU(s))", flush=True)
    import numpy as np

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

    local = summary(*run_batch(manifest, work / "local", models, env))
    print(f"local runner done; load average {load()}", flush=True)
    head, address, base, cluster_s = start_cluster(args.ray_cpus, env)
    try:
        ray = summary(*run_batch(manifest, work / "ray", models, env, "--ray", address))
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(60)
        shutil.rmtree(base, ignore_errors=True)
    print(f"ray runner done; load average after: {load()}\n")

    print(f"{'':34} {'local':>10} {'ray':>10} {'ray - local':>12}")
    for key in local:
        a, b = local[key], ray[key]
        if isinstance(a, tuple):
            print(f"{key:34} {f'{a[0]:.1f}-{a[1]:.1f}':>10} {f'{b[0]:.1f}-{b[1]:.1f}':>10}")
        else:
            print(f"{key:34} {a:>10.2f} {b:>10.2f} {b - a:>+12.2f}")
    print(f"\nRay cluster start (`ray start --head`, not in the batch figures): {cluster_s:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
