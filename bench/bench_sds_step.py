"""One SDS step (render -> latents -> UNet with CFG -> gradient -> backward) with each part's share.

    .venv/bin/python bench/bench_sds_step.py                 # tiny random models, CPU
    .venv/bin/python bench/bench_sds_step.py --flops         # + FLOP count of SD 1.5 and minutes per preset
    .venv/bin/python bench/bench_sds_step.py --prior ROOT --device cuda --size 512   # real weights

The "render" is a stand-in: a sigmoid of a learnable image (the renderer is benchmarked on its
own), so its share here is the share of the code around the prior, not of a rasteriser.
Latest figures: docs/benchmarks-prior.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_TINY_STEP_MS = 20.0  # ENVIRONMENT.md: a hand-written tiny SDS step on this kind of machine


def bench_step(root: Path, device: str, size: int, views: int, iters: int, warmup: int, shortcut: bool) -> dict:
    import torch

    from engine.prior import load_prior
    from engine.prior.sds import ScoreDistillation, SDSConfig

    prior = load_prior(root, device=device)
    cond = prior.conditioning(torch.randn(512), "smiling", view=[0.0] * views)
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0, profile=True))
    channels = 4 if shortcut else 3
    param = torch.zeros(views, size, size, channels, device=prior.device, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=1e-2)
    parts: dict[str, list[float]] = {}
    sync = torch.cuda.synchronize if prior.device.type == "cuda" else (lambda: None)
    for i in range(warmup + iters):
        sync()
        t0 = time.perf_counter()
        render = torch.sigmoid(param)
        sync()
        t1 = time.perf_counter()
        loss, info = sds.step(render, cond, i, warmup + iters)
        optimizer.zero_grad()
        sync()
        t2 = time.perf_counter()
        loss.backward()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if i < warmup:
            continue
        timings = {"render": (t1 - t0) * 1e3, **info["timings_ms"], "backward+adam": (t3 - t2) * 1e3}
        timings["total"] = (t3 - t0) * 1e3
        for key, value in timings.items():
            parts.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in parts.items()}


def count_flops() -> dict:
    """FLOPs of SD 1.5's UNet (batch 2 = CFG, 64x64 latents) and VAE encoder (512x512), on meta tensors."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
    vae.requires_grad_(False)  # frozen, as in SDS: the backward computes input gradients only
    x = torch.randn(2, 4, 64, 64, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.tensor([500, 500], device="meta"), encoder_hidden_states=torch.randn(2, 77, 768, device="meta"))
    unet_flops = counter.get_total_flops()
    image = torch.randn(1, 3, 512, 512, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        latents = vae.encode(image).latent_dist.mean
    vae_forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        latents.sum().backward()
    vae_backward = counter.get_total_flops()
    return {"unet_params_M": sum(p.numel() for p in unet.parameters()) / 1e6, "unet_cfg_tflop": unet_flops / 1e12,
            "vae_encode_tflop": vae_forward / 1e12, "vae_backward_tflop": vae_backward / 1e12}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=None, help="models root (default: tiny random models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="render side in pixels")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable timings on a shared machine; 0: torch default)")
    parser.add_argument("--flops", action="store_true", help="also count SD 1.5 FLOPs and estimate minutes per preset")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16/fp16 peak (H100 SXM: 989)")
    parser.add_argument("--utilisation", type=float, default=0.15,
                        help="assumed share of the peak reached (see docs/benchmarks-prior.md)")
    parser.add_argument("--overhead", type=float, default=0.5, help="rendering/geometry/optimiser share on top")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.prior
        if root is None:
            from engine.tiny_models import write_tiny_models

            root = write_tiny_models(Path(tmp) / "models")
        for shortcut in (False, True):
            result = bench_step(root, args.device, args.size, args.views, args.iters, args.warmup, shortcut)
            total = result.pop("total")
            label = "latent shortcut (4-ch maps, no VAE)" if shortcut else "render through the VAE"
            print(f"SDS step, {label}: {total:.1f} ms median of {args.iters} "
                  f"({args.views} view(s), {args.size}px, {args.device}, {torch.get_num_threads()} threads)")
            result["other"] = max(total - sum(result.values()), 0.0)  # zero_grad, Python between the parts
            for key, value in result.items():
                print(f"  {key:<14} {value:7.2f} ms  {100 * value / total:5.1f} %")
            if not shortcut and args.prior is None:
                print(f"  vs peer figure (ENVIRONMENT.md, hand-written tiny step ~{PEER_TINY_STEP_MS:.0f} ms): "
                      f"x{total / PEER_TINY_STEP_MS:.2f}")
    if args.flops:
        from engine.prior.presets import PRESETS, preset_minutes, preset_tflop

        flops = count_flops()
        print(f"SD 1.5 UNet ({flops['unet_params_M']:.1f} M params), CFG batch 2 at 64x64 latents: "
              f"{flops['unet_cfg_tflop']:.3f} TFLOP")
        print(f"VAE encoder at 512x512: forward {flops['vae_encode_tflop']:.3f} TFLOP, "
              f"backward to the render {flops['vae_backward_tflop']:.3f} TFLOP")
        step = flops["unet_cfg_tflop"] + flops["vae_encode_tflop"] + flops["vae_backward_tflop"]
        rate = args.peak_tflops * args.utilisation
        print(f"one SDS step (one view, through the VAE): {step:.3f} TFLOP -> {1e3 * step / rate:.1f} ms "
              f"at {args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s; shortcut step "
              f"{1e3 * flops['unet_cfg_tflop'] / rate:.1f} ms")
        for preset in PRESETS.values():
            tf = preset_tflop(preset)
            print(f"  {preset.name:<9} geometry {preset.geometry_steps} + texture {preset.texture_steps} steps x "
                  f"{preset.views_per_step} view(s): {tf['total'] / 1e3:.1f} PFLOP -> "
                  f"{preset_minutes(preset, args.peak_tflops, args.utilisation):.1f} min prior compute, "
                  f"{preset_minutes(preset, args.peak_tflops, args.utilisation, args.overhead):.1f} min with "
                  f"{args.overhead:.0%} overhead")
        print("  minutes per head (prior compute + overhead) at other utilisations:")
        for utilisation in (0.07, 0.15, 0.3):
            cells = ", ".join(f"{p.name} {preset_minutes(p, args.peak_tflops, utilisation, args.overhead):.1f}"
                              for p in PRESETS.values())
            print(f"    {utilisation:.0%}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
