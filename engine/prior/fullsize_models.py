"""Full-size random-weight models and the real CLIP tokenizer, for tests and benchmarks only.

The real weights cannot be downloaded everywhere, but their *configurations* are public. This
module writes a models root in the production layout (``sd15/``, ``arc2face/``) whose models have
exactly the published architectures and random weights:

* ``sd15/vae``: the SD 1.5 ``AutoencoderKL`` (83.7 M parameters, 512² images, 4 × 64² latents);
* ``arc2face/arc2face``: Arc2Face's UNet, which is the SD 1.5 ``UNet2DConditionModel`` (859.5 M);
* ``arc2face/encoder``: Arc2Face's encoder, a CLIP ViT-L/14 text model (123.1 M, 77 × 768);
* ``sd15/tokenizer``: the **real** CLIP tokenizer, rebuilt offline from OpenAI's BPE merges file
  (``bpe_simple_vocab_16e6.txt.gz``, inside the open-clip-torch wheel; ``scripts/setup.sh`` puts
  it in ``.cache/clip-bpe/``): 512 byte symbols (plain and with ``</w>``), then the first 48,894
  merges joined, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 tokens);
* ``sd15/scheduler`` (SD 1.5's), ``arc2face/arcface.onnx`` (a random ArcFace-shaped ONNX).

Anything made with these models is meaningless; they exist so the production loading code, memory
and time can be measured at the real sizes (bench/bench_full_size.py) and prompt handling tested
on the real vocabulary. Never ship or publish what this writes as weights. Imported only by tests
and benchmarks (needs torch, diffusers, transformers).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from ..errors import EngineError

FULLSIZE_MARKER = "FULLSIZE_RANDOM_MODELS.txt"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_ENV = "IDTO3D_CLIP_BPE"
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size minus the 256 byte symbols, </w> forms and 2 specials
REPO_ROOT = Path(__file__).resolve().parents[2]

# The published configurations (diffusers / transformers config.json of SD 1.5 and Arc2Face).
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
ARC2FACE_UNET_CONFIG = dict(  # = SD 1.5's UNet: Arc2Face fine-tunes it without changing its shape
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu",
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
CLIP_VIT_L14_TEXT_CONFIG = dict(  # SD 1.5's text_encoder/config.json (Arc2Face's encoder/ is the same shape)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    attention_dropout=0.0, dropout=0.0, initializer_factor=1.0, initializer_range=0.02,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)


def find_clip_bpe() -> Path:
    """The BPE merges file: ``$IDTO3D_CLIP_BPE``, else the cache ``scripts/setup.sh`` fills."""
    path = Path(os.environ[CLIP_BPE_ENV]) if os.environ.get(CLIP_BPE_ENV) else REPO_ROOT / ".cache" / "clip-bpe" / BPE_FILE
    if not path.is_file():
        raise EngineError(f"CLIP's BPE merges file {path} does not exist", code="clip_bpe_missing",
                          hint="run scripts/setup.sh (it takes that one file from the open-clip-torch wheel), or set "
                               f"{CLIP_BPE_ENV} to a copy of {BPE_FILE}")
    return path


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, derived from the BPE file exactly as CLIP builds them."""
    from ..tiny_models import _bytes_to_unicode  # CLIP's byte -> unicode table

    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is a version header
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise EngineError(f"{bpe_path} is not CLIP's BPE merges file ({len(merges)} merges read)",
                          code="clip_bpe_bad", hint="run scripts/setup.sh again (delete the cached file first)")
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, bpe_path: Path | None = None) -> Path:
    """SD 1.5's ``tokenizer/`` folder (vocab.json, merges.txt, configs) from the BPE file."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_path or find_clip_bpe())
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77,
                              bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                              pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    # As the SD 1.5 repository ships it (vocab.json + merges.txt, no tokenizer.json): loading then
    # takes the same path as with the real folder.
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def write_fullsize_models(root: Path | str, *, seed: int = 0, dtype: str = "fp16",
                          text_encoder=None, unet=None, vae=None) -> Path:
    """Write the full-size random-weight models root (~2.1 GB in fp16) and return it.

    ``dtype``: how the weights are stored ("fp16" halves disk and write time; the loader casts to
    the run's dtype either way). ``text_encoder``/``unet``/``vae``: config overrides (tests shrink
    the width/depth while keeping the real tokenizer). The root is an owned, shared folder
    (engine/owned.py, kind "models"): ``sd15/``, ``arc2face/`` and the marker are replaced only
    when this function wrote them and nothing in them changed since; anything else (real weights,
    files added later) is refused before anything is written.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..owned import ForeignFolderError, claim_dir, foreign_entries, read_manifest, remove_owned, \
        replace_owned_entry, write_owned_file
    from ..tiny_models import _sd15_scheduler, write_arcface_onnx

    root = Path(root)
    manifest = read_manifest(root) if root.is_dir() else None
    blocking = []
    for name in ("sd15", "arc2face", FULLSIZE_MARKER):
        target = root / name
        if os.path.lexists(target):
            recorded = manifest is not None and name in manifest["entries"]
            blocking += foreign_entries(target) if recorded else [target]
    if blocking:
        shown = ", ".join(str(p) for p in blocking[:4]) + (f" and {len(blocking) - 4} more" if len(blocking) > 4 else "")
        raise ForeignFolderError(
            f"{root} already holds models this function did not write, or that changed since ({shown}); "
            "nothing was changed", code="foreign_entries",
            hint="choose an empty folder (random weights must never replace real ones); a folder written by an "
                 "older engine version has no record of its files: delete it yourself once")
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    claim_dir(root, "models", shared=True)

    def write_sd15(sd15: Path) -> None:
        write_clip_tokenizer(sd15 / "tokenizer")
        _sd15_scheduler().save_pretrained(sd15 / "scheduler")
        torch.manual_seed(seed)
        AutoencoderKL(**{**SD15_VAE_CONFIG, **(vae or {})}).to(torch_dtype).save_pretrained(sd15 / "vae")

    def write_arc2face(arc2face: Path) -> None:
        torch.manual_seed(seed + 1)
        model = UNet2DConditionModel(**{**ARC2FACE_UNET_CONFIG, **(unet or {})}).to(torch_dtype)
        model.save_pretrained(arc2face / "arc2face")
        del model
        torch.manual_seed(seed + 2)
        config = CLIPTextConfig(**{**CLIP_VIT_L14_TEXT_CONFIG, **(text_encoder or {})})
        CLIPTextModel(config).to(torch_dtype).save_pretrained(arc2face / "encoder")
        write_arcface_onnx(arc2face / "arcface.onnx")

    # Each folder is built beside its target and swapped in whole (old or new, never half). The
    # marker of an earlier write goes first and the new one last, so a root with the marker holds
    # both folders complete and from one write (a kill between the two swaps leaves no marker,
    # never a new sd15/ beside an old arc2face/ that claims to be one set).
    if os.path.lexists(root / FULLSIZE_MARKER):
        remove_owned(root / FULLSIZE_MARKER)
    replace_owned_entry(root / "sd15", write_sd15)
    replace_owned_entry(root / "arc2face", write_arc2face)
    write_owned_file(root / FULLSIZE_MARKER, lambda path: path.write_text(
        "Models with the published SD 1.5 / Arc2Face architectures and RANDOM weights, for tests and\n"
        "benchmarks only. Anything generated with them is meaningless. Do not publish them as weights.\n",
        encoding="utf-8"))
    return root
