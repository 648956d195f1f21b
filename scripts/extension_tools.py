"""Build, validate and install the extension with Blender's own tool (``blender_ext.py``).

The tool ships inside the ``bpy`` wheel (``addons_core/bl_pkg/cli/blender_ext.py``) and runs in
any Python, so no ``blender`` binary is needed. Usable as a module (tests, main job) and as a
script: ``python scripts/extension_tools.py build OUT_DIR`` prints the zip's path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def manifest() -> dict:
    return tomllib.loads((REPO_ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))


def blender_ext_tool() -> Path:
    """Path of blender_ext.py inside the installed bpy wheel (found without importing bpy)."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bpy wheel is not installed in this Python (run scripts/setup.sh)")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise RuntimeError(f"blender_ext.py not found under {package_dir}")
    return found[-1]


def _source_files() -> list[Path]:
    """Files git tracks, as they are in the working tree (untracked scratch files never ship)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "-z"],
            cwd=REPO_ROOT, capture_output=True, check=True,
        ).stdout.decode("utf-8").split("\0")
        return [REPO_ROOT / name for name in listed if name and (REPO_ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", "build", "dist", ".pytest_cache"}
        return [p for p in REPO_ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO_ROOT).parts)]


def build_extension(output_dir: Path | str) -> Path:
    """Build the extension zip into ``output_dir`` and return its path.

    Builds from a staging copy of the source files so the walk never enters .venv or build
    output; the manifest's [build] exclusions then drop tests, docs, bench and CI files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    info = manifest()
    target = output_dir / f"{info['id']}-{info['version']}.zip"
    with tempfile.TemporaryDirectory(prefix="idto3d-stage-") as stage:
        for path in _source_files():
            destination = Path(stage) / path.relative_to(REPO_ROOT)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        result = subprocess.run(
            [sys.executable, str(blender_ext_tool()), "build", "--source-dir", stage,
             "--output-filepath", str(target)],
            capture_output=True, text=True,
        )
    if result.returncode != 0 or not target.is_file():
        raise RuntimeError(f"extension build failed:\n{result.stdout}\n{result.stderr}")
    return target


def validate_extension(zip_path: Path | str) -> str:
    """Run Blender's validator on the zip; raises with its output when it is not valid."""
    result = subprocess.run(
        [sys.executable, str(blender_ext_tool()), "validate", str(zip_path)], capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"extension {zip_path} is not valid:\n{result.stdout}\n{result.stderr}")
    return (result.stdout + result.stderr).strip()


def install_and_enable(zip_path: Path | str) -> str:
    """Install the zip into Blender's user repository and enable it (in this process's bpy).

    Set BLENDER_USER_RESOURCES before bpy is first imported to keep this inside a temp folder.
    Returns the add-on's module name (``bl_ext.user_default.<id>``).
    """
    import bpy

    result = bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="user_default", enable_on_install=True,
    )
    if "FINISHED" not in result:
        raise RuntimeError(f"installing {zip_path} into Blender failed: {result}")
    module = f"bl_ext.user_default.{manifest()['id']}"
    if module not in bpy.context.preferences.addons:
        raise RuntimeError(f"{module} was installed but is not enabled")
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build and validate the extension zip")
    build.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        zip_path = build_extension(args.output_dir)
        validate_extension(zip_path)
        print(json.dumps({"zip": str(zip_path), "bytes": zip_path.stat().st_size}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
