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
