"""Never die of GPU memory when a smaller setting would fit (docs/pipeline.md, "GPU memory").

Two parts, both driven by :class:`MemoryPlan`, the job's settings and memory options as they
really run:

* **Before launch** (:func:`fit_before_launch`): the need of one SDS step (activations per view
  from the machine profile Check GPU measured, else the figures measured on the CPU,
  docs/benchmarks-prior.md) against the free GPU memory once the prior is loaded; the ladder
  below is climbed until it fits, with a warning.
* **On a GPU out-of-memory error in a step** (``run.py`` calls :meth:`MemoryPlan.lower`): the
  next rung of the stage's ladder, and the job continues from its last checkpoint.

The ladder (:data:`LADDERS`), in this order because each rung costs more than the one before:
fewer views per step (halved down to 1: each step sees less, the run converges more slowly),
then VAE gradient checkpointing (same gradients, ~20 % more CPU time in the VAE encoder; the
encoder's saved activations at 512² are ~95 % of a step's, but its first block is recomputed
whole in the backward, so the step's peak drops by about a third), then CPU offload of the UNet
and the text encoders (same results; their ~1.9 GiB in fp16 leave the GPU between calls, each
step moves the UNet over PCIe twice). The render resolution is not a rung: every render is
resized to the VAE's 512² before encoding, so a smaller one saves only the rasteriser's buffers.

Only these fields ever change (:data:`ADAPTIVE_FIELDS`); every change is recorded (stage, step,
field, old and new value, why) in every later checkpoint and in result.json, so a ``--resume``
keeps them and :func:`resumed_plan` accepts exactly these changes. Per-step randomness comes
from (seed, stage, step), so a run that fell back is repeatable.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass

from ..errors import EngineError
from .failures import LOWER_MEMORY_HINT, is_gpu_out_of_memory

GiB = 2 ** 30
# (field, floor) per stage, in the order they are taken. An int field is halved down to its floor;
# a bool field (a job.json "memory" option, prior-wide) is switched on.
LADDERS = {
    "geometry": (("views_per_step", 1), ("vae_checkpointing", True), ("cpu_offload", True)),
    "texture": (("texture_views_per_step", 1), ("vae_checkpointing", True), ("cpu_offload", True)),
}
SETTINGS_FIELDS = ("views_per_step", "texture_views_per_step")  # the preset's (``Preset``)
MEMORY_FIELDS = ("vae_checkpointing", "cpu_offload")  # job.json's "memory" options
ADAPTIVE_FIELDS = SETTINGS_FIELDS + MEMORY_FIELDS
FLOORS = {field: floor for ladder in LADDERS.values() for field, floor in ladder}
# Activation memory of one SDS step per view at 512², GiB, by (precision, VAE checkpointing).
# fp32 measured on the CPU: the whole step 3.28 (bench/bench_full_size.py), of which the VAE
# encoder's forward + backward 2.98, or 2.04 with checkpointing (bench/bench_vae_checkpointing.py);
# the rest (renderer, DMTet, SDS: 0.30) stays fp32 in half precision, so fp16/bf16 = VAE part / 2
# + 0.30 (halving the whole fp32 figure would understate it).
ACTIVATION_GIB_PER_VIEW = {("fp32", False): 3.28, ("fp32", True): 2.34,
                           ("fp16", False): 1.79, ("fp16", True): 1.32}
WORKSPACE_MARGIN_GIB = 0.75  # cuDNN/cuBLAS workspaces, allocator fragmentation, texture maps + Adam
WHAT = {"views_per_step": "views per geometry step", "texture_views_per_step": "views per texture step",
        "vae_checkpointing": "VAE gradient checkpointing", "cpu_offload": "CPU offload of the UNet and text encoders"}


@dataclass(frozen=True)
class Change:
    stage: str
    step: int  # the 1-based step that ran out of memory (0: before launch)
    field: str
    old: int | bool
    new: int | bool
    reason: str  # "cuda_out_of_memory", "memory_estimate" or "machine_profile"
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MemoryPlan:
    """The job's settings (a ``Preset``) and memory options with the memory fallbacks applied so far."""

    def __init__(self, requested, changes=(), memory: dict | None = None):
        self.requested = requested
        self.requested_memory = {field: False for field in MEMORY_FIELDS} | dict(memory or {})
        self.changes: list[Change] = list(changes)

    @property
    def settings(self):
        final = self.final()
        return dataclasses.replace(self.requested, **{f: final[f] for f in SETTINGS_FIELDS}) \
            if self.changes else self.requested

    @property
    def memory(self) -> dict:
        """job.json's "memory" options with the switched-on rungs."""
        final = self.final()
        return {**self.requested_memory, **{f: final[f] for f in MEMORY_FIELDS}}

    def final(self) -> dict:
        values = {f: getattr(self.requested, f) for f in SETTINGS_FIELDS}
        values.update({f: bool(self.requested_memory[f]) for f in MEMORY_FIELDS})
        for change in self.changes:
            values[change.field] = change.new
        return values

    def next_change(self, stage: str) -> tuple[str, int | bool, int | bool] | None:
        """(field, old, new) of the next rung of ``stage``'s ladder, or None when all are at their floor."""
        final = self.final()
        for field, floor in LADDERS[stage]:
            value = final[field]
            if isinstance(floor, bool):
                if not value:
                    return field, False, True
            elif value > floor:
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


def where(stage: str, step: int) -> str:
    """"geometry step 12", or the stage's set-up (step 0: the pretraining, the unwrap)."""
    return f"{stage} step {step}" if step > 0 else f"the {stage} stage's set-up (before its first step)"


def describe(change: Change) -> str:
    what = WHAT[change.field]
    if isinstance(change.new, bool):
        instead = f"with {what} on"
        cost = ("the same gradients; the VAE encoder runs its forward twice, so each step is slower"
                if change.field == "vae_checkpointing"
                else "the same results; each step is slower, the UNet crosses to the GPU and back")
    else:
        instead = f"with {change.new} {what} instead of {change.old}"
        cost = "each step sees less, the run converges more slowly"
    if change.reason in ("memory_estimate", "machine_profile"):
        return f"{change.detail}: the job runs {instead} ({cost}; result.json records it)"
    return (f"the GPU ran out of memory at {where(change.stage, change.step)}; continuing from the last "
            f"checkpoint {instead} ({cost}; result.json records it)")


def exhausted(stage: str, step: int, detail: str, plan: MemoryPlan) -> EngineError:
    """The error once every rung of ``stage`` is taken: what the floors were, what is left to do."""
    final = plan.final()
    views = final["views_per_step" if stage == "geometry" else "texture_views_per_step"]
    return EngineError(
        f"the GPU ran out of memory at {where(stage, step)} ({detail}) with every memory fallback already taken "
        f"({views} view per step, VAE gradient checkpointing on, UNet and text encoders offloaded to the CPU)",
        code="cuda_out_of_memory", hint=LOWER_MEMORY_HINT)


def is_cuda_oom(exc: BaseException) -> bool:
    """A GPU allocation failure (one predicate for the whole engine: failures.is_gpu_out_of_memory)."""
    return is_gpu_out_of_memory(exc)


def free_device_memory(device) -> None:
    """Drop what the failed step left (the caller has let go of its references) and return cached
    blocks to the driver, so the smaller setting starts from a clean allocator."""
    import torch

    gc.collect()
    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def resumed_plan(requested, checkpoint_settings: dict | None, record: dict | None,
                 memory: dict | None = None) -> MemoryPlan:
    """The plan a ``--resume`` continues with, or ``checkpoint_mismatch``.

    The checkpoint's settings must equal job.json's, except for the adaptive fields, which may
    only be lower than job.json's (never below their floors) and exactly as its fallback record
    says: each field's recorded changes start from job.json's value and follow one another.
    Anything else means job.json was edited since the checkpoint was made. A memory option the
    record switched on and job.json now asks for itself is simply kept on (it changes no result).
    """
    wanted = requested.to_dict()
    have = dict(checkpoint_settings or {})
    memory = {field: False for field in MEMORY_FIELDS} | dict(memory or {})
    changes = [Change(**c) for c in (record or {}).get("changes", [])]
    changes = [c for c in changes if not (c.field in MEMORY_FIELDS and memory[c.field])]
    bad = [c.field for c in changes if c.field not in ADAPTIVE_FIELDS]
    start = {**{f: wanted.get(f) for f in SETTINGS_FIELDS}, **{f: bool(memory[f]) for f in MEMORY_FIELDS}}
    for change in changes:
        if change.field in start and change.old != start[change.field]:
            bad.append(change.field)  # the record lowered another value than job.json now asks for
        start[change.field] = change.new
    plan = MemoryPlan(requested, [c for c in changes if c.field in ADAPTIVE_FIELDS], memory)
    final = plan.final()
    differ = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    bad += [k for k in differ if k not in SETTINGS_FIELDS]
    for k in differ:
        if k in SETTINGS_FIELDS and not FLOORS[k] <= have[k] < wanted[k]:
            bad.append(k)  # raised, or below the floor: no fallback does that
    bad += [k for k in SETTINGS_FIELDS if final[k] != have.get(k, wanted[k])]  # not as recorded
    if bad:
        names = ", ".join(dict.fromkeys(bad))
        raise EngineError(f"the checkpoint was made with other settings than job.json now holds ({names})",
                          code="checkpoint_mismatch",
                          hint="restore job.json, or start the job over with the new settings (`generate ... "
                               "--new`; the add-on's worker: without --resume)")
    return plan


# ---- before launch -------------------------------------------------------------------------------

def free_memory_bytes(device) -> int | None:
    """What a step can still get on a CUDA device (bytes): the driver's free memory plus the blocks
    PyTorch's allocator holds but does not use; None elsewhere (nothing to fit on the CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


@dataclass(frozen=True)
class StepNeed:
    """Bytes of one SDS step's activations per view, without and with VAE checkpointing, and where
    they come from."""

    plain: int
    checkpointed: int
    source: str

    def per_view(self, checkpointing: bool) -> int:
        return self.checkpointed if checkpointing else self.plain


def step_need(dtype: str, profile: dict | None = None) -> StepNeed:
    """The machine profile's measured figure when Check GPU made it at this precision (the other
    checkpointing state scaled by the CPU-measured ratio), else the arithmetic figures."""
    half = "fp32" if dtype == "fp32" else "fp16"
    plain, ckpt = (int(ACTIVATION_GIB_PER_VIEW[(half, c)] * GiB) for c in (False, True))
    ratio = ckpt / plain
    if profile and profile.get("dtype") == dtype and profile.get("activation_bytes_per_view"):
        measured = int(profile["activation_bytes_per_view"])
        source = "measured by Check GPU on this machine"
        if profile.get("vae_checkpointing"):
            return StepNeed(int(measured / ratio), measured, source)
        return StepNeed(measured, int(measured * ratio), source)
    return StepNeed(plain, ckpt, "estimated")


def activation_bytes_per_view(dtype: str, profile: dict | None = None) -> tuple[int, str]:
    """(bytes, source) without VAE checkpointing (see :func:`step_need`)."""
    need = step_need(dtype, profile)
    return need.plain, need.source


def fit_before_launch(plan: MemoryPlan, free_bytes: int | None, need: StepNeed,
                      offloadable_bytes: int = 0) -> list[Change]:
    """Climb each stage's ladder until one step's estimated need fits ``free_bytes`` (the GPU's
    free memory once the prior is loaded; CPU offload adds ``offloadable_bytes``, the UNet's and
    text encoders' weights on the GPU). Returns the changes (empty: it fits, or nothing to fit on
    this device). The caller applies the memory options (``plan.memory``) to the loaded prior."""
    if free_bytes is None:
        return []
    made = []
    for stage, views_field in (("geometry", "views_per_step"), ("texture", "texture_views_per_step")):
        while True:
            final = plan.final()
            have = free_bytes + (offloadable_bytes if final["cpu_offload"] else 0)
            views = final[views_field]
            need_bytes = need.per_view(final["vae_checkpointing"]) * views + int(WORKSPACE_MARGIN_GIB * GiB)
            if need_bytes <= have:
                break
            detail = (f"one {stage} step needs about {need_bytes / GiB:.1f} GiB at {views} view(s) ({need.source}), "
                      f"the GPU has {have / GiB:.1f} GiB free")
            change = plan.lower(stage, 0, "memory_estimate", detail)
            if change is None:
                break
            made.append(change)
    return made


def estimate_report(plan: MemoryPlan, free_bytes: int | None, need: StepNeed,
                    offloadable_bytes: int = 0) -> dict | None:
    """The pre-launch estimate as result.json keeps it (None on the CPU)."""
    if free_bytes is None:
        return None
    final = plan.final()
    per_view = need.per_view(final["vae_checkpointing"])
    margin = int(WORKSPACE_MARGIN_GIB * GiB)
    have = free_bytes + (offloadable_bytes if final["cpu_offload"] else 0)
    return {"free_gib": round(have / GiB, 2), "activation_gib_per_view": round(per_view / GiB, 2),
            "source": need.source,
            "geometry_need_gib": round((per_view * final["views_per_step"] + margin) / GiB, 2),
            "texture_need_gib": round((per_view * final["texture_views_per_step"] + margin) / GiB, 2)}
