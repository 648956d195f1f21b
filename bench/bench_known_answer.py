"""Known-answer benchmark: does a prior trained on one shape make SDS pull the head to that shape?

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_known_answer.py [--seeds 0 1 2] [--quick] [--work DIR]

One command: Suzanne (bpy) -> normal-map renders -> build-prior-dataset -> train-prior (tiny
models, made a trained autoencoder and denoiser of other shapes first) -> the pipeline's
GeometryStage from the head initialisation with the trained prior, the untrained one and the
trained one told the opposite views (same seed, same steps) -> Chamfer distance to the target.
Prints the figures and writes docs/known-answer.png (renders of start, trained, control, target)
and, with --json, the numbers. See docs/known-answer.md and bench/known_answer.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import known_answer as ka  # noqa: E402  (bench/ helper, also used by the test)

DOCS = ka.REPO_ROOT / "docs"


def main(argv=None) -> int:
    parser = ka.bench_arguments(__doc__, DOCS / "known-answer.png", "keep the base models, datasets and LoRAs here (shared with the expression bench)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --work: reuse the models, dataset and LoRA found there (geometry phase only)")
    args = parser.parse_args(argv)

    from PIL import Image

    from engine.atomic import write_file_atomic, write_text_atomic

    base = ka.QUICK if args.quick else ka.ExperimentConfig()
    target = ka.suzanne_mesh()
    print(f"target: Suzanne (bpy), closed, {len(target[1])} triangles, {ka.TARGET_WIDTH} m wide, facing -Y")
    results = []
    started = time.perf_counter()
    for seed in args.seeds:
        config = base.replaced(seed=seed, **({"base_seed": None} if args.base_per_seed else {}))
        work, models = ka.bench_folders(args.work, "known-answer", config)
        print(f"--- seed {seed} (work folder {work})")
        result = ka.run_experiment(work, config, chamfer_every=max(config.sds_steps // 6, 1), target=target,
                                   reuse=args.reuse, models=models)
        results.append(result)
        s = result.summary()
        for name, step in result.vanished.items():
            if step is not None:
                print(f"  the {name} run's surface VANISHED at step {step}: its Chamfer is of its last mesh")
        print(f"Chamfer to the target (m): start {s['chamfer_start_m']:.4f}  trained {s['chamfer_trained_m']:.4f}  "
              f"control {s['chamfer_control_m']:.4f}")
        print(f"  trained/start {s['trained_over_start']:.2f}  trained/control {s['trained_over_control']:.2f}  "
              f"(acceptance: trained/start <= 0.5 and clearly below the control)")
        if s["chamfer_views_rotated_m"] is not None:
            print(f"  trained prior told the opposite views (azimuth + 180): {s['chamfer_views_rotated_m']:.4f} "
                  f"(trained/rotated {s['chamfer_trained_m'] / s['chamfer_views_rotated_m']:.2f})")
        print("  Chamfer during SDS (step, m): trained " +
              ", ".join(f"{k}:{v:.4f}" for k, v in result.curves["trained"]) +
              " | control " + ", ".join(f"{k}:{v:.4f}" for k, v in result.curves["control"]))
        curve = result.training["curve"]
        stride = max(len(curve) // 10, 1)
        print(f"  train-prior eval loss {result.training['eval_loss_start']:.4f} -> {result.training['eval_loss_end']:.4f}"
              "; batch loss (step:loss): " + (", ".join(f"{k}:{v:.3f}" for k, v in curve[::stride]) or "not recorded"))
        print("  seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
        if seed == args.seeds[0]:
            picture = ka.comparison_picture(result.meshes)
            write_file_atomic(args.picture, lambda stream: Image.fromarray(picture).save(stream, format="PNG",
                                                                                          optimize=True))
            print(f"  picture: {args.picture} (columns: start, trained, control, target)")
    if len(results) > 1:
        summaries = [{**r.summary(), "trained_over_rotated": r.chamfer_trained / r.chamfer_views_rotated
                      if r.chamfer_views_rotated else float("nan")} for r in results]
        ka.print_spread(summaries, ("chamfer_start_m", "chamfer_trained_m", "chamfer_control_m", "trained_over_start",
                                    "trained_over_control", "trained_over_rotated"))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps({"runs": [{**r.summary(), "config": r.config, "curves": r.curves,
                                                           "training_curve": r.training["curve"]} for r in results]},
                                                indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
