"""Disabling the add-on while a head is being generated ends the worker and leaves nothing behind."""

from __future__ import annotations

import atexit
import importlib
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _addon_class_names() -> set[str]:
    names = set()
    for path in REPO_ROOT.rglob("*.py"):
        if {"tests", "scripts", "bench", ".venv", "engine"} & set(path.relative_to(REPO_ROOT).parts):
            continue
        names |= set(re.findall(r"^class (IDTO3D_\w+)\(", path.read_text(encoding="utf-8"), re.M))
    return names


def test_unregister_while_a_job_runs(blender_addon, photos_dir, tiny_models_root, tmp_path):
    import addon_utils
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.models_root, prefs.python_executable = str(tiny_models_root), sys.executable
    settings = bpy.context.scene.idto3d
    settings.photos.clear()
    photo = settings.photos.add()
    photo.path = str(photos_dir / "grace_hopper.jpg")
    settings.preset, settings.texture_size, settings.output_dir = "TEST", 64, str(tmp_path / "jobs")
    generation = importlib.import_module(f"{blender_addon}.generation")
    package = importlib.import_module(blender_addon)
    classes = list(package.CLASSES)
    job = generation.start_job(bpy.context)
    deadline = time.monotonic() + 300
    while job.monitor.hello is None and job.pump():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.monitor.running
    tick_functions = [
        importlib.import_module(f"{blender_addon}.operators.{name}")._timer_tick
        for name in ("engine_check", "photos", "fetch_models", "install_engine")
    ]
    try:
        addon_utils.disable(blender_addon, default_set=True)
        assert job.monitor.process.poll() is not None, "the worker still runs after unregister"
        assert generation._jobs == {} and job.timer is None
        assert not any(bpy.app.timers.is_registered(tick) for tick in tick_functions)
        assert not [h for h in bpy.app.handlers.load_post if "id_to_3d" in getattr(h, "__module__", "")]
        assert [cls.__name__ for cls in classes if cls.is_registered] == []
        assert [name for name in _addon_class_names() if hasattr(bpy.types, name)] == []
        # The quit hook went with it: running atexit's callbacks now must not touch the add-on.
        before = atexit._ncallbacks()
        atexit.unregister(package._end_processes)
        assert atexit._ncallbacks() == before
    finally:
        addon_utils.enable(blender_addon, default_set=True)
    assert blender_addon in bpy.context.preferences.addons
