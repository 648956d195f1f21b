"""Shared fixtures: real face photos shipped inside installed packages, and tiny models.

Nothing here downloads anything. Stage-specific fixtures live in the tests that use them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real Blender (the bpy module) must never touch the developer's own Blender settings: point its
# user folder at a throwaway one before anything imports bpy.
os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="idto3d-blender-user-")
# Nor the developer's own model digest cache (engine.model_digests): jobs run by the tests (and
# the workers they start, which inherit this) keep theirs in a throwaway folder.
os.environ["IDTO3D_CACHE"] = tempfile.mkdtemp(prefix="idto3d-cache-")
if str(REPO_ROOT) not in sys.path:
    # `engine` is imported as a top-level package from the repository root, as the worker does.
    sys.path.insert(0, str(REPO_ROOT))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not installed (run scripts/setup.sh)"
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """Real photos of faces from installed packages, copied into one folder as files.

    astronaut.png (Eileen Collins, scikit-image), grace_hopper.jpg (matplotlib),
    tom_hanks_aligned.png (insightface, already a 112x112 ArcFace crop),
    group.jpg (insightface's t1.jpg: several people).
    """
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    mpl = _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    (folder / "grace_hopper.jpg").write_bytes(mpl.read_bytes())
    images = _package_dir("insightface") / "data" / "images"
    (folder / "tom_hanks_aligned.png").write_bytes((images / "Tom_Hanks_54745.png").read_bytes())
    (folder / "group.jpg").write_bytes((images / "t1.jpg").read_bytes())
    return folder


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    """A models root holding tiny random-weight ``sd15/`` and ``arc2face/`` folders.

    Written by the production :func:`engine.tiny_models.write_tiny_models` in the real layout,
    so the production loading code is what the tests exercise. Session-scoped: ~6 s once.
    """
    from engine.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def blender_addon(tmp_path_factory) -> str:
    """Enable the add-on from this source tree in real Blender; yields its module name.

    Loaded through a user extension repository whose folder holds a link to the repository
    root, exactly as Blender loads an installed extension (``bl_ext.<repo>.id_to_3d``). In the
    bpy module timers and modal operators never run: operators' execute() runs instead.
    """
    import bpy
    import addon_utils

    repo_dir = tmp_path_factory.mktemp("extensions")
    (repo_dir / "id_to_3d").symlink_to(REPO_ROOT, target_is_directory=True)
    repo = bpy.context.preferences.extensions.repos.new(
        name="idto3d-source", module="idto3d_source", custom_directory=str(repo_dir), source="USER")
    module = f"bl_ext.{repo.module}.id_to_3d"
    addon_utils.enable(module, default_set=True, handle_error=_raise)
    assert module in bpy.context.preferences.addons, f"{module} did not enable"
    yield module
    addon_utils.disable(module, default_set=True)
    bpy.context.preferences.extensions.repos.remove(repo)


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.fixture
def user_offline_switches_unset(monkeypatch):
    """Tests of the download path itself (with loopback or local stand-ins for the Hub): the user's
    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, which scripts/test.sh sets as a safety net, would make
    fetch-models refuse to download, as it should for a real user."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
