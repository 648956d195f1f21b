"""The expression known-answer experiment: a prior trained on a shape and on that shape with an
opened jaw must make the joint geometry stage's expression shape key open the jaw.

The target is Suzanne (bench/known_answer.py) and "open mouth": the same mesh with its lower part
turned down about a left-right hinge (:func:`open_jaw`, a smooth deformation, so the expression
is exactly a set of vertex offsets on the neutral topology, as shape keys are). The renders of
both become one dataset through ``build-prior-dataset`` (two heads: expression "neutral" and
"open mouth"), ``train-prior`` trains the normal LoRA on it (the expression branch included, as
the engine trains it by default), and the pipeline's ``GeometryStage``, built for a job with the
expression "open mouth", runs from the neutral target. The shape key it exports (head.npz of the
result folder written by ``engine.export.write_result``, read back with numpy) must move the
neutral head to the opened jaw, while neutral stays at the neutral target.

The start is the neutral target itself (the head field fitted to renders of Suzanne by
``engine.geometry.fit.fit_sdf_to_views``): the geometry experiment already shows that the
prior pulls the head to a shape; here the question is the expression half alone. The control
is the same stage with a prior trained, with the same settings, on the neutral renders only:
it never saw the expression rows (it is the geometry experiment's trained prior, when that one
was made with the same settings). docs/known-answer.md has the figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import known_answer as ka

EXPRESSION = "open mouth"  # words the tiny tokenizer knows whole (engine.tiny_models)


@dataclass
class ExpressionConfig(ka.ExperimentConfig):
    expression: str = EXPRESSION
    # The opened jaw: the part below the hinge turned down about a left-right axis behind the face.
    # A jaw must move a lot to move the surface much: Chamfer distance does not see the surface
    # sliding along itself (measured: 25 deg about a hinge under the muzzle moved the chin 5 cm and
    # the Chamfer distance 0.0049 m, next to a sampling floor of 0.002 m). The full bench's hinge,
    # 8 cm behind the centre and 1 cm up: 0.0116 m from the neutral.
    jaw_angle_deg: float = 30.0
    hinge: tuple[float, float] = (0.08, 0.01)  # (y, z) metres
    # The neutral start: the head initialisation fitted to renders of the neutral target.
    fit_steps: int = 300
    fit_views: int = 64
    fit_lr: float = 1e-3
    # The stage (preset overrides besides the geometry experiment's). The neutral starts at its
    # answer here, so the presets' own regulariser weights (the geometry experiment lightens them
    # so that the surface can travel from the head to Suzanne).
    laplacian: float = 0.5
    normal_consistency: float = 0.05
    sds_lr: float = 1e-3  # the field's learning rate (the expression model's is expression_lr)
    neutral_fraction: float = 0.5
    expression_max_offset: float = 0.12  # the tanh bound of the offsets: the chin moves ~10 cm
    expression_offset_weight: float = 10.0
    expression_lr: float = 1e-3
    rotated_views_run: bool = False


TRAINING_FIELDS = ka.TRAINING_FIELDS + ("expression", "jaw_angle_deg", "hinge")

# The test suite's version. Its own jaw and start, sized against the floor: under SDS the grid-32
# surface stays ~0.004-0.005 m from a target it starts on, so the jaw is opened about a hinge 6 cm
# behind the centre and 4 cm up (most of the face turns, the chin moves 10 cm, 0.0147 m from the
# neutral). 300 fitting steps at lr 1e-3 went unstable (neutral 0.0075 m from its target against
# 0.0024 m after 200). At a field lr of 1e-3 the neutral drifted from 0.0024 to 0.0050 m, at 3e-4
# to 0.0040 m (and the expression came closer: 0.0077 -> 0.0066 m).
QUICK = ExpressionConfig(views=96, unet_steps=800, unet_shapes=32, train_steps=1500, sds_steps=200,
                         pretrain_steps=60, hinge=(0.06, 0.04), fit_steps=200, sds_lr=3e-4)
# Bounds of the quick test (docs/known-answer.md has the measured figures); looser than the
# bench's acceptance (0.5x the start, below the control), still far from what a broken piece gives.
QUICK_MAX_EXPRESSION_OVER_START = 0.75
QUICK_MAX_EXPRESSION_OVER_CONTROL = 0.75
QUICK_MAX_EXPRESSION_OVER_NEUTRAL = 0.75  # the shape key, not the neutral drifting, closes the gap
QUICK_MAX_NEUTRAL_OVER_START = 2.5  # the neutral starts at the sampling floor (~0.0024 m): a ratio is harsh


def open_jaw(verts, config: ExpressionConfig, soft: float = 0.015):
    """The known deformation: every point below the hinge turned by up to ``jaw_angle_deg`` about
    the left-right axis through ``hinge`` (weight a smooth step in height, so the mesh stays whole
    and its topology unchanged). The chin goes down and back, as a jaw opens."""
    import torch

    v = torch.as_tensor(verts, dtype=torch.float32)
    hy, hz = config.hinge
    angle = math.radians(config.jaw_angle_deg) * torch.sigmoid((hz - v[:, 2]) / soft)
    y, z = v[:, 1] - hy, v[:, 2] - hz
    return torch.stack([v[:, 0], y * torch.cos(angle) - z * torch.sin(angle) + hy,
                        y * torch.sin(angle) + z * torch.cos(angle) + hz], -1)


def stage_settings(config: ExpressionConfig):
    from engine.pipeline.presets import resolve_preset

    base = ka.stage_settings(config).to_dict()
    for name in ("name", "description"):
        base.pop(name)
    return resolve_preset("test", {**base, "neutral_fraction": config.neutral_fraction,
                                   "expression_max_offset": config.expression_max_offset,
                                   "expression_offset_weight": config.expression_offset_weight,
                                   "expression_lr": config.expression_lr})


def expression_stage(prior, embedding, config: ExpressionConfig, start_state=None):
    """``GeometryStage`` as ``run_job`` builds it for a job with the expressions neutral and
    ``config.expression``; the field from ``start_state`` when given."""
    from engine.pipeline.geometry_stage import GeometryStage

    stage = GeometryStage(stage_settings(config), prior, embedding, ["neutral", config.expression], seed=config.seed,
                          device="cpu", normal_maps=True)
    if start_state is not None:
        stage.field.load_state_dict(start_state)
    return stage


def fit_neutral_start(embedding, config: ExpressionConfig, neutral, log=print):
    """The head initialisation fitted to renders of the neutral target (masks and world normals,
    ``fit_sdf_to_views``): the neutral start. Returns the field state."""
    import torch

    from engine.geometry.fit import FitConfig, RegulariserWeights, fit_sdf_to_views
    from engine.render import render

    stage = expression_stage(None, embedding, config)
    stage.initialise()
    cams = ka.sds_cameras(config.fit_views, seed=config.seed + 29, resolution=config.resolution,
                          elevation_deg=config.elevation_deg, front_fraction=config.front_fraction)
    with torch.no_grad():
        passes = render(*neutral, cams, passes=("mask", "normal_world"))
    report = fit_sdf_to_views(stage.dmtet, cams, passes["mask"], passes["normal_world"], FitConfig(
        steps=config.fit_steps, lr=config.fit_lr, views_per_step=4, seed=config.seed,
        regularisers=RegulariserWeights(laplacian=config.laplacian, normal_consistency=config.normal_consistency)))
    log(f"neutral start: head initialisation fitted to {config.fit_views} renders of the neutral target, "
        f"{config.fit_steps} steps ({report.seconds:.1f} s)")
    return {k: v.detach().clone() for k, v in stage.field.state_dict().items()}


@dataclass
class ExpressionResult:
    config: dict
    chamfer: dict  # run -> {"neutral": m, "expression": m, "neutral_to_deformed": m}
    deformation_chamfer: float  # neutral target to the deformed target: what the expression must bridge
    training: dict
    seconds: dict
    meshes: dict = field(default_factory=dict, repr=False)  # name -> (verts, faces) torch, for pictures
    curves: dict = field(default_factory=dict)
    offset_max_m: dict = field(default_factory=dict)  # run -> largest exported offset (metres)

    def summary(self) -> dict:
        c = self.chamfer
        return {"deformation_chamfer_m": self.deformation_chamfer, "chamfer_m": c,
                "expression_trained_over_start": c["trained"]["expression"] / c["start"]["expression"],
                "expression_trained_over_control": c["trained"]["expression"] / c["control"]["expression"],
                "neutral_trained_over_start": c["trained"]["neutral"] / c["start"]["neutral"],
                "train_eval_loss": {k: [v["eval_loss_start"], v["eval_loss_end"]] for k, v in self.training.items()},
                "offset_max_m": self.offset_max_m, "seconds": self.seconds}


def run_expression_experiment(work: Path, config: ExpressionConfig, *, models: Path | None = None, log=print,
                              target=None, control_lora: Path | None = None, chamfer_every: int = 0,
                              reuse: bool = False) -> ExpressionResult:
    """Targets -> renders -> build-prior-dataset (neutral + expression; neutral only) -> train-prior
    (each) -> the neutral start -> the joint stage with each prior -> result folder -> Chamfer.

    ``control_lora``: a LoRA already trained with these settings on the neutral renders alone
    (the geometry experiment's, same seed and training settings), used instead of training it again.
    ``reuse``: keep the LoRAs an earlier run trained in ``work`` with the same settings."""
    work = Path(work)
    with ka.isolated(work):
        return _run(work, config, Path(models) if models else work / "models", log, target, control_lora,
                    chamfer_every, reuse)


def _run(work, config, models, log, target, control_lora, chamfer_every, reuse):
    import torch

    seconds = dict(ka.prepare_base(models, config, log)["seconds"])
    if target is None:
        target = ka.suzanne_mesh()
    neutral = (torch.as_tensor(target[0]), torch.as_tensor(target[1], dtype=torch.long))
    deformed = (open_jaw(neutral[0], config), neutral[1])
    embedding = ka.identity_embedding(config.seed)

    clock = time.perf_counter()
    heads = work / "heads"
    cams = ka.dataset_cameras(config)  # the geometry experiment's: its dataset is this one's neutral half
    ka.write_head(heads, "suzanne", "normal", ka.render_views(lambda c: ka.normal_images(*neutral, c), cams),
                  cams.azimuth_deg.tolist(), ka.NEUTRAL, embedding)
    ka.build_dataset(heads, work / "dataset_neutral", config.resolution)
    cams = ka.dataset_cameras(config, offset=23)
    ka.write_head(heads, "suzanne-open-mouth", "normal",
                  ka.render_views(lambda c: ka.normal_images(*deformed, c), cams), cams.azimuth_deg.tolist(),
                  config.expression, embedding)
    ka.build_dataset(heads, work / "dataset", config.resolution)
    seconds["dataset"] = time.perf_counter() - clock
    log(f"dataset: {config.views} normal maps of the neutral target and {config.views} of {config.expression!r}")

    training = {}
    clock = time.perf_counter()
    training["trained"] = _trained(models, work / "dataset", work / "lora_expression", config, TRAINING_FIELDS, reuse,
                                   log)
    seconds["train_prior"] = time.perf_counter() - clock
    if control_lora is None:
        clock = time.perf_counter()
        training["control"] = _trained(models, work / "dataset_neutral", work / "lora_neutral", config,
                                       ka.TRAINING_FIELDS, reuse, log)
        seconds["train_prior_control"] = time.perf_counter() - clock
        control_lora = work / "lora_neutral"
    for name, record in training.items():
        log(f"train-prior ({name}): {config.train_steps} steps, eval loss {record['eval_loss_start']:.4f} -> "
            f"{record['eval_loss_end']:.4f}")

    clock = time.perf_counter()
    start_state = fit_neutral_start(embedding, config, neutral, log)
    seconds["neutral_start"] = time.perf_counter() - clock

    from engine.prior import load_prior
    from engine.prior.conditioning import ConditioningOptions

    chamfers, meshes, curves, largest = {}, {}, {}, {}
    start = expression_stage(None, embedding, config, start_state)
    chamfers["start"], meshes["start"], largest["start"] = _measure(start, work / "result_start", neutral, deformed,
                                                                    config)
    for name, lora in (("trained", work / "lora_expression"), ("control", Path(control_lora))):
        prior = load_prior(models, device="cpu", task="normal", lora_dirs={"normal": lora},
                           options=ConditioningOptions(text_mode=config.text_mode))
        stage = expression_stage(prior, embedding, config, start_state)
        clock = time.perf_counter()
        curve = []
        for step in range(config.sds_steps):
            if chamfer_every and step % chamfer_every == 0:
                curve.append((step, _expression_chamfer(stage, deformed, config)))
            stage.step(step)
        seconds[f"sds_{name}"] = time.perf_counter() - clock
        chamfers[name], meshes[name], largest[name] = _measure(stage, work / f"result_{name}", neutral, deformed,
                                                               config)
        curves[name] = curve + ([(config.sds_steps, chamfers[name]["expression"])] if chamfer_every else [])
        log(f"joint stage with the {name} prior: {config.sds_steps} steps in {seconds[f'sds_{name}']:.1f} s; "
            f"Chamfer neutral {chamfers[name]['neutral']:.4f}, {config.expression} {chamfers[name]['expression']:.4f}")
    meshes["target neutral"], meshes["target expression"] = neutral, deformed
    return ExpressionResult(
        config=json.loads(json.dumps(asdict(config))), chamfer=chamfers,
        deformation_chamfer=ka.chamfer(*neutral, *deformed, config), training=training,
        seconds={k: round(v, 2) for k, v in seconds.items()}, meshes=meshes, curves=curves, offset_max_m=largest)


def _trained(models, data, lora, config, fields, reuse: bool, log) -> dict:
    """``train-prior`` on ``data`` into ``lora``; with ``reuse``, the LoRA an earlier run trained there
    with the same ``fields`` (its record beside it)."""
    record_path = lora.with_name(lora.name + ".json")
    wanted = ka.fields_of(config, fields)
    if reuse and record_path.is_file() and (lora / "prior_adapter.json").is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("config") == wanted:
            log(f"reusing {lora}")
            return record
    record = {**ka.train_prior(models, data, lora, config), "config": wanted}
    record_path.write_text(json.dumps(record), encoding="utf-8")
    return record


def _expression_chamfer(stage, deformed, config) -> float:
    """The expression's shape during the run: the raw extraction moved by the expression model."""
    import torch

    verts, faces = stage.dmtet.mesh()
    with torch.no_grad():
        moved = verts + stage.expressions.offsets(verts, config.expression)
    return ka.chamfer(moved, faces, *deformed, config)


def _measure(stage, folder: Path, neutral, deformed, config: ExpressionConfig):
    """The stage's result as the pipeline exports it: ``canonical()`` (largest component, the
    expression model evaluated on its vertices), written by ``engine.export.write_result``
    (head.npz and head.glb) and read back from head.npz with numpy alone, as any consumer reads
    shape keys. Returns (Chamfer per shape, meshes, the largest offset)."""
    import torch

    from engine.export import write_result
    from engine.result_format import HeadMesh

    verts, faces, offsets = stage.canonical(0)
    names = list(offsets)
    write_result(folder, HeadMesh(vertices=verts, faces=faces, expression_names=names,
                                  expression_offsets=np.stack([offsets[n] for n in names])))
    with np.load(folder / "head.npz") as npz:
        v = torch.as_tensor(npz["vertices"])
        f = torch.as_tensor(npz["faces"].astype(np.int64))
        key = list(npz["expression_names"]).index(config.expression)
        shape_key = torch.as_tensor(npz["expression_offsets"][key])
    expression = v + shape_key
    return ({"neutral": ka.chamfer(v, f, *neutral, config), "expression": ka.chamfer(expression, f, *deformed, config),
             "neutral_to_deformed": ka.chamfer(v, f, *deformed, config)},
            {"neutral": (v, f), "expression": (expression, f)}, float(shape_key.norm(dim=-1).max()))


def comparison_picture(meshes: dict, azimuths=(0.0, 60.0, 90.0), size: int = 128) -> np.ndarray:
    """Normal-map renders, rows = azimuths; columns: the neutral target, the trained run's
    neutral, the expression target, the trained run's expression, the control's expression, the
    start's expression."""
    columns = [meshes["target neutral"], meshes["trained"]["neutral"], meshes["target expression"],
               meshes["trained"]["expression"], meshes["control"]["expression"], meshes["start"]["expression"]]
    return ka.picture(columns, azimuths, size)
