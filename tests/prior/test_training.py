"""Training a task prior: the dataset format and builder, loss going down, checkpoints and resume,
validation samples, and the command lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.prior.dataset import read_dataset


def _config(prior_dataset, tiny_models_root, out, steps, **kw):
    from engine.prior.train import TrainConfig

    base = dict(domain="normal", data=prior_dataset, out=out, models_root=tiny_models_root, steps=steps,
                batch_size=2, lr=1e-2, rank=4, checkpoint_every=6, log_every=6, validation_samples=1,
                validation_steps=3, eval_samples=4, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_dataset_builder_writes_the_documented_format(prior_dataset):
    info = json.loads((prior_dataset / "dataset.json").read_text())
    assert info["domain"] == "normal" and info["resolution"] == 64
    samples = read_dataset(prior_dataset, "normal")
    assert len(samples) == 4
    assert {s.expression for s in samples} == {"smiling", "angry"}
    assert {str(s.view) for s in samples} == {"front", "90.0"}
    assert samples[0].embedding.shape == (512,) and samples[0].embedding.dtype == np.float32
    assert not np.array_equal(samples[0].embedding, samples[-1].embedding)  # two identities


def test_dataset_errors_name_the_line(prior_dataset, tmp_path):
    import shutil

    from engine.prior import DatasetError

    broken = tmp_path / "broken"
    shutil.copytree(prior_dataset, broken)
    lines = (broken / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["embedding"] = [0.5] * 100
    (broken / "metadata.jsonl").write_text("\n".join([lines[0], json.dumps(row)]) + "\n")
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2.*512"):
        read_dataset(broken)
    with pytest.raises(DatasetError, match="holds normal images"):
        read_dataset(prior_dataset, "albedo")
    with pytest.raises(DatasetError, match="metadata.jsonl does not exist"):
        read_dataset(tmp_path)


def test_trainer_lowers_the_loss_and_resumes_to_the_same_step(prior_dataset, tiny_models_root, tmp_path):
    from safetensors.torch import load_file

    from engine.prior.train import latest_checkpoint, train_prior

    events = []
    full = train_prior(_config(prior_dataset, tiny_models_root, tmp_path / "full", 12), events.append)
    assert full.steps == 12
    assert full.eval_loss_end < 0.9 * full.eval_loss_start, (full.eval_loss_start, full.eval_loss_end)
    assert [e["step"] for e in events if e["kind"] == "progress"] == [6, 12]
    assert (tmp_path / "full" / "pytorch_lora_weights.safetensors").is_file()
    info = json.loads((tmp_path / "full" / "prior_adapter.json").read_text())
    assert info["domain"] == "normal" and info["rank"] == 4 and info["steps"] == 12
    assert len(full.samples) == 1 and full.samples[0].is_file()  # a validation PNG

    # interrupted after 6 steps, then resumed: same step count and the same weights as the full run
    part = tmp_path / "part"
    first = train_prior(_config(prior_dataset, tiny_models_root, part, 6, validation_samples=0))
    assert first.steps == 6 and latest_checkpoint(part).name == "step_0000006"
    resumed = train_prior(_config(prior_dataset, tiny_models_root, part, 12, resume=True))
    assert resumed.resumed_from == 6 and resumed.steps == 12
    a = load_file(latest_checkpoint(tmp_path / "full") / "lora_params.safetensors")
    b = load_file(latest_checkpoint(part) / "lora_params.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)

    # the trained adapter loads as a task prior and changes the predictions
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu", lora_dirs={"normal": tmp_path / "full"}, task="normal")
    emb, noisy, t = torch.randn(512), torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = prior.conditioning(emb, "smiling")
    tuned = prior.predict_noise(noisy, t, cond, 2.0)[0]
    prior.set_task(None)
    assert (tuned - prior.predict_noise(noisy, t, cond, 2.0)[0]).abs().max() > 1e-4


def test_command_lines(prior_dataset, tiny_models_root, tmp_path, make_heads, capsys):
    from engine import protocol
    from engine.cli import main

    heads = make_heads(tmp_path / "heads", n_heads=1, views=1, size=32)
    assert main(["build-prior-dataset", "--heads", str(heads), "--out", str(tmp_path / "ds"), "--domain", "normal",
                 "--resolution", "64"]) == 0
    assert len(read_dataset(tmp_path / "ds")) == 1
    assert main(["build-prior-dataset", "--heads", str(heads), "--out", str(tmp_path / "ds2"),
                 "--domain", "albedo"]) == 2  # no albedo renders: a clear error, exit code 2
    assert "albedo_*.png" in capsys.readouterr().err
    capsys.readouterr()
    code = main(["train-prior", "--domain", "normal", "--data", str(prior_dataset), "--out", str(tmp_path / "lora"),
                 "--prior", str(tiny_models_root), "--steps", "2", "--batch-size", "1", "--rank", "2",
                 "--targets", "to_q,to_v", "--checkpoint-every", "1", "--validation-samples", "0", "--json",
                 "--device", "cpu"])
    assert code == 0
    messages = [protocol.decode(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["hello", "stage"] and kinds[-2:] == ["result", "done"] and "progress" in kinds
    assert messages[-1]["ok"] is True
    assert json.loads((tmp_path / "lora" / "prior_adapter.json").read_text())["target_modules"] == ["to_q", "to_v"]
    assert sorted(p.name for p in (tmp_path / "lora" / "checkpoints").iterdir()) == ["step_0000001", "step_0000002"]


def test_builder_embeds_photos_with_the_identity_stage(photos_dir, tiny_models_root, tmp_path, make_heads):
    """The photo route: a head with photos/ instead of identity.npy is embedded by engine.identity
    (dlib detection + the tiny ArcFace ONNX here; the real ArcFace with real models)."""
    import shutil

    from engine.identity import analyse_photos
    from engine.prior.dataset import build_dataset

    heads = make_heads(tmp_path / "heads", n_heads=1, views=1, size=32)
    head = next(heads.iterdir())
    (head / "identity.npy").unlink()
    (head / "photos").mkdir()
    shutil.copy(photos_dir / "grace_hopper.jpg", head / "photos" / "grace_hopper.jpg")
    build_dataset(heads, tmp_path / "ds", "normal", resolution=32, models_root=tiny_models_root)
    [sample] = read_dataset(tmp_path / "ds")
    expected = analyse_photos([head / "photos" / "grace_hopper.jpg"], models_root=tiny_models_root, judge=False)
    np.testing.assert_allclose(sample.embedding, expected.embedding, rtol=1e-6)


def test_builder_refuses_to_replace_a_folder_it_did_not_write(tmp_path, make_heads):
    from engine.prior import DatasetError
    from engine.prior.dataset import build_dataset

    heads = make_heads(tmp_path / "heads", n_heads=1, views=1, size=32)
    precious = tmp_path / "my-renders-and-notes"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    from engine.owned import ForeignFolderError

    with pytest.raises(ForeignFolderError, match="not empty.*nothing was changed"):
        build_dataset(heads, precious, "normal", resolution=32)
    with pytest.raises(DatasetError, match="overlaps"):
        build_dataset(heads, heads, "normal", resolution=32)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert len(list((heads / "head_00").iterdir())) == 3  # renders untouched
    build_dataset(heads, tmp_path / "ds", "normal", resolution=32)
    build_dataset(heads, tmp_path / "ds", "normal", resolution=32)  # its own output: replaced


@pytest.mark.parametrize("damage", ["meta", "png"])
def test_builder_names_a_bad_file(tmp_path, make_heads, damage):
    from engine.prior import DatasetError
    from engine.prior.dataset import build_dataset

    heads = make_heads(tmp_path / "heads", n_heads=1, views=1, size=32)
    bad = heads / "head_00" / ("meta.json" if damage == "meta" else "normal_000.png")
    bad.write_bytes(b"{not json" if damage == "meta" else b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(DatasetError, match=bad.name):
        build_dataset(heads, tmp_path / "ds", "normal", resolution=32)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_run_trains_the_lora_and_lowers_the_loss(prior_dataset, tiny_models_root, tmp_path, mode):
    """The CUDA recipe (fp32 LoRA weights, half-precision autocast, fp16 with a gradient scaler) run
    on the CPU with fp32 base weights: the forward really runs in the half dtype, and training works."""
    from engine.prior.train import PriorTrainer
    from engine.prior.train_cli import prepare_output

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    config = _config(prior_dataset, tiny_models_root, tmp_path / mode, 12, checkpoint_every=0,
                     validation_samples=0, mixed_precision=mode)
    trainer = PriorTrainer(config, report=lambda event: None)
    prepare_output(config.out, config.resume)  # as train_prior does: the trainer writes into an owned --out
    assert trainer.amp_dtype == half and trainer.scaler.is_enabled() == (mode == "fp16")
    before = [p.detach().clone() for p in trainer.params]
    assert all(p.dtype == torch.float32 for p in trainer.params)
    seen = []
    attn = next(m for n, m in trainer.prior.unet.named_modules() if n.endswith("attn1.to_q"))
    handle = attn.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        result = trainer.train()
    finally:
        handle.remove()
    assert seen and all(d == half for d in seen)  # autocast was in force in every forward pass
    assert result.eval_loss_end < 0.9 * result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.params))
    assert changed == len(before)  # every LoRA tensor moved
    assert all(p.dtype == torch.float32 for p in trainer.params)
    if mode == "fp16":
        assert trainer.scaler.get_scale() > 1.0
        state = json.loads((latest_checkpoint_state(tmp_path / mode)).read_text())
        assert state["scaler"]["scale"] == trainer.scaler.get_scale()  # resumable with its loss scale


def latest_checkpoint_state(out):
    from engine.prior.train import latest_checkpoint

    return latest_checkpoint(out) / "state.json"
