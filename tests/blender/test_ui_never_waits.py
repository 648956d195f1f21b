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
