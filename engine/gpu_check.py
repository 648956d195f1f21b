"""Check GPU: one real SDS step of a preset on this machine, and the settings the pipeline will use.

``python -m engine doctor --gpu [--preset standard] [--json]`` (and the add-on's Check GPU
button). With the models present it loads the prior in half precision on CUDA (fp16, then bf16
where the GPU has it natively, then fp32), builds the geometry stage of the chosen preset (its
tet grid, render resolution and views per step; a short fit to the procedural head instead of
the full pretraining) and runs the pipeline's own ``GeometryStage.step`` through the VAE: DMTet
extraction, the rasteriser ``render(backend="auto")`` picks (nvdiffrast on CUDA when it imports,
else the built-in one), SDS with classifier-free guidance, backward into the SDF field, Adam.

It reports seconds per step, peak memory (allocated and reserved by PyTorch, and what the GPU
has in use), whether the step gave finite, non-zero gradients at each precision tried (GTX 16xx
cards give NaN in fp16), the minutes per head of every preset (the measured seconds per TFLOP of
prior compute applied to each preset's FLOPs, engine/prior/presets.py), the rasteriser and its
share of a step (forward + backward), and the settings the pipeline will use for this preset.
It saves them as this preset's entry of the machine profile (:mod:`engine.machine_profile`) and
formats a text report to paste into bug reports.

On a GPU out-of-memory error it climbs the pipeline's own ladder (memory_fallback.LADDERS):
fewer views per step, VAE gradient checkpointing, CPU offload; sliced attention only as a last
resort (the UNet runs without grad and PyTorch's fused attention is already O(N) in memory, so
slicing saves little and is slow). A precision that runs out of memory at every setting ends the
check: the ones after it (bf16: as large, fp32: twice) cannot fit either.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from pathlib import Path
from typing import Callable

from . import __version__

log = logging.getLogger(__name__)
CHECK_PRETRAIN_STEPS = 60  # enough to give the field a head-shaped surface to render (not a fit)
GiB = 2 ** 30
BYTES_PER_VALUE = {"fp16": 2, "bf16": 2, "fp32": 4}


def default_precisions(device) -> tuple[str, ...]:
    """fp16, bf16 where the GPU supports it natively (compute capability 8.0+: Ampere and newer;
    asked of ``device`` itself, not of the current device), fp32 last; fp32 only on the CPU."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return ("fp32",)
    bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    return ("fp16", "bf16", "fp32") if bf16 else ("fp16", "fp32")


def load_prior_for_check(root: Path, device, dtype: str, memory):
    """The prior as the pipeline loads it (normal-map LoRA when present), at ``dtype``, with the
    ``memory`` options (a :class:`engine.prior.model.MemoryOptions`)."""
    from .prior import load_prior

    normal = (Path(root) / "loras" / "normal" / "prior_adapter.json").is_file()
    return load_prior(root, device=device, dtype=dtype, task="normal" if normal else None, memory=memory)


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


class _SdsInfo:
    """Keeps what ``ScoreDistillation.step`` reports (skipped renders, non-finite ε̂ values)."""

    def __init__(self, sds):
        self.infos: list[dict] = []
        original = sds.step

        def step(*args, **kwargs):
            loss, info = original(*args, **kwargs)
            self.infos.append(info)
            return loss, info

        sds.step = step


def _read_back(info: dict, key: str):
    """An SDS info value: read back already (diagnostics) or still a device tensor in ``lazy``."""
    if key in info:
        return info[key]
    value = info.get("lazy", {}).get(key)
    value = value.item() if hasattr(value, "item") else value
    return "non-finite render or latents" if value is True else value


def _finite_gradients(stage, loss: float, infos: list[dict]) -> tuple[bool, str]:
    """Whether the step was numerically sound, and why not."""
    import torch

    if not math.isfinite(loss):
        return False, "the loss is not finite"
    for info in infos:
        skipped, nonfinite = _read_back(info, "skipped"), _read_back(info, "nonfinite_grad_values")
        if skipped:
            return False, f"SDS skipped the step ({skipped})"
        if nonfinite:
            return False, f"the UNet's noise prediction had {nonfinite} non-finite values"
    grads = [p.grad for p in stage.field.parameters() if p.grad is not None]
    if not grads:
        return False, "no gradient reached the SDF field"
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        return False, "the gradient on the SDF field is not finite"
    if not any(bool(g.abs().sum() > 0) for g in grads):
        return False, "the gradient on the SDF field is zero (NaNs were zeroed on the way back)"
    if not all(bool(torch.isfinite(p).all()) for p in stage.field.parameters()):
        return False, "the SDF field became non-finite after the step"
    return True, ""


def measure_step(prior, settings, device, *, steps: int, warmup: int, seed: int = 0) -> dict:
    """Run ``warmup`` + ``steps`` geometry SDS steps through the VAE; time, memory, finiteness."""
    import numpy as np
    import torch

    from .pipeline.geometry_stage import GeometryStage, render_for_prior
    from .render import available_backends

    settings = dataclasses.replace(settings, pretrain_steps=CHECK_PRETRAIN_STEPS, geometry_shortcut_fraction=0.0,
                                   geometry_steps=max(steps + warmup, 1) * 10)
    cuda = getattr(device, "type", str(device)) == "cuda"
    embedding = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    model_bytes = torch.cuda.memory_allocated(device) if cuda else 0
    stage = GeometryStage(settings, prior, embedding, ["neutral", "smiling"], seed=seed, device=device,
                          normal_maps="normal" in getattr(prior, "adapters", {}))
    stage.initialise()
    spy = _SdsInfo(stage.sds)
    for i in range(warmup):  # cuDNN autotuning, lazy CUDA initialisation, allocator growth
        stage.step(i)
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    spy.infos.clear()
    times, finite, why, loss = [], True, "", float("nan")
    for i in range(warmup, warmup + steps):
        started = time.perf_counter()
        out = stage.step(i)
        loss = float(out.loss)
        _sync(device)
        times.append(time.perf_counter() - started)
        ok, reason = _finite_gradients(stage, loss, spy.infos)
        if not ok:
            finite, why = False, reason
            break
    memory = {}
    if cuda:
        # What users see is more than the allocated peak: the allocator's reserved blocks, the CUDA
        # context and other programs. The allocator keeps its blocks after the steps, so the GPU's
        # used memory now is (about) its use at the peak.
        free, total = torch.cuda.mem_get_info(device)
        memory = {"peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                  "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
                  "device_used_bytes": int(total - free)}
    # the rasteriser's own time, forward + backward as in the step, on the surface the last step saw
    with torch.no_grad():
        surface, _ = stage.dmtet()
        cameras, _ = stage.cameras(0)
    verts = surface.verts.detach().clone().requires_grad_(True)
    _sync(device)
    started = time.perf_counter()
    image = render_for_prior(verts, surface.faces, cameras, normal_maps=stage.normal_maps,
                             lights=stage.lights(0), shortcut=False)
    image.sum().backward()
    _sync(device)
    render_s = time.perf_counter() - started
    backend = "nvdiffrast" if cuda and "nvdiffrast" in available_backends() else "torch"
    return {"seconds_per_step": min(times) if times else None, "step_seconds": [round(t, 3) for t in times],
            "loss": loss, "finite": finite, "why_not_finite": why,
            "model_bytes": int(model_bytes), "peak_bytes": memory.get("peak_bytes"),
            "peak_reserved_bytes": memory.get("peak_reserved_bytes"),
            "device_used_bytes": memory.get("device_used_bytes"),
            "views_per_step": settings.views_per_step, "render_resolution": settings.render_resolution,
            "grid": settings.grid, "faces": int(surface.faces.shape[0]),
            "rasteriser": backend, "render_seconds": round(render_s, 4)}


def preset_estimates(seconds_per_step: float, views: int, memory: dict | None, total_bytes: int | None,
                     presets: dict | None = None) -> dict:
    """Minutes per head (and GPU memory) of every preset from one measured step.

    The measured step ran through the VAE at ``views`` views; its seconds per TFLOP of prior
    compute (engine/prior/presets.py) include the rendering, DMTet and the optimiser, so applying
    it to each preset's FLOPs (shortcut and VAE steps, both stages) gives minutes per head. The
    pretraining, unwrap, quality report and export are not in it (about a minute on a GPU)."""
    from .pipeline.memory_fallback import WORKSPACE_MARGIN_GIB
    from .pipeline.presets import PRESETS
    from .prior.presets import preset_tflop, step_tflop

    seconds_per_tflop = seconds_per_step / (views * step_tflop(True))
    out = {}
    for name, preset in (PRESETS if presets is None else presets).items():
        if name == "test":
            continue
        row = {"minutes": round(preset_tflop(preset)["total"] * seconds_per_tflop / 60.0, 1)}
        if memory is not None:
            need = memory["model_bytes"] + memory["activation_bytes_per_view"] * max(
                preset.views_per_step, preset.texture_views_per_step) + WORKSPACE_MARGIN_GIB * GiB
            row["memory_gib"] = round(need / GiB, 1)
            if total_bytes:
                row["fits"] = need <= total_bytes
        out[name] = row
    return out


def no_cuda_problem(query_gpus: Callable | None = None) -> str:
    """Why there is no usable CUDA GPU, and what to do, for the add-on's user and the shell's."""
    import torch

    if query_gpus is None:
        from .cuda_wheels import query_gpus
    gpus = query_gpus()
    if torch.version.cuda is None and gpus:
        return (f"this engine's torch is a CPU-only build, but the computer has {gpus[0].name} "
                f"(driver {gpus[0].driver}): in the add-on's preferences choose Torch Build: CUDA and press "
                "Install Engine (from a shell: install a "
                "CUDA build of torch, docs/install.md), then Check GPU again")
    if torch.version.cuda is None:
        return ("no usable CUDA GPU (CPU-only torch build, and nvidia-smi finds no NVIDIA GPU): the engine runs on "
                "the CPU, hours per head; `doctor --gpu --device cpu` measures the CPU")
    return (f"no usable CUDA GPU (torch is built for CUDA {torch.version.cuda} but sees no device"
            + (f"; nvidia-smi lists {gpus[0].name}, driver {gpus[0].driver}: update the driver if it is older than "
               "the build needs (docs/install.md), and check CUDA_VISIBLE_DEVICES" if gpus else
               "; no NVIDIA driver answers (nvidia-smi)") + "): the engine runs on the CPU, hours per head")


def _next_rung(rung: dict) -> dict | None:
    """The pipeline's ladder (views, VAE checkpointing, CPU offload), then sliced attention."""
    if rung["views_per_step"] > 1:
        return {**rung, "views_per_step": rung["views_per_step"] // 2}
    for flag in ("vae_checkpointing", "cpu_offload"):
        if not rung[flag]:
            return {**rung, flag: True}
    if rung["attention"] == "sdpa":
        return {**rung, "attention": "sliced"}
    return None


def _outcome_text(dtype: str, attempts: list[dict]) -> str:
    ran = [t for t in attempts if t["dtype"] == dtype and "finite" in t]
    if ran:
        return "finite" if ran[-1]["finite"] else f"not finite ({ran[-1]['why_not_finite']})"
    if any(t["dtype"] == dtype for t in attempts):
        return "out of memory at every setting"
    return "not tried"


def run_check(models_root, *, preset: str = "standard", overrides: dict | None = None, device: str = "auto",
              precisions=None, steps: int | None = None,
              warmup: int | None = None, prior_loader: Callable = load_prior_for_check, save: bool = True,
              progress: Callable[[str], None] = log.info) -> dict:
    """Check GPU: see the module docstring. Returns the report (a plain dict)."""
    import torch

    from .pipeline.memory_fallback import free_device_memory, is_cuda_oom
    from .pipeline.presets import resolve_preset
    from .prior.model import MemoryOptions

    root = Path(models_root).expanduser()
    settings = resolve_preset(preset, overrides)
    report: dict = {"engine_version": __version__, "platform": platform.platform(), "torch": torch.__version__,
                    "torch_cuda": torch.version.cuda, "models_root": str(root), "preset": preset, "ok": False}
    if device == "auto":
        if not torch.cuda.is_available():
            report.update(device="cpu", problem=no_cuda_problem())
            return report
        device = "cuda"
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    steps = steps if steps is not None else (3 if cuda else 1)
    warmup = warmup if warmup is not None else (1 if cuda else 0)
    report["device"] = str(dev)
    total = None
    if cuda:
        props = torch.cuda.get_device_properties(dev)
        total = int(props.total_memory)
        from .cuda_wheels import query_gpus

        gpus = query_gpus()
        report["gpu"] = {"name": props.name, "memory_gib": round(total / GiB, 1),
                         "compute_capability": f"{props.major}.{props.minor}",
                         "driver": gpus[dev.index or 0].driver if len(gpus) > (dev.index or 0) else None}
    tried: list[dict] = []
    chosen = None
    out_of_memory_everywhere = None  # the precision that fitted nowhere: the later ones are as large or larger
    for dtype in precisions or default_precisions(dev):
        if out_of_memory_everywhere is not None and BYTES_PER_VALUE[dtype] >= BYTES_PER_VALUE[out_of_memory_everywhere]:
            tried.append({"dtype": dtype, "skipped": f"{out_of_memory_everywhere} did not fit at any setting and "
                                                     f"{dtype} needs as much memory or more"})
            continue
        rung = {"attention": "sdpa", "views_per_step": settings.views_per_step, "vae_checkpointing": False,
                "cpu_offload": False}
        prior, loaded, measured = None, None, None
        while rung is not None:
            progress(f"Check GPU: {dtype}, {rung['views_per_step']} view(s) per step, {rung['attention']} attention"
                     + ", VAE checkpointing" * rung["vae_checkpointing"] + ", CPU offload" * rung["cpu_offload"])
            memory = MemoryOptions(attention=rung["attention"], vae_checkpointing=rung["vae_checkpointing"],
                                   cpu_offload=rung["cpu_offload"])
            oom = ""
            try:
                if loaded != rung["attention"]:  # attention is set at load; the other switches on the loaded prior
                    prior, loaded = None, None
                    free_device_memory(dev)
                    prior = prior_loader(root, dev, dtype, memory)
                    loaded = rung["attention"]
                prior.apply_memory(memory)
                measured = measure_step(prior, dataclasses.replace(settings, views_per_step=rung["views_per_step"]),
                                        dev, steps=steps, warmup=warmup)
            except Exception as exc:
                if not is_cuda_oom(exc):
                    raise
                oom = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            free_device_memory(dev)
            if measured is not None:
                break
            tried.append({"dtype": dtype, **rung, "out_of_memory": oom})
            if prior is None:
                loaded = None  # the load itself failed: the next rung loads again
            rung = _next_rung(rung)
        del prior
        free_device_memory(dev)
        if measured is None:
            out_of_memory_everywhere = dtype
            continue
        tried.append({"dtype": dtype, **rung, **measured})
        if measured["finite"]:
            chosen = tried[-1]
            break
    report["tried"] = tried
    dtypes = list(dict.fromkeys(t["dtype"] for t in tried))
    report["precisions"] = {d: _outcome_text(d, tried) if not any(t.get("skipped") and t["dtype"] == d for t in tried)
                            else "skipped (" + next(t["skipped"] for t in tried if t["dtype"] == d) + ")"
                            for d in dtypes}
    fp16 = [t for t in tried if t["dtype"] == "fp16" and "finite" in t]
    report["fp16_finite"] = fp16[-1]["finite"] if fp16 else None
    if chosen is None:
        report["problem"] = "no precision could run a sound step on this device: " + "; ".join(
            f"{d} {text}" for d, text in report["precisions"].items())
        if out_of_memory_everywhere:
            from .pipeline.failures import LOWER_MEMORY_HINT

            report["problem"] += (" (down to 1 view, VAE checkpointing, CPU offload and sliced attention); "
                                  + LOWER_MEMORY_HINT)
        return report
    views = chosen["views_per_step"]
    memory = None
    if cuda:
        per_view = max(0, chosen["peak_bytes"] - chosen["model_bytes"]) / views
        memory = {"model_bytes": chosen["model_bytes"], "peak_bytes": chosen["peak_bytes"],
                  "peak_reserved_bytes": chosen["peak_reserved_bytes"],
                  "device_used_bytes": chosen["device_used_bytes"],
                  "activation_bytes_per_view": int(per_view), "total_bytes": total}
    settings_used = {k: chosen[k] for k in ("dtype", "views_per_step", "attention", "vae_checkpointing", "cpu_offload")}
    report.update(
        ok=True,
        seconds_per_step=round(chosen["seconds_per_step"], 3),
        peak_vram_gib=None if not cuda else round(chosen["peak_bytes"] / GiB, 2),
        reserved_vram_gib=None if not cuda else round(chosen["peak_reserved_bytes"] / GiB, 2),
        device_used_gib=None if not cuda else round(chosen["device_used_bytes"] / GiB, 2),
        rasteriser={"backend": chosen["rasteriser"], "seconds_per_render": chosen["render_seconds"],
                    "share_of_step": round(chosen["render_seconds"] / chosen["seconds_per_step"], 3)},
        step={k: chosen[k] for k in ("grid", "render_resolution", "views_per_step", "faces", "step_seconds")},
        memory=memory,
        presets=preset_estimates(chosen["seconds_per_step"], views, memory, total),
        settings=settings_used,
    )
    if save:
        from .machine_profile import device_identity, models_fingerprint, save_profile

        entry = {"created_by": "doctor --gpu", "engine_version": __version__, **settings_used,
                 "preset_views_per_step": settings.views_per_step,
                 "seconds_per_step": report["seconds_per_step"],
                 "activation_bytes_per_view": None if memory is None else memory["activation_bytes_per_view"],
                 "model_bytes": None if memory is None else memory["model_bytes"],
                 "fp16_finite": report["fp16_finite"], "rasteriser": chosen["rasteriser"]}
        report["profile_path"] = str(save_profile(entry, preset, device_identity(dev), models_fingerprint(root)))
    return report


def _setting_text(t: dict) -> str:
    extra = "".join([", VAE checkpointing" if t.get("vae_checkpointing") else "",
                     ", CPU offload" if t.get("cpu_offload") else ""])
    return f"{t['dtype']}, {t['views_per_step']} view(s), {t['attention']} attention{extra}"


def format_report(report: dict) -> str:
    """The copyable text for bug reports."""
    lines = [f"ID-to-3D Check GPU (engine {report.get('engine_version')}, torch {report.get('torch')}, "
             f"CUDA build {report.get('torch_cuda')})", f"platform: {report.get('platform')}"]
    gpu = report.get("gpu")
    if gpu:
        lines.append(f"GPU: {gpu['name']}, {gpu['memory_gib']} GiB, compute capability {gpu['compute_capability']}, "
                     f"driver {gpu.get('driver') or 'unknown'}")
    lines.append(f"device: {report.get('device')}; models: {report.get('models_root')}; preset: {report.get('preset')}")
    for t in report.get("tried", []):
        if t.get("skipped"):
            lines.append(f"  {t['dtype']}: not tried ({t['skipped']})")
        elif "finite" not in t:
            lines.append(f"  {_setting_text(t)}: out of memory")
        else:
            state = "finite" if t["finite"] else f"NOT FINITE ({t['why_not_finite']})"
            peak = f", peak {t['peak_bytes'] / GiB:.2f} GiB" if t.get("peak_bytes") else ""
            lines.append(f"  {_setting_text(t)}: {t['seconds_per_step']:.3f} s/step{peak}, gradients {state}")
    if not report.get("ok"):
        lines.append(f"PROBLEM: {report.get('problem')}")
        return "\n".join(lines)
    s, r = report["settings"], report["rasteriser"]
    lines.append(f"seconds per step: {report['seconds_per_step']} (grid {report['step']['grid']}, "
                 f"{report['step']['render_resolution']}^2 renders, {report['step']['views_per_step']} view(s), "
                 f"through the VAE)")
    if report.get("peak_vram_gib") is not None:
        memory = report["memory"]
        lines.append(f"peak VRAM: {report['peak_vram_gib']} GiB allocated (models {memory['model_bytes'] / GiB:.2f} "
                     f"GiB + {memory['activation_bytes_per_view'] / GiB:.2f} GiB per view)")
        lines.append(f"reserved: {report['reserved_vram_gib']} GiB by PyTorch at the peak; "
                     f"{report['device_used_gib']} GiB in use on the GPU (with the CUDA context and any other program)")
    fp16 = report.get("precisions", {}).get("fp16", "not tried")
    lines.append("fp16 gradients: " + ("finite" if fp16 == "finite" else f"{fp16} (another precision is used)"
                                       if fp16 != "not tried" else "not tried"))
    lines.append(f"rasteriser: {r['backend']}, {r['seconds_per_render']:.4f} s per render, forward + backward "
                 f"({r['share_of_step']:.0%} of a step)")
    lines.append(f"settings {report.get('preset')} jobs will use on this GPU: {_setting_text(s)} (precision, views "
                 "and memory options from this check; views lowered only where more did not fit)")
    for name, row in report["presets"].items():
        mem = f", ~{row['memory_gib']} GiB" + ("" if row.get("fits", True) else " (does NOT fit)") \
            if "memory_gib" in row else ""
        lines.append(f"  {name}: ~{row['minutes']} min per head{mem}")
    if report.get("profile_path"):
        lines.append(f"machine profile: {report['profile_path']}")
    return "\n".join(lines)
