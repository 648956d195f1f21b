"""Command line of the engine: ``python -m engine <command> ...``.

Each command lives in its own module, which defines ``configure(parser)`` and ``run(args) -> int``
and imports only the standard library at module level (heavy imports happen inside ``run``), so
``--help`` stays fast and works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# (command, module relative to this package, one-line help). Listed explicitly: no registry.
COMMANDS = (
    ("doctor", ".doctor", "check Python, packages, GPU and model folders; non-zero exit if something required is missing"),
    ("make-tiny-models", ".tiny_models", "write a tiny random-weight prior in the models-folder layout (tests, smoke runs)"),
    # identity commands (issue 3) go here
    ("identity", ".identity.cli", "check photos, align the faces and write the ArcFace identity embedding"),
    ("fetch-models", ".model_store", "download the model folders (antelopev2, arc2face, sd15) and verify them"),
    # prior commands (issue 5) go here
    ("train-prior", ".prior.train_cli", "train a task prior (normal or albedo LoRA) on a dataset folder"),
    ("build-prior-dataset", ".prior.dataset_cli", "build a task-prior dataset from a folder of rendered heads"),
    # pipeline commands (issue 8)
    ("run", ".pipeline.worker", "run the job in a job folder (the add-on's worker: JSON lines on stdout; a closed "
                                "stdin cancels it, so shells and schedulers use generate)"),
    ("generate", ".pipeline.generate", "photos + expressions in, a head out: writes OUT/job.json and runs it "
                                       "(--resume continues it)"),
    ("batch", ".pipeline.batch", "one head per row of a manifest (CSV/JSONL), here or on a Ray cluster (--ray), "
                                 "with an index of the results"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="ID-to-3D engine: identity-consistent 3D heads from photos.",
    )
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name, __package__)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def _tolerant_streams() -> None:
    # A file name that is not valid UTF-8 reaches us as a surrogate-escaped str; printing it must
    # not crash a command after its work is done (it shows as \udcXX, the exact bytes).
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    from .errors import EXIT_INTERRUPTED, EngineError, exit_code_for

    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Logs go to stderr: stdout is reserved for the JSON-lines protocol when run as a worker.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .models import enforce_offline

    enforce_offline()  # every command starts offline; only an allowed download (fetch-models) lifts it
    try:
        return int(args._run(args) or 0)
    except EngineError as exc:  # a command that does not report its own errors: same shape for all
        print(f"{args.command}: error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
