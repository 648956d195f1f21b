"""Cost of the ownership bookkeeping: a plain folder swap vs an owned one, and the foreign check;
and a running job's live files (previews, snapshots, checkpoints) written and pruned plainly vs
recorded in the job folder's manifest and pruned through it (engine/pipeline/live.py, checkpoint.py).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_owned.py [--files 100 1000 5000] [--repeats 3]

Prints seconds (best of the repeats) per folder size and the owned/plain ratio measured in the
same run (absolute numbers move with the machine's load; the ratio is the figure to compare).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import atomic, owned  # noqa: E402
from timing import best_of  # noqa: E402  (bench/timing.py, beside this script)


def writer(files: int):
    def write(staging: Path) -> None:
        for i in range(files):
            sub = staging / f"d{i % 20}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.bin").write_bytes(b"x" * 64)
    return write




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'files':>6} {'plain swap s':>13} {'owned swap s':>13} {'ratio':>6} {'foreign check s':>16}")
    for files in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            plain, mine = Path(tmp) / "plain", Path(tmp) / "owned"
            write = writer(files)
            t_plain = best_of(args.repeats, lambda: atomic.replace_dir_atomic(plain, write))
            t_owned = best_of(args.repeats, lambda: owned.replace_owned_dir(mine, "bench", write))
            t_check = best_of(args.repeats, lambda: owned.foreign_entries(mine))
            print(f"{files:>6} {t_plain:>13.3f} {t_owned:>13.3f} {t_owned / t_plain:>6.2f} {t_check:>16.3f}")
    live_files(args.repeats)


def live_files(repeats: int, writes: int = 200) -> None:
    """One job's live folder: ``writes`` files written, the newest 3 kept, as LiveOutput does."""
    pattern = re.compile(r"preview-(\d+)\.png")
    print(f"\nper live file written and pruned (job folder manifest of ~15 entries, keep 3), best of {repeats}:")
    print(f"{'size':>8} {'plain ms':>9} {'owned ms':>9} {'ratio':>6}")
    for size in (64 << 10, 4 << 20):
        payload = b"x" * size

        def plain(folder: Path) -> None:
            for i in range(writes):
                atomic.write_file_atomic(folder / f"preview-{i:06d}.png", lambda s: s.write(payload))
                for old in sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))[:-3]:
                    old.unlink()

        def mine(folder: Path) -> None:
            for i in range(writes):
                owned.write_owned_file(folder / f"preview-{i:06d}.png", lambda p: p.write_bytes(payload))
                owned.prune_owned(folder, pattern, 3)

        times = {}
        for name, run in (("plain", plain), ("owned", mine)):
            with tempfile.TemporaryDirectory() as tmp:
                jobs = iter(Path(tmp) / f"job{i}" for i in range(repeats))
                current: list[Path] = []

                def fresh_job() -> None:  # untimed: a job folder whose manifest holds ~12 entries
                    job = owned.claim_dir(next(jobs), "job")
                    for k in range(12):  # what a job folder's manifest holds besides live/
                        owned.write_owned_file(job / "checkpoints" / f"f{k}", lambda p: p.write_bytes(b"c"))
                    current[:] = [job / "live"]

                best = best_of(repeats, lambda: run(current[0]), before=fresh_job)
            times[name] = best / writes * 1000.0
        label = f"{size >> 10} KiB" if size < (1 << 20) else f"{size >> 20} MiB"
        print(f"{label:>8} {times['plain']:>9.2f} {times['owned']:>9.2f} {times['owned'] / times['plain']:>6.2f}")


if __name__ == "__main__":
    main()
