"""Install Engine: a failed install leaves nothing marked usable; a good one becomes the Engine Python.

pip runs for real with ``--no-index`` (never online): a requirements file naming a package that
does not exist makes it fail; an empty one makes it succeed without downloading anything.
"""

from __future__ import annotations

import importlib
import threading
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


@pytest.fixture()
def held_deletions(installer, monkeypatch):
    """Deleting an environment (several GB) must never happen on the timer tick. A recording wrapper
    around the real shutil.rmtree notes the thread each deletion of ours runs on and holds it until
    the test opens the gate: a caller that waited for it would hang here, not pass."""
    import shutil
    import threading

    module = installer[0]
    real, gate, seen = shutil.rmtree, threading.Event(), []

    def rmtree(path, *args, **kwargs):
        if module.TRASH_PREFIX in str(path):
            seen.append((str(path), threading.current_thread() is threading.main_thread()))
            assert gate.wait(60), "the deletion was never released"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    yield gate, seen
    gate.set()
    module.wait_for_deletions(60)


def test_a_leftover_partial_environment_is_deleted_off_the_ui_thread(installer, held_deletions, tmp_path):
    module, prefs, runtime = installer
    gate, seen = held_deletions
    partial = tmp_path / "runtime" / "venv.partial"
    (partial / "lib").mkdir(parents=True)
    (partial / module.MARKER).write_text('{"state": "installing"}')
    for i in range(200):
        (partial / "lib" / f"f{i}.py").write_text("x" * 100)
    root = _run(module, prefs, runtime, tmp_path, "")  # returns while the old files are still held
    assert runtime.install_status.startswith("Engine installed in")
    assert seen and not seen[0][1], "the old environment was deleted on the main thread"
    trash = [p for p in root.iterdir() if p.name.startswith(module.TRASH_PREFIX)]
    assert trash and (trash[0] / "lib" / "f0.py").exists()  # still there: nobody waited for it
    _run(module, prefs, runtime, tmp_path, "")  # another install sweeps leftovers while that deletion runs
    paths = [path for path, _ in seen]
    assert len(paths) == len(set(paths)) == 2, f"a folder was deleted twice at once: {seen}"
    gate.set()
    assert module.wait_for_deletions(60)
    assert not [p for p in root.iterdir() if p.name.startswith(module.TRASH_PREFIX)]


def test_replacing_an_installed_environment_deletes_the_old_one_in_the_background(
    installer, held_deletions, tmp_path
):
    module, prefs, runtime = installer
    gate, seen = held_deletions
    root = _run(module, prefs, runtime, tmp_path, "")
    (root / "venv" / "old-file").write_text("from the first install")
    _run(module, prefs, runtime, tmp_path, "")  # the second install replaces the first
    assert runtime.install_status.startswith("Engine installed in")
    assert not (root / "venv" / "old-file").exists() and (root / "venv" / "bin" / "python").exists()
    assert len(seen) == 1 and not seen[0][1]
    gate.set()
    assert module.wait_for_deletions(60)
    assert sorted(p.name for p in root.iterdir()) == ["install.log", "venv"]


def test_a_failed_rename_keeps_the_complete_environment_and_says_what_to_do(installer, tmp_path):
    """Every step succeeded but venv is a broken link (its target deleted): the complete new
    environment is kept, the status names what is in the way, and once it is removed the next
    Install Engine only moves the environment into place (no step runs again)."""
    module, prefs, runtime = installer
    root = tmp_path / "runtime"
    root.mkdir()
    (root / "venv").symlink_to(tmp_path / "gone")  # a link whose target was deleted: rename onto it fails
    _run(module, prefs, runtime, tmp_path, "")
    assert not runtime.install_running and prefs.python_executable == ""
    status = runtime.install_status
    assert f"{root / 'venv'} is in the way (a broken link): move or remove it" in status, status
    assert "press Install Engine again" in status and "Nothing was installed" not in status
    assert module.wait_for_deletions(60)
    assert (root / "venv.partial" / "bin" / "python").exists() and (root / "venv").is_symlink()  # kept
    (root / "venv").unlink()  # what the message says to do
    install = module.start_install(prefs, runtime, root=root, requirements=tmp_path / "missing.txt",
                                   constraints=tmp_path / "missing.txt", pip_args=["--no-index"], with_torch=False)
    assert install.steps == [] and install.process is None  # nothing is installed again
    assert not module.pump(prefs, runtime)  # one tick: two renames
    assert runtime.install_status.startswith("Engine installed in")
    assert prefs.python_executable == str(root / "venv" / "bin" / "python") and not (root / "venv.partial").exists()


def test_a_rename_refused_midway_keeps_the_previous_environment(installer, tmp_path, monkeypatch):
    """Test double: a disk that refuses the second rename (as root here, permissions cannot)."""
    import os

    module, prefs, runtime = installer
    root = _run(module, prefs, runtime, tmp_path, "")
    python = prefs.python_executable
    real = os.replace

    def replace(src, dst):
        if str(src).endswith("venv.partial"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(module.os, "replace", replace)
    _run(module, prefs, runtime, tmp_path, "")
    assert not runtime.install_running and "No space left on device" in runtime.install_status
    assert "press Install Engine again" in runtime.install_status
    assert prefs.python_executable == python and (root / "venv" / "bin" / "python").exists()  # still in use
    assert (root / "venv.partial" / "bin" / "python").exists()  # the new one is kept for the retry


def test_a_partial_environment_deleted_during_the_install_ends_it_cleanly(installer, tmp_path):
    import shutil

    module, prefs, runtime = installer
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("")
    install = module.start_install(prefs, runtime, root=tmp_path / "runtime", requirements=requirements,
                                   constraints=constraints, pip_args=["--no-index"], with_torch=False)
    install.process.wait(120)  # the venv step
    shutil.rmtree(install.partial)  # the user (or a cleaner) removed it meanwhile
    deadline = time.monotonic() + 240
    while module.pump(prefs, runtime):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not runtime.install_running and runtime.install_status.startswith("Install Engine:")
    assert prefs.python_executable == ""


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
    # an RTX 3060 on a 550 driver: the CUDA 12.9 build (minor-version compatible), the CPU onnxruntime stays
    ampere = [Gpu("NVIDIA GeForce RTX 3060", "550.54.14", (8, 6), 12288)]
    steps = module.install_steps(tmp_path / "venv.partial", module.torch_choice("CUDA", gpus=ampere), **kw)
    assert [label for label, _ in steps][-1] == "installing the engine's packages"
    assert "https://download.pytorch.org/whl/cu129" in steps[1][1]
    # no driver: the CPU build, said plainly
    choice = module.torch_choice("CUDA", gpus=[])
    assert choice.variant == "cpu" and "no NVIDIA driver found" in choice.reason
    assert "https://download.pytorch.org/whl/cpu" in module.install_steps(tmp_path / "p", choice, **kw)[1][1]
    assert module.torch_choice("CPU").variant == "cpu"


class BlockedNvidiaSmi:
    """TEST DOUBLE for nvidia-smi on a slow driver: answers only once released, and records the
    thread it was asked on."""

    def __init__(self, gpus):
        self.gpus, self.release, self.threads = gpus, threading.Event(), []

    def __call__(self):
        self.threads.append(threading.current_thread())
        assert self.release.wait(60)
        return self.gpus


def test_cuda_install_asks_nvidia_smi_off_the_ui_thread_then_installs_its_build(installer, tmp_path):
    module, prefs, runtime = installer
    from engine.cuda_wheels import Gpu

    before, prefs.torch_variant = prefs.torch_variant, "CUDA"
    smi = BlockedNvidiaSmi([Gpu("NVIDIA H100 80GB HBM3", "580.82.07", (9, 0), 81559)])
    (tmp_path / "r.txt").write_text("")
    (tmp_path / "c.txt").write_text("")
    try:
        probe = module.request_install(prefs, runtime, query=smi, root=tmp_path / "runtime",
                                       requirements=tmp_path / "r.txt", constraints=tmp_path / "c.txt",
                                       pip_args=["--no-index"])
        assert probe is not None and runtime.install_running and "nvidia-smi" in runtime.install_status
        assert module.probe_tick(prefs, runtime) is True and module._current is None  # waits; nothing started
        with pytest.raises(module.InstallRefused, match="already running"):
            module.request_install(prefs, runtime, query=smi)
        smi.release.set()
        probe.wait()
        assert smi.threads and smi.threads[0] is not threading.main_thread()
        assert module.probe_tick(prefs, runtime) is False
        assert module._current.steps[1][0] == "installing torch (cu130)"  # the driver's answer chose it
        assert "H100" in runtime.install_status
    finally:
        prefs.torch_variant = before


def test_install_engine_installs_the_engines_requirements_not_the_development_ones(installer, tmp_path):
    """bpy (374 MB), pytest, the test-photo packages and ray are the developers': by default the
    install step reads requirements-engine.txt, which ships beside the add-on."""
    module, prefs, runtime = installer
    install = module.start_install(prefs, runtime, root=tmp_path / "runtime", pip_args=["--no-index"],
                                   with_torch=False)
    command = dict(install.steps)["installing the engine's packages"]
    requirements = command[command.index("-r") + 1]
    assert requirements.endswith("requirements-engine.txt")
    lines = open(requirements, encoding="utf-8").read().splitlines()
    names = {line.split("==")[0].strip().lower() for line in lines if line.strip() and not line.startswith("#")}
    assert "torch" in names and not names & {"bpy", "pytest", "ray", "scikit-image", "matplotlib"}
