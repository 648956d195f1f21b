"""GPU memory: an out-of-memory error mid-run climbs the memory ladder and the job finishes; the
lowered settings survive --resume; the pre-launch estimate fits the settings to the free memory.

No GPU here: the out-of-memory error comes from :class:`FakeAllocator`, a TEST DOUBLE for the
CUDA caching allocator that raises a real ``torch.cuda.OutOfMemoryError`` (constructible on the
CPU build) when a step needs more than its budget, from step k on; a step's need is its batch
(views x render side^2), cut by the memory options the loaded prior really has on (VAE
checkpointing, CPU offload: read from the prior, so a rung that was recorded but not applied
does not help). The free-memory probe of the pre-launch estimate is replaced by a stand-in GPU
with a fixed number of free bytes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.pipeline import checkpoint, memory_fallback
from engine.pipeline.geometry_stage import GeometryStage
from engine.pipeline.presets import resolve_preset
from engine.pipeline.run import run_job
from engine.pipeline.texture_stage import TextureStage

# Share of a step's need left by each memory option in the TEST DOUBLE (the real ratios are in
# memory_fallback.ACTIVATION_GIB_PER_VIEW; what matters here is that each rung lowers the need).
CHECKPOINTED_SHARE, OFFLOADED_SHARE = 0.7, 0.5
NO_FLAGS = {"vae_checkpointing": False, "cpu_offload": False}


class FakeAllocator:
    """TEST DOUBLE for the CUDA allocator: a step whose need (views x render side^2, x 0.7 with
    VAE checkpointing on the prior, x 0.5 with CPU offload on the prior) exceeds ``budget`` raises
    ``torch.cuda.OutOfMemoryError``, once the run has reached step ``k`` (a GPU that other programs
    filled up meanwhile). Counts what it refused and what ran."""

    def __init__(self, stage_cls, *, k: int, budget: float, views: str, resolution: str):
        self.stage_cls, self.k, self.budget = stage_cls, k, budget
        self.views, self.resolution = views, resolution
        self.refused: list[tuple] = []  # (step index, views, VAE checkpointing, CPU offload)
        self.ran_with: list[tuple] = []  # (views, VAE checkpointing, CPU offload) of each step that ran
        self.calls: list[int] = []  # every step index the stage was asked to run, in order

    def install(self, monkeypatch):
        original = self.stage_cls.step
        allocator = self

        def step(stage, i):
            memory = stage.prior.memory
            views = getattr(stage.settings, allocator.views)
            flags = (bool(memory.vae_checkpointing), bool(memory.cpu_offload))
            need = views * getattr(stage.settings, allocator.resolution) ** 2
            need *= (CHECKPOINTED_SHARE if flags[0] else 1.0) * (OFFLOADED_SHARE if flags[1] else 1.0)
            allocator.calls.append(i)
            if i >= allocator.k and need > allocator.budget:
                allocator.refused.append((i, views, *flags))
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {need * 48 / 2**20:.2f} MiB (fake allocator, test double)")
            allocator.ran_with.append((views, *flags))
            return original(stage, i)

        monkeypatch.setattr(self.stage_cls, "step", step)
        return self


def run_collecting(job, **kwargs):
    messages = []
    folder = run_job(job, emit=messages.append, **kwargs)
    return folder, messages


def test_geometry_oom_at_step_k_resumes_with_fewer_views_and_finishes(make_job, monkeypatch):
    allocator = FakeAllocator(GeometryStage, k=3, budget=1 * 32 * 32, views="views_per_step",
                              resolution="render_resolution").install(monkeypatch)
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "checkpoint_every": 2})
    folder, messages = run_collecting(job)
    assert allocator.refused == [(3, 2, False, False)]  # step index 3 (step 4) at 2 views, then never again
    warnings = [m for m in messages if m["type"] == "warning" and m["code"] == "memory_fallback"]
    assert len(warnings) == 1
    w = warnings[0]
    assert (w["stage"], w["step"], w["field"], w["old"], w["new"]) == ("geometry", 4, "views_per_step", 2, 1)
    assert "ran out of memory at geometry step 4" in w["message"] and "1 views per geometry step" in w["message"]
    # the stage went on from its checkpoint at step 2 (next index 2), not from the start
    assert allocator.calls == [0, 1, 2, 3, 2, 3, 4, 5]
    steps = [m["step"] for m in messages if m["type"] == "progress" and m["stage"] == "geometry"]
    assert steps[-1] == 6
    info = json.loads((folder / "result.json").read_text())
    record = info["memory"]["fallback"]
    assert record["final"] == {"views_per_step": 1, "texture_views_per_step": 1, **NO_FLAGS}
    assert [(c["stage"], c["step"], c["field"], c["old"], c["new"], c["reason"]) for c in record["changes"]] == [
        ("geometry", 4, "views_per_step", 2, 1, "cuda_out_of_memory")]
    assert info["job"]["settings"]["views_per_step"] == 2  # what was asked stays visible beside what ran
    state = checkpoint.load_latest(job)
    assert state["settings"]["views_per_step"] == 1 and state["memory_fallback"] == record


def test_an_earlier_runs_checkpoint_is_never_taken_for_this_runs(make_job, monkeypatch):
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "checkpoint_every": 2})
    # An earlier run, cancelled once its step-4 checkpoint exists (not on a progress message:
    # those are rate-limited in time, so a fast machine may never report step 4): it stays.
    step4 = job / "checkpoints" / "ckpt-0000004.pt"
    with pytest.raises(EngineError):
        run_job(job, should_stop=step4.exists)
    assert checkpoint.load_latest(job)["next_step"] == 4
    allocator = FakeAllocator(GeometryStage, k=1, budget=32 * 32, views="views_per_step",
                              resolution="render_resolution").install(monkeypatch)
    run_job(job)  # a new run (no --resume) that runs out of memory before its first checkpoint
    assert allocator.calls == [0, 1, 0, 1, 2, 3, 4, 5]  # started the stage again, not at the old step 4


def test_after_the_views_it_turns_on_vae_checkpointing_then_cpu_offload_and_finishes(make_job, monkeypatch):
    # A GPU where 1 view fits only with both memory options: 2 views -> 1 -> checkpointing -> offload.
    # The budget counts only what the loaded prior really has on, so each rung must reach the prior.
    allocator = FakeAllocator(GeometryStage, k=1, budget=0.4 * 32 * 32, views="views_per_step",
                              resolution="render_resolution").install(monkeypatch)
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "checkpoint_every": 100})
    folder, messages = run_collecting(job)
    fallbacks = [m for m in messages if m.get("code") == "memory_fallback"]
    assert [(m["field"], m["old"], m["new"]) for m in fallbacks] == [
        ("views_per_step", 2, 1), ("vae_checkpointing", False, True), ("cpu_offload", False, True)]
    assert [r[1:] for r in allocator.refused] == [(2, False, False), (1, False, False), (1, True, False)]
    assert allocator.ran_with[-5:] == [(1, True, True)] * 5  # steps 2-6 of the last attempt
    assert "VAE gradient checkpointing on" in fallbacks[1]["message"] and "same gradients" in fallbacks[1]["message"]
    info = json.loads((folder / "result.json").read_text())
    assert info["memory"]["fallback"]["final"] == {"views_per_step": 1, "texture_views_per_step": 1,
                                                   "vae_checkpointing": True, "cpu_offload": True}


def test_every_rung_taken_then_a_clear_error_naming_the_floors(make_job, monkeypatch):
    # a GPU so small that nothing fits: views 2 -> 1, checkpointing, offload, then cuda_out_of_memory
    allocator = FakeAllocator(GeometryStage, k=1, budget=1, views="views_per_step",
                              resolution="render_resolution").install(monkeypatch)
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "checkpoint_every": 100})
    messages = []
    with pytest.raises(EngineError) as caught:
        run_job(job, emit=messages.append)
    err = caught.value
    assert err.code == "cuda_out_of_memory"
    assert "every memory fallback already taken" in err.message and "1 view per step" in err.message
    assert "Preview" in err.hint and "Device to CPU" in err.hint and "other programs" in err.hint
    changes = [(m["field"], m["old"], m["new"]) for m in messages if m.get("code") == "memory_fallback"]
    assert changes == [("views_per_step", 2, 1), ("vae_checkpointing", False, True), ("cpu_offload", False, True)]
    assert [r[1:] for r in allocator.refused] == [(2, False, False), (1, False, False), (1, True, False),
                                                 (1, True, True)]


def test_texture_oom_lowers_the_texture_views(make_job, monkeypatch):
    FakeAllocator(TextureStage, k=1, budget=1 * 32 * 32, views="texture_views_per_step",
                  resolution="texture_render_resolution").install(monkeypatch)
    job = make_job(overrides={"texture_views_per_step": 2}, texture_size=64)
    folder, messages = run_collecting(job)
    w = [m for m in messages if m.get("code") == "memory_fallback"]
    assert [(m["stage"], m["step"], m["field"], m["new"]) for m in w] == [("texture", 2, "texture_views_per_step", 1)]
    info = json.loads((folder / "result.json").read_text())
    assert info["memory"]["fallback"]["final"]["texture_views_per_step"] == 1
    assert (folder / "albedo.png").is_file()


def test_resume_keeps_the_lowered_settings_and_repeats_the_same_run(make_job, monkeypatch):
    overrides = {"views_per_step": 2, "checkpoint_every": 2}
    # A: an out-of-memory error at step 4, then to the end.
    with monkeypatch.context() as patch:
        FakeAllocator(GeometryStage, k=3, budget=32 * 32, views="views_per_step",
                      resolution="render_resolution").install(patch)
        folder_a, _ = run_collecting(make_job("a", stop_after="geometry", overrides=overrides))
    # B: the same error, then cancelled after step 5; resumed on a GPU with room (no fake allocator).
    job_b = make_job("b", stop_after="geometry", overrides=overrides)
    with monkeypatch.context() as patch:
        allocator = FakeAllocator(GeometryStage, k=3, budget=32 * 32, views="views_per_step",
                                  resolution="render_resolution").install(patch)

        def stop_after_step_5():  # counted on the steps themselves: progress messages are rate-limited in time
            return 4 in allocator.calls  # step index 4 (step 5) ran after the fallback (calls 0 1 2 3 | 2 3 4)

        with pytest.raises(EngineError) as caught:
            run_job(job_b, should_stop=stop_after_step_5)
        assert caught.value.code == "cancelled"
    state = checkpoint.load_latest(job_b)
    assert state["next_step"] == 5 and state["settings"]["views_per_step"] == 1
    folder_b, messages_b = run_collecting(job_b, resume=True)
    assert not [m for m in messages_b if m.get("code") == "memory_fallback"]  # no new error: the record carried it
    a, b = np.load(folder_a / "head.npz"), np.load(folder_b / "head.npz")
    assert a["vertices"].shape == b["vertices"].shape and np.array_equal(a["vertices"], b["vertices"])
    info = json.loads((folder_b / "result.json").read_text())
    assert info["memory"]["fallback"]["final"]["views_per_step"] == 1
    assert [c["step"] for c in info["memory"]["fallback"]["changes"]] == [4]


def test_resume_refuses_any_other_change(make_job, monkeypatch):
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "checkpoint_every": 2})
    with monkeypatch.context() as patch:
        FakeAllocator(GeometryStage, k=3, budget=32 * 32, views="views_per_step",
                      resolution="render_resolution").install(patch)
        run_job(job)
    data = json.loads((job / "job.json").read_text())
    data["overrides"]["geometry_lr"] = 5e-3  # not a memory setting
    (job / "job.json").write_text(json.dumps(data))
    with pytest.raises(EngineError) as caught:
        run_job(job, resume=True)
    assert caught.value.code == "checkpoint_mismatch" and "geometry_lr" in caught.value.message


def test_resumed_plan_accepts_only_recorded_lowerings():
    job = resolve_preset("standard")
    plan = memory_fallback.MemoryPlan(job)
    plan.lower("geometry", 7, "cuda_out_of_memory")
    plan.lower("geometry", 9, "cuda_out_of_memory")
    ok = memory_fallback.resumed_plan(job, plan.settings.to_dict(), plan.record())
    assert ok.settings.views_per_step == 1 and ok.memory["vae_checkpointing"] is True
    # a memory option the record switched on and job.json now asks for itself: kept on, no mismatch
    kept = memory_fallback.resumed_plan(job, plan.settings.to_dict(), plan.record(), {"vae_checkpointing": True})
    assert kept.memory["vae_checkpointing"] is True and [c.field for c in kept.changes] == ["views_per_step"]
    # Refused: lowered without a record (someone edited the checkpoint's settings); raised; a field
    # that is not adaptive (render_resolution); job.json's views raised after the recorded lowering
    # (2 -> 1 recorded, job.json now 4: the record's "old" no longer matches what is asked).
    raised_job = resolve_preset("standard", {"views_per_step": 4})
    resolution_record = {"changes": [{"stage": "geometry", "step": 1, "field": "render_resolution", "old": 512,
                                      "new": 256, "reason": "cuda_out_of_memory", "detail": ""}]}
    for requested, settings, record in (
            (job, plan.settings.to_dict(), None),
            (job, {**job.to_dict(), "views_per_step": 4}, None),
            (job, {**job.to_dict(), "render_resolution": 256}, resolution_record),
            (raised_job, {**raised_job.to_dict(), "views_per_step": 1}, plan.record())):
        with pytest.raises(EngineError) as caught:
            memory_fallback.resumed_plan(requested, settings, record)
        assert caught.value.code == "checkpoint_mismatch"
    assert memory_fallback.resumed_plan(job, job.to_dict(), None).changes == []


def test_pre_launch_estimate_lowers_the_views_to_fit_the_free_memory(make_job, monkeypatch):
    # STAND-IN GPU: 5 GiB free once the prior is loaded (the CPU run has no GPU to measure).
    gib = memory_fallback.GiB
    monkeypatch.setattr(memory_fallback, "free_memory_bytes", lambda device: 5 * gib)
    job = make_job(stop_after="geometry", overrides={"views_per_step": 4, "texture_views_per_step": 4})
    folder, messages = run_collecting(job)
    w = [m for m in messages if m.get("code") == "memory_estimate"]
    # fp32 arithmetic: 3.28 GiB per view + 0.75 GiB margin -> only 1 view fits in 5 GiB
    assert [(m["stage"], m["field"], m["old"], m["new"]) for m in w] == [
        ("geometry", "views_per_step", 4, 2), ("geometry", "views_per_step", 2, 1),
        ("texture", "texture_views_per_step", 4, 2), ("texture", "texture_views_per_step", 2, 1)]
    assert "5.0 GiB free" in w[0]["message"] and "estimated" in w[0]["message"]
    info = json.loads((folder / "result.json").read_text())
    assert info["memory"]["before_launch"]["free_gib"] == 5.0
    assert info["memory"]["before_launch"]["source"] == "estimated"
    assert info["memory"]["fallback"]["final"]["views_per_step"] == 1
    # with room for 2 views nothing changes
    assert memory_fallback.fit_before_launch(memory_fallback.MemoryPlan(resolve_preset("standard")), int(8 * gib),
                                             memory_fallback.step_need("fp32")) == []


def test_pre_launch_estimate_takes_checkpointing_then_offload_when_one_view_does_not_fit():
    gib = memory_fallback.GiB
    need = memory_fallback.step_need("fp16")  # 1.79 GiB per view, 1.32 with checkpointing, + 0.75 margin
    # 2.3 GiB free: 1 view (2.54) does not fit, with checkpointing (2.07) it does
    plan = memory_fallback.MemoryPlan(resolve_preset("preview"))
    made = memory_fallback.fit_before_launch(plan, int(2.3 * gib), need, offloadable_bytes=int(1.9 * gib))
    assert [(c.field, c.new) for c in made] == [("vae_checkpointing", True)]
    # 1.0 GiB free: checkpointing is not enough; offloading 1.9 GiB of weights makes room
    plan = memory_fallback.MemoryPlan(resolve_preset("preview"))
    made = memory_fallback.fit_before_launch(plan, int(1.0 * gib), need, offloadable_bytes=int(1.9 * gib))
    assert [(c.field, c.new) for c in made] == [("vae_checkpointing", True), ("cpu_offload", True)]
    assert plan.memory["cpu_offload"] is True and "needs about 2.5 GiB" in made[0].detail
    report = memory_fallback.estimate_report(plan, int(1.0 * gib), need, int(1.9 * gib))
    assert report["free_gib"] == 2.9 and report["activation_gib_per_view"] == 1.32
    # the weights offloaded for the geometry stage leave room for 2 texture views (2 x 1.32 + 0.75 <= 1.6 + 1.9)
    plan = memory_fallback.MemoryPlan(resolve_preset("standard"))
    made = memory_fallback.fit_before_launch(plan, int(1.6 * gib), need, offloadable_bytes=int(1.9 * gib))
    assert [(c.stage, c.field, c.new) for c in made] == [
        ("geometry", "views_per_step", 1), ("geometry", "vae_checkpointing", True), ("geometry", "cpu_offload", True)]
    assert plan.settings.texture_views_per_step == 2
    # a measured profile at this precision replaces the arithmetic (and scales to the other state)
    measured = memory_fallback.step_need("fp16", {"dtype": "fp16", "activation_bytes_per_view": gib})
    assert measured.plain == gib and measured.checkpointed < gib and "Check GPU" in measured.source
    assert memory_fallback.step_need("fp32", {"dtype": "fp16", "activation_bytes_per_view": gib}).source == "estimated"


def test_vae_checkpointing_keeps_the_gradient_and_saves_less(tiny_models_root):
    """The second rung on a real (tiny) prior: the same gradient on the render, bit for bit on the
    CPU, with fewer values kept for the backward (so the switch really took effect)."""
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu")
    render = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))

    def backward(checkpointing: bool):
        prior.apply_memory(dataclasses.replace(prior.memory, vae_checkpointing=checkpointing))
        x = render.clone().requires_grad_(True)
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            latents = prior.encode_images(x)
        upstream = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        (latents * upstream).sum().backward()
        return x.grad, sum(saved)

    plain, plain_saved = backward(False)
    ckpt, ckpt_saved = backward(True)
    assert torch.equal(plain, ckpt) and plain.abs().sum() > 0
    assert ckpt_saved < plain_saved / 2


class SpyModule:
    """TEST DOUBLE for a model under CPU offload: records where it is asked to go (no tensors)."""

    def __init__(self):
        self.moves = []

    def to(self, where):
        self.moves.append(str(where))
        return self


def test_cpu_offload_keeps_a_module_in_place_while_a_graph_needs_its_weights(tiny_models_root):
    """Moving weights away after a forward under grad would swap the storage autograd saved for the
    backward (a device mismatch on a GPU): ``_placed`` leaves the module on the device then. The
    device is a STAND-IN ("cuda" by name only: nothing runs on it here)."""
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu")
    prior.memory = dataclasses.replace(prior.memory, cpu_offload=True)
    prior.device = torch.device("cuda")  # only its type is read by _placed
    spy = SpyModule()
    with torch.no_grad(), prior._placed(spy):
        pass
    assert spy.moves == ["cuda", "cpu"]  # no graph: back to the CPU at once
    spy.moves.clear()
    with torch.enable_grad(), prior._placed(spy):
        pass
    assert spy.moves == ["cuda"]  # a graph may hold its weights: it stays until a no-grad use


GPU_ALLOCATION_FAILURES = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("Cuda error: 2[cudaErrorMemoryAllocation];"),  # what nvdiffrast's kernels raise
]


@pytest.mark.parametrize("error", GPU_ALLOCATION_FAILURES)
def test_every_gpu_allocation_failure_is_one_out_of_memory(error):
    from engine.pipeline.failures import classify

    assert memory_fallback.is_cuda_oom(error) and classify(error).code == "cuda_out_of_memory"
    assert not memory_fallback.is_cuda_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_the_run_falls_back_on_a_libraries_allocation_failure(make_job, monkeypatch):
    original, raised = GeometryStage.step, []

    def step(stage, i):  # TEST DOUBLE: nvdiffrast's allocation failing at 2 views
        if i == 1 and stage.settings.views_per_step == 2:
            raised.append(i)
            raise RuntimeError("Cuda error: 2[cudaErrorMemoryAllocation];")
        return original(stage, i)

    monkeypatch.setattr(GeometryStage, "step", step)
    folder, messages = run_collecting(make_job(stop_after="geometry", overrides={"views_per_step": 2}))
    assert raised == [1] and [m["field"] for m in messages if m.get("code") == "memory_fallback"] == ["views_per_step"]


def test_free_memory_counts_the_allocators_cached_blocks(monkeypatch):
    # STAND-IN GPU: 1 GiB free for the driver, 3 GiB reserved by PyTorch of which 2 GiB in use
    gib = memory_fallback.GiB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 8 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    assert memory_fallback.free_memory_bytes(torch.device("cuda")) == 2 * gib
    assert memory_fallback.free_memory_bytes(torch.device("cpu")) is None


def test_an_out_of_memory_error_before_the_first_step_is_named_as_the_stages_set_up():
    plan = memory_fallback.MemoryPlan(resolve_preset("standard"))
    change = plan.lower("geometry", 0, "cuda_out_of_memory", "CUDA out of memory")
    text = memory_fallback.describe(change)
    assert "the geometry stage's set-up" in text and "step 0" not in text
    assert "geometry step 7" in memory_fallback.describe(dataclasses.replace(change, step=7))
    plan.lower("geometry", 0, "cuda_out_of_memory")
    plan.lower("geometry", 0, "cuda_out_of_memory")
    error = memory_fallback.exhausted("geometry", 0, "CUDA out of memory", plan)
    assert "the geometry stage's set-up" in error.message and "step 0" not in error.message
