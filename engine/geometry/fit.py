"""Fit a DMTet SDF to views of a target: normal maps and masks in, a watertight mesh out.

Each step evaluates the field at the tet-grid vertices, extracts the surface with marching
tetrahedra, renders masks and world normals from a subset of the cameras with the project's
differentiable rasteriser and compares them with the target images; mesh and SDF regularisers
keep the surface clean. The SDS geometry stage has the same loop with the image loss replaced by
score distillation, so the pieces (``DMTet``, ``geometry_regularisers``) are reusable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import regularisers
from .marching_tets import MarchingTetsResult, extract_surface
from .sdf_field import check_max_deformation


class DMTet(torch.nn.Module):
    """A tet grid plus an SDF field (anything with ``sdf_and_deformation``): extracts the mesh.

    Refuses (EngineError ``deformation_unsafe``) a field whose ``max_deformation`` exceeds
    ``sdf_field.MAX_SAFE_DEFORMATION`` cells of this grid: tets could invert."""

    def __init__(self, grid, sdf_field):
        super().__init__()
        check_max_deformation(getattr(sdf_field, "max_deformation", 0.0), grid.cell_size)
        self.grid = grid
        self.field = sdf_field

    def forward(self) -> tuple[MarchingTetsResult, torch.Tensor]:
        """(marching-tets result, SDF at every grid vertex [V]).

        A per-vertex field is simply read. A neural field is evaluated without gradients at all
        grid vertices (to find the surface: its signs everywhere decide where the surface is, so
        no vertex can be skipped without risking a missed floater or bubble), then again, with
        gradients, only at the ends of the crossing edges: the mesh depends on nothing else, and
        the autograd graph (and memory) shrinks from the whole grid (2 M points at 128) to the
        surface band. The whole-grid pass is the field's ``sdf_on_grid`` where it has one (the
        hash grid: the same values, several times faster) and skips the deformation, which only
        the band needs. The band pass gives the same values as the whole-grid pass (tested bit for
        bit on the CPU), so the crossings found by the first are reused, not searched again. The
        returned SDF holds the whole-grid values with the band's (differentiable) ones put in:
        the regularisers read the crossing edges' ends, and the grid smoothness term every value.
        """
        points = self.grid.vertices
        if getattr(self.field, "per_vertex", False):
            sdf, deform = self.field.sdf_and_deformation(points)
            return extract_surface(self.grid, sdf, deform), sdf
        with torch.no_grad():
            if hasattr(self.field, "sdf_on_grid"):
                sdf_all = self.field.sdf_on_grid(self.grid)
            else:
                sdf_all = self.field.sdf_and_deformation(points)[0]
            found = extract_surface(self.grid, sdf_all)
            need = torch.unique(found.edges.reshape(-1))
        sdf_need, deform_need = self.field.sdf_and_deformation(points[need])
        sdf = sdf_all.index_put((need,), sdf_need)
        # Deformation away from the band is never read (vertices sit on crossing edges only).
        deform = torch.zeros_like(points).index_put((need,), deform_need)
        return extract_surface(self.grid, sdf, deform, topology=found), sdf

    @torch.no_grad()
    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current surface as detached (verts [V,3], faces [F,3])."""
        result, _ = self()
        return result.verts.detach(), result.faces


@dataclass
class RegulariserWeights:
    laplacian: float = 0.0
    normal_consistency: float = 0.0
    sdf_sign: float = 0.0
    sdf_smoothness: float = 0.0


@dataclass
class FitConfig:
    steps: int = 150
    lr: float = 1e-3
    views_per_step: int = 4
    mask_weight: float = 1.0
    normal_weight: float = 0.5
    regularisers: RegulariserWeights = field(default_factory=RegulariserWeights)
    seed: int = 0


@dataclass
class FitReport:
    steps: int
    seconds: float
    losses: list[float]


def geometry_regularisers(
    result: MarchingTetsResult, sdf: torch.Tensor, weights: RegulariserWeights, resolution: int, topology=None
) -> torch.Tensor:
    """Weighted sum of the mesh and SDF regularisers on one extraction (``topology``:
    ``mesh_topology(result.faces)``, built once per step and shared with the renderer)."""
    total = sdf.new_zeros(())
    if weights.laplacian:
        total = total + weights.laplacian * regularisers.laplacian_smoothness(result.verts, result.faces,
                                                                                topology=topology)
    if weights.normal_consistency:
        total = total + weights.normal_consistency * regularisers.normal_consistency(
            result.verts, result.faces, topology
        )
    if weights.sdf_sign:
        total = total + weights.sdf_sign * regularisers.sdf_sign_regulariser(sdf, result.edges)
    if weights.sdf_smoothness:
        total = total + weights.sdf_smoothness * regularisers.sdf_grid_smoothness(sdf, resolution)
    return total


def fit_sdf_to_views(
    dmtet: DMTet,
    cameras,
    target_mask: torch.Tensor,
    target_normal: torch.Tensor,
    config: FitConfig | None = None,
    *,
    callback=None,
) -> FitReport:
    """Optimise ``dmtet.field`` so its renders match ``target_mask`` [B,H,W,1] and ``target_normal``.

    ``target_normal`` is a ``normal_world`` pass [B,H,W,3] (background 0) from the same ``cameras``.
    ``callback(step, loss, dmtet)`` is called every step (progress, previews, cancellation by
    raising). Returns the per-step losses and the wall time.
    """
    from ..render import render
    from ..render.mesh_ops import mesh_topology

    cfg = config or FitConfig()
    if target_mask.shape[0] != len(cameras) or target_normal.shape[0] != len(cameras):
        raise ValueError(
            f"{len(cameras)} cameras but {target_mask.shape[0]} target masks and {target_normal.shape[0]} normal maps"
        )
    opt = torch.optim.Adam(dmtet.field.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_views = len(cameras)
    k = min(cfg.views_per_step, n_views)
    losses: list[torch.Tensor] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        views = torch.randperm(n_views, generator=gen)[:k]
        result, sdf = dmtet()
        if result.faces.shape[0] == 0:
            raise RuntimeError(
                "the SDF has no surface inside the tet grid (all inside or all outside); "
                "initialise it (head_init.pretrain_field) before fitting"
            )
        topology = mesh_topology(result.faces)  # one edge table per step: renderer and regularisers
        out = render(result.verts, result.faces, cameras[views], passes=("mask", "normal_world"),
                     topology=topology)
        loss = cfg.mask_weight * (out["mask"] - target_mask[views]).abs().mean()
        loss = loss + cfg.normal_weight * (out["normal_world"] - target_normal[views]).abs().mean()
        loss = loss + geometry_regularisers(result, sdf, cfg.regularisers, dmtet.grid.resolution, topology)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())  # read back once at the end: no device sync per step
        if callback is not None:
            callback(step, float(losses[-1]), dmtet)
    return FitReport(steps=cfg.steps, seconds=time.perf_counter() - start, losses=torch.stack(losses).tolist() if losses else [])
