"""Fixtures of the guarantee tests: a user's folder to protect, a checksum listing, a tiny dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest


def checksums(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` with its type, mode and (for files) sha256: equal listings
    before and after a command mean it changed nothing there."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    listing = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(base) / name
            rel = os.fsencode(path.relative_to(folder)).hex()  # any bytes a name may hold
            st = path.lstat()
            kind = "d" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            listing[rel] = f"{kind} {oct(st.st_mode)}"
    return listing


def make_user_folder(folder: Path) -> Path:
    """A project folder of the user's: a thesis, sources and a dataset.json of their own."""
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Years of work}\n")
    (folder / "src" / "main.py").write_text("print('mine')\n")
    (folder / "dataset.json").write_text(json.dumps({"name": "my survey", "rows": 3}))
    (folder / "crops").mkdir()
    (folder / "crops" / "holiday.png").write_bytes(b"\x89PNG not really")
    (folder / "embedding.npy").write_bytes(b"my own numbers")
    (folder / "identity.json").write_text("{}")
    return folder


@pytest.fixture
def user_folder(tmp_path) -> Path:
    return make_user_folder(tmp_path / "project")


def write_heads(folder: Path, n_heads: int = 2, size: int = 64) -> Path:
    """Rendered heads in build-prior-dataset's input layout (smooth synthetic normal maps)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for h in range(n_heads):
        head = folder / f"head_{h:02d}"
        head.mkdir(parents=True)
        np.save(head / "identity.npy", rng.normal(size=512).astype(np.float32))
        (head / "meta.json").write_text(json.dumps({"expression": ["smiling", "angry"][h % 2]}))
        img = np.stack([xx, yy, np.full_like(xx, 0.3 + 0.2 * h)], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(head / "normal_000.png")
    return folder


@pytest.fixture(scope="session")
def heads(tmp_path_factory) -> Path:
    return write_heads(tmp_path_factory.mktemp("heads") / "heads")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, heads) -> Path:
    from engine.prior.dataset import build_dataset

    out = tmp_path_factory.mktemp("dataset") / "ds"
    build_dataset(heads, out, "normal", resolution=64)
    return out


@pytest.fixture
def models_copy(tiny_models_root, tmp_path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)  # copy2 keeps times: the manifest still matches
    return root


UNWRITABLE = Path("/sys/kernel/idto3d-guarantees-test")  # sysfs refuses new entries, even to root


@pytest.fixture
def unwritable() -> Path:
    if os.name != "posix" or not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs for a folder nobody can write to")
    return UNWRITABLE


@pytest.fixture(name="checksums")
def checksums_fixture():
    """The :func:`checksums` listing function (test modules cannot import conftest in importlib mode)."""
    return checksums
