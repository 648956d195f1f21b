"""GPU memory: an out-of-memory error mid-run lowers the settings and the job finishes; the
lowered settings survive --resume; the pre-launch estimate fits the views to the free memory.

No GPU here: the out-of-memory error comes from :class:`FakeAllocator`, a TEST DOUBLE for the
CUDA caching allocator that raises a real ``torch.cuda.OutOfMemoryError`` (constructible on the
CPU build) when a step's batch is larger than its budget, from step k on. The free-memory probe
of the pre-launch estimate is replaced by a stand-in GPU with a fixed number of free bytes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.pipeline import checkpoint, memory_fallback
from engine.pipeline.geometry_stage import GeometryStage
from engine.pipeline.run import run_job
from engine.pipeline.texture_stage import TextureStage


class FakeAllocator:
    """TEST DOUBLE for the CUDA allocator: a step whose batch (views x render side^2) exceeds
    ``budget`` raises ``torch.cuda.OutOfMemoryError``, once the run has reached step ``k`` (a GPU
    that other programs filled up meanwhile). Counts what it refused."""

    def __init__(self, stage_cls, *, k: int, budget: int, views: str, resolution: str):
        self.stage_cls, self.k, self.budget = stage_cls, k, budget
        self.views, self.resolution = views, resolution
        self.refused: list[tuple[int, int, int]] = []
        self.calls: list[int] = []  # every step index the stage was asked to run, in order

    def install(self, monkeypatch):
        original = self.stage_cls.step
        allocator = self

        def step(stage, i):
            s = stage.settings
            need = getattr(s, allocator.views) * getattr(s, allocator.resolution) ** 2
            allocator.calls.append(i)
            if i >= allocator.k and need > allocator.budget:
                allocator.refused.append((i, getattr(s, allocator.views), getattr(s, allocator.resolution)))
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {need * 48 / 2**20:.2f} MiB (fake allocator, test double)")
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
    assert allocator.refused == [(3, 2, 32)]  # step index 3 (step 4) at 2 views, then never again
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
    assert record["final"]["views_per_step"] == 1 and record["final"]["render_resolution"] == 32
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


def test_views_then_resolution_then_a_clear_error(make_job, monkeypatch):
    # a GPU so small that nothing fits: views 2 -> 1, resolution 512 -> 256, then cuda_out_of_memory
    allocator = FakeAllocator(GeometryStage, k=1, budget=1, views="views_per_step",
                              resolution="render_resolution").install(monkeypatch)
    job = make_job(stop_after="geometry", overrides={"views_per_step": 2, "render_resolution": 512,
                                                     "checkpoint_every": 100})
    messages = []
    with pytest.raises(EngineError) as caught:
        run_job(job, emit=messages.append)
    assert caught.value.code == "cuda_out_of_memory" and "views_per_step" in caught.value.hint
    changes = [(m["field"], m["old"], m["new"]) for m in messages if m.get("code") == "memory_fallback"]
    assert changes == [("views_per_step", 2, 1), ("render_resolution", 512, 256)]
    assert [r[1:] for r in allocator.refused] == [(2, 512), (1, 512), (1, 256)]


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
        FakeAllocator(GeometryStage, k=3, budget=32 * 32, views="views_per_step",
                      resolution="render_resolution").install(patch)
        done = []

        def stop_after_step_5():
            return len(done) >= 1

        def emit(msg):
            if msg["type"] == "progress" and msg["step"] == 5:
                done.append(msg)

        with pytest.raises(EngineError) as caught:
            run_job(job_b, emit=emit, should_stop=stop_after_step_5)
        assert caught.value.code == "cancelled"
    assert checkpoint.load_latest(job_b)["settings"]["views_per_step"] == 1
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
    from engine.pipeline.presets import resolve_preset

    job = resolve_preset("standard")
    plan = memory_fallback.MemoryPlan(job)
    plan.lower("geometry", 7, "cuda_out_of_memory")
    ok = memory_fallback.resumed_plan(job, plan.settings.to_dict(), plan.record())
    assert ok.settings.views_per_step == 1 and ok.settings.render_resolution == 512
    # lowered without a record (someone edited the checkpoint's settings), raised, or below the floor
    for settings, record in ((plan.settings.to_dict(), None),
                             ({**job.to_dict(), "views_per_step": 4}, None),
                             ({**job.to_dict(), "render_resolution": 128},
                              {"changes": [{"stage": "geometry", "step": 1, "field": "render_resolution", "old": 512,
                                            "new": 128, "reason": "cuda_out_of_memory", "detail": ""}]})):
        with pytest.raises(EngineError) as caught:
            memory_fallback.resumed_plan(job, settings, record)
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
    assert info["memory"]["fallback"]["final"]["views_per_step"] == 1
    # with room for 2 views nothing changes
    assert memory_fallback.fit_before_launch(memory_fallback.MemoryPlan(
        __import__("engine.pipeline.presets", fromlist=["x"]).resolve_preset("standard")),
        int(8 * gib), int(3.28 * gib), "estimated") == []
