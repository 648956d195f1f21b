"""Install Engine: a failed install leaves nothing marked usable; a good one becomes the Engine Python.

pip runs for real with ``--no-index`` (never online): a requirements file naming a package that
does not exist makes it fail; an empty one makes it succeed without downloading anything.
"""

from __future__ import annotations

import importlib
import time

import pytest


@pytest.fixture()
def installer(blender_addon):
    import bpy

    module = importlib.import_module(f"{blender_addon}.operators.install_engine")
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    bpy.context.preferences.system.use_online_access = True
    yield module, prefs, bpy.context.window_manager.idto3d_runtime
    module.stop_install()
    bpy.context.preferences.system.use_online_access = False
    prefs.python_executable = ""


def _run(module, prefs, runtime, tmp_path, requirement_lines: str):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(requirement_lines)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("")
    module.start_install(
        prefs,
        runtime,
        root=tmp_path / "runtime",
        requirements=requirements,
        constraints=constraints,
        pip_args=["--no-index"],
        with_torch=False,
    )
    deadline = time.monotonic() + 240
    while module.pump(prefs, runtime):  # what the timer calls
        assert time.monotonic() < deadline, "the install did not end"
        time.sleep(0.2)
    return tmp_path / "runtime"


def test_refused_while_blenders_online_access_is_off(installer, tmp_path):
    import bpy

    module, prefs, runtime = installer
    bpy.context.preferences.system.use_online_access = False
    with pytest.raises(module.InstallRefused, match="online access is off"):
        module.start_install(prefs, runtime, root=tmp_path / "runtime")
    assert not (tmp_path / "runtime").exists()


def test_a_failed_install_says_what_failed_and_leaves_no_environment(installer, tmp_path):
    module, prefs, runtime = installer
    root = _run(module, prefs, runtime, tmp_path, "idto3d-package-that-does-not-exist==1.0\n")
    assert "installing the engine's packages failed (exit 1)" in runtime.install_status
    assert "Nothing was installed" in runtime.install_status and "install.log" in runtime.install_status
    assert not (root / "venv").exists() and not (root / "venv.partial").exists()
    assert prefs.python_executable == ""  # nothing marked usable
    assert not runtime.install_running


def test_a_successful_install_becomes_the_engine_python(installer, tmp_path):
    module, prefs, runtime = installer
    root = _run(module, prefs, runtime, tmp_path, "")
    assert runtime.install_status.startswith("Engine installed in")
    assert prefs.python_executable == str(root / "venv" / "bin" / "python")
    assert (root / "venv" / "bin" / "python").exists()
    assert '"ready"' in (root / "venv" / module.MARKER).read_text()
    assert not (root / "venv.partial").exists()
