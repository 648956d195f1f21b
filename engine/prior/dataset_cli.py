"""``python -m engine build-prior-dataset``: a task-prior dataset from a folder of rendered heads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", required=True, type=Path,
                        help="folder with one sub-folder per head: <domain>_*.png, meta.json, identity.npy or photos/")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--domain", required=True, choices=("normal", "albedo"))
    parser.add_argument("--resolution", type=int, default=512, help="image side in pixels (SD 1.5: 512)")
    parser.add_argument("--prior", type=Path, default=None, help="models root, to embed photos/ with ArcFace")


def run(args: argparse.Namespace) -> int:
    from . import PriorError
    from .dataset import build_dataset

    try:
        count = build_dataset(args.heads, args.out, args.domain, resolution=args.resolution, models_root=args.prior)
    except PriorError as exc:
        print(f"build-prior-dataset: {exc}", file=sys.stderr)
        return 2
    print(f"build-prior-dataset: {count} images written to {args.out}", file=sys.stderr)
    return 0
