"""``python -m engine train-prior``: train a task prior (normal or albedo LoRA) on a dataset folder.

Progress goes to stderr, or as protocol ``progress`` messages on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOMAINS = ("normal", "albedo")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True, choices=DOMAINS, help="which task prior to train")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (docs/prior-dataset.md)")
    parser.add_argument("--out", required=True, type=Path, help="LoRA folder to write (adapter, checkpoints, samples)")
    parser.add_argument("--prior", type=Path, default=None, help="models root (default: $IDTO3D_MODELS or the user folder)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--targets", default="to_q,to_k,to_v,to_out.0,to_k_exp,to_v_exp",
                        help="comma-separated module names to adapt (to_k_exp/to_v_exp: the expression branch)")
    parser.add_argument("--expression-scale", type=float, default=1.0, help="weight of the expression branch")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--validate-every", type=int, default=0, help="0: validation samples only at the end")
    parser.add_argument("--validation-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="base model precision")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                        help="autocast dtype of the forward pass (auto: the base precision on CUDA; fp16 adds a "
                             "gradient scaler); LoRA weights always train in fp32")
    parser.add_argument("--text-mode", default="blend", choices=("blend", "append", "identity"),
                        help="how expression/view text enters the prompt (docs/prior.md)")
    parser.add_argument("--json", action="store_true", help="protocol JSON lines on stdout instead of text on stderr")


def run(args: argparse.Namespace) -> int:
    from ..models import default_models_root
    from . import PriorError
    from .train import TrainConfig, train_prior

    import os

    from .. import __version__, protocol

    report = None
    if args.json:
        sys.stdout.write(protocol.encode(protocol.hello(__version__, os.getpid())))

        def report(event: dict) -> None:
            if event["kind"] == "progress":
                protocol.send(sys.stdout, "progress", step=event["step"], total=event["total"], loss=event["loss"],
                              eta_s=event["eta_s"], stage="train-prior")
            else:
                protocol.send(sys.stdout, "stage" if event["kind"] == "start" else "result",
                              **({"name": "train-prior", "index": 0, "count": 1, "eval_loss": event["eval_loss"]}
                                 if event["kind"] == "start" else
                                 {"folder": str(args.out), "eval_loss": event["eval_loss"],
                                  "eval_loss_start": event["eval_loss_start"]}))

    config = TrainConfig(
        domain=args.domain, data=args.data, out=args.out, models_root=args.prior or default_models_root(),
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank, alpha=args.alpha,
        target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        expression_scale=args.expression_scale, checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every, validation_samples=args.validation_samples, seed=args.seed,
        resume=args.resume, device=args.device, dtype=args.dtype, mixed_precision=args.mixed_precision,
        text_mode=args.text_mode)
    try:
        result = train_prior(config, report)
    except (PriorError, ValueError) as exc:
        if args.json:
            # PriorError's str() already ends with its hint: send the parts separately.
            protocol.send(sys.stdout, "error", code=getattr(exc, "code", "bad_input"),
                          message=getattr(exc, "message", str(exc)), hint=getattr(exc, "hint", "") or "")
            protocol.send(sys.stdout, "done", ok=False)
        print(f"train-prior: {exc}", file=sys.stderr)
        return 2
    if args.json:
        protocol.send(sys.stdout, "done", ok=True)
    print(f"train-prior: {result.steps} steps, eval loss {result.eval_loss_start:.4f} -> {result.eval_loss_end:.4f}; "
          f"adapter in {result.adapter_dir}", file=sys.stderr)
    return 0
