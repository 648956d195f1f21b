"""Checks tell the truth about files: each corruption the loaders would reject is reported by the
same check the doctor and `fetch-models --verify` use, and `fetch-models` fetches exactly the
broken files again. Downloads go through a test double serving files from a local folder (no
network here); everything else is the production code."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile

import pytest

from engine import model_store
from engine.cli import main
from engine.models import (ARC2FACE_REVISION_UNVERIFIED, FileProblem, check_models, read_safetensors_header,
                           verify_file, verify_folder)

# These tests drive the download path with stand-ins for the Hub: the user's offline switches are off.
pytestmark = pytest.mark.usefixtures("user_offline_switches_unset")

UNET = "arc2face/arc2face/diffusion_pytorch_model.safetensors"  # under the models root


@pytest.fixture
def models(tiny_models_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root / "sd15", root / "sd15")
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")
    (root / "antelopev2").mkdir()
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):  # any sound ONNX graph passes the file check
        shutil.copy(tiny_models_root / "arc2face" / "arcface.onnx", root / "antelopev2" / name)
    return root


def _report(root, key):
    return next(r for r in check_models(root, verify=True) if r.spec.key == key)


def test_sound_tiny_models_pass(models):
    assert all(_report(models, key).complete for key in ("sd15", "arc2face", "antelopev2"))


def test_truncated_unet_is_reported(models, capsys):
    unet = models / UNET
    unet.write_bytes(unet.read_bytes()[:-1000])
    report = _report(models, "arc2face")
    assert not report.complete and report.missing == []
    assert any("is truncated" in p and str(unet) in p for p in report.problems)
    assert main(["fetch-models", "--models", str(models), "--verify", "--only", "arc2face"]) == 1
    out = capsys.readouterr().out
    assert "is truncated" in out and "--only arc2face --yes" in out


def test_safetensors_with_bytes_after_the_data_or_wrong_ranges(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    good = struct.pack("<Q", len(header)) + header + bytes(16)
    (tmp_path / "ok.safetensors").write_bytes(good)
    assert read_safetensors_header(tmp_path / "ok.safetensors") == {"w": ("F32", [2, 2])}
    (tmp_path / "long.safetensors").write_bytes(good + b"junk")
    with pytest.raises(FileProblem, match="bytes after its last tensor"):
        read_safetensors_header(tmp_path / "long.safetensors")
    bad = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "shape.safetensors").write_bytes(struct.pack("<Q", len(bad)) + bad + bytes(16))
    with pytest.raises(FileProblem, match="does not match its shape"):
        read_safetensors_header(tmp_path / "shape.safetensors")


@pytest.mark.parametrize("content, message", [
    (b"\x00\xffnot json{", "not a readable JSON file"),
    (b'"someone/repo"', "holds a JSON str, not an object"),
    (b"[1, 2]", "holds a JSON list"),
])
def test_garbage_or_non_object_config_is_reported(models, content, message):
    (models / "arc2face" / "arc2face" / "config.json").write_bytes(content)
    report = _report(models, "arc2face")
    assert not report.complete and any(message in p and "arc2face/config.json" in p for p in report.problems)


def test_pickles_in_place_of_onnx_are_reported(models, capsys):
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):
        (models / "antelopev2" / name).write_bytes(pickle.dumps({"weights": list(range(1000))}))
    report = _report(models, "antelopev2")
    assert len(report.problems) == 2 and all("not a valid ONNX file" in p for p in report.problems)
    assert main(["fetch-models", "--models", str(models), "--verify", "--only", "antelopev2"]) == 1
    assert "antelopev2: " in capsys.readouterr().out


def test_onnx_without_a_graph_is_reported(tmp_path):
    import onnx

    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "nothing", [], [])), str(tmp_path / "empty.onnx"))
    with pytest.raises(FileProblem, match="holds no graph"):
        verify_file(tmp_path / "empty.onnx", "onnx")


def test_encoder_pickle_that_is_not_a_torch_archive(models):
    encoder = models / "arc2face" / "encoder"
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))  # a bare pickle, not torch's zip
    problems = verify_folder("arc2face", models / "arc2face")
    assert any("not a torch checkpoint archive" in p for p in problems)


class MirrorDownloader:
    """Test double for the network: serves files from ``mirror/<repo>/<file>`` and a zip for URLs."""

    def __init__(self, mirror, zip_bytes=None):
        self.mirror, self.zip_bytes, self.calls = mirror, zip_bytes, []

    def hf_file(self, repo, filename, target, revision=None):
        self.calls.append((repo, filename))
        target.write_bytes((self.mirror / repo / filename).read_bytes())

    def url(self, url, target):
        self.calls.append((url, target.name))
        target.write_bytes(self.zip_bytes)


def test_fetch_refetches_exactly_the_broken_files(models, tiny_models_root, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny_models_root / "arc2face", mirror / model_store.ARC2FACE_REPO)
    unet = models / UNET
    unet.write_bytes(unet.read_bytes()[:-10])
    (models / "arc2face" / "encoder" / "config.json").write_text('"someone/repo"')
    downloader = MirrorDownloader(mirror)
    results = model_store.fetch_models(models, ["arc2face"], downloader=downloader, log=lambda t: None)
    assert results == {"arc2face": []}
    assert sorted(downloader.calls) == [(model_store.ARC2FACE_REPO, UNET.removeprefix("arc2face/")),
                                        (model_store.ARC2FACE_REPO, "encoder/config.json")]
    assert unet.read_bytes() == (tiny_models_root / UNET).read_bytes()
    # Sound now: a second run fetches nothing.
    downloader.calls.clear()
    assert model_store.fetch_models(models, ["arc2face"], downloader=downloader, log=lambda t: None) == {
        "arc2face": []}
    assert downloader.calls == []


def test_fetch_replaces_pickled_onnx_files(models, tiny_models_root):
    detector = (tiny_models_root / "arc2face" / "arcface.onnx").read_bytes()  # stands in for SCRFD in the zip
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("antelopev2/scrfd_10g_bnkps.onnx", detector)
    for name in ("scrfd_10g_bnkps.onnx", "arcface.onnx"):
        (models / "antelopev2" / name).write_bytes(pickle.dumps("not onnx"))
    downloader = MirrorDownloader(None, archive.getvalue())
    assert model_store.fetch_models(models, ["antelopev2"], downloader=downloader, log=lambda t: None) == {
        "antelopev2": []}
    assert [c[1] for c in downloader.calls] == ["antelopev2.zip"]  # arcface.onnx copied from arc2face/
    assert (models / "antelopev2" / "arcface.onnx").read_bytes() == (models / "arc2face" / "arcface.onnx").read_bytes()


def test_plan_names_sources_licences_sizes_and_reasons(models, capsys):
    (models / UNET).write_bytes(b"\x00" * 10)
    plan = model_store.plan_fetch(models, ["sd15", "arc2face", "antelopev2"])
    rows = {(p.key, p.relative): p for p in plan}
    unet = rows[("arc2face", UNET.removeprefix("arc2face/"))]
    assert unet.reason == "fails its check" and unet.source.revision == ARC2FACE_REVISION_UNVERIFIED
    assert all(p.reason == "missing" for p in plan if p.key == "sd15")  # only the optional tokenizer files
    text = model_store.describe_plan(plan, models)
    assert "licence:" in text and "about 3,440 MB" in text and str(models / UNET) in text


def test_models_root_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    a_file = tmp_path / "models.txt"
    a_file.write_text("mine")
    for root in (a_file, a_file / "inside"):
        assert main(["fetch-models", "--models", str(root), "--yes"]) == 2
        err = capsys.readouterr().err
        assert f"{a_file} is a file, not a folder" in err and "fix:" in err
    assert a_file.read_text() == "mine"
    # A folder that cannot be created (even by root): /proc does not take new folders.
    assert main(["fetch-models", "--models", "/proc/idto3d-models", "--yes"]) == 2
    assert "/proc/idto3d-models" in capsys.readouterr().err


def test_broken_converted_encoder_is_rebuilt_from_the_sound_pickle(models, tmp_path):
    import torch
    from safetensors.torch import load_file

    encoder = models / "arc2face" / "encoder"
    weights = {k: v.clone() for k, v in load_file(encoder / "model.safetensors").items()}  # not the mmap
    torch.save(weights, encoder / "pytorch_model.bin")  # as Arc2Face publishes it
    (encoder / "model.safetensors").write_bytes(b"\x00" * 64)  # the converted copy got damaged
    downloader = MirrorDownloader(tmp_path / "no-mirror")
    assert model_store.fetch_models(models, ["arc2face"], downloader=downloader, log=lambda t: None) == {
        "arc2face": []}
    assert downloader.calls == []  # nothing downloaded: converted again locally
    rebuilt = load_file(encoder / "model.safetensors")
    assert rebuilt.keys() == weights.keys() and all(torch.equal(rebuilt[k], weights[k]) for k in weights)


def test_allowed_loader_fetches_only_what_is_missing_or_broken(models, tiny_models_root, tmp_path, monkeypatch):
    monkeypatch.setenv("IDTO3D_MODELS", str(tmp_path / "no-default"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny_models_root / "arc2face", mirror / model_store.ARC2FACE_REPO)
    downloader = MirrorDownloader(mirror)
    assert model_store.ensure_models(models, ["sd15", "arc2face"], downloader=downloader, log=lambda t: None) == []
    assert downloader.calls == []  # sound: nothing fetched
    unet = models / UNET
    unet.write_bytes(unet.read_bytes()[:-10])
    assert model_store.ensure_models(models, ["sd15", "arc2face"], downloader=downloader,
                                     log=lambda t: None) == ["arc2face"]
    assert downloader.calls == [(model_store.ARC2FACE_REPO, UNET.removeprefix("arc2face/"))]
    assert verify_folder("arc2face", models / "arc2face") == []
