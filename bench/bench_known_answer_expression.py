"""Expression known-answer benchmark: does a prior trained on a shape and its opened jaw make the
joint geometry stage's shape key open the jaw?

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_known_answer_expression.py [--seeds 0 1 2] [--quick] [--work DIR]

One command: Suzanne and Suzanne with an opened jaw (bpy, a known smooth deformation) -> normal
maps -> build-prior-dataset (rows "neutral" and "open mouth"; and the neutral rows alone) ->
train-prior on each -> the neutral start (the head fitted to the neutral renders) -> the
pipeline's GeometryStage with the expression "open mouth", once with each prior -> result folder
(head.npz, head.glb) -> Chamfer of neutral + shape key to the opened jaw, and of neutral to the
neutral target. Prints the figures and writes docs/known-answer-expression.png. With --work
shared with bench_known_answer.py the control reuses that bench's trained prior (the same
training on the same neutral renders). See docs/known-answer.md and bench/known_answer_expression.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import known_answer as ka  # noqa: E402  (bench/ helpers, also used by the tests)
import known_answer_expression as kx  # noqa: E402


def main(argv=None) -> int:
    parser = ka.bench_arguments(__doc__, ka.REPO_ROOT / "docs" / "known-answer-expression.png", "keep the base models, datasets and LoRAs here, and reuse those made with the same settings (shared with bench_known_answer.py)")
    args = parser.parse_args(argv)

    from PIL import Image

    from engine.atomic import write_file_atomic, write_text_atomic

    base = kx.QUICK if args.quick else kx.ExpressionConfig()
    target = ka.suzanne_mesh()
    print(f"targets: Suzanne (bpy), closed, {len(target[1])} triangles, and {base.expression!r}: the part below "
          f"the hinge (y, z) = {base.hinge} m turned {base.jaw_angle_deg} deg")
    results, started = [], time.perf_counter()
    for seed in args.seeds:
        config = base.replaced(seed=seed, **({"base_seed": None} if args.base_per_seed else {}))
        work, models = ka.bench_folders(args.work, "known-answer-expression", config)
        control = _geometry_prior(args.work, config)
        print(f"--- seed {seed} (work folder {work}" + (f"; control LoRA from {control})" if control else ")"))
        result = kx.run_expression_experiment(work, config, models=models, target=target, control_lora=control,
                                              chamfer_every=max(config.sds_steps // 6, 1), reuse=args.work is not None)
        results.append(result)
        s, c = result.summary(), result.chamfer
        print(f"the deformation: Chamfer neutral target to {config.expression!r} target {result.deformation_chamfer:.4f} m")
        print("Chamfer (m)        neutral to neutral target   neutral+shape key to expression target   "
              "neutral alone to expression target   largest offset")
        for name in ("start", "trained", "control"):
            print(f"  {name:8s}         {c[name]['neutral']:.4f}                      {c[name]['expression']:.4f}"
                  f"                                   {c[name]['neutral_to_deformed']:.4f}"
                  f"                               {result.offset_max_m[name]:.4f}")
        print(f"  expression: trained/start {s['expression_trained_over_start']:.2f}  trained/control "
              f"{s['expression_trained_over_control']:.2f}  (acceptance: <= 0.5 and below the control); "
              f"neutral: trained/start {s['neutral_trained_over_start']:.2f}")
        print("  expression Chamfer during the stage (step, m): " + " | ".join(
            f"{name} " + ", ".join(f"{k}:{v:.4f}" for k, v in curve) for name, curve in result.curves.items()))
        for name, record in result.training.items():
            print(f"  train-prior ({name}) eval loss {record['eval_loss_start']:.4f} -> {record['eval_loss_end']:.4f}")
        print("  seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
        if seed == args.seeds[0]:
            picture = kx.comparison_picture(result.meshes)
            write_file_atomic(args.picture, lambda stream: Image.fromarray(picture).save(stream, format="PNG",
                                                                                          optimize=True))
            print(f"  picture: {args.picture} (columns: neutral target, trained neutral, expression target, trained "
                  "expression, control expression, start expression)")
    if len(results) > 1:
        ka.print_spread([r.summary() for r in results], ("expression_trained_over_start",
                                                          "expression_trained_over_control",
                                                          "neutral_trained_over_start"))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps({"runs": [{**r.summary(), "config": r.config, "curves": r.curves}
                                                          for r in results]}, indent=1))
    return 0


def _geometry_prior(work: Path | None, config) -> Path | None:
    """bench_known_answer.py's trained prior for this seed, when its --work folder holds one made
    with the same training settings: it is this experiment's control (neutral renders only)."""
    if work is None:
        return None
    folder, _ = ka.bench_folders(work, "known-answer", config)
    if not (folder / "lora_normal" / "prior_adapter.json").is_file():
        return None
    try:
        ka.reused_training(folder, config)
    except RuntimeError:
        return None
    return folder / "lora_normal"


if __name__ == "__main__":
    sys.exit(main())
