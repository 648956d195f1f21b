"""One resolver: the prior's loader, the identity step, the doctor and fetch-models find a model in
the same folder — including the Hugging Face cache, which load_prior used to ignore."""

from __future__ import annotations

import shutil

import pytest

from engine import doctor, model_store
from engine.models import (MODEL_SPECS, SD15_REPO, SD15_REVISION, candidate_folders, check_models, resolve,
                           spec)


@pytest.fixture
def hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("IDTO3D_MODELS", str(tmp_path / "default"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "insightface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _snapshot(base, repo, revision):
    return base / "hf" / ("models--" + repo.replace("/", "--")) / "snapshots" / revision


def test_every_catalogue_entry_has_files_source_and_licence():
    for item in MODEL_SPECS:
        assert item.files and item.licence and item.source, item.key
        if item.origin.kind == "hf":
            assert len(item.origin.revision) == 40 and int(item.origin.revision, 16) >= 0
    assert {s.key for s in MODEL_SPECS} >= {"sd15", "arc2face", "antelopev2", "loras/normal", "loras/albedo",
                                            "loras/view"}


def test_pinned_snapshot_is_preferred_in_the_cache(hermetic):
    newer = _snapshot(hermetic, SD15_REPO, "f" * 40)
    pinned = _snapshot(hermetic, SD15_REPO, SD15_REVISION)
    pinned.mkdir(parents=True)
    newer.mkdir(parents=True)  # made last: the newest, yet the pinned one comes first
    assert candidate_folders("sd15", hermetic / "user")[2:] == [pinned, newer]


def test_loader_doctor_and_identity_agree_on_the_hub_cache(hermetic, tiny_models_root):
    from engine.prior import load_prior

    cached = _snapshot(hermetic, SD15_REPO, SD15_REVISION)
    shutil.copytree(tiny_models_root / "sd15", cached)  # SD 1.5 only in the Hugging Face cache
    root = hermetic / "user"
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")

    assert resolve("sd15", root).folder == cached
    prior = load_prior(root, device="cpu", expression_branch=False)  # used to fail: it looked only in ROOT
    assert prior.vae is not None
    reports = {r.spec.key: r for r in check_models(root, verify=True)}
    assert reports["sd15"].path == cached and reports["sd15"].complete
    report = doctor.collect(root)
    sd15 = next(m for m in report["models"] if m["key"] == "sd15")
    assert sd15["path"] == str(cached) and sd15["complete"]
    # The identity step takes Arc2Face's arcface.onnx from the folder the resolver gives for arc2face.
    assert model_store.resolve_identity_models(root).recognition == root / "arc2face" / "arcface.onnx"


def test_incomplete_user_folder_falls_back_and_says_where(hermetic, tiny_models_root):
    root = hermetic / "user"
    shutil.copytree(tiny_models_root / "sd15", hermetic / "default" / "sd15")
    (root / "sd15" / "vae").mkdir(parents=True)  # started by hand, unfinished
    found = resolve("sd15", root)
    assert found.folder == hermetic / "default" / "sd15" and found.primary == root / "sd15"


def test_missing_everywhere_names_the_folder_to_fill_and_the_others(hermetic):
    from engine.prior import MissingWeightsError, load_prior

    (hermetic / "user").mkdir()
    with pytest.raises(MissingWeightsError) as err:
        load_prior(hermetic / "user", device="cpu")
    text = err.value.message
    assert str(hermetic / "user" / "sd15" / "vae" / "config.json") in text
    assert str(hermetic / "default" / "sd15") in text  # also looked there
    assert "fetch-models" in err.value.hint


def test_doctor_text_names_broken_files_and_the_command_that_fixes_them(hermetic, tiny_models_root):
    root = hermetic / "user"
    shutil.copytree(tiny_models_root / "arc2face", root / "arc2face")
    (root / "arc2face" / "arc2face" / "config.json").write_text("{ not json")
    report = doctor.collect(root)
    arc2face = next(m for m in report["models"] if m["key"] == "arc2face")
    assert not arc2face["complete"] and arc2face["missing"] == []
    assert "models/arc2face" in report["failed"]
    text = doctor.format_text(report)
    assert "broken files" in text and "config.json is not a readable JSON file" in text
    assert f"fetch-models --models {root} --only arc2face --yes" in text


def test_optional_loras_never_fail_the_doctor(hermetic, tiny_models_root):
    root = hermetic / "user"
    report = doctor.collect(root)
    for key in ("loras/normal", "loras/albedo", "loras/view"):
        assert spec(key).required is False and f"models/{key}" not in report["failed"]
