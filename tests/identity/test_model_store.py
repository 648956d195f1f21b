"""Model folders are found across roots; fetch-models verifies, and explains what is missing when
it cannot download. No test touches the network: downloads go through a test double that fails
like an offline machine."""

from __future__ import annotations

import pytest

from engine import model_store
from engine.model_store import (DETECTOR_FILE, RECOGNITION_FILE, ModelsMissing, candidate_folders, fetch_models,
                                resolve_identity_models, resolve_model_folder)

# These tests drive the download path with stand-ins for the Hub: the user's offline switches are off.
pytestmark = pytest.mark.usefixtures("user_offline_switches_unset")


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_candidate_order_user_default_insightface_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("IDTO3D_MODELS", str(tmp_path / "default"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    mirror = tmp_path / "hf" / "models--DIAMONIK7777--antelopev2" / "snapshots" / "abc"
    mirror.mkdir(parents=True)  # an unofficial Hub mirror in the cache: never used
    arc2face = tmp_path / "hf" / "models--FoivosPar--Arc2Face" / "snapshots" / "def"
    arc2face.mkdir(parents=True)
    folders = candidate_folders("antelopev2", tmp_path / "user")
    assert folders == [tmp_path / "user" / "antelopev2", tmp_path / "default" / "antelopev2",
                       tmp_path / "if" / "models" / "antelopev2"]
    assert candidate_folders("arc2face", tmp_path / "user") == [
        tmp_path / "user" / "arc2face", tmp_path / "default" / "arc2face", arc2face]


def test_resolution_takes_first_complete_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    pack = tmp_path / "if" / "models" / "antelopev2"
    _touch(pack / DETECTOR_FILE)
    _touch(pack / RECOGNITION_FILE)
    _touch(tmp_path / "user" / "antelopev2" / DETECTOR_FILE)  # incomplete: no arcface.onnx
    assert resolve_model_folder("antelopev2", tmp_path / "user") == pack
    models = resolve_identity_models(tmp_path / "user")
    # Both files from the folder the resolver (and so the doctor) reports, not a mix of folders.
    assert models.detector == pack / DETECTOR_FILE
    assert models.recognition == pack / RECOGNITION_FILE


def test_incomplete_folders_still_give_each_file_from_the_first_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    _touch(tmp_path / "user" / "antelopev2" / DETECTOR_FILE)  # no arcface.onnx anywhere in antelopev2 folders
    arcface = _touch(tmp_path / "user" / "arc2face" / RECOGNITION_FILE)
    models = resolve_identity_models(tmp_path / "user")
    assert models.detector == tmp_path / "user" / "antelopev2" / DETECTOR_FILE
    assert models.recognition == arcface


def test_arcface_from_hf_cache_of_arc2face(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    onnx = _touch(tmp_path / "hf" / "models--FoivosPar--Arc2Face" / "snapshots" / "rev" / RECOGNITION_FILE)
    models = resolve_identity_models(tmp_path / "user")
    assert models.recognition == onnx and models.detector is None


def test_stock_pack_with_glintr100_is_explained(tmp_path):
    _touch(tmp_path / "antelopev2" / DETECTOR_FILE)
    _touch(tmp_path / "antelopev2" / "glintr100.onnx")
    models = resolve_identity_models(tmp_path)
    assert models.recognition is None
    assert "glintr100.onnx" in models.missing_message() and "arcface.onnx" in models.missing_message()


class OfflineDownloader:
    """Test double for the network: fails the way an offline machine does."""

    def __init__(self):
        self.calls = []

    def hf_file(self, repo, filename, target, revision=None):
        self.calls.append(filename)
        raise ConnectionError(f"cannot reach huggingface.co for {repo}/{filename}")

    def url(self, url, target):
        self.calls.append(url)
        raise ConnectionError(f"cannot reach {url}")


def test_fetch_offline_names_missing_files_and_fix(tmp_path):
    downloader = OfflineDownloader()
    with pytest.raises(ModelsMissing) as err:
        fetch_models(tmp_path, ["antelopev2"], downloader=downloader, log=lambda text: None)
    message = str(err.value)
    assert str(tmp_path / "antelopev2" / DETECTOR_FILE) in message
    assert str(tmp_path / "antelopev2" / RECOGNITION_FILE) in message
    assert "ConnectionError" in message and "fetch-models" in err.value.hint
    assert downloader.calls  # it did try


def test_fetch_complete_folder_only_verifies(tmp_path):
    from engine.tiny_models import write_arcface_onnx

    write_arcface_onnx(tmp_path / "antelopev2" / DETECTOR_FILE, seed=1)  # any valid ONNX will do here
    write_arcface_onnx(tmp_path / "antelopev2" / RECOGNITION_FILE, seed=2)
    downloader = OfflineDownloader()
    assert fetch_models(tmp_path, ["antelopev2"], downloader=downloader, log=lambda t: None) == {"antelopev2": []}
    assert downloader.calls == []


def test_verify_flags_broken_onnx(tmp_path):
    _touch(tmp_path / "antelopev2" / DETECTOR_FILE, b"not a model at all")
    _touch(tmp_path / "antelopev2" / RECOGNITION_FILE, b"\x00\x01garbage")
    problems = model_store.verify_folder("antelopev2", tmp_path / "antelopev2")
    assert len(problems) == 2 and all("not a valid ONNX file" in p for p in problems)


class LocalMirrorDownloader:
    """Test double for the Hub: serves files from a local folder laid out as ``mirror/<repo>/<file>``."""

    def __init__(self, mirror):
        self.mirror, self.calls = mirror, []

    def hf_file(self, repo, filename, target, revision=None):
        self.calls.append((repo, filename, revision))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.mirror / repo / filename).read_bytes())

    def url(self, url, target):
        raise AssertionError("not used for sd15/arc2face")


def test_fetch_pins_revisions_and_converts_the_pickled_encoder(tmp_path, tiny_models_root):
    import shutil

    import torch
    from safetensors.torch import load_file

    from engine.models import ARC2FACE_REVISION_UNVERIFIED, SD15_REVISION

    mirror = tmp_path / "mirror"
    shutil.copytree(tiny_models_root / "sd15", mirror / model_store.SD15_REPO)
    arc = mirror / model_store.ARC2FACE_REPO
    shutil.copytree(tiny_models_root / "arc2face", arc)
    weights = load_file(arc / "encoder" / "model.safetensors")
    (arc / "encoder" / "model.safetensors").unlink()
    torch.save(weights, arc / "encoder" / "pytorch_model.bin")  # published as a pickle, like Arc2Face
    for name in ("special_tokens_map.json",):  # the tiny tokenizer does not write every SD file
        (mirror / model_store.SD15_REPO / "tokenizer" / name).write_text("{}")

    downloader = LocalMirrorDownloader(mirror)
    results = fetch_models(tmp_path / "models", ["sd15", "arc2face"], downloader=downloader, log=lambda t: None)
    assert results == {"sd15": [], "arc2face": []}
    sd15_revisions = {rev for repo, _, rev in downloader.calls if repo == model_store.SD15_REPO}
    assert sd15_revisions == {SD15_REVISION}
    arc2face_revisions = {rev for repo, _, rev in downloader.calls if repo == model_store.ARC2FACE_REPO}
    assert arc2face_revisions == {ARC2FACE_REVISION_UNVERIFIED}
    converted = load_file(tmp_path / "models" / "arc2face" / "encoder" / "model.safetensors")
    assert converted.keys() == weights.keys()
    assert all(torch.equal(converted[k], weights[k]) for k in weights)

    # antelopev2 needs the same arcface.onnx: copied from arc2face/, not downloaded a second time.
    from engine.tiny_models import write_arcface_onnx

    write_arcface_onnx(tmp_path / "models" / "antelopev2" / DETECTOR_FILE, seed=3)  # a valid ONNX in place
    calls_before = len(downloader.calls)
    assert fetch_models(tmp_path / "models", ["antelopev2"], downloader=downloader, log=lambda t: None) == {
        "antelopev2": []}
    assert len(downloader.calls) == calls_before
    assert ((tmp_path / "models" / "antelopev2" / RECOGNITION_FILE).read_bytes()
            == (tmp_path / "models" / "arc2face" / "arcface.onnx").read_bytes())
