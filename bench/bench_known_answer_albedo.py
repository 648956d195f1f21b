"""Albedo known-answer benchmark: does an albedo prior trained on renders of a known texture make the
texture stage paint it?

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_known_answer_albedo.py [--seeds 0 1 2] [--quick] [--work DIR]

One command: the procedural head's marching-tets mesh with a known texture (skin, hair, collar:
a colour field over space) -> unlit albedo renders -> build-prior-dataset --domain albedo ->
train-prior --domain albedo (on tiny models first made a trained autoencoder and denoiser of
other shapes' albedo renders) -> the pipeline's TextureStage (xatlas unwrap, texture pyramid,
render_albedo, SDS) with the trained prior and with the same base without the LoRA -> result
folder (seams dilated, albedo.png) read back and rendered -> PSNR against renders of the known
texture. Prints the figures and writes docs/known-answer-albedo.png. See docs/known-answer.md
and bench/known_answer_albedo.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import known_answer as ka  # noqa: E402  (bench/ helpers, also used by the tests)
import known_answer_albedo as kb  # noqa: E402


def main(argv=None) -> int:
    parser = ka.bench_arguments(__doc__, ka.REPO_ROOT / "docs" / "known-answer-albedo.png", "keep the base models, dataset and LoRA here")
    args = parser.parse_args(argv)

    from PIL import Image

    from engine.atomic import write_file_atomic, write_text_atomic

    base = kb.QUICK if args.quick else kb.AlbedoConfig()
    results, started = [], time.perf_counter()
    for seed in args.seeds:
        config = base.replaced(seed=seed, **({"base_seed": None} if args.base_per_seed else {}))
        work, models = ka.bench_folders(args.work, "known-answer-albedo", config)
        print(f"--- seed {seed} (work folder {work})")
        result = kb.run_albedo_experiment(work, config, models=models, psnr_every=max(config.texture_steps // 6, 1))
        results.append(result)
        s, p = result.summary(), result.psnr
        print(f"UV unwrap (xatlas, the stage's own): {result.unwrap['charts']} charts, utilisation "
              f"{result.unwrap['utilization']:.2f}, {result.unwrap['faces']} faces")
        print(f"PSNR of the exported albedo's renders against the known texture's (dB, {len(kb.eval_cameras(config))} "
              f"views, head pixels): start {p['start']:.2f}  trained {p['trained']:.2f}  control {p['control']:.2f}")
        print(f"  trained - start {s['trained_minus_start_db']:+.2f} dB  trained - control "
              f"{s['trained_minus_control_db']:+.2f} dB")
        print("  PSNR during the stage (step: dB, the map before export): " + " | ".join(
            f"{name} " + ", ".join(f"{k}:{v:.2f}" for k, v in curve) for name, curve in result.curves.items()))
        print(f"  train-prior eval loss {result.training['eval_loss_start']:.4f} -> {result.training['eval_loss_end']:.4f}")
        print("  seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
        if seed == args.seeds[0]:
            picture = kb.comparison_picture(result)
            write_file_atomic(args.picture, lambda stream: Image.fromarray(picture).save(stream, format="PNG",
                                                                                          optimize=True))
            print(f"  picture: {args.picture} (columns: start, trained, control, target; rows: azimuth 0, 60, 90, 180)")
    if len(results) > 1:
        ka.print_spread([{**r.summary(), **{f"psnr_{k}_db": v for k, v in r.psnr.items()}} for r in results],
                        ("psnr_start_db", "psnr_trained_db", "psnr_control_db", "trained_minus_start_db",
                         "trained_minus_control_db"))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps({"runs": [{**r.summary(), "config": r.config, "curves": r.curves}
                                                          for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
