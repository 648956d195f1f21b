"""Benchmark: marching tetrahedra at grid 64 and 128, ours beside threestudio's pure-torch one.

    .venv/bin/python bench/bench_marching_tets.py [--peer PATH/isosurface.py] [--grids 64 128]
                                                 [--repeats 5] [--threads 2] [--write docs/benchmarks-geometry.md]
                                                 [--dmtet-only]

The field is the procedural head SDF on our tet grid (6 tets per cube). Timed: extraction
forward, and forward + backward (gradient of a scalar of the vertices w.r.t. the SDF and the
grid deformation). Ours is timed twice: the generic ``marching_tetrahedra(verts, tets, sdf)``
(visits every tet, like the peer) and ``extract_surface(grid, ...)`` (visits crossing cubes only).

DMTet with the hash-grid field (what the geometry stage runs every step), before and after the
whole-grid pass went through ``HashGridSDF.sdf_on_grid``: "before" is the former
``DMTet.forward`` (generic evaluation at every vertex, deformation included, a second extraction
with the band values), kept here as the reference; "after" is ``DMTet.forward`` now. Both are
timed forward + backward on the head-initialised field, side by side, and checked to give the
same vertices bit for bit. ``--dmtet-only`` runs just this part. ``--band-certificate`` measures
why the whole grid is still evaluated: after real SDS steps, the SDF's actual largest change and
the best cheap bound of it (docs/benchmarks-geometry.md).

The peer is threestudio's ``MarchingTetrahedraHelper`` (threestudio/models/isosurface.py, Apache-2.0),
loaded at run time from ``--peer`` (or $THREESTUDIO_ISOSURFACE) and never committed here; its
imports of threestudio, jaxtyping and friends are satisfied by throw-away shim modules. It is fed
the same grid (written to a temporary .npz, the format it reads) and the same SDF.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load_peer(path: str):
    """Import the peer's isosurface module with shims for the packages it imports."""
    import typing

    import torch

    class _Subscriptable:  # stands in for jaxtyping's Float[Tensor, "..."] etc.
        def __class_getitem__(cls, item):
            return typing.Any

    shim_typing = types.ModuleType("threestudio.utils.typing")
    names = [n for n in dir(typing) if not n.startswith("_")]
    for n in names:
        setattr(shim_typing, n, getattr(typing, n))
    for n in ("Bool", "Complex", "Float", "Inexact", "Int", "Integer", "Num", "Shaped", "UInt"):
        setattr(shim_typing, n, _Subscriptable)
    shim_typing.Tensor = torch.Tensor
    shim_typing.DictConfig = dict
    shim_typing.__all__ = names + [
        "Bool",
        "Complex",
        "Float",
        "Inexact",
        "Int",
        "Integer",
        "Num",
        "Shaped",
        "UInt",
        "Tensor",
        "DictConfig",
    ]
    root = types.ModuleType("threestudio")
    root.warn = root.info = root.debug = lambda *a, **k: None
    mesh_mod = types.ModuleType("threestudio.models.mesh")

    class Mesh:  # the peer only stores its outputs in it
        def __init__(self, **kw):
            self.__dict__.update(kw)

    mesh_mod.Mesh = Mesh
    mods = {
        "threestudio": root,
        "threestudio.models": types.ModuleType("threestudio.models"),
        "threestudio.models.mesh": mesh_mod,
        "threestudio.utils": types.ModuleType("threestudio.utils"),
        "threestudio.utils.typing": shim_typing,
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        module = types.ModuleType("peer_isosurface")
        code = compile(Path(path).read_text(), path, "exec")
        exec(code, module.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, caches)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)  # the least disturbed run: the cores are shared with other jobs


def bench_grid(resolution: int, repeats: int, peer_module) -> dict:
    import numpy as np
    import torch

    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface, marching_tetrahedra
    from engine.geometry.tetgrid import make_tet_grid

    t = time.perf_counter()
    grid = make_tet_grid(resolution)
    make_s = time.perf_counter() - t
    sdf0 = head_sdf(grid.vertices)
    row = {
        "grid": resolution,
        "tets": grid.tets.shape[0],
        "grid_make_s": make_s,
        "grid_mb": grid.nbytes() / 2**20,
    }

    def ours(kind: str, backward: bool):
        sdf = sdf0.clone().requires_grad_(backward)
        deform = torch.zeros_like(grid.vertices, requires_grad=backward)
        if kind == "generic":
            out = marching_tetrahedra(grid.vertices + deform, grid.tets, sdf)
        else:
            out = extract_surface(grid, sdf, deform)
        if backward:
            out.verts.square().sum().backward()
        return out.faces.shape[0]

    row["faces_ours"] = ours("generic", False)
    for kind in ("generic", "grid"):
        row[f"ours_{kind}_fwd"] = _time(lambda: ours(kind, False), repeats)
        row[f"ours_{kind}_fwdbwd"] = _time(lambda: ours(kind, True), repeats)

    if peer_module is not None:
        with tempfile.TemporaryDirectory() as tmp:
            npz = os.path.join(tmp, "tets.npz")
            np.savez(npz, vertices=grid.vertices.numpy(), indices=grid.tets.long().numpy())
            helper = peer_module.MarchingTetrahedraHelper(resolution, npz)
        tets_long = helper.indices

        def peer(backward: bool):
            sdf = sdf0.clone().requires_grad_(backward)
            deform = torch.zeros_like(grid.vertices, requires_grad=backward)
            # The peer counts sdf > 0 as occupied; ours sdf < 0: negate so both extract the same set.
            verts, faces = helper._forward(helper.grid_vertices + deform, -sdf, tets_long)
            if backward:
                verts.square().sum().backward()
            return faces.shape[0]

        row["faces_peer"] = peer(False)
        row["peer_fwd"] = _time(lambda: peer(False), repeats)
        row["peer_fwdbwd"] = _time(lambda: peer(True), repeats)
        del helper, tets_long
    return row


def _dmtet_before(dmtet):
    """The former DMTet.forward (until 62fda1c), the reference for the side-by-side timing."""
    import torch

    from engine.geometry.marching_tets import extract_surface

    points = dmtet.grid.vertices
    with torch.no_grad():
        sdf_all, deform_all = dmtet.field.sdf_and_deformation(points)
        need = torch.unique(extract_surface(dmtet.grid, sdf_all).edges.reshape(-1))
    sdf_need, deform_need = dmtet.field.sdf_and_deformation(points[need])
    sdf = sdf_all.index_put((need,), sdf_need)
    deform = deform_all.index_put((need,), deform_need)
    return extract_surface(dmtet.grid, sdf, deform), sdf


def bench_dmtet(resolution: int, repeats: int) -> dict:
    import torch

    from engine.geometry.fit import DMTet
    from engine.geometry.head_init import head_sdf, pretrain_field
    from engine.geometry.sdf_field import HashGridSDF
    from engine.geometry.tetgrid import make_tet_grid

    torch.manual_seed(0)
    grid = make_tet_grid(resolution)
    field = HashGridSDF(max_deformation=0.25 * grid.cell_size)
    pretrain_field(field, head_sdf, grid.vertices, steps=60, batch=8192)
    dmtet = DMTet(grid, field)

    def step(forward):
        field.zero_grad(set_to_none=True)
        result, _ = forward()
        result.verts.square().sum().backward()
        return result

    before, after = step(lambda: _dmtet_before(dmtet)), step(dmtet)
    assert torch.equal(before.verts, after.verts) and torch.equal(before.faces, after.faces)
    with torch.no_grad():
        row = {"grid": resolution, "vertices": grid.vertices.shape[0], "faces": after.faces.shape[0],
               "band": int(torch.unique(after.edges).numel()),
               "pass_before": _time(lambda: field.sdf_and_deformation(grid.vertices), repeats),
               "pass_after": _time(lambda: field.sdf_on_grid(grid), repeats)}
    row["step_before"] = _time(lambda: step(lambda: _dmtet_before(dmtet)), repeats)
    row["step_after"] = _time(lambda: step(dmtet), repeats)
    return row


def format_dmtet(rows: list[dict], args, load_before: str, load_after: str) -> str:
    ms = lambda s: f"{s * 1000:.0f}"  # noqa: E731
    lines = [f"DMTet with the hash-grid field, head initialisation, forward + backward; "
             f"{args.threads} threads, best of {args.repeats}; load average {load_before} before, {load_after} after.", "",
             "| grid | grid vertices | band vertices | faces | whole-grid pass before (ms) | after (ms) "
             "| ratio | DMTet step before (ms) | after (ms) | ratio |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['grid']} | {r['vertices']:,} | {r['band']:,} | {r['faces']:,} | "
                     f"{ms(r['pass_before'])} | {ms(r['pass_after'])} | {r['pass_before'] / r['pass_after']:.2f}x | "
                     f"{ms(r['step_before'])} | {ms(r['step_after'])} | {r['step_before'] / r['step_after']:.2f}x |")
    return "\n".join(lines)


def _change_bound(old, new) -> float:
    """An upper bound of max over the box of |sdf_new(x) - sdf_old(x)| (metres) for two HashGridSDF
    states, by interval propagation of the parameter changes through the MLP (per neuron, no
    cancellation assumed; softplus is 1-Lipschitz and below softplus(|pre|)): what a band-only
    evaluation would need to certify that no vertex away from the band changed sign."""
    import torch
    import torch.nn.functional as F

    t_old, t_new = old.encoding.table, new.encoding.table
    d = torch.cat([torch.zeros(3), (t_new - t_old).abs().amax(1).reshape(-1)])  # |change| of each input
    a = torch.cat([torch.ones(3), t_old.abs().amax(1).reshape(-1)])  # |input| before
    layers = [(lo, ln) for lo, ln in zip(old.mlp, new.mlp) if isinstance(lo, torch.nn.Linear)]
    for k, (lo, ln) in enumerate(layers):
        dpre = ln.weight.abs() @ d + (ln.weight - lo.weight).abs() @ a + (ln.bias - lo.bias).abs()
        if k < len(layers) - 1:
            a = F.softplus(lo.weight.abs() @ a + lo.bias.abs(), beta=100)
            d = dpre
    return float(dpre[0]) * 0.5 * new.size


def band_certificate(resolution: int = 48, steps: int = 6) -> str:
    """Real SDS steps of the geometry stage (tiny random prior): the actual largest change of the
    SDF over the grid since a reference step, the bound a certificate could use, and the share of
    grid vertices it would keep out of the band (|sdf at the reference| above the bound)."""
    import copy

    import numpy as np
    import torch

    from engine.pipeline.geometry_stage import GeometryStage
    from engine.pipeline.presets import resolve_preset
    from engine.prior import load_prior
    from engine.tiny_models import write_tiny_models

    prior = load_prior(write_tiny_models(Path(tempfile.mkdtemp(prefix="bench-tiny-"))), device="cpu")
    settings = resolve_preset("test", {"grid": resolution, "render_resolution": 64, "pretrain_steps": 100,
                                       "geometry_steps": 100})
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    stage = GeometryStage(settings, prior, embedding, ["neutral"], seed=0, device="cpu", normal_maps=False)
    stage.initialise()
    for i in range(5):  # Adam's moments warmed up
        stage.step(i)
    reference = copy.deepcopy(stage.field)
    with torch.no_grad():
        s_ref = reference.sdf_on_grid(stage.grid)
    lines = [f"Band certificate, grid {resolution}, geometry_lr {settings.geometry_lr:g}, after 5 SDS steps "
             "(tiny random prior):", "",
             "| SDS steps since the reference | actual max change (mm) | certified bound (mm) "
             "| grid vertices certified, kept out of the band |", "|---|---|---|---|"]
    for k in range(1, steps + 1):
        stage.step(4 + k)
        with torch.no_grad():
            actual = float((stage.field.sdf_on_grid(stage.grid) - s_ref).abs().max())
            bound = _change_bound(reference, stage.field)
            certified = float((s_ref.abs() > bound).float().mean())
        lines.append(f"| {k} | {actual * 1000:.2f} | {bound * 1000:.1f} | {100 * certified:.0f} % |")
    return "\n".join(lines)


def grid_memory_256() -> dict:
    import gc
    import resource

    from engine.geometry.tetgrid import make_tet_grid

    t = time.perf_counter()
    grid = make_tet_grid(256)
    seconds = time.perf_counter() - t
    info = {
        "vertices": grid.vertices.shape[0],
        "tets": grid.tets.shape[0],
        "mb": grid.nbytes() / 2**20,
        "s": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    del grid
    gc.collect()
    return info


def format_report(rows: list[dict], mem256: dict | None, args) -> str:
    import torch

    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    lines = [
        "| grid | tets | faces | ours generic fwd (ms) | ours generic fwd+bwd (ms) | ours grid-aware fwd (ms) "
        "| ours grid-aware fwd+bwd (ms) | threestudio fwd (ms) | threestudio fwd+bwd (ms) "
        "| ratio fwd (peer / ours generic) | ratio fwd+bwd | ratio fwd (peer / ours grid-aware) |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        peer = "peer_fwd" in r
        cells = [
            str(r["grid"]),
            f"{r['tets']:,}",
            f"{r['faces_ours']:,}" + (f" (peer {r['faces_peer']:,})" if peer else ""),
            ms(r["ours_generic_fwd"]),
            ms(r["ours_generic_fwdbwd"]),
            ms(r["ours_grid_fwd"]),
            ms(r["ours_grid_fwdbwd"]),
            ms(r["peer_fwd"]) if peer else "-",
            ms(r["peer_fwdbwd"]) if peer else "-",
            f"{r['peer_fwd'] / r['ours_generic_fwd']:.2f}x" if peer else "-",
            f"{r['peer_fwdbwd'] / r['ours_generic_fwdbwd']:.2f}x" if peer else "-",
            f"{r['peer_fwd'] / r['ours_grid_fwd']:.1f}x" if peer else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    head = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, CPU; best of {args.repeats} runs after a warm-up. "
        "Field: the procedural head SDF.",
        "",
    ]
    tail = ["", "Grid generation and memory (vertices float32, tets int32):", ""]
    for r in rows:
        tail.append(f"- grid {r['grid']}: {r['grid_mb']:.0f} MiB, generated in {r['grid_make_s']:.2f} s")
    if mem256:
        tail.append(
            f"- grid 256: {mem256['vertices']:,} vertices, {mem256['tets']:,} tets, {mem256['mb']:.0f} MiB, "
            f"generated in {mem256['s']:.1f} s (process peak RSS {mem256['peak_rss_mb']:.0f} MiB)"
        )
    return "\n".join(head + lines + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peer",
        default=os.environ.get("THREESTUDIO_ISOSURFACE"),
        help="path to threestudio/models/isosurface.py (not part of this repository)",
    )
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-256", action="store_true", help="skip building the 256 grid (1.8 GB)")
    parser.add_argument("--write", help="write the markdown table into this file (between markers)")
    parser.add_argument("--dmtet-only", action="store_true", help="only the DMTet before/after timing")
    parser.add_argument("--band-certificate", action="store_true",
                        help="how far a certified band-only evaluation would get (SDS steps, tiny prior)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    dmtet_rows = []
    for g in args.grids:
        dmtet_rows.append(bench_dmtet(g, args.repeats))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in dmtet_rows[-1].items()}, flush=True)
    dmtet_report = format_dmtet(dmtet_rows, args, load_before, " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(dmtet_report)
    if args.write:
        _write_section(Path(args.write), dmtet_report, "bench_marching_tets:dmtet")
    if args.band_certificate:
        report = band_certificate()
        print(report)
        if args.write:
            _write_section(Path(args.write), report, "bench_marching_tets:certificate")
    if args.dmtet_only:
        return 0
    peer = _load_peer(args.peer) if args.peer else None
    if peer is None:
        print("no --peer given: timing ours only", file=sys.stderr)
    rows = []
    for g in args.grids:
        row = bench_grid(g, args.repeats, peer)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    mem256 = None if args.no_256 else grid_memory_256()
    report = format_report(rows, mem256, args)
    print(report)
    if args.write:
        _write_section(Path(args.write), report)
    return 0


def _write_section(path: Path, report: str, name: str = "bench_marching_tets") -> None:
    """Replace the text between the benchmark markers (or append), writing atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
