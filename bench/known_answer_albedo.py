"""The albedo known-answer experiment: an albedo prior trained on renders of a known texture must
make the pipeline's texture stage paint that texture.

The mesh is fixed and known: the procedural head (``engine.geometry.head_init.head_sdf``)
extracted by marching tetrahedra on the experiment's grid, as the geometry stage hands a
canonical mesh to the texture stage. The texture is known everywhere on it: a colour defined
over space (:func:`known_albedo`: skin, dark hair on the crown and the back, a blue collar),
so it needs no UV layout of its own. Its unlit renders become an albedo dataset through
``build-prior-dataset --domain albedo``, ``train-prior --domain albedo`` trains the albedo LoRA,
and ``engine.pipeline.texture_stage.TextureStage`` (its own xatlas unwrap, the texture pyramid,
``render_albedo``, SDS) optimises the UV map from the usual start colour. The result goes through
the export (``write_result``: seams dilated, albedo.png sRGB-encoded) and is read back
(head.npz's per-corner UVs, albedo.png) to be rendered again: its PSNR against renders of the
known texture, from fixed views, is the figure. The control is the same stage with the same base
prior without the LoRA. docs/known-answer.md has the figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import known_answer as ka

SKIN, HAIR, COLLAR = (0.60, 0.36, 0.26), (0.05, 0.03, 0.02), (0.04, 0.10, 0.45)  # linear RGB


@dataclass
class AlbedoConfig(ka.ExperimentConfig):
    base_domains: tuple[str, ...] = ("albedo",)  # the base learns albedo renders of other shapes
    # the texture stage (preset overrides of "test")
    texture_steps: int = 300
    texture_size: int = 128
    texture_views: int = 4
    texture_lr: float = 1e-2
    texture_guidance: float = 2.0
    texture_t_start: tuple[float, float] = (0.02, 0.6)
    texture_t_end: tuple[float, float] = (0.02, 0.3)
    # the PSNR's views: every 30 deg all round, at 0 and 20 deg elevation
    eval_azimuths: int = 12
    eval_elevations: tuple[float, ...] = (0.0, 20.0)


TRAINING_FIELDS = ka.TRAINING_FIELDS

QUICK = AlbedoConfig(views=96, unet_steps=800, unet_shapes=32, train_steps=800, texture_steps=100)
# Bounds of the quick test (docs/known-answer.md has the measured figures).
QUICK_MAX_EVAL_LOSS_RATIO = 0.7
QUICK_MIN_GAIN_OVER_START_DB = 1.0
QUICK_MIN_GAIN_OVER_CONTROL_DB = 3.0


def known_albedo(points):
    """The known texture: linear RGB [N,3] at surface points [N,3] (metres, face towards -Y). Skin;
    dark hair above a hairline that comes down at the back; a blue collar round the neck. Left and
    right alike: the view text tells front, side and back apart, not left from right."""
    import torch

    p = torch.as_tensor(points, dtype=torch.float32)
    back = torch.sigmoid(p[:, 1] / 0.02)
    hair = torch.sigmoid((p[:, 2] - 0.055 + 0.06 * back) / 0.008)
    collar = torch.sigmoid((-0.085 - p[:, 2]) / 0.008)
    colour = torch.tensor(SKIN).expand(len(p), 3)
    colour = colour + hair[:, None] * (torch.tensor(HAIR) - colour)
    return colour + collar[:, None] * (torch.tensor(COLLAR) - colour)


def head_mesh(config: AlbedoConfig):
    """The fixed mesh: the procedural head's marching-tets surface on the experiment's grid, its
    largest component (what ``GeometryStage.canonical`` hands the texture stage). numpy (v, f)."""
    import torch

    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.mesh_utils import keep_largest_component
    from engine.geometry.tetgrid import make_tet_grid

    grid = make_tet_grid(config.grid)
    with torch.no_grad():
        surface = extract_surface(grid, head_sdf(grid.vertices))
    v, f = keep_largest_component(surface.verts.detach(), surface.faces)
    return v.numpy().astype(np.float32), f.numpy().astype(np.int32)


def stage_settings(config: AlbedoConfig):
    from engine.pipeline.presets import resolve_preset

    return resolve_preset("test", {
        "texture_steps": config.texture_steps, "texture_render_resolution": config.resolution,
        "texture_views_per_step": config.texture_views, "texture_lr": config.texture_lr,
        "texture_guidance": config.texture_guidance, "texture_t_start": list(config.texture_t_start),
        "texture_t_end": list(config.texture_t_end), "texture_size": config.texture_size,
        "elevation_range_deg": list(config.elevation_deg), "front_fraction": config.front_fraction})


def eval_cameras(config: AlbedoConfig, resolution: int | None = None):
    azimuths = [a for _ in config.eval_elevations for a in np.arange(config.eval_azimuths) * 360.0 / config.eval_azimuths]
    elevations = [e for e in config.eval_elevations for _ in range(config.eval_azimuths)]
    return ka.sds_cameras(len(azimuths), 0, resolution or config.resolution, elevation_deg=elevations,
                          azimuth_deg=azimuths)


def psnr(image, target, mask) -> float:
    """PSNR (dB) of [B,H,W,3] images in [0, 1] over the pixels the head covers."""
    covered = mask[..., 0] > 0.5
    mse = float(((image - target) ** 2)[covered].mean())
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


@dataclass
class AlbedoResult:
    config: dict
    psnr: dict  # run -> dB
    training: dict
    seconds: dict
    unwrap: dict  # the stage's UV layout stats (charts, utilisation ...)
    images: dict = field(default_factory=dict, repr=False)  # run -> [B,H,W,3] renders of the exported result
    curves: dict = field(default_factory=dict)

    def summary(self) -> dict:
        p = self.psnr
        return {"psnr_db": p, "trained_minus_start_db": p["trained"] - p["start"],
                "trained_minus_control_db": p["trained"] - p["control"],
                "train_eval_loss": [self.training["eval_loss_start"], self.training["eval_loss_end"]],
                "unwrap": self.unwrap, "seconds": self.seconds}


def run_albedo_experiment(work: Path, config: AlbedoConfig, *, models: Path | None = None, log=print,
                          psnr_every: int = 0) -> AlbedoResult:
    """Known texture -> albedo renders -> build-prior-dataset -> train-prior -> texture stage
    (trained prior, untrained prior) -> result folder -> renders of the exported texture -> PSNR."""
    work = Path(work)
    with ka.isolated(work):
        return _run(work, config, Path(models) if models else work / "models", log, psnr_every)


def _run(work, config, models, log, psnr_every):
    import torch

    seconds = dict(ka.prepare_base(models, config, log)["seconds"])
    verts, faces = head_mesh(config)
    v, f = torch.as_tensor(verts), torch.as_tensor(faces, dtype=torch.long)
    colours = known_albedo(v)
    embedding = ka.identity_embedding(config.seed)

    clock = time.perf_counter()
    cams = ka.dataset_cameras(config)
    ka.write_head(work / "heads", "head", "albedo", ka.render_views(lambda c: ka.albedo_images(v, f, colours, c), cams),
                  cams.azimuth_deg.tolist(), ka.NEUTRAL, embedding)
    ka.build_dataset(work / "heads", work / "dataset", config.resolution, "albedo")
    seconds["dataset"] = time.perf_counter() - clock
    log(f"dataset: {config.views} albedo renders of the known texture on the head ({len(faces)} faces)")
    clock = time.perf_counter()
    training = ka.train_prior(models, work / "dataset", work / "lora_albedo", config, "albedo")
    seconds["train_prior"] = time.perf_counter() - clock
    log(f"train-prior --domain albedo: {config.train_steps} steps, eval loss {training['eval_loss_start']:.4f} -> "
        f"{training['eval_loss_end']:.4f} ({seconds['train_prior']:.1f} s)")

    from engine.prior import load_prior
    from engine.prior.conditioning import ConditioningOptions
    from engine.render import render
    from engine.texture import unwrap_mesh

    views = eval_cameras(config)
    with torch.no_grad():
        target = ka.albedo_images(v, f, colours, views)
        mask = render(v, f, views, passes=("mask",))["mask"]
    clock = time.perf_counter()
    layout = unwrap_mesh(verts, faces)  # once, as run_job's texture stage does; every run shares it
    seconds["unwrap"] = time.perf_counter() - clock
    offsets = {ka.NEUTRAL: np.zeros_like(verts)}
    psnrs, images, curves = {}, {}, {}
    priors = {name: load_prior(models, device="cpu", task="albedo" if name == "trained" else None,
                               lora_dirs={"albedo": work / "lora_albedo"} if name == "trained" else None,
                               options=ConditioningOptions(text_mode=config.text_mode))
              for name in ("trained", "control")}
    start = _stage(priors["control"], embedding, verts, faces, offsets, layout, config)  # no step taken
    psnrs["start"], images["start"] = _measure(start, work / "result_start", target, mask, views, layout)
    for name, prior in priors.items():
        stage = _stage(prior, embedding, verts, faces, offsets, layout, config)
        clock = time.perf_counter()
        curve = []
        for step in range(config.texture_steps):
            if psnr_every and step % psnr_every == 0:
                curve.append((step, _quick_psnr(stage, v, f, views, target, mask)))
            stage.step(step)
        seconds[f"sds_{name}"] = time.perf_counter() - clock
        psnrs[name], images[name] = _measure(stage, work / f"result_{name}", target, mask, views, layout)
        curves[name] = curve + ([(config.texture_steps, psnrs[name])] if psnr_every else [])
        log(f"texture stage with the {name} prior: {config.texture_steps} steps in {seconds[f'sds_{name}']:.1f} s; "
            f"PSNR {psnrs[name]:.2f} dB (start {psnrs['start']:.2f} dB)")
    images["target"] = target
    return AlbedoResult(config=json.loads(json.dumps(asdict(config))), psnr=psnrs, training=training,
                        seconds={k: round(s, 2) for k, s in seconds.items()},
                        unwrap={k: layout.stats[k] for k in ("charts", "utilization", "faces", "uv_vertices")},
                        images=images, curves=curves)


def _stage(prior, embedding, verts, faces, offsets, layout, config):
    """``TextureStage`` as ``run_job`` builds it with an albedo LoRA (unlit albedo renders), the
    prior switched to the albedo task when it has one, as ``run_job`` does; every run gets the
    same UV layout (``run_job`` unwraps once) and the same start maps (seeded)."""
    from engine.pipeline.texture_stage import TextureStage

    prior.set_task("albedo" if "albedo" in prior.adapters else None)
    return TextureStage(stage_settings(config), prior, embedding, verts, faces, offsets, size=config.texture_size,
                        seed=config.seed, device="cpu", albedo_lora=True, layout=layout)


def _quick_psnr(stage, v, f, views, target, mask) -> float:
    """PSNR of the maps as they are during the run (linear map, no export)."""
    import torch

    from engine.texture import render_albedo

    with torch.no_grad():
        return psnr(render_albedo(v, f, stage.layout, stage.maps.albedo(), views), target, mask)


def _measure(stage, folder: Path, target, mask, views, layout):
    """The stage's maps as the pipeline exports them (``write_result``: seams dilated, albedo.png
    sRGB), read back from the result folder alone (head.npz's UVs, albedo.png decoded to linear)
    and rendered unlit from ``views``: (PSNR against ``target``, the renders)."""
    import torch
    from PIL import Image

    from engine.export import write_result
    from engine.result_format import HeadMesh, read_head_mesh
    from engine.texture import render_albedo, srgb_to_linear
    from engine.texture.unwrap import UVLayout

    albedo, roughness = stage.images()
    v, f = stage.vertices.numpy(), stage.faces.numpy().astype(np.int32)
    write_result(folder, HeadMesh(vertices=v, faces=f, expression_names=[ka.NEUTRAL],
                                  expression_offsets=np.zeros((1, *v.shape), np.float32),
                                  uvs=layout.corner_uvs()), albedo=albedo, roughness=roughness, glb=False)
    head = read_head_mesh(folder)
    with Image.open(folder / "albedo.png") as image:
        encoded = torch.as_tensor(np.asarray(image.convert("RGB"), np.float32) / 255.0)
    with torch.no_grad():
        images = render_albedo(torch.as_tensor(head.vertices), torch.as_tensor(head.faces.astype(np.int64)),
                               UVLayout.from_corner_uvs(head.faces, head.uvs), srgb_to_linear(encoded), views)
    return psnr(images, target, mask), images


def comparison_picture(result: AlbedoResult, views=(0, 2, 3, 6), scale: int = 2) -> np.ndarray:
    """The measured renders (the exported results read back), rows = views (by default azimuth 0,
    60, 90 and 180 deg at 0 deg elevation), columns: start, trained, control, target; each pixel
    drawn ``scale`` times (nearest) so the 64 px renders can be seen."""
    import torch

    columns = [torch.cat([result.images[name][k] for k in views], dim=0)
               for name in ("start", "trained", "control", "target")]
    picture = torch.cat(columns, dim=1).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return (picture.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
