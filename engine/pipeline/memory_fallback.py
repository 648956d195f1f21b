"""Never die of GPU memory when a smaller setting would fit (docs/pipeline.md, "GPU memory").

Two parts, both driven by :class:`MemoryPlan`, the job's settings as they really run:

* **Before launch** (:func:`fit_before_launch`): the need of one SDS step (activations per view
  from the machine profile Check GPU measured, else the figure measured on the CPU and halved
  for half precision, docs/benchmarks-prior.md) against the free GPU memory once the prior is
  loaded; views per step are lowered until it fits, with a warning.
* **On a CUDA out-of-memory error in a step** (``run.py`` calls :meth:`MemoryPlan.lower`): the
  next rung of the stage's ladder -- fewer views per step (halved down to 1), then a lower
  render resolution (halved down to 256) -- and the job continues from its last checkpoint.

Only these four fields ever change (:data:`ADAPTIVE_FIELDS`); every change is recorded (stage,
step, field, old and new value, why) in every later checkpoint and in result.json, so a
``--resume`` keeps the lowered values and :func:`resumed_plan` accepts exactly these changes.
Per-step randomness comes from (seed, stage, step), so a run that fell back is repeatable.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass

from ..errors import EngineError

GiB = 2 ** 30
# (field, floor) per stage, in the order they are lowered. 256^2 is the preview preset's render
# size; below it the VAE (which works at 512^2) sees a blurred upscale.
LADDERS = {
    "geometry": (("views_per_step", 1), ("render_resolution", 256)),
    "texture": (("texture_views_per_step", 1), ("texture_render_resolution", 256)),
}
ADAPTIVE_FIELDS = tuple(field for ladder in LADDERS.values() for field, _ in ladder)
FLOORS = {field: floor for ladder in LADDERS.values() for field, floor in ladder}
# Activation memory of one SDS step per view at 512^2 (the VAE encoder's saved activations
# dominate), measured on the CPU in fp32 by bench/bench_full_size.py: 3.28 GiB; half precision
# halves it (an upper bound: the renderer's and SDS's own tensors stay fp32).
ACTIVATION_GIB_PER_VIEW = {"fp32": 3.28, "fp16": 1.64, "bf16": 1.64}
WORKSPACE_MARGIN_GIB = 0.75  # cuDNN/cuBLAS workspaces, allocator fragmentation, texture maps + Adam


@dataclass(frozen=True)
class Change:
    stage: str
    step: int  # the 1-based step that ran out of memory (0: before launch)
    field: str
    old: int
    new: int
    reason: str  # "cuda_out_of_memory" or "memory_estimate"
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MemoryPlan:
    """The job's settings (a ``Preset``) with the memory fallbacks applied so far."""

    def __init__(self, requested, changes=()):
        self.requested = requested
        self.changes: list[Change] = list(changes)

    @property
    def settings(self):
        return dataclasses.replace(self.requested, **self.final()) if self.changes else self.requested

    def final(self) -> dict[str, int]:
        values = {field: getattr(self.requested, field) for field in ADAPTIVE_FIELDS}
        for change in self.changes:
            values[change.field] = change.new
        return values

    def next_change(self, stage: str) -> tuple[str, int, int] | None:
        """(field, old, new) of the next rung of ``stage``'s ladder, or None when all are at their floor."""
        current = self.settings
        for field, floor in LADDERS[stage]:
            value = getattr(current, field)
            if value > floor:
                return field, value, max(floor, value // 2)
        return None

    def lower(self, stage: str, step: int, reason: str, detail: str = "") -> Change | None:
        rung = self.next_change(stage)
        if rung is None:
            return None
        change = Change(stage, int(step), rung[0], rung[1], rung[2], reason, detail[:300])
        self.changes.append(change)
        return change

    def record(self) -> dict:
        """What checkpoints and result.json keep: every change and the values that ran last."""
        return {"changes": [c.to_dict() for c in self.changes], "final": self.final()}


def describe(change: Change) -> str:
    what = {"views_per_step": "views per geometry step", "render_resolution": "geometry render resolution",
            "texture_views_per_step": "views per texture step",
            "texture_render_resolution": "texture render resolution"}[change.field]
    if change.reason == "memory_estimate":
        return (f"{change.detail}: the job runs with {change.new} {what} instead of {change.old} "
                "(result.json records it)")
    return (f"the GPU ran out of memory at {change.stage} step {change.step}; continuing from the last "
            f"checkpoint with {change.new} {what} instead of {change.old} (each step sees less, the run "
            "converges more slowly; result.json records it)")


def is_cuda_oom(exc: BaseException) -> bool:
    """A CUDA allocator failure (``torch.cuda.OutOfMemoryError``, or the text older paths raise)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def free_device_memory(device) -> None:
    """Drop what the failed step left (the caller has let go of its references) and return cached
    blocks to the driver, so the smaller setting starts from a clean allocator."""
    import torch

    gc.collect()
    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def resumed_plan(requested, checkpoint_settings: dict | None, record: dict | None) -> MemoryPlan:
    """The plan a ``--resume`` continues with, or ``checkpoint_mismatch``.

    The checkpoint's settings must equal job.json's, except for the adaptive fields, which may
    only be lower than job.json's (never below their floors) and exactly as its fallback record
    says. Anything else means job.json was edited since the checkpoint was made.
    """
    wanted = requested.to_dict()
    have = dict(checkpoint_settings or {})
    changes = [Change(**c) for c in (record or {}).get("changes", [])]
    plan = MemoryPlan(requested, changes)
    final = plan.final()
    differ = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    bad = [k for k in differ if k not in ADAPTIVE_FIELDS]
    for k in differ:
        if k in ADAPTIVE_FIELDS and not FLOORS[k] <= have[k] < wanted[k]:
            bad.append(k)  # raised, or below the floor: no fallback does that
    unexplained = [k for k in ADAPTIVE_FIELDS if final[k] != have.get(k, wanted[k])]  # not as recorded
    if bad or unexplained:
        names = ", ".join(dict.fromkeys(bad + unexplained))
        raise EngineError(f"the checkpoint was made with other settings than job.json now holds ({names})",
                          code="checkpoint_mismatch",
                          hint="restore job.json, or start the job over with the new settings (`generate ... "
                               "--new`; the add-on's worker: without --resume)")
    return plan


# ---- before launch -------------------------------------------------------------------------------

def free_memory_bytes(device) -> int | None:
    """Free memory of a CUDA device (bytes), None elsewhere (nothing to fit on the CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def activation_bytes_per_view(dtype: str, profile: dict | None = None) -> tuple[int, str]:
    """(bytes, source): the machine profile's measured figure when it was made at this dtype,
    else the arithmetic figure."""
    if profile and profile.get("dtype") == dtype and profile.get("activation_bytes_per_view"):
        return int(profile["activation_bytes_per_view"]), "measured by Check GPU on this machine"
    return int(ACTIVATION_GIB_PER_VIEW.get(dtype, ACTIVATION_GIB_PER_VIEW["fp32"]) * GiB), "estimated"


def fit_before_launch(plan: MemoryPlan, free_bytes: int | None, per_view_bytes: int, source: str) -> list[Change]:
    """Lower the views per step of each stage until one step's estimated need fits ``free_bytes``
    (the GPU's free memory once the prior is loaded). Returns the changes (empty: it fits, or
    nothing to fit on this device)."""
    if free_bytes is None:
        return []
    made = []
    margin = int(WORKSPACE_MARGIN_GIB * GiB)
    for stage, views_field in (("geometry", "views_per_step"), ("texture", "texture_views_per_step")):
        while True:
            views = getattr(plan.settings, views_field)
            need = per_view_bytes * views + margin
            if need <= free_bytes or views <= FLOORS[views_field]:
                break
            detail = (f"one {stage} step needs about {need / GiB:.1f} GiB at {views} views ({source}), "
                      f"the GPU has {free_bytes / GiB:.1f} GiB free")
            made.append(Change(stage, 0, views_field, views, max(1, views // 2), "memory_estimate", detail))
            plan.changes.append(made[-1])
    return made


def estimate_report(plan: MemoryPlan, free_bytes: int | None, per_view_bytes: int) -> dict | None:
    """The pre-launch estimate as result.json keeps it (None on the CPU)."""
    if free_bytes is None:
        return None
    s = plan.settings
    margin = int(WORKSPACE_MARGIN_GIB * GiB)
    return {"free_gib": round(free_bytes / GiB, 2), "activation_gib_per_view": round(per_view_bytes / GiB, 2),
            "geometry_need_gib": round((per_view_bytes * s.views_per_step + margin) / GiB, 2),
            "texture_need_gib": round((per_view_bytes * s.texture_views_per_step + margin) / GiB, 2)}
