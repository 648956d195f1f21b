"""``python -m engine build-prior-dataset``: a task-prior dataset from a folder of rendered heads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..options import multiple_of


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", required=True, type=Path,
                        help="folder with one sub-folder per head: <domain>_*.png, meta.json, identity.npy or photos/")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--domain", required=True, choices=("normal", "albedo"))
    parser.add_argument("--resolution", type=multiple_of(8, 64, 2048, 512), default=512,
                        help="image side in pixels, a multiple of 8 in 64..2048 (SD 1.5: 512)")
    parser.add_argument("--prior", type=Path, default=None, help="models root, to embed photos/ with ArcFace")


def run(args: argparse.Namespace) -> int:
    from ..errors import EngineError, exit_code_for
    from .dataset import build_dataset

    try:
        count = build_dataset(args.heads, args.out, args.domain, resolution=args.resolution, models_root=args.prior)
    except EngineError as exc:  # bad renders, a refused or unwritable --out (nothing changed): each its own status
        print(f"build-prior-dataset: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""),
              file=sys.stderr)
        return exit_code_for(exc)
    print(f"build-prior-dataset: {count} images written to {args.out}", file=sys.stderr)
    return 0
