"""The extension zip: built and validated by Blender's own tool, installed into real Blender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from extension_tools import build_extension, manifest, validate_extension  # noqa: E402


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    return build_extension(tmp_path_factory.mktemp("dist"))


def test_zip_validates_with_blenders_tool(extension_zip):
    output = validate_extension(extension_zip)
    assert "error" not in output.lower()
    assert extension_zip.name == f"{manifest()['id']}-{manifest()['version']}.zip"


def test_zip_holds_the_addon_and_engine_but_no_tests_docs_bench_or_ci(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    for required in ("blender_manifest.toml", "__init__.py", "preferences.py", "properties.py",
                     "engine/__init__.py", "engine/protocol.py", "engine/cli.py",
                     "operators/expressions.py", "panels/expressions.py", "worker_monitor.py",
                     "generation.py", "operators/generate.py", "operators/relight.py"):
        assert required in names, f"{required} missing from the zip"
    forbidden_roots = ("tests/", "docs/", "bench/", ".ci/", "scripts/", ".venv/", ".git/")
    leaked = [n for n in names if n.startswith(forbidden_roots) or "__pycache__" in n
              or n in ("README.md", "pyproject.toml")]
    assert leaked == []
    # Install Engine installs exactly the engine's pinned requirements: they ship with the add-on;
    # the development file (bpy, pytest, test data, ray) does not.
    assert "requirements-engine.txt" in names and "constraints.txt" in names and "requirements.txt" not in names


def test_manifest_declares_what_blender_and_users_need():
    info = manifest()
    assert info["schema_version"] == "1.0.0"
    assert info["blender_version_min"] == "4.2.0"
    assert set(info["permissions"]) == {"files", "network"}
    assert all(len(reason) <= 64 for reason in info["permissions"].values())


def test_install_enable_disable_uninstall_leaves_nothing_registered(extension_zip, tmp_path):
    user_folder = tmp_path / "blender-user"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user_folder)}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "blender" / "install_check.py"), str(extension_zip),
         str(REPO_ROOT)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, f"install check failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(lines[-1][len("REPORT "):])

    # Installed inside the temp user folder, enabled under the extension module name.
    assert report["module"] == "bl_ext.user_default.id_to_3d"
    assert Path(report["installed_dir"]).is_relative_to(user_folder)
    # Preferences and scene properties exist with their defaults.
    assert report["prefs"] == {"python_executable": "", "models_root": "", "device": "AUTO",
                               "allow_downloads": False}
    assert report["scene_has_settings"]
    assert report["expressions"][0] == "neutral" and len(report["expressions"]) == 7
    assert report["expressions_after_add"][-1] == "with curly red hair"
    assert report["preset"] == "STANDARD"
    # Every class of the add-on was registered, and none is left after disabling.
    assert len(report["class_names"]) >= 10
    assert report["classes_in_register_list"] == report["class_names"]
    assert report["registered_after_enable"] == report["class_names"]
    assert report["enabled_after_disable"] is False
    assert report["registered_after_disable"] == []
    assert report["rna_types_left"] == []
    assert report["scene_property_after_disable"] is False
    assert report["wm_property_after_disable"] is False
    assert report["load_post_handlers_left"] == []
    # Enabling again works (everything registered once, one load_post handler) and disabling again cleans up.
    assert report["registered_after_re_enable"] == report["class_names"]
    assert report["load_post_after_re_enable"] == 1
    assert report["registered_after_second_disable"] == []
    # Uninstalled: its files are gone from the user folder.
    assert report["uninstall_result"] == ["FINISHED"]
    assert report["installed_dir_exists_after_uninstall"] is False
