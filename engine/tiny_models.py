"""Tiny random-weight models, written in exactly the production models-folder layout.

The real weights (Stable Diffusion 1.5, Arc2Face) are gigabytes and cannot be downloaded
everywhere; these stand-ins have the same classes, file names and tensor interfaces (77x768 prompt
embeddings, 4-channel latents at 1/8 resolution, a 1x3x112x112 -> 512 ArcFace ONNX) but random
weights and a few thousand parameters per layer, so the *production loading code* can be run by
tests and by the smoke run. Their outputs are meaningless: anything made with them is labelled a
smoke run.

``python -m engine make-tiny-models DIR`` writes them; tests use the same function.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

TINY_MARKER = "TINY_RANDOM_MODELS.txt"
TOKEN_WIDTH = 768  # as SD 1.5 / Arc2Face: the 512-d ArcFace embedding is zero-padded to this
MAX_TOKENS = 77

# Words the tiny tokenizer knows as whole tokens (anything else falls back to characters).
_WORDS = (
    "photo of a id person face head portrait neutral smiling smile happy angry sad surprised "
    "disgusted fearful scared laughing frowning open mouth closed eyes with curly red hair as cute "
    "baby old young man woman front side back view normal map albedo texture rendering render lit "
    "light the and in on"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable unicode table (same construction as the real tokenizer).
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer whose vocabulary holds every byte and the words in ``_WORDS``."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in symbols:
        vocab.setdefault(sym, len(vocab))
    for sym in symbols:
        vocab.setdefault(sym + "</w>", len(vocab))
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            rule = f"{current} {part}"
            if rule not in merges:
                merges.append(rule)
            current = current + part
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    # Written as the SD 1.5 repository ships it (vocab.json + merges.txt + configs, no
    # tokenizer.json), so loading takes the same path as with the real folder.
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=MAX_TOKENS,
                              pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _tiny_text_encoder(vocab_size: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TOKEN_WIDTH, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=TOKEN_WIDTH,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def _tiny_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TOKEN_WIDTH,
        attention_head_dim=8, norm_num_groups=32,
    )


def _tiny_vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def _sd15_scheduler():
    from diffusers import PNDMScheduler

    # The SD 1.5 scheduler configuration (the real folder ships a PNDM config with these betas).
    return PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )


def write_arcface_onnx(path: Path, seed: int = 0) -> None:
    """A random recognition ONNX with ArcFace's signature: ``input.1`` [1,3,112,112] -> [1,512].

    Small conv net (stride-8 conv, global pooling, linear). insightface routes a model with this
    input/output shape to its ArcFace class, so its own preprocessing code runs on it.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.1, (16, 3, 8, 8)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (16,)).astype(np.float32)
    fc_w = rng.normal(0, 0.3, (16 * 14 * 14, 512)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["c1"], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f1"], axis=1),
        helper.make_node("MatMul", ["f1", "fc_w"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])],
        initializer=[numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
                     numpy_helper.from_array(fc_w, "fc_w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_tiny_models(root: Path | str) -> Path:
    """Write the tiny ``sd15/`` and ``arc2face/`` folders under ``root`` (atomically) and return it.

    ``antelopev2/`` is not written: a detector with random weights would detect nothing, so the
    smoke run uses the dlib backend for faces instead.
    """
    from .owned import claim_dir, foreign_entries, owner_of, read_manifest, replace_owned_entry, write_owned_file

    root = Path(root)
    if root.exists() and not root.is_dir():
        from .owned import ForeignFolderError

        raise ForeignFolderError(f"{root} is a file, not a folder; nothing was changed", code="out_not_a_folder",
                                 hint="give a folder path for the models root")
    # The models root is shared with the user's own models (antelopev2/, real weights): only the
    # folders this function wrote before (recorded in the root's manifest, unchanged since) may be
    # replaced. Real weights, or files copied into a tiny folder later, are never deleted.
    manifest = read_manifest(root) if root.is_dir() else None
    blocking = []
    for name in ("sd15", "arc2face", TINY_MARKER):
        target = root / name
        if not os.path.lexists(target):
            continue
        recorded = manifest is not None and name in manifest["entries"] and owner_of(root) == root
        blocking += foreign_entries(target) if recorded else [target]
    if blocking:
        from .owned import ForeignFolderError

        shown = ", ".join(str(p) for p in blocking[:4]) + (f" and {len(blocking) - 4} more" if len(blocking) > 4 else "")
        raise ForeignFolderError(
            f"{root} already holds model files that are not tiny test models this command wrote, or that changed "
            f"since ({shown}); nothing was changed", code="foreign_entries",
            hint="choose an empty folder for the tiny models (they must never replace real weights)")
    try:
        claim_dir(root, "models", shared=True)
    except OSError as exc:
        from .owned import _not_writable

        raise _not_writable(root, exc) from None

    def write_sd15(sd15: Path) -> None:
        write_tiny_tokenizer(sd15 / "tokenizer")
        _tiny_vae().save_pretrained(sd15 / "vae")
        _sd15_scheduler().save_pretrained(sd15 / "scheduler")

    def write_arc2face(arc2face: Path) -> None:
        from transformers import CLIPTokenizer

        vocab_size = len(CLIPTokenizer.from_pretrained(root / "sd15" / "tokenizer"))
        _tiny_unet().save_pretrained(arc2face / "arc2face")
        _tiny_text_encoder(vocab_size).save_pretrained(arc2face / "encoder")
        write_arcface_onnx(arc2face / "arcface.onnx")

    # Each folder is swapped in whole (old or new, never half); the marker goes last.
    replace_owned_entry(root / "sd15", write_sd15)
    replace_owned_entry(root / "arc2face", write_arc2face)
    write_owned_file(root / TINY_MARKER, lambda path: path.write_text(
        "Tiny models with RANDOM weights, for tests and smoke runs only. Anything generated\n"
        "with them is meaningless. Real weights: see docs/install.md.\n", encoding="utf-8"))
    return root


def is_tiny(root: Path | str) -> bool:
    return (Path(root) / TINY_MARKER).is_file()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="models root to write sd15/ and arc2face/ into")


def run(args: argparse.Namespace) -> int:
    root = write_tiny_models(args.out)
    print(f"tiny random-weight models written to {root} (smoke runs and tests only)")
    return 0
