"""The SD 1.5 VAE encoder's forward + backward at 512², with and without gradient checkpointing (CPU).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_vae_checkpointing.py [--models DIR] [--size 512] [--tiny]

The memory fallback's second rung (engine/pipeline/memory_fallback.py) turns on
``AutoencoderKL`` gradient checkpointing (diffusers: each encoder down block and the mid block
keep only their input and run again in the backward). This measures, side by side in one run on
the full-size random-weight SD 1.5 VAE (fp32, one 512² render, the render's gradient as SDS
gives it): the bytes autograd keeps for the backward (saved-tensor hooks, bench_full_size.py's
method: the checkpointed blocks' own saves go to torch's checkpoint, not to the hook), the peak
RSS of forward + backward over the loaded VAE (the kernel's high-water mark, with glibc's mmap
threshold fixed so freed tensors leave the RSS: the recomputed block's activations count here),
the wall and CPU seconds, and whether the gradient on the render is identical.
Figures: docs/benchmarks-prior.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
GiB = 2 ** 30


def load_vae(models: Path, tiny: bool):
    from diffusers import AutoencoderKL

    if tiny:
        from engine.tiny_models import write_tiny_models

        models = write_tiny_models(Path("/tmp") / f"idto3d-bench-tiny-{os.getpid()}")
    vae = AutoencoderKL.from_pretrained(models / "sd15" / "vae", torch_dtype=None, local_files_only=True).float()
    vae.requires_grad_(False).eval()
    return vae


def run(vae, x, upstream, checkpointing: bool) -> dict:
    import torch
    from bench_full_size import SavedBytes, reset_peak, status_kib

    if checkpointing:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()
    render = x.clone().requires_grad_(True)
    rss_before = status_kib("VmRSS")
    reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    with SavedBytes() as saved:
        latents = vae.encode(render * 2.0 - 1.0).latent_dist.mean
    (latents * upstream).sum().backward()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = status_kib("VmHWM")
    return {"grad": render.grad.detach().clone(), "saved_gib": saved.total / GiB,
            "peak_gib": (peak - rss_before) * 1024 / GiB, "wall_s": wall, "cpu_s": cpu}


def main() -> int:
    from bench_full_size import MMAP_ENV

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / ".cache" / "fullsize-models")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny VAE (checks the script; meaningless figures)")
    args = parser.parse_args()
    if os.environ.get(MMAP_ENV) is None:  # freed tensors must leave the RSS for the high-water mark to mean anything
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "131072"})
    import torch

    torch.set_num_threads(args.threads)
    if not args.tiny:
        from bench_full_size_job import full_size_models

        full_size_models(args.models)
    vae = load_vae(args.models, args.tiny)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size, generator=generator)
    with torch.no_grad():
        shape = vae.encode(x[:, :, :64, :64]).latent_dist.mean.shape[1:2] + (args.size // 8, args.size // 8)
    upstream = torch.randn(1, *shape, generator=generator)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads {args.threads}; "
          f"VAE encoder fwd+bwd of one {args.size}^2 render, fp32, {'tiny' if args.tiny else 'SD 1.5'} VAE")
    runs = {}
    for mode in (False, True, False, True):  # alternated: the second pair shows how steady the machine was
        r = run(vae, x, upstream, mode)
        runs.setdefault(mode, []).append(r)
        print(f"  checkpointing {'on ' if mode else 'off'}: saved for backward {r['saved_gib']:.3f} GiB, peak RSS over "
              f"the VAE {r['peak_gib']:.3f} GiB, {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU")
    off, on = runs[False][0], runs[True][0]
    diff = float((off["grad"] - on["grad"]).abs().max())
    identical = bool(torch.equal(off["grad"], on["grad"]))
    best = {m: min(r["cpu_s"] for r in rs) for m, rs in runs.items()}
    print(f"gradient on the render: max |difference| {diff:.3e} ({'bit-identical' if identical else 'NOT identical'})")
    print(f"on / off: saved bytes x{on['saved_gib'] / off['saved_gib']:.3f}, peak RSS "
          f"x{min(r['peak_gib'] for r in runs[True]) / min(r['peak_gib'] for r in runs[False]):.3f}, "
          f"CPU time x{best[True] / best[False]:.2f} (best of 2 each)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
