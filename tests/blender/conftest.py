"""Fixtures for the add-on's generation tests: a scene ready to generate, on tiny models."""

from __future__ import annotations

import importlib
import sys

import pytest

EXPRESSIONS = ("neutral", "smiling", "angry", "surprised")


@pytest.fixture()
def ready_scene(blender_addon, photos_dir, tiny_models_root, tmp_path):
    """The current scene with a real photo, three expressions besides neutral, the test preset,
    tiny models and a job folder under tmp_path; everything restored afterwards."""
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    settings = bpy.context.scene.idto3d
    settings.photos.clear()
    photo = settings.photos.add()
    photo.path, photo.enabled = str(photos_dir / "grace_hopper.jpg"), True
    settings.expressions.clear()
    for text in EXPRESSIONS:
        settings.expressions.add().text = text
    settings.preset, settings.texture_size, settings.seed = "TEST", 64, 0
    settings.output_dir = str(tmp_path / "jobs")
    prefs.models_root, prefs.python_executable = str(tiny_models_root), sys.executable
    yield settings
    importlib.import_module(f"{blender_addon}.generation").stop_all()
    prefs.models_root = prefs.python_executable = ""
    settings.output_dir = ""
    settings.photos.clear()
