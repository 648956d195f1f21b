"""Loading the prior: missing, corrupt and mismatched weight folders give clear errors; Arc2Face's
pickled encoder is read only with the weights-only loader."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine.prior import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError, load_prior


def test_missing_files_are_listed_with_what_to_do(models_copy):
    (models_copy / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors").unlink()
    (models_copy / "sd15" / "vae" / "config.json").unlink()
    with pytest.raises(MissingWeightsError) as err:
        load_prior(models_copy, device="cpu")
    text = str(err.value)
    assert "arc2face/arc2face/diffusion_pytorch_model.safetensors" in text and "sd15/vae/config.json" in text
    assert "fetch-models" in text and err.value.code == "prior_weights_missing"
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_prior(models_copy / "nowhere", device="cpu")


def test_truncated_safetensors_names_the_file(models_copy):
    path = models_copy / "arc2face" / "arc2face" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError) as err:
        load_prior(models_copy, device="cpu")
    assert str(path) in str(err.value) and "truncated" in str(err.value) and "download" in str(err.value)
    path.write_bytes(b"\x00" * 64)  # not safetensors at all
    with pytest.raises(CorruptWeightsError, match="header"):
        load_prior(models_copy, device="cpu")


def test_broken_config_json(models_copy):
    (models_copy / "sd15" / "vae" / "config.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(CorruptWeightsError, match="vae/config.json"):
        load_prior(models_copy, device="cpu")


def test_weights_that_do_not_fit_their_config(models_copy):
    config_path = models_copy / "arc2face" / "arc2face" / "config.json"
    config = json.loads(config_path.read_text())
    config["block_out_channels"] = [64, 64]
    config_path.write_text(json.dumps(config))
    with pytest.raises(MismatchedWeightsError) as err:
        load_prior(models_copy, device="cpu")
    assert "diffusion_pytorch_model.safetensors" in str(err.value) and "config" in str(err.value)
    assert "file [" in str(err.value)  # shows the shapes that disagree


def test_unet_and_text_encoder_from_different_models(models_copy, tiny_models_root):
    config_path = models_copy / "arc2face" / "arc2face" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 512
    config_path.write_text(json.dumps(config))
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_config(config).save_pretrained(models_copy / "arc2face" / "arc2face")
    with pytest.raises(MismatchedWeightsError, match="512-d tokens.*768-d"):
        load_prior(models_copy, device="cpu")


def test_arc2face_pickled_encoder_loads_weights_only(models_copy, tiny_models_root):
    encoder = models_copy / "arc2face" / "encoder"
    from safetensors.torch import load_file

    state = load_file(encoder / "model.safetensors")
    # Arc2Face's file uses the older key layout ("text_model." prefix) in a pickle
    torch.save({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in state.items()},
               encoder / "pytorch_model.bin")
    (encoder / "model.safetensors").unlink()
    from_bin = load_prior(models_copy, device="cpu")
    reference = load_prior(tiny_models_root, device="cpu")
    emb = torch.randn(512)
    assert torch.equal(from_bin.encode_identity(emb), reference.encode_identity(emb))

    from engine.prior.weights import convert_encoder_to_safetensors

    convert_encoder_to_safetensors(encoder)
    converted = load_file(encoder / "model.safetensors")
    assert converted.keys() == {"text_model." + k if not k.startswith("text_model.") else k for k in state}
    assert all(torch.equal(converted["text_model." + k if not k.startswith("text_model.") else k], v)
               for k, v in state.items())
    (encoder / "pytorch_model.bin").unlink()  # the converted file alone loads to the same encoder
    assert torch.equal(load_prior(models_copy, device="cpu").encode_identity(emb), reference.encode_identity(emb))


class _Evil:
    """A pickle that would create ``marker`` if it were unpickled normally."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_it(models_copy, tmp_path):
    encoder = models_copy / "arc2face" / "encoder"
    (encoder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(encoder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": _Evil(marker)}, handle)
    with pytest.raises(CorruptWeightsError, match="weights-only"):
        load_prior(models_copy, device="cpu")
    assert not marker.exists()


def test_device_and_dtype_defaults():
    from engine.prior.model import resolve_device_dtype

    assert resolve_device_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "fp16") == (torch.device("cpu"), torch.float32)  # refused on CPU
    if torch.cuda.is_available():
        assert resolve_device_dtype("cuda", None)[1] == torch.float16
        assert resolve_device_dtype("cuda", "bf16")[1] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_device_dtype("cpu", "int8")


def test_memory_options_keep_results(tiny_models_root):
    from engine.prior.model import MemoryOptions

    plain = load_prior(tiny_models_root, device="cpu")
    frugal = load_prior(tiny_models_root, device="cpu",
                        memory=MemoryOptions(attention="sliced", attention_slice_size=1, channels_last=True,
                                             vae_tiling=True, cpu_offload=True))
    emb, noisy, t = torch.randn(512), torch.randn(1, 4, 8, 8), torch.tensor([500])
    a = plain.predict_noise(noisy, t, plain.conditioning(emb, "smiling"), 2.0)[0]
    b = frugal.predict_noise(noisy, t, frugal.conditioning(emb, "smiling"), 2.0)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
