"""Benchmark: decimating the canonical head mesh, and what it saves in the texture stage's unwrap.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_decimate.py [--grids 96] [--targets 20000 40000]
                                                             [--skip-full-unwrap]

The mesh is a DMTet extraction (``extract_surface``) of the procedural head SDF at each grid,
largest component. Timed: ``decimate_mesh`` to each target, and ``engine.texture.unwrap_mesh``
(Taubin smoothing + xatlas charts and packing, as the texture stage calls it) on the full mesh
(the baseline: what the pipeline did before decimation) and on each decimated one. Also printed:
chart count and the dense Chamfer distance to the full mesh (200k samples each, k-d tree).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dense_chamfer(va, fa, vb, fb, n=200_000) -> float:
    import torch
    from scipy.spatial import cKDTree

    from engine.geometry.mesh_utils import sample_surface

    pa = sample_surface(torch.as_tensor(va), torch.as_tensor(fa, dtype=torch.int64), n, seed=0).numpy()
    pb = sample_surface(torch.as_tensor(vb), torch.as_tensor(fb, dtype=torch.int64), n, seed=1).numpy()
    return 0.5 * float(cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[96])
    parser.add_argument("--targets", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--skip-full-unwrap", action="store_true", help="the baseline unwrap takes minutes")
    args = parser.parse_args()

    import torch

    from engine.geometry.decimate import decimate_mesh
    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.mesh_utils import keep_largest_component
    from engine.geometry.tetgrid import make_tet_grid
    from engine.texture import unwrap_mesh

    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    for grid_size in args.grids:
        grid = make_tet_grid(grid_size)
        with torch.no_grad():
            surface = extract_surface(grid, head_sdf(grid.vertices))
        v, f = keep_largest_component(surface.verts.detach(), surface.faces)
        v, f = v.numpy(), f.numpy()
        print(f"grid {grid_size}: {len(f)} faces, {len(v)} vertices", flush=True)
        if not args.skip_full_unwrap:
            layout = unwrap_mesh(v, f)
            full_s = layout.stats["seconds"]
            print(f"  full mesh   unwrap {full_s:8.2f} s  charts {layout.stats['charts']}", flush=True)
        for target in args.targets:
            started = time.perf_counter()
            dv, df = decimate_mesh(v, f, target)
            decimate_s = time.perf_counter() - started
            layout = unwrap_mesh(dv, df)
            line = (f"  -> {len(df):6d} faces  decimate {decimate_s:6.2f} s  unwrap {layout.stats['seconds']:8.2f} s"
                    f"  charts {layout.stats['charts']}  chamfer {dense_chamfer(dv, df, v, f) * 1000:.3f} mm")
            if not args.skip_full_unwrap:
                line += f"  unwrap speed-up x{full_s / max(layout.stats['seconds'], 1e-9):.1f}"
            print(line, flush=True)
        print(f"  chamfer floor (full vs itself, sampling only) {dense_chamfer(v, f, v, f) * 1000:.3f} mm")


if __name__ == "__main__":
    main()
