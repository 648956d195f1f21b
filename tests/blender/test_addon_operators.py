"""The add-on's own operators in real Blender: expressions list and the engine check."""

from __future__ import annotations

import pytest


@pytest.fixture()
def settings(blender_addon):
    import bpy

    bpy.ops.idto3d.expressions_reset()
    return bpy.context.scene.idto3d


def test_default_expressions_start_with_the_neutral_basis(settings):
    texts = [item.text for item in settings.expressions]
    assert texts == ["neutral", "smiling", "angry", "surprised", "sad", "disgusted", "fearful"]
    assert all(item.enabled for item in settings.expressions)


def test_add_expression_normalises_spaces_and_refuses_duplicates(settings):
    import bpy

    assert bpy.ops.idto3d.expression_add(text="  as a   cute baby ") == {"FINISHED"}
    assert settings.expressions[-1].text == "as a cute baby"
    assert settings.expression_index == len(settings.expressions) - 1
    count = len(settings.expressions)
    assert bpy.ops.idto3d.expression_add(text="Smiling") == {"CANCELLED"}
    with pytest.raises(RuntimeError, match="needs some words"):
        bpy.ops.idto3d.expression_add(text="   ")
    assert len(settings.expressions) == count


def test_neutral_cannot_be_removed_but_others_can(settings):
    import bpy

    settings.expression_index = 0
    with pytest.raises(RuntimeError, match="Basis"):
        bpy.ops.idto3d.expression_remove()
    settings.expression_index = 2  # angry
    assert bpy.ops.idto3d.expression_remove() == {"FINISHED"}
    assert "angry" not in [item.text for item in settings.expressions]
    assert settings.expressions[0].text == "neutral"


def test_check_engine_runs_the_doctor_and_names_the_missing_models(blender_addon, tmp_path):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.models_root = str(tmp_path / "no-models-here")
    try:
        # The tests' own Python has the engine's packages: it serves as the engine's Python.
        assert bpy.ops.idto3d.check_engine() == {"FINISHED"}
    finally:
        prefs.models_root = ""
    runtime = bpy.context.window_manager.idto3d_runtime
    assert runtime.engine_checked and not runtime.engine_ok
    assert "models/sd15" in runtime.engine_summary and "models/arc2face" in runtime.engine_summary


def test_check_engine_reports_a_python_that_does_not_exist(blender_addon, tmp_path):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.python_executable = str(tmp_path / "missing" / "python")
    try:
        with pytest.raises(RuntimeError, match="does not exist"):
            bpy.ops.idto3d.check_engine()
    finally:
        prefs.python_executable = ""
    assert not bpy.context.window_manager.idto3d_runtime.engine_ok


def test_downloads_need_both_permissions(blender_addon):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    system = bpy.context.preferences.system
    assert prefs.allow_downloads is False
    with pytest.raises(RuntimeError, match="Allow Model Downloads"):
        bpy.ops.idto3d.fetch_models()
    prefs.allow_downloads = True
    system.use_online_access = False
    try:
        with pytest.raises(RuntimeError, match="online access is off"):
            bpy.ops.idto3d.fetch_models()
    finally:
        prefs.allow_downloads = False
    assert not bpy.context.window_manager.idto3d_runtime.download_running


def test_a_failed_download_is_followed_to_its_end_with_the_reason(blender_addon, tmp_path, monkeypatch):
    import importlib

    import bpy

    fetch = importlib.import_module(f"{blender_addon}.operators.fetch_models")
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    runtime = bpy.context.window_manager.idto3d_runtime
    prefs.models_root = str(tmp_path / "models")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the machine is offline anyway; fail fast and deterministically
    try:
        download = fetch.start_download(prefs, runtime)
        assert runtime.download_running
        download.process.wait(timeout=180)
        assert fetch.pump(runtime) is False  # what the timer would call
    finally:
        prefs.models_root = ""
        fetch.stop_download()
    assert not runtime.download_running
    assert runtime.download_status.startswith("Download failed (exit")
    assert "fetch-models.log" in runtime.download_status
    assert "could not download the models" in (tmp_path / "models" / "fetch-models.log").read_text()
