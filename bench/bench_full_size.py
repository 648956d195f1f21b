"""One geometry SDS step and one texture SDS step at 512² on full-size random-weight models (CPU).

    .venv/bin/python bench/bench_full_size.py [--models DIR] [--views 1] [--threads 2] [--grid 64]

Models: engine/prior/fullsize_models.py writes the published SD 1.5 VAE, Arc2Face UNet and CLIP
ViT-L/14 text encoder architectures with random weights and the real CLIP tokenizer (~2.1 GB,
written once into DIR, default .cache/fullsize-models; needs scripts/setup.sh's BPE file). The
steps go through the production code: load_prior, Prior.conditioning, the project's rasteriser,
DMTet extraction, ScoreDistillation.step, backward into the SDF field / the texture, Adam.

Printed per step: seconds (and each part's share), FLOPs counted during the real step
(torch's FlopCounterMode), the peak RSS over the loaded models (the activation memory of the step
in fp32 on the CPU: large tensors are mmapped, so freed memory leaves the RSS and the kernel's
high-water mark, reset before each step, is the step's peak), the bytes autograd saved for the
backward pass (saved-tensor hooks), and from these the memory fp16 on a GPU would need. Then the
minutes per head of each preset from the measured FLOPs (engine/prior/presets.py).
Figures: docs/benchmarks-prior.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"  # fixed threshold: every large allocation is mmapped and given back when freed
GiB = 2 ** 30


def status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


class SavedBytes:
    """Bytes of the distinct tensors autograd saves for the backward pass (saved-tensor hooks)."""

    def __init__(self):
        import torch

        self.seen: dict[int, int] = {}
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x)

    def pack(self, tensor):
        key = tensor.untyped_storage().data_ptr()
        self.seen[key] = max(self.seen.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    def __enter__(self):
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def count_cpu_attention_flops() -> None:
    """torch's FlopCounterMode has formulas for the CUDA attention kernels, not for the CPU flash
    attention that SDPA runs here: register the same formulas for it, or attention goes uncounted."""
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        return

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)


def spherical_uv(verts):
    """A stand-in UV layout (the texture room's xatlas unwrap is benchmarked on its own)."""
    import torch

    d = verts - verts.mean(0)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return torch.stack([0.5 + torch.atan2(d[:, 0], -d[:, 1]) / (2 * torch.pi), 0.5 + torch.asin(d[:, 2]) / torch.pi], -1)


def measure(name: str, make_loss, optimizer, flop_parts) -> dict:
    """Run one step (forward, SDS, backward, optimiser) measuring time, FLOPs, peak RSS, saved bytes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    rss_before = status_kib("VmRSS")
    reset_peak()
    counter = FlopCounterMode(display=False)
    t0 = time.perf_counter()
    with counter, SavedBytes() as saved:
        loss, info, t_render = make_loss()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    t2 = time.perf_counter()
    peak = status_kib("VmHWM")
    flops = counter.get_flop_counts()
    by_module = {k: sum(v.values()) for k, v in flops.items()}
    total = counter.get_total_flops()
    result = {
        "name": name, "seconds": t2 - t0, "forward_s": t1 - t0, "backward_s": t2 - t1, "render_s": t_render,
        "timings_ms": info.get("timings_ms", {}), "tflop": total / 1e12,
        "parts_tflop": {k: by_module.get(k, 0) / 1e12 for k in flop_parts},
        "peak_over_models_gib": (peak - rss_before) * 1024 / GiB, "peak_rss_gib": peak * 1024 / GiB,
        "saved_gib": saved.total / GiB, "grad_norm": info.get("grad_norm"),
    }
    del loss
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / ".cache" / "fullsize-models")
    parser.add_argument("--views", type=int, default=1, help="renders per SDS step")
    parser.add_argument("--size", type=int, default=512, help="render side (the VAE's native 512)")
    parser.add_argument("--grid", type=int, default=64, help="tet grid resolution of the geometry step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="tiny models instead (checks this script, meaningless figures)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense fp16 peak (H100 SXM: 989)")
    parser.add_argument("--utilisation", type=float, default=0.15)
    parser.add_argument("--overhead", type=float, default=0.5)
    parser.add_argument("--cuda-context-gib", type=float, default=0.6,
                        help="CUDA context + cuDNN/cuBLAS workspaces, not measured here (assumed)")
    args = parser.parse_args()

    from engine.prior.fullsize_models import FULLSIZE_MARKER, write_fullsize_models

    if args.build_only:
        t0 = time.perf_counter()
        write_fullsize_models(args.models)
        print(f"full-size random-weight models written to {args.models} in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.tiny:
        from engine.tiny_models import write_tiny_models

        args.models = write_tiny_models(Path("/tmp") / f"idto3d-bench-tiny-{os.getpid()}")
    elif not (args.models / FULLSIZE_MARKER).is_file():  # built in a child process: its memory is not ours
        subprocess.run([sys.executable, __file__, "--models", str(args.models), "--build-only"], check=True)
    if os.environ.get(MMAP_ENV) is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "131072"})

    import torch

    from engine.geometry.fit import DMTet
    from engine.geometry.head_init import head_sdf, pretrain_field
    from engine.geometry.sdf_field import VertexSDF
    from engine.geometry.tetgrid import make_tet_grid
    from engine.prior import load_prior
    from engine.prior.presets import PRESETS, StepFlops, preset_minutes, preset_tflop
    from engine.prior.sds import ScoreDistillation, SDSConfig
    from engine.render import normals_to_image, orbit_cameras, radius_for_fill, render, sample_lights

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    count_cpu_attention_flops()
    rss0 = status_kib("VmRSS")
    t0 = time.perf_counter()
    prior = load_prior(args.models, device="cpu")
    load_s = time.perf_counter() - t0
    rss_models = status_kib("VmRSS")
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("unet", prior.unet), ("vae", prior.vae), ("text_encoder", prior.text_encoder))}
    vae_encoder = sum(p.numel() for n, p in prior.vae.named_parameters() if not n.startswith(("decoder", "post_quant")))
    print(f"load_prior on {args.models}: {load_s:.1f} s, RSS +{(rss_models - rss0) / 2**20:.2f} GiB "
          f"(fp32); parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items())
          + f" (VAE encoder {vae_encoder / 1e6:.1f} M)")

    views = [0.0, 90.0, 180.0, -90.0][:args.views] if args.views <= 4 else [360.0 * i / args.views for i in range(args.views)]
    cameras = orbit_cameras(views, [10.0] * len(views), radius=radius_for_fill(0.32, 30.0, 0.7), fov_deg=30.0,
                            resolution=(args.size, args.size))
    cond = prior.conditioning(torch.randn(512), "smiling", view=views)
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0, profile=True, diagnostics=True))
    # parts whose FLOPs are reported (FlopCounterMode keys them by module path: vae.encode runs the
    # VAE's Encoder and its quant_conv, a Conv2d, not AutoencoderKL.forward)
    parts = ["UNet2DConditionModel", "Encoder", "Conv2d"]

    grid = make_tet_grid(args.grid)
    field = VertexSDF(grid.vertices.shape[0], max_deformation=0.0)
    pretrain_field(field, head_sdf, grid.vertices)
    dmtet = DMTet(grid, field)
    geo_opt = torch.optim.Adam(field.parameters(), lr=1e-3)

    def geometry_loss():
        t = time.perf_counter()
        result, _ = dmtet()
        out = render(result.verts, result.faces, cameras, passes=("mask", "normal_camera"))
        image = normals_to_image(out["normal_camera"], out["mask"])
        t_render = time.perf_counter() - t
        loss, info = sds.step(image, cond, 1000, 5000)
        return loss, info, t_render

    with torch.no_grad():
        verts, faces = dmtet.mesh()
    uv = spherical_uv(verts)
    texture = torch.nn.Parameter(torch.zeros(1024, 1024, 3))
    tex_opt = torch.optim.Adam([texture], lr=1e-2)
    lights = sample_lights(len(views), seed=0)

    def texture_loss():
        t = time.perf_counter()
        out = render(verts, faces, cameras, passes=("shaded",), uv=uv, texture=torch.sigmoid(texture), lights=lights,
                     background=1.0)
        t_render = time.perf_counter() - t
        loss, info = sds.step(out["shaded"], cond, 500, 2000)
        return loss, info, t_render

    results = []
    print(f"mesh for both steps: {verts.shape[0]} vertices, {faces.shape[0]} faces (tet grid {args.grid}); "
          f"{len(views)} view(s) at {args.size}², {torch.get_num_threads()} torch threads")
    for name, fn, opt in (("geometry (normal map -> VAE -> SDS -> SDF)", geometry_loss, geo_opt),
                          ("texture (shaded albedo -> VAE -> SDS -> texture)", texture_loss, tex_opt)):
        r = measure(name, fn, opt, parts)
        results.append(r)
        share = ", ".join(f"{k} {v / 1e3:.1f} s" for k, v in r["timings_ms"].items())
        print(f"{name}: {r['seconds']:.1f} s (render {r['render_s']:.1f} s; SDS parts: {share}; "
              f"backward + Adam {r['backward_s']:.1f} s)")
        print(f"  FLOPs counted: {r['tflop']:.3f} TFLOP in all; " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["parts_tflop"].items()) + " TFLOP")
        print(f"  memory (fp32, CPU): peak RSS {r['peak_rss_gib']:.2f} GiB = models + {r['peak_over_models_gib']:.2f} GiB "
              f"for the step; autograd saved {r['saved_gib']:.2f} GiB")

    # fp16 on a GPU, by arithmetic: fp16 parameters; activations as measured, halved (fp16),
    # except the renderer's and SDS's own tensors, which stay fp32 (counted whole: an upper bound).
    params_fp16 = 2 * sum(counts.values()) / GiB
    worst = max(r["peak_over_models_gib"] for r in results)
    act_fp16 = worst / 2
    total = params_fp16 + act_fp16 + args.cuda_context_gib
    print(f"fp16 on a GPU (arithmetic): parameters {params_fp16:.2f} GiB (all three models), activations of the "
          f"larger step {act_fp16:.2f} GiB (measured fp32 peak / 2), CUDA context {args.cuda_context_gib:.1f} GiB "
          f"(assumed) -> {total:.2f} GiB for {len(views)} view(s): "
          f"{'within' if total <= 12 else 'OVER'} the 12 GB goal")
    per_view = act_fp16 / len(views)  # activations grow with the batch of views (all of them batched)
    for n in (1, 2, 4):
        gib = params_fp16 + per_view * n + args.cuda_context_gib
        print(f"  {n} view(s) per step: {gib:.2f} GiB ({'within' if gib <= 12 else 'OVER'} 12 GB; activations "
              f"scaled linearly from the measured batch)")

    tex = results[1]["parts_tflop"]
    unet_per_view = tex["UNet2DConditionModel"] / len(views)
    vae_per_view = (tex["Encoder"] + tex["Conv2d"]) / len(views)  # forward + backward to the render
    measured = StepFlops(unet_cfg=unet_per_view, vae_encode=vae_per_view / 2, vae_backward=vae_per_view / 2)
    print(f"measured per view: UNet with CFG {unet_per_view:.3f} TFLOP, VAE encode + backward {vae_per_view:.3f} TFLOP "
          f"(presets.py constants: {StepFlops().unet_cfg:.3f}, {StepFlops().vae_encode + StepFlops().vae_backward:.3f})")
    for preset in PRESETS.values():
        tf = preset_tflop(preset, measured)
        print(f"  {preset.name:<9} {tf['total'] / 1e3:.1f} PFLOP -> "
              f"{preset_minutes(preset, args.peak_tflops, args.utilisation, args.overhead, measured):.1f} min per head "
              f"at {args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s + {args.overhead:.0%} overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
