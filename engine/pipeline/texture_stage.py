"""Stage 2: an albedo and a roughness UV map optimised by SDS on the fixed canonical mesh.

The texture room (engine/texture, CONTRACT §5) unwraps, holds the maps and renders them; this
loop owns the schedule, the randomness and the prior. With an albedo task LoRA the prior sees
unlit albedo renders (what it was trained on); with the base prior it sees shaded renders under
random lights, so lighting is not baked into the albedo. Expressions are rendered too (canonical
+ offsets), so the texture fits every shape key.
"""

from __future__ import annotations

import numpy as np
import torch

from ..prior.sds import ScoreDistillation, SDSConfig
from ..render import sample_lights, sample_orbit_cameras
from ..render.mesh_ops import mesh_topology
from .seeds import TEXTURE, pick_expression, step_generator, step_rng, step_seed

CAMERAS, LIGHTS, NOISE, CHOICE = 0, 1, 2, 3


class TextureStage:
    def __init__(self, settings, prior, embedding, vertices: np.ndarray, faces: np.ndarray,
                 offsets: dict[str, np.ndarray], *, size: int, seed: int, device, albedo_lora: bool,
                 layout=None, prompts: dict[str, str] | None = None):
        from .. import texture

        self.texture = texture
        self.settings, self.prior, self.seed = settings, prior, int(seed)
        self.embedding = np.asarray(embedding, np.float32)
        self.device = torch.device(device)
        self.albedo_lora = albedo_lora
        self.size = int(size)
        self.layout = layout if layout is not None else texture.unwrap_mesh(vertices, faces)
        self.vertices = torch.as_tensor(vertices, device=self.device)
        self.faces = torch.as_tensor(faces, device=self.device).long()
        # The canonical mesh is fixed here: its edge table and UV tensors are built once, not every step.
        self.topology = mesh_topology(self.faces)
        self.uv = self.layout.torch_uv(self.device)
        self.names = list(offsets)
        self.prompts = dict(prompts or {})  # the text the prior sees per expression (default: its name)
        self.offsets = {k: torch.as_tensor(v, device=self.device) for k, v in offsets.items()}
        torch.manual_seed(self.seed + 1)
        self.maps = texture.TextureMaps(self.size).to(self.device)
        self.optimiser = torch.optim.Adam(self.maps.parameters(), lr=settings.texture_lr)
        self.sds = ScoreDistillation(prior, SDSConfig(
            guidance_scale=settings.texture_guidance, t_start=tuple(settings.texture_t_start),
            t_end=tuple(settings.texture_t_end), grad_clip=settings.grad_clip))

    def step(self, step: int):
        s = self.settings
        name = pick_expression(self.names, s.neutral_fraction, step_rng(self.seed, TEXTURE, step, CHOICE))
        cameras = sample_orbit_cameras(
            s.texture_views_per_step, seed=step_seed(self.seed, TEXTURE, step, CAMERAS),
            resolution=(s.texture_render_resolution, s.texture_render_resolution),
            elevation_range_deg=tuple(s.elevation_range_deg), front_oversample=s.front_fraction)
        azimuths = cameras.azimuth_deg.tolist()  # on the CPU still: no device read-back
        if self.device.type != "cpu":
            cameras = cameras.to(self.device)
        verts = self.vertices + self.offsets[name]
        if self.albedo_lora:
            images = self.texture.render_albedo(verts, self.faces, self.uv, self.maps, cameras, background=1.0,
                                                topology=self.topology)
        else:
            lights = sample_lights(s.texture_views_per_step, seed=step_seed(self.seed, TEXTURE, step, LIGHTS),
                                   device=self.device)
            images = self.texture.render_textured(verts, self.faces, self.uv, self.maps, cameras, lights,
                                                  background=1.0, topology=self.topology)
        cond = self.prior.conditioning(self.embedding, self.prompts.get(name, name), view=azimuths)
        loss, _ = self.sds.step(images, cond, step, s.texture_steps,
                                generator=step_generator(self.seed, TEXTURE, step, NOISE))
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return loss.detach(), name, images[0].detach()

    def state_dict(self) -> dict:
        return {"maps": self.maps.state_dict(), "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.maps.load_state_dict(state["maps"])
        self.optimiser.load_state_dict(state["optimiser"])

    @torch.no_grad()
    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """(albedo [S, S, 3] linear, roughness [S, S, 1]) in [0, 1]; the export dilates across seams."""
        return (self.maps.albedo().cpu().numpy().astype(np.float32),
                self.maps.roughness().cpu().numpy().astype(np.float32))
