"""Stage 1: the neutral shape and the expression model, optimised together by SDS (ID-to-3D §3).

Every step picks neutral or one expression (``neutral_fraction``), extracts the current DMTet
surface, moves it with the expression model (a field over positions, so it works while the
topology still changes), renders it and takes the SDS gradient with that expression's
conditioning and blended view conditioning (azimuths, not hard labels). One optimiser holds the
field and the expression model, so an expression step also shapes the neutral field beneath it.

What the prior sees: normal maps when a normal-map task LoRA is loaded; otherwise shaded grey
Lambertian renders under a random light, because the base Arc2Face prior never saw normal maps.
The first ``geometry_shortcut_fraction`` of the steps feed the 4-channel latent shortcut
(image + mask resized to the latent grid, no VAE); the rest go through the VAE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EngineError
from ..geometry.decimate import decimate_mesh
from ..geometry.expression import NEUTRAL, ExpressionModel
from ..geometry.fit import DMTet, RegulariserWeights, geometry_regularisers
from ..geometry.head_init import head_sdf, pretrain_field
from ..geometry.mesh_utils import keep_largest_component
from ..geometry.sdf_field import HashGridSDF
from ..geometry.tetgrid import make_tet_grid
from ..prior.sds import ScoreDistillation, SDSConfig
from ..render import normals_to_image, render, sample_lights, sample_orbit_cameras
from ..render.mesh_ops import mesh_topology
from .seeds import GEOMETRY, pick_expression, step_generator, step_rng, step_seed

PRETRAIN_CHUNK = 25  # pretraining steps between cancellation checks
CAMERAS, LIGHTS, NOISE, CHOICE = 0, 1, 2, 3  # purposes of the per-step seeds
KEY_LIGHTS = ("point", "directional")  # a visible key light: shading shows the shape


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar (read once per progress report: one host sync)
    expression: str
    image: torch.Tensor  # [H, W, 3] the first view fed to the prior (detached), for previews
    vertices: torch.Tensor  # [V, 3] the rendered surface (detached), for snapshots
    faces: torch.Tensor


def render_for_prior(verts, faces, cameras, *, normal_maps: bool, lights=None, shortcut: bool,
                     topology=None) -> torch.Tensor:
    """What SDS receives: [B, H, W, 3] images (VAE path) or [B, H, W, 4] image + mask (shortcut)."""
    if normal_maps:
        passes = render(verts, faces, cameras, passes=("mask", "normal_camera"), topology=topology)
        image = normals_to_image(passes["normal_camera"], passes["mask"], background=1.0)
    else:
        passes = render(verts, faces, cameras, passes=("mask", "shaded"), lights=lights, background=1.0,
                        topology=topology)
        image = passes["shaded"]
    return torch.cat([image, passes["mask"]], dim=-1) if shortcut else image


class GeometryStage:
    """The joint geometry + expression optimisation. ``step(i)`` runs step ``i`` of ``settings.geometry_steps``."""

    def __init__(self, settings, prior, embedding: np.ndarray, expressions: list[str], *, seed: int, device,
                 normal_maps: bool, objective=None, prompts: dict[str, str] | None = None):
        """``objective(images, expression, cameras, step, azimuths) -> loss`` replaces SDS (fits to known targets).
        ``prompts``: the text the prior sees per expression name (default: the name itself)."""
        self.settings, self.prior, self.seed = settings, prior, int(seed)
        self.prompts = dict(prompts or {})
        self.embedding = np.asarray(embedding, np.float32)
        self.device = torch.device(device)
        self.normal_maps = normal_maps
        torch.manual_seed(self.seed)  # initial weights; everything later draws from per-step generators
        self.grid = make_tet_grid(settings.grid, device=self.device)
        self.field = HashGridSDF(max_deformation=settings.max_deformation_cells * self.grid.cell_size).to(self.device)
        self.expressions = ExpressionModel(expressions, max_offset=settings.expression_max_offset,
                                           seed=self.seed).to(self.device)
        self.names = self.expressions.names
        self.dmtet = DMTet(self.grid, self.field)
        self.optimiser = torch.optim.Adam([
            {"params": list(self.field.parameters()), "lr": settings.geometry_lr},
            {"params": list(self.expressions.parameters()), "lr": settings.expression_lr},
        ])
        self.weights = RegulariserWeights(laplacian=settings.laplacian,
                                          normal_consistency=settings.normal_consistency,
                                          sdf_sign=settings.sdf_sign, sdf_smoothness=settings.sdf_smoothness)
        self.objective = objective or self.sds_loss
        self.sds = None if prior is None else ScoreDistillation(prior, SDSConfig(
            guidance_scale=settings.geometry_guidance, t_start=tuple(settings.geometry_t_start),
            t_end=tuple(settings.geometry_t_end), grad_clip=settings.grad_clip))
        self.shortcut_steps = int(round(settings.geometry_steps * settings.geometry_shortcut_fraction))

    # ---- initialisation ----------------------------------------------------------------------

    def initialise(self, should_stop=lambda: False) -> bool:
        """Fit the field to the procedural head; False when stopped before the end."""
        done = 0
        while done < self.settings.pretrain_steps:
            if should_stop():
                return False
            n = min(PRETRAIN_CHUNK, self.settings.pretrain_steps - done)
            pretrain_field(self.field, head_sdf, self.grid.vertices, steps=n, seed=self.seed + done,
                           batch=self.settings.pretrain_batch)
            done += n
        return True

    # ---- one step ----------------------------------------------------------------------------

    def cameras(self, step: int):
        """This step's cameras on the device, and their azimuths as host floats (no device read-back)."""
        s = self.settings
        cams = sample_orbit_cameras(s.views_per_step, seed=step_seed(self.seed, GEOMETRY, step, CAMERAS),
                                    resolution=(s.render_resolution, s.render_resolution),
                                    elevation_range_deg=tuple(s.elevation_range_deg),
                                    front_oversample=s.front_fraction)
        azimuths = cams.azimuth_deg.tolist()  # still on the CPU here
        return (cams if self.device.type == "cpu" else cams.to(self.device)), azimuths

    def lights(self, step: int):
        if self.normal_maps:
            return None
        return sample_lights(self.settings.views_per_step, seed=step_seed(self.seed, GEOMETRY, step, LIGHTS),
                             kinds=KEY_LIGHTS, device=self.device)

    def step(self, step: int) -> StepOutput:
        s = self.settings
        name = pick_expression(self.names, s.neutral_fraction, step_rng(self.seed, GEOMETRY, step, CHOICE))
        cameras, azimuths = self.cameras(step)
        surface, sdf = self.dmtet()
        if surface.faces.shape[0] == 0:
            raise EngineError(f"the head surface vanished at geometry step {step + 1} (the SDF has no zero "
                              "crossing inside the tet grid)", code="surface_vanished",
                              hint='raise "pretrain_steps" or lower "geometry_lr" in "overrides"')
        verts = surface.verts
        offsets = None
        if name != NEUTRAL:
            offsets = self.expressions.offsets(verts, name)
            verts = verts + offsets
        # The edge table changes with the surface every step: built once, for the renderer's
        # silhouettes and the regularisers alike.
        topology = mesh_topology(surface.faces)
        images = render_for_prior(verts, surface.faces, cameras, normal_maps=self.normal_maps,
                                  lights=self.lights(step), shortcut=step < self.shortcut_steps, topology=topology)
        loss = self.objective(images, name, cameras, step, azimuths)
        loss = loss + geometry_regularisers(surface, sdf, self.weights, self.grid.resolution, topology)
        if offsets is not None:
            loss = loss + s.expression_offset_weight * offsets.pow(2).sum(-1).mean()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return StepOutput(loss.detach(), name, images[0, ..., :3].detach(), verts.detach(), surface.faces)

    def sds_loss(self, images, name: str, cameras, step: int, azimuths: list[float]) -> torch.Tensor:
        """SDS with this expression's conditioning and blended view conditioning (one row per azimuth)."""
        cond = self.prior.conditioning(self.embedding, self.prompts.get(name, name), view=azimuths)
        loss, _ = self.sds.step(images, cond, step, self.settings.geometry_steps,
                                generator=step_generator(self.seed, GEOMETRY, step, NOISE))
        return loss

    # ---- checkpoints and result --------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"field": self.field.state_dict(), "expressions": self.expressions.state_dict(),
                "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.expressions.load_state_dict(state["expressions"])
        self.optimiser.load_state_dict(state["optimiser"])

    @torch.no_grad()
    def canonical(self, target_faces: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The fixed canonical mesh and every expression's offsets on its faces.

        The largest component, decimated to about ``target_faces`` when it has more (0: keep all).
        The expression model is a field over positions, so evaluating it on the decimated
        vertices is exact. ``self.decimation`` says what was done (faces before/after, seconds,
        or the error that made it keep the full mesh).
        """
        verts, faces = self.dmtet.mesh()
        verts, faces = keep_largest_component(verts, faces)
        v = verts.cpu().numpy().astype(np.float32)
        f = faces.cpu().numpy().astype(np.int32)
        self.decimation = {"faces_before": len(f), "faces_after": len(f), "seconds": 0.0, "error": None}
        if target_faces and len(f) > target_faces:
            started = time.perf_counter()
            try:
                v, f = decimate_mesh(v, f, target_faces)
            except EngineError as exc:
                self.decimation["error"] = exc
            self.decimation.update(faces_after=len(f), seconds=time.perf_counter() - started)
        offsets = self.expressions.export(torch.from_numpy(v).to(verts.device))
        return v, f, offsets
