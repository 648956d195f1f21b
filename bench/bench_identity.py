"""Benchmark: photos per second for the whole identity step on CPU, per backend.

    .venv/bin/python bench/bench_identity.py [--models ROOT] [--repeats 3]

Per photo "the whole step" is: load (EXIF, colour mode, downscale), detect, 68/5 landmarks, the
112×112 ArcFace crop, the ArcFace embedding, the dlib judge descriptor, and the crop PNG written.
Model loading is timed separately (once per run). Photos: the real portraits shipped in packages
at their own size (~0.3 MP) and the same photos as 12-megapixel JPEGs (phone-camera size).

Backends measured: ``dlib`` always; ``insightface`` when an SCRFD detector is found under
``--models`` (or the other model roots). Without a real ``arcface.onnx`` the ArcFace network is a
generated stand-in with ArcFace's signature but ~1000× less compute, and the table says so: the
real glintr100-size network adds roughly 0.1-0.2 s per photo on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sample_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    import importlib.util

    import numpy as np
    from PIL import Image
    from skimage import data

    def package_dir(name):
        return Path(importlib.util.find_spec(name).origin).parent

    small = [folder / "astronaut.png", folder / "grace_hopper.jpg", folder / "group.jpg"]
    Image.fromarray(data.astronaut()).save(small[0])
    shutil.copy(package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg", small[1])
    shutil.copy(package_dir("insightface") / "data" / "images" / "t1.jpg", small[2])
    large = []
    for path in small:
        image = Image.open(path).convert("RGB")
        factor = (12e6 / (image.width * image.height)) ** 0.5
        big = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)
        target = folder / f"{path.stem}_12mp.jpg"
        big.save(target, quality=92)
        large.append(target)
    del np
    return small, large


def time_backend(backend: str, models_root, photos: list[Path], repeats: int, out: Path) -> dict:
    from engine.identity.pipeline import _aggregate, _analyse_one, _Engines

    start = time.perf_counter()
    engines = _Engines(backend, models_root, "cpu", True)
    load_s = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    _analyse_one(0, photos[0], engines, 2048, out)  # warm-up (first ONNX run allocates)
    start = time.perf_counter()
    results = []
    for _ in range(repeats):
        for index, path in enumerate(photos):
            results.append(_analyse_one(index, path, engines, 2048, out))
    _aggregate(results[: len(photos)], engines)
    elapsed = time.perf_counter() - start
    statuses = sorted({r.status for r in results})
    return {"load_s": load_s, "photos_per_s": len(results) / elapsed, "statuses": statuses,
            "recognition": engines.models.recognition}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models root (antelopev2/ ...)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from engine.model_store import resolve_identity_models
    from engine.tiny_models import write_arcface_onnx

    work = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    try:
        models_root = args.models
        found = resolve_identity_models(models_root)
        stand_in = found.recognition is None
        if stand_in:
            models_root = work / "models"
            write_arcface_onnx(models_root / "antelopev2" / "arcface.onnx", seed=0)
            if found.detector is not None:  # keep the real detector beside the stand-in recogniser
                shutil.copyfile(found.detector, models_root / "antelopev2" / found.detector.name)
        small, large = sample_photos(work)
        backends = ["dlib"] + (["insightface"] if found.detector is not None else [])
        print(f"identity step on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
              f"{args.repeats} passes over each set")
        print("ArcFace model: " + ("GENERATED STAND-IN (real arcface.onnx not found; see module docstring)"
                                    if stand_in else str(found.recognition)))
        if found.detector is None:
            print("insightface backend: not measured (no scrfd_10g_bnkps.onnx found; pass --models ROOT)")
        header = f"{'backend':<12} {'photo set':<26} {'load s':>7} {'photos/s':>9} {'vs dlib':>8}  statuses"
        print(header)
        print("-" * len(header))
        reference = {}
        for backend in backends:
            for label, photos in (("3 photos ~0.3-1.1 MP", small), ("3 photos 12 MP JPEG", large)):
                row = time_backend(backend, models_root, photos, args.repeats, work / "crops")
                reference.setdefault(label, row["photos_per_s"])
                ratio = row["photos_per_s"] / reference[label]
                print(f"{backend:<12} {label:<26} {row['load_s']:>7.2f} {row['photos_per_s']:>9.2f} "
                      f"{ratio:>7.2f}x  {','.join(row['statuses'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
