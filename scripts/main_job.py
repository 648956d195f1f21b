"""The main job, headless: what an artist does in Blender, run end to end without a screen.

1. build the extension zip with Blender's own tool and validate it;
2. install and enable it in real Blender (the bpy module) inside a throwaway user folder;
3. add the reference photos and the expressions through the add-on's operators, check the engine
   and the photos (background checks; EXEC mode waits for them);
4. press Generate Head headless: ``bpy.ops.idto3d.generate_head()`` in EXEC mode writes job.json,
   starts ``python -m engine run JOB_DIR`` and blocks until the head is in the scene, exactly as
   ``blender -b --python`` scripts and render farms use it;
5. relight the head in Cycles (the add-on's studio rig), render a still, save the .blend and a
   summary of what is in the scene (vertex counts, shape-key offsets, render statistics).

Real weights absent (as on a machine without them): it says so, says how to get them, and runs
the same path on tiny random-weight models with the test preset, labelled a SMOKE RUN everywhere.
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
    parser.add_argument(
        "--images",
        nargs="+",
        type=Path,
        default=None,
        help="photos of one person (default: three views derived from a real photo shipped with matplotlib)",
    )
    parser.add_argument(
        "--expressions",
        nargs="+",
        default=DEFAULT_EXPRESSIONS,
        help="expressions besides neutral (default: %(default)s)",
    )
    parser.add_argument(
        "--models",
        "--prior",
        dest="models",
        type=Path,
        default=None,
        help="models root with sd15/, arc2face/, antelopev2/ (default: $IDTO3D_MODELS "
        "or the per-user folder)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "build" / "main-job",
        help="where everything is written (default: %(default)s)",
    )
    parser.add_argument(
        "--preset",
        choices=("test", "preview", "standard", "high"),
        default=None,
        help="quality preset (default: standard with real weights, test on tiny models)",
    )
    parser.add_argument("--render-size", type=int, default=256, help="size of the Cycles still (pixels)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest run that still goes through every step (used by the tests)",
    )
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
        "grace hopper crop brighter.jpg": ImageEnhance.Brightness(image.crop((40, 0, 512, 560))).enhance(
            1.25
        ),
    }
    paths = []
    for name, variant in variants.items():
        variant.save(folder / name)
        paths.append(folder / name)
    return paths


def prepare_output(out: Path) -> bool:
    """Empty ``out`` if an earlier run of this job made it; refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            say(f"{out} is not empty and was not written by this job: choose another --out (nothing changed)")
            return False
        shutil.rmtree(out)  # a previous run of this job: replace it
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by scripts/main_job.py; replaced on the next run\n", encoding="utf-8")
    return True


def shape_key_offsets(obj) -> dict[str, float]:
    """Largest vertex displacement (metres) of each shape key from the Basis."""
    import numpy as np

    keys = obj.data.shape_keys.key_blocks
    count = len(obj.data.vertices)
    basis = np.zeros(count * 3, np.float32)
    keys[0].data.foreach_get("co", basis)
    out = {}
    for key in keys[1:]:
        co = np.zeros(count * 3, np.float32)
        key.data.foreach_get("co", co)
        out[key.name] = float(np.abs(co - basis).reshape(-1, 3).max())
    return out


def image_statistics(path: Path) -> dict[str, float]:
    """How much of the render is not background, and its contrast."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    corner = np.median(pixels[:8, :8].reshape(-1, 3), axis=0)
    differs = np.abs(pixels - corner).max(axis=-1) > 0.05
    return {"std": float(pixels.std()), "foreground_fraction": float(differs.mean())}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = args.out.resolve()
    if not prepare_output(out):
        return 2

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
        say(
            "  -> get them as docs/install.md explains (or `python -m engine fetch-models` where "
            "downloading is allowed), then run again with --models ROOT."
        )
        say(
            "SMOKE RUN: continuing on tiny RANDOM-weight models with the test preset; the head is NOT a likeness."
        )
        from engine.tiny_models import write_tiny_models

        models_root = write_tiny_models(out / "tiny-models")
    prefs.models_root = str(models_root)

    bpy.ops.idto3d.check_engine()
    runtime = bpy.context.window_manager.idto3d_runtime
    say(f"engine check: {runtime.engine_summary}")

    # 4. A clean stage (the startup file's cube would enclose the head), then photos and
    #    expressions into the scene through the add-on's operators.
    for name in ("Cube", "Light", "Camera"):
        if name in bpy.data.objects:
            bpy.data.objects.remove(bpy.data.objects[name])
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
        photo.enabled = photo.status in ("OK", "SEVERAL_FACES")
    if not any(photo.enabled for photo in settings.photos):
        say("no usable photo: nothing to generate from (see the statuses above)")
        return 1

    # 5. Generate Head, headless: EXEC mode blocks until the head is in the scene.
    preset = args.preset or ("test" if smoke or args.quick else "standard")
    settings.preset = preset.upper()
    settings.texture_size = 128 if preset == "test" else 1024
    settings.output_dir = str(out / "jobs")
    say(f"Generate Head (preset {preset}) ...")
    try:
        bpy.ops.idto3d.generate_head()
    except RuntimeError as exc:  # the operator's error report, raised by bpy.ops
        say(f"Generate Head failed: {exc}")
        generation = sys.modules[f"{module}.generation"]
        job = generation.job_for(bpy.context.scene)
        if job is not None and job.stderr_tail:
            say("engine log (tail):\n" + job.stderr_tail)
        return 1
    generation = sys.modules[f"{module}.generation"]
    job = generation.job_for(bpy.context.scene)
    obj = job.head_object()
    say(
        f"head in the scene: {obj.name} ({len(obj.data.vertices)} vertices; "
        f"{job.snapshots_applied} snapshot(s) streamed in while it optimised)"
    )

    # 6. Relight in Cycles, render, save.
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.idto3d.relight()  # the studio scene: the head alone, the user's scene unchanged
    relight = sys.modules[f"{module}.operators.relight"]
    studio = relight.studio_scene(create=False)
    studio.render.resolution_x = studio.render.resolution_y = 96 if args.quick else args.render_size
    bpy.ops.idto3d.relight()  # framed again for that resolution
    render = relight.render_still(studio, out / "render.png", samples=8 if args.quick else 32)
    blend = out / "head.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    result = json.loads((job.job_dir / "result" / "result.json").read_text(encoding="utf-8"))
    summary = {
        "smoke_run": smoke,
        "preset": preset,
        "object": obj.name,
        "vertices": len(obj.data.vertices),
        "faces": len(obj.data.polygons),
        "uv_layers": [layer.name for layer in obj.data.uv_layers],
        "shape_keys": [key.name for key in obj.data.shape_keys.key_blocks],
        "shape_key_max_offset_m": shape_key_offsets(obj),
        "snapshots_streamed": job.snapshots_applied,
        "render": str(render),
        "render_statistics": image_statistics(render),
        "blend": str(blend),
        "job": str(job.job_dir),
        "result_mesh": result.get("mesh"),
        "tiny_test_models": bool(result.get("models", {}).get("tiny_test_models")),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    say(
        ("SMOKE RUN (tiny random models) " if smoke else "") + f"done in {summary['seconds']} s: "
        f"{obj.name} with {summary['vertices']} vertices and shape keys {summary['shape_keys']}"
    )
    say(f"saved {blend} and {render}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
