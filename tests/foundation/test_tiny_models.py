"""The tiny random-weight models: production layout, loadable, and never written over real weights."""

from __future__ import annotations

import pytest

from engine.models import check_models
from engine.owned import ForeignFolderError
from engine.tiny_models import TINY_MARKER, is_tiny, write_tiny_models


def test_tiny_models_fill_the_production_layout(tiny_models_root):
    reports = {r.spec.key: r for r in check_models(tiny_models_root)}
    assert reports["sd15"].complete and reports["arc2face"].complete
    assert is_tiny(tiny_models_root)


def test_tiny_prompt_embeddings_have_sd15_shape(tiny_models_root):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models_root / "sd15" / "tokenizer")
    assert tokenizer.tokenize("photo of a id person") == ["photo</w>", "of</w>", "a</w>", "id</w>", "person</w>"]
    ids = tokenizer("photo of a id person", padding="max_length", max_length=77, return_tensors="pt").input_ids
    encoder = CLIPTextModel.from_pretrained(tiny_models_root / "arc2face" / "encoder")
    assert tuple(encoder(ids).last_hidden_state.shape) == (1, 77, 768)


def test_refuses_to_overwrite_real_weights(tmp_path):
    real = tmp_path / "models" / "sd15" / "vae"
    real.mkdir(parents=True)
    (real / "diffusion_pytorch_model.safetensors").write_bytes(b"pretend these are 300 MB of real weights")
    with pytest.raises(ForeignFolderError, match="not tiny test models.*nothing was changed"):
        write_tiny_models(tmp_path / "models")
    assert (real / "diffusion_pytorch_model.safetensors").read_bytes().startswith(b"pretend")
    assert not (tmp_path / "models" / TINY_MARKER).exists()
