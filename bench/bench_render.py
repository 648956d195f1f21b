"""Benchmark the built-in torch rasteriser: milliseconds per view on CPU.

Meshes: a head-sized bumpy ellipsoid (latitude-longitude grid) with 50k and 200k triangles,
rendered from head-centred orbit cameras at 256^2 and 512^2 with the geometry stage's passes
(anti-aliased mask + camera-space normals + depth). "fwd" renders; "fwd+bwd" also
back-propagates a loss on those passes to the vertex positions. Prints a table and writes
docs/benchmarks-render.md.

    .venv/bin/python bench/bench_render.py [--views 4] [--repeats 3] [--threads N] [--no-write]
        [--baseline GIT_REV]

``--baseline REV`` also times ``engine/render/rasterize_torch.py`` as it was at git revision REV
(loaded from git into a module of its own), interleaved with the current code in the same run,
and prints the ratio current / baseline.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def head_mesh(triangles: int):
    """A closed bumpy ellipsoid ~0.23 m tall with about ``triangles`` faces (2 * rows * cols)."""
    import torch

    bands = int(round(math.sqrt(triangles / 2 / 1.6)))  # faces = 2 * bands * cols exactly
    cols = int(round(triangles / 2 / bands))
    rows = bands + 1
    th = torch.linspace(0, math.pi, rows + 1, dtype=torch.float64)[1:-1]  # poles added separately
    ph = torch.linspace(0, 2 * math.pi, cols + 1, dtype=torch.float64)[:-1]
    t, p = torch.meshgrid(th, ph, indexing="ij")
    bump = 1.0 + 0.04 * torch.sin(9 * t) * torch.cos(7 * p)
    x = 0.08 * torch.sin(t) * torch.cos(p) * bump
    y = 0.10 * torch.sin(t) * torch.sin(p) * bump
    z = 0.115 * torch.cos(t) * bump
    ring = torch.stack([x, y, z], -1).reshape(-1, 3)
    verts = torch.cat([ring, torch.tensor([[0, 0, 0.115], [0, 0, -0.115]], dtype=torch.float64)])
    top, bottom = ring.shape[0], ring.shape[0] + 1
    idx = torch.arange(ring.shape[0]).reshape(rows - 1, cols)
    nxt = idx.roll(-1, dims=1)
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    quads = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([b, c, d], -1).reshape(-1, 3)])
    caps = torch.cat([
        torch.stack([torch.full((cols,), top), idx[0], nxt[0]], -1),
        torch.stack([torch.full((cols,), bottom), nxt[-1], idx[-1]], -1),
    ])
    faces = torch.cat([quads, caps])
    # Orient outward (the grid's winding depends on the parameterisation).
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    outward = (torch.cross(v1 - v0, v2 - v0, dim=-1) * (v0 + v1 + v2)).sum(-1) > 0
    faces = torch.where(outward[:, None], faces, faces[:, [0, 2, 1]])
    return verts.float(), faces


def time_it(fn, repeats: int) -> tuple[float, float]:
    """Best (wall seconds, process CPU seconds) over ``repeats`` runs after one warm-up.

    CPU time is reported beside wall time because the cores are shared: when other jobs run,
    wall time inflates while the CPU time the renderer itself needs stays put.
    """
    fn()  # warm-up (allocations, lazy init)
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def load_baseline_rasterizer(rev: str):
    """engine/render/rasterize_torch.py at git revision ``rev``, as a separate module."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{rev}:engine/render/rasterize_torch.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    name = "engine.render._baseline_rasterize_torch"
    module = types.ModuleType(name)
    module.__package__ = "engine.render"
    module.__file__ = f"{rev}:engine/render/rasterize_torch.py"
    sys.modules[name] = module  # dataclasses look their module up here
    exec(compile(src, module.__file__, "exec"), module.__dict__)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: per-core figures, the most repeatable on shared "
                         "machines; 0 = torch's default)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write docs/")
    ap.add_argument("--baseline", metavar="GIT_REV", help="also time the rasteriser of this git revision")
    args = ap.parse_args(argv)

    import torch

    from engine.render import mesh_topology, render, renderer, sample_orbit_cameras

    current_rt = renderer.rt
    baseline_rt = load_baseline_rasterizer(args.baseline) if args.baseline else None

    if args.threads:
        torch.set_num_threads(args.threads)
    passes = ("mask", "normal_camera", "depth")
    rows = []
    topo_ms = {}
    for tris in (50_000, 200_000):
        verts, faces = head_mesh(tris)
        # The edge table is built once per topology and passed in; it is timed on its own because
        # a marching-tets loop changes topology every step and pays it once per render call.
        topo_ms[faces.shape[0]] = time_it(lambda: mesh_topology(faces), args.repeats)[1] * 1000
        topo = mesh_topology(faces)
        for res in (256, 512):
            cams = sample_orbit_cameras(args.views, seed=0, resolution=(res, res))
            weights = torch.rand(args.views, res, res, 5, generator=torch.Generator().manual_seed(0))

            def forward():
                with torch.no_grad():
                    render(verts, faces, cams, passes=passes, topology=topo)

            def forward_backward(cull=False):
                v = verts.clone().requires_grad_(True)
                out = render(v, faces, cams, passes=passes, topology=topo, cull_backfaces=cull)
                loss = (torch.cat([out[p] for p in passes], -1) * weights).sum()
                loss.backward()

            fw, fc = (x * 1000 / args.views for x in time_it(forward, args.repeats))
            bw, bc = (x * 1000 / args.views for x in time_it(forward_backward, args.repeats))
            cc = time_it(lambda: forward_backward(True), args.repeats)[1] * 1000 / args.views
            base = None
            if baseline_rt is not None:
                # Alternate current and baseline so both see the same machine load.
                cur, old = [], []
                for _ in range(args.repeats):
                    for rt_mod, acc in ((current_rt, cur), (baseline_rt, old)):
                        renderer.rt = rt_mod
                        try:
                            acc.append(time_it(forward_backward, 1)[1] * 1000 / args.views)
                        finally:
                            renderer.rt = current_rt
                base = (min(cur), min(old))
            rows.append((faces.shape[0], res, fw, fc, bw, bc, cc, base))
            extra = f"; vs baseline {base[0]:.1f} / {base[1]:.1f} = {base[0] / base[1]:.2f}x" if base else ""
            print(f"{faces.shape[0]:>8} tris {res:>4}^2  fwd {fw:7.1f} ms/view (cpu {fc:7.1f})  "
                  f"fwd+bwd {bw:7.1f} ms/view (cpu {bc:7.1f}; culled {cc:7.1f}){extra}", flush=True)

    header = (
        "| triangles | resolution | forward wall | forward CPU | fwd+bwd wall | fwd+bwd CPU "
        "| fwd+bwd CPU, `cull_backfaces` |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    table = header + "".join(
        f"| {t:,} | {r}² | {fw:.1f} | {fc:.1f} | {bw:.1f} | {bc:.1f} | {cc:.1f} |\n"
        for t, r, fw, fc, bw, bc, cc, _ in rows
    )
    if baseline_rt is not None:
        table += (
            f"\nSame run, fwd+bwd CPU ms/view, current code vs the rasteriser at `{args.baseline}` "
            "(interleaved, best of each):\n\n| triangles | resolution | current | baseline | ratio |\n"
            "|---:|---:|---:|---:|---:|\n"
            + "".join(f"| {t:,} | {r}² | {b[0]:.1f} | {b[1]:.1f} | {b[0] / b[1]:.2f} |\n"
                      for t, r, *_, b in rows)
        )
    topo_line = "; ".join(f"{t:,} triangles {ms:.0f} ms" for t, ms in topo_ms.items())
    table += f"\n`mesh_topology` (once per call when the topology changes, CPU): {topo_line}.\n"
    print()
    print(table)
    if not args.no_write:
        text = (
            "# Rasteriser benchmarks (CPU)\n\n"
            "Written by `bench/bench_render.py` (re-run it to refresh). Built-in torch rasteriser, "
            f"passes {', '.join(passes)} (mask and normals anti-aliased), "
            f"batch of {args.views} head-centred views, "
            f"best of {args.repeats} runs, milliseconds per view: wall clock, and process CPU time summed "
            "over all threads (the work itself; stable when other jobs share the cores). "
            "Mesh: closed bumpy ellipsoid "
            "0.23 m tall; the head fills ~70 % of the frame.\n\n"
            + table
            + f"\nMachine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"torch threads: {torch.get_num_threads()}; {datetime.date.today().isoformat()}. "
            "Other jobs may have shared the cores while this ran: wall figures are upper bounds.\n"
        )
        out = ROOT / "docs" / "benchmarks-render.md"
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
