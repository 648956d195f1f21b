"""The UI thread never waits: Generate Head's engine probe runs in the background (the modal
timer's pump path, called directly: timers do not run in the bpy module), and what panels draw
is not recomputed on every redraw."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

import pytest


def _gated_python(folder, python: str):
    """An engine Python that starts only once the test opens its gate (a slow first start,
    as a new Python on a cold disk has: the probe may take up to 30 s)."""
    gate = folder / "gate"
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\nexec "{python}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, gate


def _pump_until(launch, deadline_s=120):
    deadline = time.monotonic() + deadline_s
    while (job := launch.pump()) is None:
        assert time.monotonic() < deadline, "the probe never ended"
        time.sleep(0.05)
    return job


def test_generate_heads_engine_probe_runs_in_the_background(ready_scene, blender_addon, tmp_path):
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    wrapper, gate = _gated_python(tmp_path, sys.executable)
    prefs.python_executable = str(wrapper)
    launch = generation.begin_job(bpy.context)  # returns while the probe cannot even start
    try:
        assert launch.probe.monitor is not None and launch.probe.monitor.process.poll() is None
        for _ in range(5):
            assert launch.pump() is None  # a timer tick: nothing to do yet, and no waiting
        assert generation.job_for(bpy.context.scene) is None
        assert generation.launch_for(bpy.context.scene.name) is launch  # the panel shows "Checking …"
        with pytest.raises(RuntimeError, match="already being generated"):
            bpy.ops.idto3d.generate_head()  # a second press while the first is still starting
        gate.write_text("")
        job = _pump_until(launch)
        assert generation.job_for(bpy.context.scene) is job and (job.job_dir / "job.json").is_file()
        assert job.monitor.command[0] == str(wrapper)
        assert generation._launches == {}
    finally:
        gate.write_text("")
        generation.stop_all()


def test_a_python_without_torch_is_refused_through_the_pump(ready_scene, blender_addon, tmp_path):
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    venv = tmp_path / "bare-venv"  # a real Python, without the engine's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wrapper, gate = _gated_python(tmp_path, str(venv / "bin" / "python"))
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(wrapper)
    launch = generation.begin_job(bpy.context)
    assert launch.pump() is None
    gate.write_text("")
    with pytest.raises(generation.Refusal, match="has no torch. Press Install Engine"):
        _pump_until(launch)
    assert generation._launches == {} and generation.job_for(bpy.context.scene) is None
    assert not list((tmp_path / "jobs").glob("job-*")) if (tmp_path / "jobs").exists() else True


def test_unregistering_while_probing_ends_the_probe(ready_scene, blender_addon, tmp_path):
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    wrapper, gate = _gated_python(tmp_path, sys.executable)
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(wrapper)
    launch = generation.begin_job(bpy.context)
    process = launch.probe.monitor.process
    generation.stop_all()  # what unregister and quitting call
    assert process.wait(10) is not None and generation._launches == {}
    gate.write_text("")


def test_the_studio_hdri_list_is_scanned_once(blender_addon, monkeypatch):
    import bpy

    properties = importlib.import_module(f"{blender_addon}.properties")
    relight = importlib.import_module(f"{blender_addon}.operators.relight")
    first = list(properties._studio_hdri_items(None, bpy.context))
    assert ("forest.exr", "Forest", "Blender's studio light forest.exr") in first

    def scan_again():
        raise AssertionError("the HDRI folder was scanned again on a redraw")

    monkeypatch.setattr(relight, "studio_hdris", scan_again)
    assert list(properties._studio_hdri_items(None, bpy.context)) == first


def test_the_doctor_report_is_parsed_once_per_report(blender_addon):
    preferences = importlib.import_module(f"{blender_addon}.preferences")
    text = '{"ok": false, "checks": [{"name": "torch", "ok": true}]}'
    first = preferences.parsed_engine_report(text)
    assert first["checks"][0]["name"] == "torch"
    assert preferences.parsed_engine_report(text) is first  # the same parse on the next redraw
    other = preferences.parsed_engine_report('{"ok": true, "checks": []}')
    assert other is not first and other["ok"] is True
    assert preferences.parsed_engine_report("not json") == {}


@pytest.mark.parametrize("failing", ["WorkerMonitor", "write_job"])
def test_an_os_error_while_starting_the_worker_is_a_refusal_and_leaves_no_job_folder(
    ready_scene, blender_addon, tmp_path, monkeypatch, failing
):
    """Test double: a disk that fills up (or a Python that cannot be started) between the checks
    and the start, simulated by the step that writes job.json or starts the process raising the
    OSError the real one would. The press ends with a refusal that says what to do, the job folder
    it made is gone, and the button comes back (no launch left registered)."""
    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generation, failing, no_space)
    launch = generation.begin_job(bpy.context)
    with pytest.raises(generation.Refusal, match="could not be started .*No space left on device.*press Generate"):
        _pump_until(launch)
    jobs = tmp_path / "jobs"
    assert not list(jobs.glob("job-*")), list(jobs.iterdir())
    assert generation._launches == {} and generation.job_for(bpy.context.scene) is None


def test_a_press_whose_modal_operator_is_ended_or_a_file_load_ends_the_launch_and_the_job(
    ready_scene, blender_addon, tmp_path
):
    """Blender ends modal operators when another file is loaded: the press and the job must not
    stay registered (Generate would stay disabled for the session) and the worker must stop."""
    import types

    import bpy

    generation = importlib.import_module(f"{blender_addon}.generation")
    operator = importlib.import_module(f"{blender_addon}.operators.generate").IDTO3D_OT_generate_head
    assert generation.on_load_pre in bpy.app.handlers.load_pre  # registered with the add-on
    wrapper, gate = _gated_python(tmp_path, sys.executable)
    bpy.context.preferences.addons[blender_addon].preferences.python_executable = str(wrapper)
    try:
        launch = generation.begin_job(bpy.context)
        process = launch.probe.monitor.process
        # The modal operator's cancel(), as Blender calls it (the operator's own state as a namespace).
        operator.cancel(types.SimpleNamespace(_launch=launch, _scene_name=bpy.context.scene.name), bpy.context)
        assert process.wait(10) is not None and generation._launches == {}
        launch = generation.begin_job(bpy.context)  # the button is back
        process = launch.probe.monitor.process
        generation.on_load_pre("other.blend")  # what loading a file runs first (registered above)
        assert process.wait(10) is not None and generation._launches == {}
        gate.write_text("")
        job = generation.start_job(bpy.context)  # a running worker, then another file is loaded
        generation.on_load_pre("other.blend")
        assert job.finished and job.cancelled and generation._jobs == {}
        assert job.monitor.process.wait(15) is not None  # stopped without anyone pumping it
    finally:
        gate.write_text("")
        generation.stop_all()
