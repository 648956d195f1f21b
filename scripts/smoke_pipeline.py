"""The pipeline as far as it goes today, run as a worker process that speaks engine.protocol.

Stages: identity (photos -> ArcFace embedding) -> prior (Arc2Face + SD 1.5, normal LoRA when
present) -> geometry (procedural head initialisation, DMTet, a short SDS run on normal renders)
-> expressions (the shared-topology expression model, a short SDS run per expression) -> result
folder (head.npz, result.json, preview.png).

It is deliberately short (a preview, not a finished head): the full generation job with presets,
texture stage and export is the next milestone. On tiny random-weight models it is a SMOKE RUN:
the code paths are the production ones, the head is not a likeness.

Two halves:
- ``python scripts/smoke_pipeline.py run ...`` is the worker (the engine's Python, torch loaded);
- ``run_pipeline_process`` / ``import_result_into_blender`` / ``render_preview`` are called by
  scripts/main_job.py in the Blender process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from engine import __version__, protocol  # noqa: E402  (standard library only)


# ----------------------------------------------------------------------------- worker (engine side)

class Cancelled(Exception):
    code = "cancelled"
    hint = "the job was cancelled (or Blender went away) before the head was written"


def _watch_stdin(cancelled) -> None:
    """Add-on -> worker: a ``cancel`` line, or stdin closing (Blender died), stops the job."""
    for line in sys.stdin:
        try:
            if protocol.decode(line)["type"] == "cancel":
                break
        except protocol.ProtocolError:
            continue
    cancelled.set()


def _worker(args: argparse.Namespace) -> int:
    import threading

    out = sys.stdout
    cancelled = threading.Event()
    threading.Thread(target=_watch_stdin, args=(cancelled,), daemon=True).start()

    def send(kind: str, **fields) -> None:
        if cancelled.is_set():
            raise Cancelled("cancelled")
        protocol.send(out, kind, **fields)

    out.write(protocol.encode(protocol.hello(__version__, os.getpid())))
    try:
        _run_stages(args, send)
    except Exception as exc:  # reported through the protocol, then a non-zero exit
        code = getattr(exc, "code", type(exc).__name__)
        hint = getattr(exc, "hint", None) or "see the log on stderr"
        protocol.send(out, "error", code=str(code), message=str(exc), hint=hint)
        protocol.send(out, "done", ok=False)
        import traceback

        traceback.print_exc(file=sys.stderr)
        return 1
    protocol.send(out, "done", ok=True)
    return 0


def _run_stages(args, send) -> None:
    import numpy as np
    import torch

    from engine.geometry.expression import ExpressionModel
    from engine.geometry.fit import DMTet, RegulariserWeights, geometry_regularisers
    from engine.geometry.head_init import head_sdf, pretrain_field
    from engine.geometry.sdf_field import HashGridSDF
    from engine.geometry.tetgrid import make_tet_grid
    from engine.identity import analyse_photos
    from engine.prior import load_prior
    from engine.prior.sds import ScoreDistillation, SDSConfig
    from engine.render import mesh_topology, normals_to_image, render, sample_orbit_cameras
    from engine.atomic import write_text_atomic
    from engine.result_format import HeadMesh, write_head_mesh

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = 4
    started = time.perf_counter()

    send("stage", name="identity", index=1, count=stages)
    report = analyse_photos([Path(p) for p in args.photos], models_root=args.models, out_dir=out / "identity")
    if report.embedding is None:
        raise RuntimeError("no ArcFace identity embedding could be made from the photos: "
                           + "; ".join(f"{Path(r.path).name}: {r.status} {r.message}" for r in report.photos))
    embedding = np.asarray(report.embedding, dtype=np.float32)

    send("stage", name="prior", index=2, count=stages)
    has_normal_lora = (Path(args.models) / "loras" / "normal").is_dir()
    prior = load_prior(args.models, task="normal" if has_normal_lora else None)
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=args.guidance, t_start=(0.02, 0.98),
                                             t_end=(0.02, 0.5), grad_clip=1.0))
    if not has_normal_lora:
        send("warning", code="base_prior", message="no normal-map LoRA under loras/normal: using the base prior")

    send("stage", name="geometry", index=3, count=stages)
    grid = make_tet_grid(args.grid)
    field = HashGridSDF(max_deformation=0.25 * grid.cell_size)  # DMTet refuses > 0.28 cell (tets invert)
    pretrain_field(field, head_sdf, grid.vertices, steps=args.pretrain_steps)
    dmtet = DMTet(grid, field)
    optimiser = torch.optim.Adam(field.parameters(), lr=args.lr)
    regularise = RegulariserWeights(laplacian=0.5, normal_consistency=0.05)
    resolution = (args.resolution, args.resolution)
    total = args.steps + args.expression_steps * max(len(args.expressions) - 1, 1)
    done_steps = 0

    def progress(loss: float) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / max(done_steps, 1) * (total - done_steps)
        send("progress", step=done_steps, total=total, loss=round(loss, 6), eta_s=round(eta, 1))

    for step in range(args.steps):
        cameras = sample_orbit_cameras(args.views, seed=args.seed * 100003 + step, resolution=resolution)
        surface, sdf = dmtet()
        passes = render(surface.verts, surface.faces, cameras, passes=("mask", "normal_camera"))
        images = normals_to_image(passes["normal_camera"], passes["mask"], background=1.0)
        cond = prior.conditioning(embedding, "neutral", view=list(cameras.labels))
        loss, _ = sds.step(images, cond, step, args.steps)
        loss = loss + geometry_regularisers(surface, sdf, regularise, args.grid)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done_steps += 1
        progress(float(loss.detach()))

    canonical, faces = dmtet.mesh()
    send("stage", name="expressions", index=4, count=stages)
    topology = mesh_topology(faces)  # expressions share the canonical faces: build the edge table once
    model = ExpressionModel(args.expressions, seed=args.seed)
    expression_optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    for name in model.names[1:]:
        for step in range(args.expression_steps):
            cameras = sample_orbit_cameras(args.views, seed=args.seed * 7919 + step, resolution=resolution,
                                           azimuth_range_deg=(-60.0, 60.0))
            verts = model.deformed(canonical, name)
            passes = render(verts, faces, cameras, passes=("mask", "normal_camera"), topology=topology)
            images = normals_to_image(passes["normal_camera"], passes["mask"], background=1.0)
            cond = prior.conditioning(embedding, name, view=list(cameras.labels))
            loss, _ = sds.step(images, cond, step, args.expression_steps)
            loss = loss + 10.0 * model.offsets(canonical, name).pow(2).sum(-1).mean()  # stay near neutral
            expression_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            expression_optimiser.step()
            done_steps += 1
            progress(float(loss.detach()))

    offsets = model.export(canonical)
    head = HeadMesh(vertices=canonical.cpu().numpy(), faces=faces.cpu().numpy().astype(np.int32),
                    expression_names=list(offsets), expression_offsets=np.stack(list(offsets.values())))
    write_head_mesh(out, head)
    _write_preview(out / "preview.png", canonical, faces, resolution)
    send("preview", path=str(out / "preview.png"))
    result = {
        "smoke_run": args.smoke,
        "engine_version": __version__,
        "photos": [str(p) for p in args.photos],
        "expressions": model.names,
        "identity": {"backend": report.backend, "photos_used": [args.photos[i] for i in report.used]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("photos", "command")},
        "mesh": {"vertices": int(len(head.vertices)), "faces": int(len(head.faces))},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(out / "result.json", json.dumps(result, indent=1))
    send("result", folder=str(out))


def _write_preview(path: Path, verts, faces, resolution) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from engine.atomic import write_file_atomic
    from engine.render import normals_to_image, orbit_cameras, render

    cameras = orbit_cameras([0.0, 45.0, 90.0], [10.0, 10.0, 10.0], radius=0.9, fov_deg=20.0,
                            resolution=(256, 256))
    with torch.no_grad():
        passes = render(verts, faces, cameras, passes=("mask", "normal_camera"))
        images = normals_to_image(passes["normal_camera"], passes["mask"], background=1.0)
    strip = (torch.cat(list(images), dim=1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    write_file_atomic(path, lambda stream: Image.fromarray(strip).save(stream, format="PNG"))


def _parse_worker_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the pipeline as far as it goes (worker).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--photos", nargs="+", required=True)
    run.add_argument("--expressions", nargs="+", required=True)
    run.add_argument("--models", required=True)
    run.add_argument("--out", required=True)
    run.add_argument("--smoke", action="store_true")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--grid", type=int, default=48)
    run.add_argument("--resolution", type=int, default=64)
    run.add_argument("--views", type=int, default=2)
    run.add_argument("--steps", type=int, default=30)
    run.add_argument("--expression-steps", type=int, default=8)
    run.add_argument("--pretrain-steps", type=int, default=200)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--guidance", type=float, default=3.0)
    return parser.parse_args(argv)


# ------------------------------------------------------------------- Blender side (main job process)

QUICK_ARGS = ["--grid", "20", "--pretrain-steps", "40", "--steps", "2", "--expression-steps", "1"]


def run_pipeline_process(photos, expressions, models_root, result_dir: Path, *, smoke: bool, steps=None,
                         quick: bool = False) -> dict:
    """Start the worker, follow its protocol messages, return the last result message."""
    command = [sys.executable, str(Path(__file__).resolve()), "run", "--photos", *map(str, photos),
               "--expressions", *expressions, "--models", str(models_root), "--out", str(result_dir)]
    if smoke:
        command.append("--smoke")
    else:
        command += ["--grid", "96", "--resolution", "256", "--views", "2"]
    if quick:
        command += QUICK_ARGS
    if steps:
        command += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env,
                               cwd=REPO_ROOT)
    result, error, last_print = None, None, 0.0
    for line in process.stdout:
        try:
            msg = protocol.decode(line)
        except protocol.ProtocolError as exc:
            print(f"[worker] ignored a line that is not protocol ({exc})", flush=True)
            continue
        kind = msg["type"]
        if kind == "stage":
            print(f"[worker] stage {msg['index']}/{msg['count']}: {msg['name']}", flush=True)
        elif kind == "progress" and (time.monotonic() - last_print > 2 or msg["step"] == msg["total"]):
            last_print = time.monotonic()
            print(f"[worker] step {msg['step']}/{msg['total']} loss {msg.get('loss')} eta {msg.get('eta_s')} s",
                  flush=True)
        elif kind in ("warning", "preview"):
            print(f"[worker] {kind}: {msg.get('message') or msg.get('path')}", flush=True)
        elif kind == "error":
            error = msg
        elif kind == "result":
            result = msg
    process.stdin.close()
    code = process.wait()
    if error or code != 0 or result is None:
        detail = f"{error['message']} ({error['hint']})" if error else f"exit code {code}"
        raise RuntimeError(f"the pipeline worker failed: {detail}")
    return result


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


if __name__ == "__main__":
    sys.exit(_worker(_parse_worker_args(sys.argv[1:])))
