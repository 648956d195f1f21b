"""``run_job``: one job folder in, one result folder out, reported as protocol-shaped messages.

Stages: identity (photos or a ready embedding) -> prior (normal LoRA when present, else the base
prior) -> geometry (neutral + expressions jointly, :mod:`.geometry_stage`) -> texture
(:mod:`.texture_stage`) -> export (engine.export) -> quality (engine.export.quality). A
checkpoint every ``checkpoint_every`` steps and at every stage end; ``should_stop()`` is checked
before every step (a final checkpoint is written, then :class:`Cancelled` is raised).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import protocol
from ..errors import EngineError
from . import checkpoint as ckpt
from .failures import Cancelled, classify, nan_loss
from .job import JobSpec, load_job
from .job_folder import open_for_run
from .live import LiveOutput
from .memory_fallback import MemoryPlan

log = logging.getLogger(__name__)
RESULT = "result"
PROGRESS_INTERVAL_S = 0.2  # progress messages at most this often (first and last step always)


def run_job(job_dir, *, resume: bool = False, emit=None, should_stop=None, adopt_checkpoints: bool = False) -> Path:
    """Run ``JOB_DIR/job.json``; returns the result folder. ``emit(dict)`` gets protocol messages
    (stage, progress, preview, snapshot, warning, result); errors are raised as EngineError
    (JobError for a bad job, Cancelled when ``should_stop()`` turned true). ``adopt_checkpoints``:
    the folder is a copy that did not keep file times; its checkpoints are checked by loading
    them and taken back as the engine's (:func:`engine.pipeline.checkpoint.adopt`)."""
    job_dir = Path(job_dir).expanduser().resolve()
    spec = load_job(job_dir)
    _check_writable(job_dir)
    emit = emit or (lambda msg: None)
    adopted: list[Path] = []
    adopt = (lambda folder: adopted.extend(ckpt.adopt(folder, spec))) if adopt_checkpoints else None
    lock = open_for_run(job_dir, adopt=adopt)  # claimed as the engine's, and run by one process at a time
    try:
        if adopted:
            emit(protocol.message("warning", code="adopted", message=f"took back {len(adopted)} file(s) of a copied "
                                  f"job folder as the engine's ({', '.join(p.name for p in adopted[:4])}"
                                  + (" ..." if len(adopted) > 4 else "") + "): each checkpoint loaded and checked"))
        job = _Job(spec, job_dir, emit, should_stop or (lambda: False))
        with deterministic_on_cpu(spec.device):
            return job.run(resume)
    except EngineError:
        raise
    except Exception as exc:
        log.exception("job failed")
        raise classify(exc, job_dir) from exc
    finally:
        lock.release()


@contextlib.contextmanager
def deterministic_on_cpu(device: str):
    """With two or more CPU threads some torch kernels accumulate in a run-dependent order: two
    identical 30-step runs then ended with different meshes (even vertex counts), and a resumed run
    could not match an uninterrupted one. Deterministic kernels make the CPU run repeatable; CUDA is
    left alone (its deterministic mode is slow and needs a cuBLAS workspace setting)."""
    if device not in ("cpu", "auto") or (device == "auto" and torch.cuda.is_available()):
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def _check_writable(job_dir: Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=job_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise classify(exc, job_dir) from None


class _Job:
    def __init__(self, spec: JobSpec, job_dir: Path, emit, should_stop):
        self.spec, self.job_dir, self._emit, self.should_stop = spec, job_dir, emit, should_stop
        # the settings and memory options as they run (lowered on GPU memory errors)
        self.plan = MemoryPlan(spec.settings, memory=spec.memory)
        self.memory_estimate = None
        self.machine_profile = self.profile = None
        self.prior = None
        self.current_step = 0
        self.own_checkpoint = False  # a checkpoint of this run (or the one it resumed) is the newest
        self.stages = ["identity", "prior", "geometry"]
        if spec.stop_after != "geometry":
            self.stages.append("texture")
        if spec.stop_after != "geometry" and spec.output.get("quality_report", True):
            self.stages.append("quality")  # before export: its report and renders go into the result
        self.stages.append("export")
        self.timings: dict[str, float] = {}
        self.total_steps = self.settings.geometry_steps + (
            self.settings.texture_steps if "texture" in self.stages else 0)
        self.step_seconds: list[float] = []
        self.last_progress = -math.inf
        self.live = LiveOutput(job_dir, spec.snapshot_interval_s, self.send)

    @property
    def settings(self):
        return self.plan.settings

    # ---- messages ----------------------------------------------------------------------------

    def send(self, kind: str, **fields) -> None:
        self._emit(protocol.message(kind, **fields))

    def stage(self, name: str) -> None:
        self.send("stage", name=name, index=self.stages.index(name) + 1, count=len(self.stages))
        self._stage_started = time.perf_counter()
        self._stage_name = name

    def end_stage(self) -> None:
        self.timings[self._stage_name] = round(time.perf_counter() - self._stage_started, 3)

    def progress(self, stage: str, step: int, total: int, global_step: int, loss: float, expression: str,
                 seconds: float) -> None:
        self.step_seconds.append(seconds)
        now = time.monotonic()
        if step not in (1, total) and now - self.last_progress < PROGRESS_INTERVAL_S:
            return
        self.last_progress = now
        recent = self.step_seconds[-20:]
        eta = sum(recent) / len(recent) * (self.total_steps - global_step)
        self.send("progress", step=step, total=total, stage=stage, loss=round(loss, 6),
                  eta_s=round(eta, 1), expression=expression)

    # ---- the job -----------------------------------------------------------------------------

    def run(self, resume: bool) -> Path:
        spec, s = self.spec, self.settings
        state = ckpt.load_latest(self.job_dir) if resume else None
        if resume and state is None:
            self.send("warning", code="no_checkpoint", message="no checkpoint in the job folder: starting from the beginning")
        if state is not None:  # job.json's settings, or exactly the memory fallbacks the checkpoint records
            from .memory_fallback import resumed_plan

            self.plan = resumed_plan(spec.settings, state.get("settings"), state.get("memory_fallback"), spec.memory)
            self.own_checkpoint = True

        self.stage("identity")
        embedding = state["embedding"].numpy() if state is not None else self.identity()
        self.end_stage()

        self.stage("prior")
        prior, normal_lora, albedo_lora = self.load_prior()
        self.end_stage()

        self.stage("geometry")
        if state is not None and state["stage"] == "texture":
            canonical = {k: v.numpy() for k, v in state["canonical"].items()}
            offsets = {n: canonical.pop(f"offset:{n}") for n in spec.expressions}
            vertices, faces = canonical["vertices"], canonical["faces"]
            self.send("warning", code="geometry_resumed", message="geometry was finished before: resuming the texture")
        else:
            vertices, faces, offsets = self.geometry(prior, embedding, normal_lora, state)
            state = None  # the texture stage starts fresh after a geometry run
        self.end_stage()
        canonical_state = {"vertices": torch.from_numpy(vertices), "faces": torch.from_numpy(faces),
                           **{f"offset:{n}": torch.from_numpy(o) for n, o in offsets.items()}}

        textures = None
        if "texture" in self.stages:
            self.stage("texture")
            textures = self.texture(prior, embedding, vertices, faces, offsets, albedo_lora, state, canonical_state)
            self.end_stage()

        head = self.head_mesh(vertices, faces, offsets, textures)
        quality = sheet = None
        if "quality" in self.stages:
            self.stage("quality")
            quality, sheet = self.quality(head, textures, embedding)
            self.end_stage()

        from ..result_format import as_correctives

        head, correctives = as_correctives(head)  # after the quality renders, which show each whole face
        self.stage("export")
        folder, glb = self.export(head, textures, quality, sheet, correctives)
        self.end_stage()
        self.send("result", folder=str(folder), glb=str(glb) if glb else None)
        return folder

    # ---- identity and prior ------------------------------------------------------------------

    def identity(self) -> np.ndarray:
        path = self.spec.embedding_path()
        if path is not None:
            try:
                e = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
            except (OSError, ValueError) as exc:
                raise EngineError(f"{path} is not a readable .npy file ({exc})", code="bad_embedding",
                                  hint="save the identity with numpy.save(path, embedding) ([512] floats)") from None
            if e.shape != (512,) or not np.isfinite(e).all() or not np.linalg.norm(e) > 0:
                raise EngineError(f"{path} must hold 512 finite values, not all zero (it has shape {list(e.shape)})",
                                  code="bad_embedding", hint="use an ArcFace embedding saved by the identity step")
            return e / np.linalg.norm(e)
        from ..identity import analyse_photos

        report = analyse_photos([Path(p) for p in self.spec.photos], models_root=self.models_root,
                                out_dir=self.job_dir / "identity", device=self.device.type)
        if report.embedding is None:
            reasons = "; ".join(f"{Path(r.path).name}: {r.status} {r.message}" for r in report.photos)
            raise EngineError(f"no identity could be made from the photos ({reasons})", code="no_identity",
                              hint="use clear photos of one person's face (see Check Photos)")
        return np.asarray(report.embedding, np.float32)

    @property
    def models_root(self) -> Path:
        from ..models import default_models_root

        return Path(self.spec.models).expanduser() if self.spec.models else default_models_root()

    @property
    def device(self) -> torch.device:
        d = self.spec.device
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"job.json asks for device {d!r} but this Python's torch sees no CUDA GPU",
                              code="job_bad_device", hint='use "device": "auto" or "cpu"')
        return torch.device(d)

    def load_prior(self):
        from ..model_digests import model_file_digests
        from ..prior import load_prior
        from ..prior.model import MemoryOptions

        root = self.models_root
        normal = (root / "loras" / "normal" / "prior_adapter.json").is_file()
        albedo = (root / "loras" / "albedo" / "prior_adapter.json").is_file()
        dtype, attention = self.machine_settings(root)
        prior = load_prior(root, device=self.device, dtype=dtype,
                           task="normal" if normal else None, memory=self.memory_options(attention),
                           allow_download=self.spec.allow_download)
        self.prior = prior
        self.fit_memory_before_launch(prior)
        if not normal:
            self.send("warning", code="base_prior",
                      message="no normal-map prior under loras/normal: geometry uses shaded renders with the base prior")
        self.models_tiny = _is_tiny(root)
        self.model_files = model_file_digests(root)  # cached per user: no re-read of GBs per start
        if self.models_tiny:
            self.send("warning", code="tiny_models",
                      message="the models are tiny random test models: the head will not be a likeness")
        return prior, normal, albedo

    def memory_options(self, attention: str):
        """The prior's MemoryOptions: job.json's, with the switches the memory plan turned on."""
        from ..prior.model import MemoryOptions

        m = self.plan.memory
        return MemoryOptions(attention=attention,
                             channels_last=m["channels_last"], vae_tiling=m["vae_tiling"],
                             vae_checkpointing=m["vae_checkpointing"], cpu_offload=m["cpu_offload"])

    def machine_settings(self, root: Path) -> tuple[str | None, str]:
        """(dtype, attention) for the prior: job.json's, except that ``"dtype": "auto"`` and the
        default attention take what Check GPU found on this GPU for this preset (the machine
        profile), e.g. bf16 or fp32 where fp16 gave NaN, sliced attention where nothing else fit;
        and the preset's views per step and memory options are lowered to what its check fitted
        (recorded like any memory fallback, reason ``machine_profile``)."""
        from . import memory_fallback as mf

        dtype = None if self.spec.dtype == "auto" else self.spec.dtype
        attention = self.spec.memory["attention"]
        if not self._profiled_device():
            return dtype, attention
        from ..machine_profile import entry_for, load_profile, precision_from

        profile = load_profile(self.device, root)
        if profile is None:
            return dtype, attention
        preset = self.spec.preset
        entry = entry_for(profile, preset) if profile["exact"] else None
        profile_dtype, fp16_finite = precision_from(profile, preset)
        self.profile = entry
        self.machine_profile = {"path": profile["path"], "exact": profile["exact"], "preset": preset,
                                "dtype": profile_dtype, **({k: entry.get(k) for k in (
                                    "attention", "views_per_step", "vae_checkpointing", "cpu_offload")}
                                    if entry else {})}
        notes = []
        if dtype is None and profile_dtype:
            dtype = profile_dtype
            if fp16_finite is False:
                notes.append(f"{dtype}: fp16 gave non-finite gradients on this GPU")
        if not profile["exact"]:
            self.send("warning", code="machine_profile_outdated",
                      message=f"the Check GPU results for this GPU were made with another driver, torch, engine or "
                              f"model files: only their precision ({profile_dtype}) is used; run Check GPU again "
                              "(add-on preferences, or `python -m engine doctor --gpu`)")
        if entry:
            if attention == "sdpa" and entry.get("attention") == "sliced":
                attention = "sliced"
                notes.append("sliced attention: nothing else fitted in Check GPU")
            detail = f"Check GPU found this on this GPU for the {preset} preset"
            if entry.get("views_per_step") and entry["views_per_step"] < entry.get("preset_views_per_step", 0):
                for views_field in mf.SETTINGS_FIELDS:
                    old = getattr(self.plan.settings, views_field)
                    if old > entry["views_per_step"]:
                        stage = "geometry" if views_field == "views_per_step" else "texture"
                        self.plan.changes.append(mf.Change(stage, 0, views_field, old, entry["views_per_step"],
                                                           "machine_profile", detail))
            for flag in mf.MEMORY_FIELDS:
                if entry.get(flag) and not self.plan.final()[flag]:
                    self.plan.changes.append(mf.Change("geometry", 0, flag, False, True, "machine_profile", detail))
            for change in [c for c in self.plan.changes if c.reason == "machine_profile"]:
                notes.append(mf.describe(change).split(": ", 1)[1])
        if notes:
            self.send("warning", code="machine_profile",
                      message="using the settings Check GPU found for this GPU: " + "; ".join(notes))
        return dtype, attention

    def fp16_on_cuda(self, prior) -> bool:
        return self.device.type == "cuda" and getattr(prior, "dtype", None) == torch.float16

    def _profiled_device(self) -> bool:
        """Machine profiles are made and read on CUDA devices only."""
        return self.device.type == "cuda"

    def fit_memory_before_launch(self, prior) -> None:
        """Climb the memory ladder up front when one step's estimated need exceeds the free GPU memory."""
        from . import memory_fallback as mf
        from .failures import LOWER_MEMORY_HINT

        free = mf.free_memory_bytes(self.device)
        if free is None:
            return
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(prior.dtype, "fp32")
        need = mf.step_need(dtype, self.profile)
        offloadable = sum(p.numel() * p.element_size() for m in (prior.unet, prior.text_encoder,
                                                                 getattr(prior, "blend_text_encoder", None))
                          if m is not None for p in m.parameters() if p.device.type == "cuda")
        made = mf.fit_before_launch(self.plan, free, need, offloadable)
        for change in made:
            self.send("warning", code="memory_estimate", message=mf.describe(change), stage=change.stage,
                      step=0, field=change.field, old=change.old, new=change.new)
        self.apply_plan_memory()
        self.memory_estimate = mf.estimate_report(self.plan, free, need, offloadable)
        need_gib = max(self.memory_estimate["geometry_need_gib"], self.memory_estimate["texture_need_gib"])
        if need_gib > self.memory_estimate["free_gib"]:
            self.send("warning", code="memory_tight",
                      message=f"one step needs about {need_gib:.1f} GiB even with every memory fallback (1 view, VAE "
                              f"checkpointing, CPU offload; {need.source}) and the GPU has "
                              f"{self.memory_estimate['free_gib']:.1f} GiB free: the job tries anyway. If it runs out: "
                              + LOWER_MEMORY_HINT)

    def apply_plan_memory(self) -> None:
        """Put the plan's memory options (VAE checkpointing, CPU offload) on the loaded prior."""
        if self.prior is not None and hasattr(self.prior, "apply_memory"):
            wanted = self.memory_options(self.prior.memory.attention)
            if wanted != self.prior.memory:
                self.prior.apply_memory(wanted)

    # ---- stage 1 -----------------------------------------------------------------------------

    def save_checkpoint(self, step: int, state: dict) -> Path:
        """A checkpoint with the settings as they run and the memory fallbacks that made them
        (a resume keeps both)."""
        path = ckpt.save_checkpoint(self.job_dir, step, {
            **state, "settings": self.settings.to_dict(), "memory_fallback": self.plan.record()})
        self.own_checkpoint = True
        return path

    def with_memory_fallback(self, stage: str, run, state):
        """``run(state)``; on a CUDA out-of-memory error in a step, lower the stage's next memory
        setting (memory_fallback.LADDERS), free the device, reload the stage's last checkpoint and
        run again. Gives up (cuda_out_of_memory) when every setting is at its floor."""
        from .memory_fallback import describe, exhausted, free_device_memory, is_cuda_oom

        while True:
            self.current_step = 0
            try:
                return run(state)
            except Exception as exc:
                if not is_cuda_oom(exc):
                    raise
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if self.plan.next_change(stage) is None:
                    raise exhausted(stage, self.current_step, detail, self.plan) from exc
            # Outside the except block: the failed step's frames (and their tensors) are released.
            change = self.plan.lower(stage, self.current_step, "cuda_out_of_memory", detail)
            free_device_memory(self.device)
            self.apply_plan_memory()
            # Only a checkpoint this run wrote (or resumed from): an earlier run's may lie in the folder.
            latest = ckpt.load_latest(self.job_dir) if self.own_checkpoint else None
            state = latest if latest is not None and latest["stage"] == stage else None
            log.warning("%s", describe(change))
            self.send("warning", code="memory_fallback", message=describe(change), stage=stage,
                      step=change.step, field=change.field, old=change.old, new=change.new)

    def geometry(self, prior, embedding, normal_lora: bool, state):
        return self.with_memory_fallback("geometry", lambda st: self._geometry(prior, embedding, normal_lora, st),
                                         state)

    def _geometry(self, prior, embedding, normal_lora: bool, state):
        from .geometry_stage import GeometryStage

        s = self.settings
        stage = GeometryStage(s, prior, embedding, self.spec.expressions, seed=self.spec.seed, device=self.device,
                              normal_maps=normal_lora, prompts=self.spec.expression_prompts)
        first = 0
        if state is not None and state["stage"] == "geometry":
            stage.load_state_dict(state["geometry"])
            first = int(state["next_step"])
        elif not stage.initialise(self.should_stop):
            raise Cancelled("cancelled while the head shape was initialised (no checkpoint yet)")

        def save(next_step: int) -> Path:
            return self.save_checkpoint(next_step, {
                "stage": "geometry", "next_step": next_step, "embedding": torch.from_numpy(embedding),
                "geometry": stage.state_dict(), "rng": torch.get_rng_state()})

        for i in range(first, s.geometry_steps):
            if self.should_stop():
                raise Cancelled(checkpoint=save(i))
            self.current_step = i + 1
            started = time.perf_counter()
            out = stage.step(i)
            loss = float(out.loss)  # the one host sync of the step
            if not math.isfinite(loss):
                raise nan_loss("geometry", i + 1, fp16_on_cuda=self.fp16_on_cuda(prior))
            self.progress("geometry", i + 1, s.geometry_steps, i + 1, loss, out.expression,
                          time.perf_counter() - started)
            if self.live.due():
                self.live.write(i + 1, image=out.image.cpu().numpy(), vertices=out.vertices.cpu().numpy(),
                                faces=out.faces.cpu().numpy(), expression=out.expression)
            if (i + 1) % s.checkpoint_every == 0 and i + 1 < s.geometry_steps:
                save(i + 1)
        vertices, faces, offsets = stage.canonical(s.target_faces)
        error = stage.decimation["error"]
        if error is not None:  # keep the full mesh: a long geometry run is not thrown away for this
            self.send("warning", code=error.code,
                      message=f"{error.message}; the canonical mesh keeps its {len(faces)} faces ({error.hint})")
        self.live.write(s.geometry_steps, image=None, vertices=vertices, faces=faces)
        self.save_checkpoint(s.geometry_steps, {
            "stage": "texture", "next_step": 0, "embedding": torch.from_numpy(embedding),
            "canonical": {"vertices": torch.from_numpy(vertices), "faces": torch.from_numpy(faces),
                          **{f"offset:{n}": torch.from_numpy(o) for n, o in offsets.items()}},
            "rng": torch.get_rng_state()})
        return vertices, faces, offsets

    # ---- stage 2 -----------------------------------------------------------------------------

    def texture(self, prior, embedding, vertices, faces, offsets, albedo_lora, state, canonical_state):
        return self.with_memory_fallback(
            "texture",
            lambda st: self._texture(prior, embedding, vertices, faces, offsets, albedo_lora, st, canonical_state),
            state)

    def _texture(self, prior, embedding, vertices, faces, offsets, albedo_lora, state, canonical_state):
        try:
            from .texture_stage import TextureStage
            stage_cls = TextureStage
            import engine.texture  # noqa: F401  (the texture room, CONTRACT §5)
        except ImportError as exc:
            raise EngineError(f"the texture room is not installed ({exc})", code="texture_unavailable",
                              hint='run with "stop_after": "geometry", or update the engine') from None
        s = self.settings
        if albedo_lora:
            prior.set_task("albedo")
        else:
            prior.set_task(None)
        stage = stage_cls(s, prior, embedding, vertices, faces, offsets, size=self.spec.resolved_texture_size,
                          seed=self.spec.seed, device=self.device, albedo_lora=albedo_lora,
                          prompts=self.spec.expression_prompts, layout=getattr(self, "texture_layout", None))
        self.texture_layout = stage.layout  # a memory fallback reuses the unwrap (seconds on a 40k-face mesh)
        first = 0
        if state is not None and state["stage"] == "texture" and "texture" in state:
            stage.load_state_dict(state["texture"])
            first = int(state["next_step"])

        def save(next_step: int) -> Path:
            return self.save_checkpoint(s.geometry_steps + next_step, {
                "stage": "texture", "next_step": next_step, "embedding": torch.from_numpy(embedding),
                "canonical": canonical_state, "texture": stage.state_dict(), "rng": torch.get_rng_state()})

        for i in range(first, s.texture_steps):
            if self.should_stop():
                raise Cancelled(checkpoint=save(i))
            self.current_step = i + 1
            started = time.perf_counter()
            loss_t, name, image = stage.step(i)
            loss = float(loss_t)
            if not math.isfinite(loss):
                raise nan_loss("texture", i + 1, fp16_on_cuda=self.fp16_on_cuda(prior))
            self.progress("texture", i + 1, s.texture_steps, s.geometry_steps + i + 1, loss, name,
                          time.perf_counter() - started)
            if self.live.due():
                self.live.write(s.geometry_steps + i + 1, image=image.cpu().numpy())
            if (i + 1) % s.checkpoint_every == 0 and i + 1 < s.texture_steps:
                save(i + 1)
        save(s.texture_steps)
        albedo, roughness = stage.images()
        return {"albedo": albedo, "roughness": roughness, "uvs": stage.layout.corner_uvs()}

    # ---- export and quality ------------------------------------------------------------------

    def info(self) -> dict:
        import platform

        versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
        for name in ("diffusers", "transformers", "peft"):
            try:
                versions[name] = __import__(name).__version__
            except Exception:  # optional in this report
                pass
        return {"job": self.spec.resolved_dict(), "seed": self.spec.seed,
                "models": {"root": str(self.models_root), "tiny_test_models": bool(getattr(self, "models_tiny", False)),
                           "files": getattr(self, "model_files", {})},
                "versions": versions, "timings_s": dict(self.timings),
                "memory": {"fallback": self.plan.record(), "before_launch": self.memory_estimate,
                           "machine_profile": self.machine_profile}}

    def head_mesh(self, vertices, faces, offsets, textures):
        from ..result_format import HeadMesh

        names = list(offsets)
        return HeadMesh(vertices=vertices, faces=faces, expression_names=names,
                        expression_offsets=np.stack([offsets[n] for n in names]),
                        uvs=None if textures is None else np.asarray(textures["uvs"], np.float32))

    def export(self, head, textures, quality, sheet, correctives=None):
        from ..export import write_result

        folder = self.job_dir / RESULT
        info = self.info()
        if quality is not None:
            info["quality"] = quality
        if correctives:
            info["correctives"] = dict(correctives)  # {expression: the expression it is stored relative to}
        want_glb = bool(self.spec.output.get("glb", True))
        if textures is None:  # stop_after geometry: head.npz, result.json and a glb with a plain material
            paths = write_result(folder, head, info=info, glb=want_glb)
        else:
            paths = write_result(folder, head, albedo=textures["albedo"], roughness=textures["roughness"],
                                 info=info, contact_sheet=sheet, glb=want_glb)
        return folder, paths.get("head.glb")

    def quality(self, head, textures, embedding):
        """The report (per expression and view: ArcFace cosine, dlib distance) and a contact sheet."""
        from ..export.quality import contact_sheet, quality_report

        report, renders = quality_report(
            head=head, albedo=textures["albedo"], roughness=textures["roughness"], photos=list(self.spec.photos),
            identity_embedding=embedding, models_root=self.models_root,
            resolution=self.settings.quality_resolution, device=self.device.type)
        sheet = contact_sheet(renders) if self.spec.output.get("contact_sheet", True) else None
        return report, sheet


def _is_tiny(root: Path) -> bool:
    try:
        from ..tiny_models import is_tiny
    except ImportError:
        return False
    return bool(is_tiny(root))
