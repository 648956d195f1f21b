"""Cost of the ownership bookkeeping: a plain folder swap vs an owned one, and the foreign check.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_owned.py [--files 100 1000 5000] [--repeats 3]

Prints seconds (best of the repeats) per folder size and the owned/plain ratio measured in the
same run (absolute numbers move with the machine's load; the ratio is the figure to compare).
"""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()
