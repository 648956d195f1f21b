"""Nothing goes online unless the user allowed it: every command and the prior's loader, run as a
child process with no offline switches and every network route pointing at a loopback recorder,
makes zero connection attempts — on models whose configs carry Hub-like names, and on models whose
configs are nothing but a Hub-like string (which diffusers would look up on the Hub)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models_testkit import HUB_LIKE, online_env, run_engine, run_python

LOAD = ("from engine.prior import load_prior; p = load_prior({root!r}, device='cpu'); "
        "print('loaded', p.unet.config.cross_attention_dim)")


def _heads(folder):
    from PIL import Image

    head = folder / "head_00"
    head.mkdir(parents=True)
    np.save(head / "identity.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    (head / "meta.json").write_text(json.dumps({"expression": "smiling", "views": {"normal_000.png": "front"}}))
    yy, xx = np.mgrid[0:32, 0:32] / 31
    Image.fromarray((np.stack([xx, yy, xx * 0 + 0.5], -1) * 255).astype(np.uint8)).save(head / "normal_000.png")
    return folder


def _assert_offline(recorder, done, what):
    attempts = recorder.take()
    assert attempts == [], f"{what} tried to go online: {attempts}\nstderr: {done.stderr[-2000:]}"


def test_loader_reads_local_files_only(recorder, seeded_models, tmp_path):
    env = online_env(recorder, tmp_path)
    done = run_python(env, LOAD.format(root=str(seeded_models)))
    _assert_offline(recorder, done, "load_prior")
    assert done.returncode == 0 and "loaded 768" in done.stdout, done.stderr[-2000:]


def test_loader_refuses_string_configs_without_the_hub(recorder, string_config_models, tmp_path):
    env = online_env(recorder, tmp_path)
    done = run_python(env, LOAD.format(root=str(string_config_models)))
    _assert_offline(recorder, done, "load_prior on string configs")
    assert done.returncode != 0
    assert "holds a JSON str, not an object" in done.stderr and "config.json" in done.stderr


def test_scheduler_config_string_is_refused_before_diffusers_sees_it(recorder, seeded_models, tmp_path):
    import shutil

    root = tmp_path / "models"
    shutil.copytree(seeded_models, root)
    (root / "sd15" / "scheduler" / "scheduler_config.json").write_text(json.dumps(HUB_LIKE))  # the case seen
    done = run_python(online_env(recorder, tmp_path), LOAD.format(root=str(root)))
    _assert_offline(recorder, done, "load_prior with a string scheduler config")
    assert "scheduler_config.json holds a JSON str" in done.stderr


@pytest.mark.parametrize("models", ["seeded_models", "string_config_models"])
def test_doctor_stays_offline(recorder, models, tmp_path, request):
    root = request.getfixturevalue(models)
    done = run_engine(online_env(recorder, tmp_path), "doctor", "--models", str(root), "--json")
    _assert_offline(recorder, done, "doctor")
    report = json.loads(done.stdout)
    assert done.returncode == 1  # tiny models never pass as real ones; string configs are broken
    if models == "string_config_models":
        arc2face = next(m for m in report["models"] if m["key"] == "arc2face")
        assert any("holds a JSON str" in p for p in arc2face["problems"])


@pytest.mark.parametrize("models", ["seeded_models", "string_config_models"])
def test_fetch_models_verify_stays_offline(recorder, models, tmp_path, request):
    root = request.getfixturevalue(models)
    done = run_engine(online_env(recorder, tmp_path), "fetch-models", "--models", str(root), "--verify")
    _assert_offline(recorder, done, "fetch-models --verify")
    assert done.returncode == 1  # antelopev2 is not in the tiny models; string configs are broken
    if models == "string_config_models":
        assert "holds a JSON str" in done.stdout


def test_fetch_models_without_yes_only_describes(recorder, tmp_path):
    env = online_env(recorder, tmp_path)
    done = run_engine(env, "fetch-models", "--models", str(tmp_path / "models"))
    _assert_offline(recorder, done, "fetch-models without --yes")
    assert done.returncode == 3
    assert "licence" in done.stderr and "--yes" in done.stderr and str(tmp_path / "models") in done.stderr
    assert not (tmp_path / "models").exists()  # nothing written either


def test_make_tiny_models_stays_offline(recorder, tmp_path):
    done = run_engine(online_env(recorder, tmp_path), "make-tiny-models", str(tmp_path / "tiny"))
    _assert_offline(recorder, done, "make-tiny-models")
    assert done.returncode == 0, done.stderr[-2000:]


def test_identity_stays_offline(recorder, tmp_path, photos_dir, seeded_models):
    done = run_engine(online_env(recorder, tmp_path), "identity", str(photos_dir / "grace_hopper.jpg"),
                      "--backend", "dlib", "--no-judge", "--models", str(seeded_models), "--out",
                      str(tmp_path / "identity"), "--json")
    _assert_offline(recorder, done, "identity")
    assert done.returncode == 0, done.stderr[-2000:]


def test_build_prior_dataset_stays_offline(recorder, tmp_path, seeded_models):
    done = run_engine(online_env(recorder, tmp_path), "build-prior-dataset", "--heads", str(_heads(tmp_path / "heads")),
                      "--out", str(tmp_path / "ds"), "--domain", "normal", "--resolution", "64",
                      "--prior", str(seeded_models))
    _assert_offline(recorder, done, "build-prior-dataset")
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_prior_stays_offline(recorder, tmp_path, seeded_models):
    from engine.prior.dataset import build_dataset

    build_dataset(_heads(tmp_path / "heads"), tmp_path / "ds", "normal", resolution=64)
    done = run_engine(online_env(recorder, tmp_path), "train-prior", "--domain", "normal", "--data",
                      str(tmp_path / "ds"), "--out", str(tmp_path / "lora"), "--prior", str(seeded_models), "--steps",
                      "1", "--batch-size", "1", "--rank", "2", "--targets", "to_q,to_v", "--validation-samples", "0",
                      "--device", "cpu")
    _assert_offline(recorder, done, "train-prior")
    assert done.returncode == 0, done.stderr[-2000:]


def test_pipeline_run_stays_offline(recorder, tmp_path, seeded_models, photos_dir):
    from engine.cli import COMMANDS

    if "generate" not in {name for name, *_ in COMMANDS}:
        pytest.skip("the pipeline's generate/run commands are not on this branch yet")  # `generate` runs `run`
    env = online_env(recorder, tmp_path)
    done = run_engine(env, "generate", "--images", str(photos_dir / "grace_hopper.jpg"), "--expressions", "smiling",
                      "--preset", "test", "--out", str(tmp_path / "job"), "--models", str(seeded_models),
                      "--device", "cpu", timeout=900)
    _assert_offline(recorder, done, "generate/run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "job" / "result" / "head.npz").is_file()


def test_fetch_models_respects_the_users_own_offline_switch(recorder, tmp_path):
    env = {**online_env(recorder, tmp_path), "HF_HUB_OFFLINE": "1"}
    done = run_engine(env, "fetch-models", "--models", str(tmp_path / "models"), "--yes")
    _assert_offline(recorder, done, "fetch-models --yes with HF_HUB_OFFLINE=1")
    assert done.returncode == 1 and "HF_HUB_OFFLINE is set in your environment" in done.stderr
    assert "unset HF_HUB_OFFLINE" in done.stderr and not (tmp_path / "models").exists()
