"""Check Photos and Check Engine run in the background: starting returns at once, pump() follows
them (what the timer calls) and applies the answer when the engine process ends."""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture()
def scene_with_photos(blender_addon, photos_dir, tmp_path):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.python_executable, prefs.models_root = sys.executable, str(tmp_path / "models")
    settings = bpy.context.scene.idto3d
    settings.photos.clear()
    for name in ("grace_hopper.jpg", "group.jpg"):
        settings.photos.add().path = str(photos_dir / name)
    yield settings
    settings.photos.clear()
    prefs.python_executable = prefs.models_root = ""


def _pump(pump, runtime, timeout_s=300) -> int:
    ticks, deadline = 0, time.monotonic() + timeout_s
    while pump(runtime):
        ticks += 1
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return ticks


def test_check_photos_in_the_background(blender_addon, scene_with_photos):
    import bpy

    photos = importlib.import_module(f"{blender_addon}.operators.photos")
    runtime = bpy.context.window_manager.idto3d_runtime
    check = photos.start_check(bpy.context)
    assert runtime.photos_check_running and check.monitor.process.poll() is None  # returned while it runs
    assert all(p.status == "UNCHECKED" for p in scene_with_photos.photos)
    assert _pump(photos.pump_check, runtime) >= 1
    assert not runtime.photos_check_running
    assert [p.status for p in scene_with_photos.photos] == ["OK", "SEVERAL_FACES"]
    assert check.outcome[0] == "INFO" and "Checked 2 photo(s)" in check.outcome[1]


def test_check_photos_without_a_writable_folder_says_so(
    blender_addon, scene_with_photos, tmp_path, monkeypatch
):
    """The extension's folder unusable -> the system temp folder; that unusable too -> a message."""
    import tempfile

    import bpy

    photos = importlib.import_module(f"{blender_addon}.operators.photos")
    folder = Path(bpy.utils.extension_path_user(blender_addon, path="photo_checks", create=True))
    aside = folder.with_name("photo_checks.aside")
    folder.rename(aside)
    folder.write_text("a file where the folder should be")  # root ignores permissions; this it cannot
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))
    try:
        with pytest.raises(RuntimeError, match="Cannot write the photo check's crops"):
            bpy.ops.idto3d.photos_check()
        assert photos._running is None and not bpy.context.window_manager.idto3d_runtime.photos_check_running
        assert folder.read_text() == "a file where the folder should be"
    finally:
        folder.unlink()
        aside.rename(folder)


def test_check_engine_in_the_background(blender_addon, scene_with_photos):
    import json

    import bpy

    engine_check = importlib.import_module(f"{blender_addon}.operators.engine_check")
    runtime = bpy.context.window_manager.idto3d_runtime
    runtime.engine_report = ""
    monitor = engine_check.start(bpy.context)
    assert runtime.engine_check_running and monitor.process.poll() is None
    assert not bpy.ops.idto3d.check_engine.poll()  # one check at a time
    _pump(engine_check.pump, runtime)
    assert not runtime.engine_check_running and runtime.engine_checked and not runtime.engine_ok
    report = json.loads(runtime.engine_report)  # what the preferences draw, row by row
    assert {c["name"] for c in report["checks"]} >= {"torch", "diffusers", "insightface", "nvdiffrast"}
    assert "models/sd15" in runtime.engine_summary


def test_check_engine_with_a_python_that_prints_no_json(blender_addon, scene_with_photos, tmp_path):
    import bpy

    fake = tmp_path / "python"  # starts, but is not a Python with the engine
    fake.write_text("#!/bin/sh\necho 'No module named engine' >&2\nexit 1\n")
    fake.chmod(0o755)
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(fake)
    with pytest.raises(RuntimeError, match="could not run the engine check .*No module named engine"):
        bpy.ops.idto3d.check_engine()
    assert not bpy.context.window_manager.idto3d_runtime.engine_check_running
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_check_gpu_in_the_background_and_copy_report(blender_addon, scene_with_photos, tiny_models_root):
    import bpy

    gpu_check = importlib.import_module(f"{blender_addon}.operators.gpu_check")
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.models_root = str(tiny_models_root)
    runtime = bpy.context.window_manager.idto3d_runtime
    runtime.gpu_check_text = runtime.gpu_check_summary = ""
    assert not bpy.ops.idto3d.copy_gpu_report.poll()  # nothing to copy yet
    monitor = gpu_check.start(bpy.context)
    assert runtime.gpu_check_running and monitor.process.poll() is None
    assert "--gpu" in monitor.process.args and "standard" in monitor.process.args  # the scene's preset
    assert not bpy.ops.idto3d.check_gpu.poll()  # one check at a time
    _pump(gpu_check.pump, runtime)
    assert not runtime.gpu_check_running and not runtime.gpu_check_ok  # this machine has no CUDA GPU
    assert "no usable CUDA GPU" in runtime.gpu_check_summary
    assert runtime.gpu_check_text.startswith("ID-to-3D Check GPU") and "PROBLEM" in runtime.gpu_check_text
    assert bpy.ops.idto3d.copy_gpu_report() == {"FINISHED"}  # (the bpy module has no clipboard to read back)


class RunningGeneration:
    """TEST DOUBLE for a generation in progress (what ``generation.running_job`` looks at)."""

    finished = False


def test_check_gpu_is_refused_while_a_generation_uses_the_gpu(blender_addon, scene_with_photos):
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    gpu_check = importlib.import_module(f"{blender_addon}.operators.gpu_check")
    scene = bpy.context.scene
    assert gpu_check.generation_running() is None and bpy.ops.idto3d.check_gpu.poll()
    generation._jobs[scene.name] = RunningGeneration()
    try:
        assert gpu_check.generation_running() == scene.name
        assert not bpy.ops.idto3d.check_gpu.poll()
        with pytest.raises(RuntimeError, match="generation is running"):
            bpy.ops.idto3d.check_gpu()
    finally:
        del generation._jobs[scene.name]
    assert bpy.ops.idto3d.check_gpu.poll()
