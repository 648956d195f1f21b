"""The main job, headless: what an artist does in Blender, run end to end without a screen.

1. build the extension zip with Blender's own tool and validate it;
2. install and enable it in real Blender (the bpy module) inside a throwaway user folder;
3. load the reference photos into the scene and check the engine and the photos through the
   add-on's own operators (which run ``python -m engine`` as a separate process);
4. run the pipeline as far as it goes today (see ``smoke_pipeline.py``) and bring the head into
   the Blender scene with one shape key per expression; save the .blend and a Cycles render.

Real weights absent (as on a machine without them): it says so, says how to get them, and runs
the same code on tiny random-weight models, labelled a SMOKE RUN everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

DEFAULT_EXPRESSIONS = ["smiling", "angry", "surprised"]
MARKER = ".idto3d-main-job"


def say(message: str) -> None:
    print(f"[main] {message}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build, install and run ID-to-3D Head headless.")
    parser.add_argument("--images", nargs="+", type=Path, default=None,
                        help="photos of one person (default: three views derived from a real photo "
                             "shipped with matplotlib)")
    parser.add_argument("--expressions", nargs="+", default=DEFAULT_EXPRESSIONS,
                        help="expressions besides neutral (default: %(default)s)")
    parser.add_argument("--models", "--prior", dest="models", type=Path, default=None,
                        help="models root with sd15/, arc2face/, antelopev2/ (default: $IDTO3D_MODELS "
                             "or the per-user folder)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "main-job",
                        help="where everything is written (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="geometry SDS steps (default: per run kind)")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest run that still goes through every stage (used by the tests)")
    return parser.parse_args(argv)


def default_photos(folder: Path) -> list[Path]:
    """Three photos of one person derived from Grace Hopper's portrait (matplotlib ships it)."""
    import matplotlib
    from PIL import Image, ImageEnhance, ImageOps

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(source).convert("RGB")
    variants = {
        "grace hopper.jpg": image,
        "grace hopper mirrored.png": ImageOps.mirror(image),
        "grace hopper crop brighter.jpg": ImageEnhance.Brightness(image.crop((40, 0, 512, 560))).enhance(1.25),
    }
    paths = []
    for name, variant in variants.items():
        variant.save(folder / name)
        paths.append(folder / name)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            say(f"{out} is not empty and was not written by this job: choose another --out (nothing changed)")
            return 2
        shutil.rmtree(out)  # a previous run of this job: replace it
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by scripts/main_job.py; replaced on the next run\n", encoding="utf-8")

    # 1. Build and validate the extension with Blender's tool.
    from extension_tools import build_extension, install_and_enable, validate_extension

    zip_path = build_extension(out / "dist")
    validate_extension(zip_path)
    say(f"built and validated {zip_path.name} ({zip_path.stat().st_size / 1024:.0f} KiB)")

    # 2. Real Blender, with its user folder inside the output folder (set before importing bpy).
    os.environ["BLENDER_USER_RESOURCES"] = str(out / "blender-user")
    import bpy

    module = install_and_enable(zip_path)
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.python_executable = sys.executable  # this Python has the engine's packages
    say(f"installed and enabled {module} in Blender {bpy.app.version_string}")

    # 3. Models: real ones if complete, else a clearly labelled smoke run on tiny models.
    from engine.models import check_models, default_models_root

    models_root = (args.models or default_models_root()).expanduser().resolve()
    blocking = [r for r in check_models(models_root) if r.blocking]
    smoke = bool(blocking)
    if smoke:
        say(f"real model weights not found under {models_root}:")
        for report in blocking:
            state = "folder missing" if not report.exists else "lacks " + ", ".join(report.missing)
            say(f"  {report.spec.key}/: {state} (get it from {report.spec.source})")
        say("  -> get them as docs/install.md explains (or `python -m engine fetch-models` where "
            "downloading is allowed), then run again with --models ROOT.")
        say("SMOKE RUN: continuing on tiny RANDOM-weight models; the head is NOT a likeness.")
        from engine.tiny_models import write_tiny_models

        models_root = write_tiny_models(out / "tiny-models")
    prefs.models_root = str(models_root)

    bpy.ops.idto3d.check_engine()
    runtime = bpy.context.window_manager.idto3d_runtime
    say(f"engine check: {runtime.engine_summary}")

    # 4. Photos and expressions into the scene, through the add-on's operators.
    photos = [p.resolve() for p in args.images] if args.images else default_photos(out / "photos")
    settings = bpy.context.scene.idto3d
    for photo in photos:
        bpy.ops.idto3d.photos_add(directory=str(photo.parent) + os.sep, files=[{"name": photo.name}])
    settings.expressions.clear()
    for text in ["neutral", *args.expressions]:
        bpy.ops.idto3d.expression_add(text=text)
    bpy.ops.idto3d.photos_check()
    for photo in settings.photos:
        say(f"photo {Path(photo.path).name}: {photo.status} {photo.message}")
    usable = [Path(bpy.path.abspath(p.path)) for p in settings.photos if p.enabled and p.status in ("OK", "SEVERAL_FACES")]
    if not usable:
        say("no usable photo: nothing to generate from (see the statuses above)")
        return 1

    # 5. The pipeline as far as it goes, in the engine's Python as a separate process.
    from smoke_pipeline import run_pipeline_process

    result_dir = out / "result"
    expressions = [item.text for item in settings.expressions if item.enabled]
    run_pipeline_process(usable, expressions, models_root, result_dir, smoke=smoke, steps=args.steps,
                         quick=args.quick)

    # 6. Into Blender: one mesh, one shape key per expression; save and render.
    from smoke_pipeline import import_result_into_blender, render_preview

    obj = import_result_into_blender(result_dir)
    blend = out / "head.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    preview = render_preview(obj, out / "render.png", samples=4 if args.quick else 16)
    keys = [key.name for key in obj.data.shape_keys.key_blocks]
    summary = {
        "smoke_run": smoke,
        "object": obj.name,
        "vertices": len(obj.data.vertices),
        "faces": len(obj.data.polygons),
        "shape_keys": keys,
        "blend": str(blend),
        "render": str(preview),
        "result": str(result_dir),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    say(("SMOKE RUN (tiny random models) " if smoke else "") + f"done in {summary['seconds']} s: "
        f"{obj.name} with {summary['vertices']} vertices and shape keys {keys}")
    say(f"saved {blend} and {preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
