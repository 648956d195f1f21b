"""requirements-engine.txt (what Install Engine installs for users) is enough for every import the
engine makes; requirements.txt (the development environment) builds on it; every pin is the one
constraints.txt holds. A static check of engine/'s source: no environment is built."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Imported by the engine only where a feature needs them, inside try/except ImportError, and
# named in the error or in doctor's report: never installed by Install Engine.
OPTIONAL = {"ray": "python -m engine batch --ray (docs/batch.md)",
            "nvdiffrast": "the optional CUDA rasteriser (not on the package index)"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _import_names(distribution: str) -> set[str]:
    """The top-level modules an installed distribution holds, from its file list (importlib's own
    packages_distributions() misses compiled modules such as xatlas and dlib)."""
    names = set()
    for file in importlib.metadata.distribution(distribution).files or []:
        top = file.parts[0]
        if not top.endswith((".dist-info", ".egg-info", ".data")) and top not in ("..", "__pycache__"):
            names.add(top.split(".")[0] if len(file.parts) == 1 else top)
    return names


def engine_imports() -> dict[str, set[str]]:
    """Top-level module name -> the engine files that import it (at module level or inside a
    function), plus modules looked up by name (``find_spec("face_recognition_models")``)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("find_spec", "import_module")
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                  and not node.args[0].value.startswith(".")):
                names = [node.args[0].value]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(REPO_ROOT).as_posix())
    return found


def test_the_engine_requirements_cover_every_import_of_the_engine():
    covered = set().union(*(_import_names(name) for name in _pins(REPO_ROOT / "requirements-engine.txt")))
    imports = engine_imports()
    assert {"torch", "diffusers", "insightface", "PIL", "face_recognition_models"} <= set(imports)  # the scan works
    missing = {}
    for name, files in sorted(imports.items()):
        if name in sys.stdlib_module_names or name == "engine" or name in OPTIONAL:
            continue
        if name not in covered:
            missing[name] = sorted(files)[:3]
    assert missing == {}, f"imported by the engine but not in requirements-engine.txt: {missing}"


def test_the_development_requirements_build_on_the_engines_and_every_pin_is_constraints():
    text = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert "-r requirements-engine.txt" in text.splitlines()
    constraints = _pins(REPO_ROOT / "constraints.txt")
    for file in ("requirements-engine.txt", "requirements.txt"):
        for name, version in _pins(REPO_ROOT / file).items():
            assert constraints.get(name) == version, f"{file}: {name}=={version}, constraints.txt: {constraints.get(name)}"
    development_only = set(_pins(REPO_ROOT / "requirements.txt"))
    assert {"bpy", "pytest", "ray"} <= development_only and not development_only & set(
        _pins(REPO_ROOT / "requirements-engine.txt"))
    # setup.sh reinstalls when either file changes
    assert "requirements-engine.txt" in (REPO_ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
