"""The main job, headless: what an artist does in Blender, run end to end without a screen.

1. build the extension zip with Blender's own tool and validate it;
2. install and enable it in real Blender (the bpy module) inside a throwaway user folder;
3. load the reference photos into the scene and check the engine and the photos through the
   add-on's own operators (which run ``python -m engine`` as a separate process);
4. write a job folder and run the generation job (``python -m engine run JOB_DIR``, the worker
   the add-on starts), then bring the head into the Blender scene with one shape key per
   expression; save the .blend and a Cycles render.

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
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # extension_tools

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


# Job settings of the runs this script makes: quick (tests), smoke (tiny models), real weights.
QUICK_OVERRIDES: dict = {}
SMOKE_OVERRIDES = {"grid": 48, "render_resolution": 64, "pretrain_steps": 200, "geometry_steps": 30,
                   "texture_steps": 10}


def write_job_folder(job_dir: Path, photos, expressions, models_root: Path, *, smoke: bool, steps, quick: bool):
    from engine.pipeline.job import write_job

    overrides = dict(QUICK_OVERRIDES if quick else SMOKE_OVERRIDES if smoke else {})
    if steps:
        overrides["geometry_steps"] = steps
    write_job(job_dir, {"photos": [str(p) for p in photos], "expressions": list(expressions),  # neutral first
                        "preset": "test" if smoke else "preview", "overrides": overrides,
                        "models": str(models_root), "texture_size": 256 if smoke else None})


def run_worker(job_dir: Path) -> Path:
    """Start ``python -m engine run``, print its protocol messages, return the result folder."""
    import subprocess

    from engine import protocol

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job_dir)], stdout=subprocess.PIPE,
                               stdin=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    result, error, last_print = None, None, 0.0
    for line in process.stdout:
        try:
            msg = protocol.decode(line)
        except protocol.ProtocolError as exc:
            say(f"worker: ignored a line that is not protocol ({exc})")
            continue
        kind = msg["type"]
        if kind == "stage":
            say(f"worker: stage {msg['index']}/{msg['count']}: {msg['name']}")
        elif kind == "progress" and (time.monotonic() - last_print > 2 or msg["step"] == msg["total"]):
            last_print = time.monotonic()
            say(f"worker: {msg.get('stage')} step {msg['step']}/{msg['total']} loss {msg.get('loss')} "
                f"eta {msg.get('eta_s')} s")
        elif kind == "warning":
            say(f"worker: warning: {msg['message']}")
        elif kind == "error":
            error = msg
        elif kind == "result":
            result = msg
    process.stdin.close()
    code = process.wait()
    if error or code != 0 or result is None:
        detail = f"{error['message']} ({error['hint']})" if error else f"exit code {code}"
        raise RuntimeError(f"the generation worker failed: {detail}")
    return Path(result["folder"])


# Blender-side helpers (the blender helper moves these into the add-on's Generate Head).

def import_result_into_blender(result_dir: Path):
    """Import through the installed add-on's own importer (result_import.py)."""
    import importlib

    import bpy

    module = next(name for name in bpy.context.preferences.addons.keys() if name.endswith(".id_to_3d"))
    importer = importlib.import_module(f"{module}.result_import")
    return importer.import_result(result_dir, name="Head")


def render_preview(obj, path: Path, samples: int = 16, size: int = 256) -> Path:
    """A small Cycles render of the head (key light + camera in front), written to ``path``."""
    import bpy
    from mathutils import Vector

    scene = bpy.context.scene
    centre = sum((obj.matrix_world @ Vector(corner) for corner in obj.bound_box), Vector()) / 8.0
    camera_data = bpy.data.cameras.new("Head Camera")
    camera_data.lens = 85
    camera = bpy.data.objects.new("Head Camera", camera_data)
    camera.location = centre + Vector((0.25, -0.95, 0.1))
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
    light_data = bpy.data.lights.new("Key Light", type="AREA")
    light_data.energy = 20
    light = bpy.data.objects.new("Key Light", light_data)
    light.location = centre + Vector((-0.6, -0.8, 0.6))
    light.rotation_euler = (centre - light.location).to_track_quat("-Z", "Y").to_euler()
    for item in (camera, light):
        scene.collection.objects.link(item)
    scene.camera = camera
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return path


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

    # 5. The generation job, in the engine's Python as a separate process (python -m engine run).
    expressions = [item.text for item in settings.expressions if item.enabled]
    job_dir = out / "job"
    write_job_folder(job_dir, usable, expressions, models_root, smoke=smoke, steps=args.steps, quick=args.quick)
    result_dir = run_worker(job_dir)

    # 6. Into Blender: one mesh, one shape key per expression; save and render.
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
