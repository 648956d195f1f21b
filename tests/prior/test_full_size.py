"""The production loader on full-size random-weight models (the published SD 1.5 / Arc2Face /
CLIP ViT-L/14 architectures, ~2.1 GB written): slow, outside the default run."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_load_prior_on_full_size_models(tmp_path):
    from engine.prior import load_prior
    from engine.prior.fullsize_models import write_fullsize_models

    root = write_fullsize_models(tmp_path / "models")
    prior = load_prior(root, device="cpu")
    def count(module, branch=False):
        return sum(p.numel() for n, p in module.named_parameters() if ("_exp." in n) == branch)

    # published sizes: SD 1.5 UNet 859.52 M, VAE 83.65 M, CLIP ViT-L/14 text model 123.06 M
    assert round(count(prior.unet) / 1e6, 1) == 859.5
    assert round(count(prior.unet, branch=True) / 1e6, 1) == 19.2  # the expression branch's K/V
    assert round(count(prior.vae) / 1e6, 1) == 83.7
    assert round(count(prior.text_encoder) / 1e6, 1) == 123.1
    assert prior.image_size == 512 and prior.id_token_id == 1014 and len(prior.tokenizer) == 49408
    cond = prior.conditioning(torch.randn(512), "smiling", view="front")
    assert cond.prompt.shape == (1, 77, 768)
    with torch.no_grad():
        eps, _, _ = prior.predict_noise(torch.randn(1, 4, 64, 64), torch.tensor([500]), cond, 2.0)
    assert eps.shape == (1, 4, 64, 64) and torch.isfinite(eps).all()


SHRUNK = dict(  # the published layout with tiny widths, so the folder rules run in seconds
    vae={"block_out_channels": (32, 32), "down_block_types": ("DownEncoderBlock2D",) * 2,
         "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1},
    unet={"block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
          "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32, "layers_per_block": 1,
          "attention_head_dim": 4},
    text_encoder={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                  "projection_dim": 32})


def _checksums(root):
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_full_size_writer_replaces_only_its_own_folders(tmp_path, monkeypatch):
    """The writer goes through engine/owned.py: a rerun replaces what it wrote; real weights, or a
    file the user put into its folders, are refused before anything is written."""
    from engine import owned
    from engine.errors import EngineError
    from engine.prior.fullsize_models import FULLSIZE_MARKER, write_fullsize_models

    root = write_fullsize_models(tmp_path / "models", **SHRUNK)
    first = _checksums(root)
    assert {"sd15/vae/config.json", "arc2face/arc2face/config.json", "arc2face/encoder/config.json",
            "sd15/tokenizer/vocab.json", FULLSIZE_MARKER} <= set(first)
    assert owned.read_manifest(root)["kind"] == "models" and owned.foreign_entries(root) == []

    write_fullsize_models(root, seed=1, **SHRUNK)  # its own folders: replaced whole, new weights
    second = _checksums(root)
    assert second["sd15/vae/diffusion_pytorch_model.safetensors"] != first["sd15/vae/diffusion_pytorch_model.safetensors"]
    assert not [p.name for p in root.iterdir() if "idto3d" in p.name and p.name != owned.MARKER]  # no staging left

    # killed between the two swaps of a rewrite: no marker, so nothing says the mixed folders are one set
    original, swaps = owned.replace_owned_entry, []

    def killed_after_sd15(path, write):
        swaps.append(path.name)
        if path.name == "arc2face":
            raise KeyboardInterrupt("killed")
        return original(path, write)

    monkeypatch.setattr(owned, "replace_owned_entry", killed_after_sd15)
    with pytest.raises(KeyboardInterrupt):
        write_fullsize_models(root, seed=3, **SHRUNK)
    monkeypatch.undo()
    assert swaps == ["sd15", "arc2face"] and not (root / FULLSIZE_MARKER).exists()
    write_fullsize_models(root, seed=1, **SHRUNK)  # the next write makes one whole set again
    again = _checksums(root)
    assert {k: v for k, v in again.items() if k != owned.MARKER} == {k: v for k, v in second.items() if k != owned.MARKER}

    (root / "sd15" / "vae" / "my_finetune.safetensors").write_bytes(b"years of GPU time")
    before = _checksums(root)
    with pytest.raises(EngineError, match="nothing was changed") as info:
        write_fullsize_models(root, seed=2, **SHRUNK)
    assert "my_finetune.safetensors" in info.value.message and _checksums(root) == before

    real = tmp_path / "real"
    (real / "sd15" / "vae").mkdir(parents=True)
    (real / "sd15" / "vae" / "config.json").write_text("{}")  # someone's real weights, no record of ours
    before = _checksums(real)
    with pytest.raises(EngineError, match="did not write"):
        write_fullsize_models(real, **SHRUNK)
    assert _checksums(real) == before and not (real / owned.MARKER).exists()
