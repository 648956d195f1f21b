"""``python -m engine train-prior``: train a task prior (normal or albedo LoRA) on a dataset folder.

Progress goes to stderr, or as protocol ``progress`` messages on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import os
import re
from pathlib import Path

from ..options import device_name, real_number, whole_number

DOMAINS = ("normal", "albedo")
LORA_KIND = "lora"  # the owned-folder kind of a train-prior --out folder


def target_list(text: str) -> str:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or not all(re.fullmatch(r"[A-Za-z_][\w.]*", n) for n in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of module names "
                                         "(e.g. to_q,to_k,to_v,to_out.0)")
    return text


def prepare_output(out: Path, resume: bool, *, claim: bool = True) -> None:
    """Claim ``--out`` (refusing a foreign folder unchanged) and refuse to overwrite adapter files
    the trainer did not write; ``claim=False`` checks only, writing nothing. Raises EngineError."""
    from ..errors import EngineError
    from ..owned import check_claimable, claim_dir, foreign_entries
    from .lora import INFO_FILE, WEIGHTS_FILE

    if resume and not (out / "checkpoints").is_dir():
        raise EngineError(f"--resume: {out} holds no checkpoints/ to continue from; nothing was changed",
                          code="bad_resume", hint="run without --resume to start training, or point --out at an "
                                                  "earlier run")
    if not (claim_dir(out, LORA_KIND) if claim else check_claimable(out, LORA_KIND)):
        return  # not claimed yet: nothing of ours in it to check
    mine = [p for p in foreign_entries(out) if p.name in (WEIGHTS_FILE, INFO_FILE) and p.parent == Path(os.path.abspath(out))]
    if mine:
        raise EngineError(f"{mine[0]} was not written by train-prior (or was changed since); nothing was changed",
                          code="foreign_entries", hint="move it away or choose another --out folder")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True, choices=DOMAINS, help="which task prior to train")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (docs/prior-dataset.md)")
    parser.add_argument("--out", required=True, type=Path, help="LoRA folder to write (adapter, checkpoints, samples)")
    parser.add_argument("--prior", type=Path, default=None, help="models root (default: $IDTO3D_MODELS or the user folder)")
    # Every number is range-checked here: a zero, negative, NaN or absurd value is refused with the
    # option's name instead of training an adapter that does nothing (or running out of memory).
    parser.add_argument("--steps", type=whole_number(1, 10_000_000, 1000), default=1000)
    parser.add_argument("--batch-size", type=whole_number(1, 1024, 4), default=4)
    parser.add_argument("--lr", type=real_number(0.0, 1.0, 1e-4, low_open=True), default=1e-4)
    parser.add_argument("--rank", type=whole_number(1, 1024, 8), default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=real_number(0.0, 1e4, 8, low_open=True), default=None,
                        help="LoRA alpha (default: the rank)")
    parser.add_argument("--targets", type=target_list, default="to_q,to_k,to_v,to_out.0,to_k_exp,to_v_exp",
                        help="comma-separated module names to adapt (to_k_exp/to_v_exp: the expression branch)")
    parser.add_argument("--expression-scale", type=real_number(0.0, 100.0, 1.0), default=1.0,
                        help="weight of the expression branch")
    parser.add_argument("--checkpoint-every", type=whole_number(0, 10_000_000, 250), default=250,
                        help="0: one checkpoint at the end")
    parser.add_argument("--validate-every", type=whole_number(0, 10_000_000, 0), default=0,
                        help="0: validation samples only at the end")
    parser.add_argument("--validation-samples", type=whole_number(0, 64, 2), default=2)
    parser.add_argument("--seed", type=whole_number(0, 2**32 - 1, 0), default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--device", type=device_name, default=None,
                        help="cuda, cuda:1, cpu, auto (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="base model precision")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                        help="autocast dtype of the forward pass (auto: the base precision on CUDA; fp16 adds a "
                             "gradient scaler); LoRA weights always train in fp32")
    parser.add_argument("--text-mode", default="blend", choices=("blend", "append", "identity"),
                        help="how expression/view text enters the prompt (docs/prior.md)")
    parser.add_argument("--json", action="store_true", help="protocol JSON lines on stdout instead of text on stderr")


def run(args: argparse.Namespace) -> int:
    from ..errors import EngineError, exit_code_for
    from ..models import default_models_root
    from ..options import check_device_available
    from .train import TrainConfig, train_prior

    import contextlib

    from .. import __version__, protocol

    session = protocol.WorkerSession(sys.stdout, __version__) if args.json else contextlib.nullcontext()
    report = None
    if args.json:
        def report(event: dict) -> None:
            if event["kind"] == "progress":
                session.send("progress", step=event["step"], total=event["total"], loss=event["loss"],
                             eta_s=event["eta_s"], stage="train-prior")
            elif event["kind"] == "start":
                session.send("stage", name="train-prior", index=1, count=1, eval_loss=event["eval_loss"])
            else:
                session.send("result", folder=str(args.out), eval_loss=event["eval_loss"],
                             eval_loss_start=event["eval_loss_start"])

    config = TrainConfig(
        domain=args.domain, data=args.data, out=args.out, models_root=args.prior or default_models_root(),
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank, alpha=args.alpha,
        target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        expression_scale=args.expression_scale, checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every, validation_samples=args.validation_samples, seed=args.seed,
        resume=args.resume, device=None if args.device == "auto" else args.device, dtype=args.dtype,
        mixed_precision=args.mixed_precision, text_mode=args.text_mode)
    try:
        # --json: hello first; error + done on every way out (SIGINT and bugs included).
        with session:
            check_device_available(args.device)
            try:
                result = train_prior(config, report)
            except ValueError as exc:  # e.g. --targets naming modules the UNet lacks: the user's input
                raise EngineError(str(exc), code="bad_option", hint="check --targets and --dtype") from None
    except EngineError as exc:
        print(f"train-prior: error: {getattr(exc, 'message', exc)}"
              + (f"\nfix: {exc.hint}" if getattr(exc, "hint", None) else ""), file=sys.stderr)
        return exit_code_for(exc)
    print(f"train-prior: {result.steps} steps, eval loss {result.eval_loss_start:.4f} -> {result.eval_loss_end:.4f}; "
          f"adapter in {result.adapter_dir}", file=sys.stderr)
    return 0
