"""Every failure says which file or option, what is wrong and what to do, with its own exit
status, and leaves the user's files exactly as they were (checksum listings before/after)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import EXIT_BAD_INPUT, EXIT_DEVICE, EXIT_OUTPUT_REFUSED


def cli(capsys, *argv) -> tuple[int, str]:
    """Run ``python -m engine ARGV`` in-process; return (exit status, stderr + stdout)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses an option value this way
        code = exc.code
    out = capsys.readouterr()
    return code, out.err + out.out


def train_args(models, data, out, *extra):
    return ["train-prior", "--domain", "normal", "--data", data, "--out", out, "--prior", models, "--steps", "2",
            "--batch-size", "1", "--rank", "2", "--validation-samples", "0", "--device", "cpu", *extra]


def commands(kind, heads, dataset, tiny_models_root, photo):
    """Each command that writes a folder, given its output folder."""
    return {
        "make-tiny-models": lambda out: ["make-tiny-models", out],
        "identity": lambda out: ["identity", "--backend", "dlib", "--no-judge", "--models", tiny_models_root,
                                 "--out", out, "--", photo],
        "build-prior-dataset": lambda out: ["build-prior-dataset", "--heads", heads, "--out", out,
                                            "--domain", "normal", "--resolution", "64"],
        "train-prior": lambda out: train_args(tiny_models_root, dataset, out),
    }[kind]


WRITERS = ["make-tiny-models", "identity", "build-prior-dataset", "train-prior"]


@pytest.fixture
def photo(photos_dir) -> Path:
    return photos_dir / "grace_hopper.jpg"


@pytest.mark.parametrize("kind", WRITERS)
def test_out_that_is_a_file(checksums, kind, capsys, tmp_path, heads, dataset, tiny_models_root, photo):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    before = checksums(tmp_path)
    code, text = cli(capsys, *commands(kind, heads, dataset, tiny_models_root, photo)(target))
    assert code == EXIT_OUTPUT_REFUSED, text
    assert f"{target} is a file, not a folder; nothing was changed" in text and "fix:" in text
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("kind", WRITERS)
def test_out_that_cannot_be_written(kind, capsys, unwritable, heads, dataset, tiny_models_root, photo):
    code, text = cli(capsys, *commands(kind, heads, dataset, tiny_models_root, photo)(unwritable))
    assert code == EXIT_OUTPUT_REFUSED, text
    assert "cannot write to /sys/kernel" in text and "nothing was changed" in text and "fix:" in text


@pytest.mark.parametrize("kind", WRITERS)
def test_out_that_is_the_users_folder(checksums, kind, capsys, user_folder, heads, dataset, tiny_models_root, photo):
    """The seen cases: a project with its own dataset.json wiped by build-prior-dataset; identity
    emptying crops/ and overwriting identity.json; every writer now refuses, changing nothing."""
    before = checksums(user_folder)
    if kind == "make-tiny-models":  # a models root is shared: the user's sd15/ is what must survive
        (user_folder / "sd15" / "vae").mkdir(parents=True)
        (user_folder / "sd15" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"real weights")
        (user_folder / "TINY_RANDOM_MODELS.txt").write_text("a marker copied from elsewhere")
        before = checksums(user_folder)
    code, text = cli(capsys, *commands(kind, heads, dataset, tiny_models_root, photo)(user_folder))
    assert code == EXIT_OUTPUT_REFUSED, text
    assert str(user_folder) in text and "nothing was changed" in text and "fix:" in text
    assert checksums(user_folder) == before


def test_a_rebuild_keeps_refusing_once_the_user_added_a_file(checksums, capsys, tmp_path, heads, dataset, tiny_models_root, photo):
    out = tmp_path / "ds"
    args = commands("build-prior-dataset", heads, dataset, tiny_models_root, photo)(out)
    assert cli(capsys, *args)[0] == 0
    assert cli(capsys, *args)[0] == 0  # its own output: replaced
    (out / "images" / "my_extra_render.png").write_bytes(b"the user's")
    before = checksums(out)
    code, text = cli(capsys, *args)
    assert code == EXIT_OUTPUT_REFUSED and "my_extra_render.png" in text and "nothing was changed" in text
    assert checksums(out) == before


def test_make_tiny_models_keeps_real_files_copied_into_its_folders(checksums, capsys, tmp_path):
    root = tmp_path / "models"
    assert cli(capsys, "make-tiny-models", root)[0] == 0
    assert cli(capsys, "make-tiny-models", root)[0] == 0  # its own folders: replaced
    real = root / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors"
    real.write_bytes(b"the user copied the real UNet over the tiny one")
    (root / "antelopev2").mkdir()
    (root / "antelopev2" / "scrfd_10g_bnkps.onnx").write_bytes(b"the user's detector")
    before = checksums(root)
    code, text = cli(capsys, "make-tiny-models", root)
    assert code == EXIT_OUTPUT_REFUSED and str(real) in text and "nothing was changed" in text
    assert checksums(root) == before


BAD_TRAIN = [
    ("--steps", "-5", "out of range"), ("--steps", "0", "out of range"), ("--steps", "nan", "not a whole number"),
    ("--steps", "1e12", "not a whole number"), ("--batch-size", "0", "out of range"),
    ("--batch-size", "100000", "out of range"), ("--lr", "0", "out of range"), ("--lr", "nan", "not a finite"),
    ("--lr", "-1e-4", "out of range"), ("--lr", "5", "out of range"), ("--rank", "0", "out of range"),
    ("--rank", "-2", "out of range"), ("--alpha", "0", "out of range"), ("--alpha", "inf", "not a finite"),
    ("--expression-scale", "nan", "not a finite"), ("--expression-scale", "-1", "out of range"),
    ("--checkpoint-every", "-1", "out of range"), ("--validate-every", "-3", "out of range"),
    ("--validation-samples", "-1", "out of range"), ("--seed", "-1", "out of range"),
    ("--seed", "99999999999999999999", "out of range"), ("--targets", ",", "not a comma-separated list"),
    ("--targets", "to_q;rm -rf", "not a comma-separated list"), ("--device", "tpu", "unknown device"),
    ("--device", "cuda:x", "unknown device"), ("--device", "", "unknown device"),
]


@pytest.mark.parametrize("option, value, reason", BAD_TRAIN, ids=[f"{o}={v}" for o, v, _ in BAD_TRAIN])
def test_train_prior_refuses_bad_numbers_before_doing_anything(option, value, reason, capsys, tmp_path, dataset,
                                                                tiny_models_root):
    out = tmp_path / "lora"
    code, text = cli(capsys, *train_args(tiny_models_root, dataset, out), f"{option}={value}")
    assert code == EXIT_BAD_INPUT
    assert f"argument {option}: " in text and reason in text and ("e.g." in text or "use " in text)
    assert not out.exists()


@pytest.mark.parametrize("value, reason", [("0", "out of range"), ("-64", "out of range"), ("100", "multiple of 8"),
                                           ("1000000", "out of range"), ("nan", "not a whole number")])
def test_build_dataset_refuses_bad_resolutions(value, reason, capsys, tmp_path, heads):
    """--resolution 0 used to blame the input image; a huge one ran out of memory."""
    out = tmp_path / "ds"
    code, text = cli(capsys, "build-prior-dataset", "--heads", heads, "--out", out, "--domain", "normal",
                     f"--resolution={value}")
    assert code == EXIT_BAD_INPUT and "argument --resolution" in text and reason in text
    assert not out.exists()


def test_cuda_on_a_cpu_build_has_its_own_status(capsys, tmp_path, dataset, tiny_models_root, photo):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "lora"
    code, text = cli(capsys, *train_args(tiny_models_root, dataset, out), "--device=cuda")
    assert code == EXIT_DEVICE and "--device cuda" in text and "CPU-only build" in text and "--device cpu" in text
    assert not out.exists()
    code, text = cli(capsys, "identity", "--backend", "dlib", "--models", tiny_models_root, "--device", "cuda",
                     "--out", tmp_path / "id", "--", photo)
    assert code == EXIT_DEVICE and "CUDA" in text
    assert not (tmp_path / "id").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset, tiny_models_root) -> Path:
    out = tmp_path_factory.mktemp("trained") / "lora"
    assert main([str(a) for a in train_args(tiny_models_root, dataset, out, "--checkpoint-every", "1")]) == 0
    return out


@pytest.mark.parametrize("damage, reason", [
    ("truncate-params", "is damaged (SafetensorError"),
    ("truncate-optimizer", "is damaged"),
    ("bad-state", "is damaged (JSONDecodeError"),
    ("other-rank", "another --rank?"),
])
def test_resume_from_a_damaged_or_mismatched_checkpoint(checksums, damage, reason, capsys, tmp_path, trained, dataset,
                                                        tiny_models_root):
    import shutil

    out = tmp_path / "lora"
    shutil.copytree(trained, out)
    step = out / "checkpoints" / "step_0000002"
    extra = []
    if damage == "truncate-params":
        os.truncate(step / "lora_params.safetensors", 1000)
    elif damage == "truncate-optimizer":
        os.truncate(step / "optimizer.pt", 100)
    elif damage == "bad-state":
        (step / "state.json").write_text("{")
    else:
        extra = ["--rank", "4"]
    before = checksums(out)
    code, text = cli(capsys, *train_args(tiny_models_root, dataset, out, "--resume", "--steps", "3", *extra))
    assert code == EXIT_BAD_INPUT, text
    assert str(step) in text and reason in text and "fix:" in text
    assert checksums(out) == before


def test_resume_without_checkpoints_creates_nothing(capsys, tmp_path, dataset, tiny_models_root):
    out = tmp_path / "never-trained"
    code, text = cli(capsys, *train_args(tiny_models_root, dataset, out, "--resume"))
    assert code == EXIT_BAD_INPUT and "holds no checkpoints/" in text and "without --resume" in text
    assert not out.exists()


@pytest.mark.parametrize("content, reason", [('"someone/repo"', "holds a JSON str, not an object"),
                                             ("[1, 2]", "holds a JSON list"), ("{", "not readable JSON"),
                                             (b"\xff\xfe", "not readable JSON")])
def test_dataset_json_that_is_not_an_object(checksums, content, reason, capsys, tmp_path, dataset, tiny_models_root):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(dataset, data)
    target = data / "dataset.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = checksums(tmp_path)
    code, text = cli(capsys, *train_args(tiny_models_root, data, tmp_path / "lora"))
    assert code == EXIT_BAD_INPUT and f"{target} " in text and reason in text and "fix:" in text
    assert checksums(tmp_path) == before  # not even an empty --out folder was made


def test_retraining_into_the_models_loras_folder(capsys, models_copy, dataset):
    """The documented ROOT/loras/normal: the second run used to fail with "Adapter with name
    normal already exists" (the loader had already loaded the first run's adapter)."""
    from engine.prior import load_prior

    out = models_copy / "loras" / "normal"
    for _ in range(2):
        code, text = cli(capsys, *train_args(models_copy, dataset, out))
        assert code == 0, text
    assert "normal" in load_prior(models_copy, device="cpu").adapters


@pytest.mark.parametrize("tensors", ["extra", "only-foreign"])
def test_lora_file_with_foreign_tensors_is_refused_by_name(tensors, tmp_path, trained, tiny_models_root):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from engine.prior import load_prior
    from engine.prior.errors import MismatchedWeightsError

    lora = tmp_path / "lora"
    shutil.copytree(trained, lora)
    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    if tensors == "extra":
        weights["text_model.encoder.layers.0.mlp.fc1.lora_A.weight"] = torch.zeros(2, 32)
    else:
        weights = {"model.diffusion_model.input_blocks.1.lora_down.weight": torch.zeros(2, 32)}
    save_file(weights, lora / "pytorch_lora_weights.safetensors")
    (lora / "prior_adapter.json").unlink()  # someone else's LoRA: no info file to catch it by hash
    with pytest.raises(MismatchedWeightsError, match="not LoRA weights of this UNet") as info:
        load_prior(tiny_models_root, device="cpu", lora_dirs={"normal": lora})
    assert "lora_" in info.value.message and "train-prior" in info.value.hint


def test_a_crop_write_failure_is_an_output_error_not_an_unreadable_photo(capsys, tmp_path, monkeypatch,
                                                                         tiny_models_root, photo):
    import errno

    from engine.identity import pipeline

    def disk_full(target, rgb):  # test double: a full disk cannot be made on demand here
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(pipeline, "write_png_atomic", disk_full)
    out = tmp_path / "id"
    code, text = cli(capsys, "identity", "--backend", "dlib", "--no-judge", "--models", tiny_models_root,
                     "--out", out, "--", photo)
    assert code == EXIT_OUTPUT_REFUSED, text
    assert "cannot write the face crop" in text and "No space left" in text and "unreadable" not in text
    assert not out.exists()


def test_train_prior_with_a_missing_models_folder_creates_nothing(capsys, tmp_path, dataset):
    out = tmp_path / "lora"
    code, text = cli(capsys, *train_args(tmp_path / "no-models", dataset, out))
    assert code == EXIT_BAD_INPUT and f"{tmp_path / 'no-models'} does not exist" in text and "fetch-models" in text
    assert not out.exists()


@pytest.mark.parametrize("heads_kind", ["missing", "file", "empty"])
def test_build_dataset_names_a_bad_heads_folder(heads_kind, capsys, tmp_path):
    heads = tmp_path / "heads"
    if heads_kind == "file":
        heads.write_text("not a folder")
    elif heads_kind == "empty":
        heads.mkdir()
    code, text = cli(capsys, "build-prior-dataset", "--heads", heads, "--out", tmp_path / "ds", "--domain", "normal")
    reason = "holds no head folders" if heads_kind == "empty" else "is not a folder"
    assert code == EXIT_BAD_INPUT and f"{heads} {reason}" in text and "fix: give --heads a folder" in text
    assert not (tmp_path / "ds").exists()
