"""Model-file digests for result.json, cached per user (engine.model_digests).

Real weights are several GB: a job start must not re-read them when nothing changed, and must
re-read exactly the files that did change, however they changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import model_digests as md

REPO_ROOT = Path(__file__).resolve().parents[2]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def models(tiny_models_root, tmp_path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)
    (root / "loras" / "normal").mkdir(parents=True)
    (root / "loras" / "normal" / "pytorch_lora_weights.safetensors").write_bytes(os.urandom(4096))
    return root


@pytest.fixture
def hashed(monkeypatch):
    """Records every file that is really read and hashed."""
    seen = []
    original = md.sha256_file

    def recording(path):
        seen.append(Path(path))
        return original(path)

    monkeypatch.setattr(md, "sha256_file", recording)
    return seen


def test_digests_are_the_files_sha256_and_a_second_start_reads_nothing(models, tmp_path, hashed):
    cache = tmp_path / "cache" / "digests.json"
    first = md.model_file_digests(models, cache)
    expected = {f.relative_to(models).as_posix(): _sha256(f) for f in models.rglob("*")
                if f.is_file() and f.name != "FULLSIZE_RANDOM_MODELS.txt"
                and (f.relative_to(models).parts[0] in ("sd15", "arc2face", "loras"))}
    assert first == expected  # every file of the prior, the LoRA and arcface.onnx, by its content
    assert "loras/normal/pytorch_lora_weights.safetensors" in first and "arc2face/arcface.onnx" in first
    assert len(hashed) == len(first)
    hashed.clear()
    assert md.model_file_digests(models, cache) == first
    assert hashed == []  # warm: no file read
    stored = json.loads(cache.read_text())
    assert stored["version"] == 1 and len(stored["files"]) == len(first)


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p / rsync -t / untar do


def _replace_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    other = path.with_name(path.name + ".new")
    other.write_bytes(os.urandom(st.st_size))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name


@pytest.mark.parametrize("change", [_rewrite_keeping_size_and_mtime, _replace_keeping_size_and_mtime])
def test_a_file_changed_behind_the_same_size_and_mtime_is_hashed_again(models, tmp_path, hashed, change):
    cache = tmp_path / "digests.json"
    before = md.model_file_digests(models, cache)
    target = models / "sd15" / "vae" / "diffusion_pytorch_model.safetensors"
    size, mtime = target.stat().st_size, target.stat().st_mtime_ns
    change(target)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (size, mtime)
    hashed.clear()
    after = md.model_file_digests(models, cache)
    assert hashed == [Path(os.path.realpath(target))]  # that file only
    name = "sd15/vae/diffusion_pytorch_model.safetensors"
    assert after[name] == _sha256(target) != before[name]
    assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1, "files": {"/x": {"size": "big"}}}', b"[]",
                                     b'{"version": 99, "files": {}}'])
def test_a_broken_cache_is_ignored_and_rewritten(models, tmp_path, hashed, content):
    cache = tmp_path / "digests.json"
    cache.write_bytes(content)
    digests = md.model_file_digests(models, cache)
    assert len(hashed) == len(digests) and all(digests[k] == _sha256(models / k) for k in digests)
    assert json.loads(cache.read_text())["version"] == 1
    hashed.clear()
    md.model_file_digests(models, cache)
    assert hashed == []


def test_a_wrong_digest_in_the_cache_is_what_a_stale_key_would_give(models, tmp_path):
    """The cache is trusted only on an exact identity match: a forged entry with the file's
    identity is used (that is the cache working), one with any field off is not."""
    cache = tmp_path / "digests.json"
    md.model_file_digests(models, cache)
    data = json.loads(cache.read_text())
    path, entry = next(iter(sorted(data["files"].items())))
    entry["sha256"] = "0" * 64
    cache.write_text(json.dumps(data))
    name = Path(path).relative_to(models.resolve()).as_posix()
    assert md.model_file_digests(models, cache)[name] == "0" * 64
    entry["ctime_ns"] += 1
    cache.write_text(json.dumps(data))
    assert md.model_file_digests(models, cache)[name] == _sha256(Path(path))


def test_an_unwritable_cache_costs_speed_only(models, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    digests = md.model_file_digests(models, blocker / "digests.json")
    assert all(digests[k] == _sha256(models / k) for k in digests)
    assert "could not update the model digest cache" in caplog.text


def test_models_found_outside_the_root_are_named_by_their_full_path(models, tmp_path, monkeypatch):
    """A job whose models root is empty uses $IDTO3D_MODELS (the resolver's second place): the
    digests name those files by their full path (the former relative_to(root) raised here)."""
    monkeypatch.setenv("IDTO3D_MODELS", str(models))
    empty = tmp_path / "empty-root"
    empty.mkdir()
    digests = md.model_file_digests(empty, tmp_path / "digests.json")
    unet = models / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors"
    assert digests[unet.as_posix()] == _sha256(unet)
    assert digests[(models / "arc2face" / "arcface.onnx").as_posix()]


def test_jobs_starting_together_never_tear_the_cache(models, tmp_path):
    """Four processes update one cache file 15 times each (each with its own files, so every
    write changes it) while this one reads it: it always parses, and ends with correct entries."""
    cache = tmp_path / "digests.json"
    folders = []
    for i in range(4):
        folder = tmp_path / f"files-{i}"
        folder.mkdir()
        for j in range(15):
            (folder / f"{j}.bin").write_bytes(os.urandom(2000 + j))
        folders.append(folder)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from engine import model_digests as md
        files = sorted(Path(sys.argv[1]).iterdir())
        for j in range(len(files)):
            md.file_digests(files[: j + 1], Path({str(cache)!r}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(f)]) for f in folders]
    reads = 0
    while any(p.poll() is None for p in procs):
        if cache.exists():
            data = json.loads(cache.read_text())  # never a torn file
            assert data["version"] == 1
            reads += 1
    assert all(p.wait() == 0 for p in procs)
    entries = json.loads(cache.read_text())["files"]
    for path, entry in entries.items():
        assert entry["sha256"] == _sha256(Path(path))
    assert reads > 0 and len(entries) >= 15  # the last writer's own files at least
