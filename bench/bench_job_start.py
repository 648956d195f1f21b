"""Job start before and after the model-file digest cache, side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_job_start.py [--models .cache/fullsize-models]
                                                               [--repeats 3] [--no-job]

``result.json`` records the sha256 of every model file. Before the cache, every start and every
``--resume`` read and hashed them all (several GB with real weights); now a start whose files are
unchanged reads none (``engine.model_digests``). On a models folder of several GB (default: the
full-size random-weight models, ``python -m engine.prior.fullsize_models``, ~2 GB):

1. the digests alone: cold cache (every file hashed: what every start did before) against warm
   cache, best of ``--repeats``, with the hashing rate. The operating system's page cache is not
   dropped (that needs root), so "cold" is the hashing cost with the files in memory; a first
   start after a reboot also reads them from disk.
2. the job start (``--no-job`` skips it): ``run_job`` on a job with a ready embedding, from the
   call to the "geometry" stage message (job checks, loading the prior, the digests), with the
   digest cache cold and warm, after one start that is not counted (imports, first reads). The
   job then stops (a cancel before the first step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def digests_cold_and_warm(models: Path, repeats: int) -> dict:
    from engine import model_digests

    files = model_digests.model_files(models)
    size = sum(f.stat().st_size for f in files)
    cold, warm = [], []
    for _ in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="bench-digests-")) / "digests.json"
        t = time.perf_counter()
        first = model_digests.model_file_digests(models, cache)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        second = model_digests.model_file_digests(models, cache)
        warm.append(time.perf_counter() - t)
        assert first == second
    return {"files": len(files), "bytes": size, "cold_s": min(cold), "warm_s": min(warm)}


def job_start(models: Path, cache_dir: Path) -> float:
    """Seconds from run_job to the geometry stage message (then the job is cancelled)."""
    import numpy as np

    from engine.pipeline import run_job
    from engine.pipeline.failures import Cancelled

    job = Path(tempfile.mkdtemp(prefix="bench-job-start-"))
    np.save(job / "embedding.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    (job / "job.json").write_text(json.dumps({
        "photos": [], "embedding": "embedding.npy", "expressions": ["neutral"], "preset": "test",
        "models": str(models), "device": "cpu", "output": {"quality_report": False}}))
    reached = {}
    started = time.perf_counter()

    def emit(msg):
        if msg["type"] == "stage" and msg["name"] == "geometry":
            reached["t"] = time.perf_counter() - started

    os.environ["IDTO3D_CACHE"] = str(cache_dir)
    try:
        run_job(job, emit=emit, should_stop=lambda: "t" in reached)
    except Cancelled:
        pass
    return reached["t"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / ".cache" / "fullsize-models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-job", action="store_true", help="time the digests only")
    args = parser.parse_args()
    if not args.models.is_dir():
        print(f"no models folder at {args.models}: write the full-size random models with "
              "`python -m engine.prior.fullsize_models` or pass --models ROOT", file=sys.stderr)
        return 2
    print(f"load average before: {load()}  (cores: {os.cpu_count()})")
    d = digests_cold_and_warm(args.models, args.repeats)
    gb = d["bytes"] / 1e9
    print(f"\nmodel-file digests, {d['files']} files, {gb:.2f} GB ({args.models}), best of {args.repeats}:")
    print("| digests | seconds | |")
    print("|---|---|---|")
    print(f"| before: every file hashed (cold cache) | {d['cold_s']:.2f} | {gb / d['cold_s']:.2f} GB/s |")
    print(f"| after: unchanged files (warm cache) | {d['warm_s'] * 1000:.1f} ms | "
          f"{d['cold_s'] / d['warm_s']:.0f}x faster |")
    if not args.no_job:
        job_start(args.models, Path(tempfile.mkdtemp(prefix="bench-cache-warmup-")))  # imports, first loads
        colds, warms = [], []
        for _ in range(args.repeats):
            cache_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
            colds.append(job_start(args.models, cache_dir))  # fills this cache
            warms.append(job_start(args.models, cache_dir))
        cold, warm = min(colds), min(warms)
        print(f"\njob start (run_job to the geometry stage: job checks, prior load, digests; after a warm-up "
              f"start, best of {args.repeats}):")
        print("| start | seconds |")
        print("|---|---|")
        print(f"| before: cold digest cache | {cold:.1f} |")
        print(f"| after: warm digest cache | {warm:.1f} |")
        print(f"| saved | {cold - warm:.1f} ({100 * (cold - warm) / cold:.0f} %) |")
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
