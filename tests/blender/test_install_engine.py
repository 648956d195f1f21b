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


def test_cuda_install_takes_the_drivers_torch_build_and_onnxruntime_gpu(installer, tmp_path):
    module, prefs, runtime = installer
    from engine.cuda_wheels import Gpu

    h100 = [Gpu("NVIDIA H100 80GB HBM3", "580.82.07", (9, 0), 81559)]
    kw = dict(requirements=tmp_path / "r.txt", constraints=tmp_path / "c.txt", pip_args=[])
    steps = module.install_steps(tmp_path / "venv.partial", module.torch_choice("CUDA", gpus=h100), **kw)
    labels = [label for label, _ in steps]
    assert labels == ["creating the environment", "installing torch (cu130)", "installing the engine's packages",
                      "removing the CPU onnxruntime", "installing onnxruntime-gpu"]
    torch_step = steps[1][1]
    assert torch_step[torch_step.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu130"
    assert steps[3][1][-3:] == ["uninstall", "--disable-pip-version-check", "-y", "onnxruntime"][-3:]
    assert "onnxruntime-gpu==" in " ".join(steps[4][1])
    # an RTX 3060 on a 550 driver: the CUDA 12.6 build, and the CPU onnxruntime stays
    ampere = [Gpu("NVIDIA GeForce RTX 3060", "550.54.14", (8, 6), 12288)]
    steps = module.install_steps(tmp_path / "venv.partial", module.torch_choice("CUDA", gpus=ampere), **kw)
    assert [label for label, _ in steps][-1] == "installing the engine's packages"
    assert "https://download.pytorch.org/whl/cu126" in steps[1][1]
    # no driver: the CPU build, said plainly
    choice = module.torch_choice("CUDA", gpus=[])
    assert choice.variant == "cpu" and "no NVIDIA driver found" in choice.reason
    assert "https://download.pytorch.org/whl/cpu" in module.install_steps(tmp_path / "p", choice, **kw)[1][1]
    assert module.torch_choice("CPU").variant == "cpu"
