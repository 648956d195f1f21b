"""Generate Head refuses to start, one clear message per reason, and starts nothing when it does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import importlib


def _refused(match: str) -> None:
    import bpy

    with pytest.raises(RuntimeError, match=match):
        bpy.ops.idto3d.generate_head()
    module = next(m for m in bpy.context.preferences.addons.keys() if m.endswith("id_to_3d"))
    generation = importlib.import_module(f"{module}.generation")
    assert generation.job_for(bpy.context.scene) is None  # nothing was started


def test_no_photo_in_use(ready_scene):
    ready_scene.photos[0].enabled = False
    _refused("No photo is in use")


def test_photo_file_gone(ready_scene, tmp_path):
    ready_scene.photos[0].path = str(tmp_path / "deleted.jpg")
    _refused(r"Photo not found: .*deleted\.jpg")


def test_no_expression(ready_scene):
    ready_scene.expressions.clear()
    _refused("No expression is in use")


def test_duplicate_expression_names(ready_scene):
    ready_scene.expressions[2].text = "Smiling"  # a case variant of "smiling", made by editing the list
    _refused("Expressions: .*differ only by case")


def test_empty_expression_name(ready_scene):
    ready_scene.expressions[3].text = "   "
    _refused("Expressions: expression 4 is empty")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("x" * 64, "longer than 63 bytes"),
        ("Basis", "reserved"),
        ("Neutral", "write the neutral face as 'neutral'"),
    ],
)
def test_names_blender_would_change_are_refused_before_the_job(ready_scene, name, reason):
    ready_scene.expressions[1].text = name
    _refused(reason)


def test_engine_python_that_does_not_exist(ready_scene, blender_addon, tmp_path):
    import bpy

    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(
        tmp_path / "nope" / "python"
    )
    _refused("does not exist")


def test_engine_python_that_does_not_start(ready_scene, blender_addon, tmp_path):
    import bpy

    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'libpython3.11.so: cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(broken)
    _refused(r"does not start \(exit 127: libpython3.11.so")


def test_engine_python_without_torch(ready_scene, blender_addon, tmp_path):
    import bpy

    venv = tmp_path / "bare-venv"  # a real Python, without the engine's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(venv / "bin" / "python")
    _refused("has no torch. Press Install Engine")


def test_models_missing_offers_download_where_allowed(ready_scene, blender_addon, tmp_path):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    runtime = bpy.context.window_manager.idto3d_runtime
    prefs.models_root = str(tmp_path / "empty-models")
    _refused(r"Models missing in .*empty-models: sd15/, arc2face/\. put them there")
    assert runtime.offer_download is False
    prefs.allow_downloads, bpy.context.preferences.system.use_online_access = True, True
    try:
        _refused("press Download Models")
        assert runtime.offer_download is True
    finally:
        prefs.allow_downloads, bpy.context.preferences.system.use_online_access = False, False


def test_unwritable_output_folder(ready_scene, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ready_scene.output_dir = str(blocker / "jobs")  # root ignores permissions; a file in the path does not
    _refused(r"Cannot write job folders into .*a-file/jobs")
    assert blocker.read_text() == "not a folder"


def test_bad_settings_are_the_job_validators_message(ready_scene):
    ready_scene.preset, ready_scene.texture_size = "STANDARD", 100
    _refused("texture_size.*100 is not a texture size")
    assert not os.listdir(ready_scene.output_dir) if os.path.isdir(ready_scene.output_dir) else True
