"""Texture and export timings on CPU (run alone: other processes inflate wall times several-fold).

    .venv/bin/python bench/bench_texture_export.py                  # everything, default sizes
    .venv/bin/python bench/bench_texture_export.py --grids 64 96    # fewer unwrap sizes
    .venv/bin/python bench/bench_texture_export.py --skip-unwrap --skip-glb   # only the SDS step

1. Unwrap: xatlas seconds and chart count on a DMTet extraction of the procedural head at each
   grid, clean, with Gaussian SDF noise (2 mm), and noisy with the SDF blurred by one grid cell
   before extraction; charted on the Taubin-smoothed copy (what unwrap_mesh does) and, as the
   baseline, on the raw extraction (first grid only unless --raw-all).
2. glb: seconds to build and write head.glb with 1K maps and 3 expressions, per mesh size.
3. Texture SDS step with tiny random priors: render_textured (random lights) of V views at
   64/128/256 px with a 1K TextureMaps -> VAE -> UNet with CFG -> backward into the maps -> Adam;
   ms per step split into render, SDS (VAE + UNet) and backward + Adam, for the pyramid maps
   (levels=4, the default) and a plain texel grid (levels=1) side by side.
Latest figures: docs/texture.md and docs/export.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dmtet_head(resolution: int, noise: float, seed: int = 0, blur_cells: float = 0.0):
    import torch

    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.mesh_utils import keep_largest_component
    from engine.geometry.tetgrid import make_tet_grid

    grid = make_tet_grid(resolution)
    sdf = head_sdf(grid.vertices)
    if noise:
        sdf = sdf + noise * torch.randn(sdf.shape, generator=torch.Generator().manual_seed(seed))
    if blur_cells:  # the fix for a noisy field: a Gaussian over the grid values before extraction
        from scipy.ndimage import gaussian_filter

        m = resolution + 1
        sdf = torch.as_tensor(gaussian_filter(sdf.numpy().reshape(m, m, m), blur_cells).reshape(-1))
    mesh = extract_surface(grid, sdf)
    verts, faces = keep_largest_component(mesh.verts, mesh.faces)
    return verts.detach().numpy(), faces.numpy()


_UNWRAPPED: dict[int, tuple] = {}  # grid -> (verts, faces, layout) of the clean head: unwrapped once


def clean_unwrapped(grid: int):
    from engine.texture import unwrap_mesh

    if grid not in _UNWRAPPED:
        v, f = dmtet_head(grid, 0.0)
        _UNWRAPPED[grid] = (v, f, unwrap_mesh(v, f))
    return _UNWRAPPED[grid]


def bench_unwrap(grids, noises, raw_all: bool, noisy_grids) -> None:
    from engine.texture import unwrap_mesh

    print("\n## unwrap (xatlas 0.0.11, pack resolution 1024, padding 2)")
    print(f"{'grid':>5} {'noise mm':>8} {'SDF blur':>8} {'faces':>7} | {'smoothed: charts':>16} {'s':>6} | "
          f"{'raw: charts':>11} {'s':>6} | {'speed-up':>8}")
    for grid in grids:
        cases = [(noise, blur) for noise in noises for blur in ((0.0, 1.0) if noise else (0.0,))]
        for noise, blur in cases:
            if noise and grid not in noisy_grids:
                continue
            if noise:
                v, f = dmtet_head(grid, noise, blur_cells=blur)
                smooth = unwrap_mesh(v, f).stats
            else:
                v, f, layout = clean_unwrapped(grid)
                smooth = layout.stats
            line = (f"{grid:>5} {noise * 1000:>8.1f} {blur:>8.1f} {len(f):>7} | {smooth['charts']:>16} "
                    f"{smooth['seconds']:>6.1f} | ")
            if raw_all or (grid == grids[0] and not blur):
                raw = unwrap_mesh(v, f, smooth_iterations=0).stats
                line += f"{raw['charts']:>11} {raw['seconds']:>6.1f} | {raw['seconds'] / smooth['seconds']:>7.1f}x"
            else:
                line += f"{'-':>11} {'-':>6} | {'-':>8}"
            print(line, flush=True)


def bench_glb(grids) -> None:
    import numpy as np

    from engine.export.gltf import write_glb
    from engine.result_format import HeadMesh

    print("\n## glb (1024^2 albedo + roughness, 3 expressions)")
    print(f"{'grid':>5} {'faces':>7} {'glb vertices':>12} {'MB':>6} {'seconds':>8}")
    rng = np.random.default_rng(0)
    albedo = rng.uniform(0, 1, (1024, 1024, 3)).astype(np.float32)
    rough = rng.uniform(0, 1, (1024, 1024, 1)).astype(np.float32)
    for grid in grids:
        v, f, layout = clean_unwrapped(grid)
        offsets = rng.normal(0, 0.002, (4, len(v), 3)).astype(np.float32)
        offsets[0] = 0
        head = HeadMesh(v, f, ["neutral", "smiling", "angry", "surprised"], offsets, layout.corner_uvs())
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = write_glb(Path(tmp) / "head.glb", head, albedo, rough)
            seconds = time.perf_counter() - t0
            size = path.stat().st_size / 1e6
        print(f"{grid:>5} {len(f):>7} {len(layout.uv):>12} {size:>6.1f} {seconds:>8.2f}", flush=True)


def bench_sds(resolutions, views: int, map_size: int, grid: int, iters: int, warmup: int) -> None:
    import torch

    from engine.prior import load_prior
    from engine.prior.sds import ScoreDistillation, SDSConfig
    from engine.render import mesh_topology, sample_lights, sample_orbit_cameras
    from engine.texture import TextureMaps, render_textured
    from engine.tiny_models import write_tiny_models

    v, f, layout = clean_unwrapped(grid)
    verts, faces = torch.as_tensor(v), torch.as_tensor(f)
    topology = mesh_topology(faces)
    with tempfile.TemporaryDirectory() as tmp:
        prior = load_prior(write_tiny_models(Path(tmp) / "models"), device="cpu")
    cond = prior.conditioning(torch.randn(512), "smiling", view=[0.0] * views)
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0, t_start=(0.02, 0.5), t_end=(0.02, 0.5)))
    print(f"\n## texture SDS step (tiny random priors, CPU, {views} views, {map_size}^2 maps, grid-{grid} head "
          f"{len(f)} faces; median of {iters} steps, ms)")
    print(f"{'render px':>9} {'levels':>6} | {'render':>7} {'sds':>7} {'bwd+adam':>8} {'total':>7} | {'vs levels=1':>11}")
    for res in resolutions:
        totals = {}
        for levels in (1, 4):
            maps = TextureMaps(map_size, levels=levels)
            opt = torch.optim.Adam(maps.parameters(), lr=1e-2)
            parts: dict[str, list[float]] = {"render": [], "sds": [], "backward": [], "total": []}
            for i in range(warmup + iters):
                cams = sample_orbit_cameras(views, seed=i, resolution=(res, res))
                lights = sample_lights(views, seed=i)
                t0 = time.perf_counter()
                image = render_textured(verts, faces, layout, maps, cams, lights, topology=topology,
                                        cull_backfaces=True)
                t1 = time.perf_counter()
                loss, _ = sds.step(image, cond, i, warmup + iters)
                t2 = time.perf_counter()
                opt.zero_grad()
                loss.backward()
                opt.step()
                t3 = time.perf_counter()
                if i >= warmup:
                    for key, value in (("render", t1 - t0), ("sds", t2 - t1), ("backward", t3 - t2), ("total", t3 - t0)):
                        parts[key].append(value * 1e3)
            med = {k: statistics.median(x) for k, x in parts.items()}
            totals[levels] = med["total"]
            ratio = f"{med['total'] / totals[1]:>10.2f}x" if levels != 1 else f"{'1.00x':>11}"
            print(f"{res:>9} {levels:>6} | {med['render']:>7.0f} {med['sds']:>7.0f} {med['backward']:>8.0f} "
                  f"{med['total']:>7.0f} | {ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--noise-mm", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--raw-all", action="store_true", help="unsmoothed baseline at every grid (slow)")
    parser.add_argument("--noisy-grids", type=int, nargs="+", default=[64],
                        help="grids at which the noisy cases run (a noisy grid-128 unwrap takes many minutes)")
    parser.add_argument("--glb-grids", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--map-size", type=int, default=1024)
    parser.add_argument("--sds-grid", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-unwrap", action="store_true")
    parser.add_argument("--skip-glb", action="store_true")
    parser.add_argument("--skip-sds", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_unwrap:
        bench_unwrap(args.grids, [n / 1000 for n in args.noise_mm], args.raw_all, args.noisy_grids)
    if not args.skip_glb:
        bench_glb(args.glb_grids)
    if not args.skip_sds:
        bench_sds(args.resolutions, args.views, args.map_size, args.sds_grid, args.iters, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
