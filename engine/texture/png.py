"""Texture maps to PNG: 8- or 16-bit, sRGB-encoded colour or linear data, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_to_path_atomic

TEXTURE_SIZES = (1024, 2048, 4096)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(np.maximum(x, 0.0031308), 1.0 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def to_png_array(image, *, srgb: bool = False, bits: int = 8) -> np.ndarray:
    """Float [H, W] / [H, W, C] in [0, 1] (numpy or torch) -> uint8/uint16 array for PNG.

    ``srgb``: encode linear values with the sRGB transfer function (colour maps); leave False for
    data maps (roughness, normal). A single channel comes back 2-D (a grey PNG)."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or inf")
    if srgb:
        a = linear_to_srgb(a)
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    return np.rint(np.clip(a, 0.0, 1.0) * top).astype(dtype)


def resize_map(image: np.ndarray, size: int) -> np.ndarray:
    """Resample a float map [H, W(, C)] to [size, size(, C)] (bilinear; area when shrinking)."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(image, dtype=np.float32)
    if a.shape[0] == size and a.shape[1] == size:
        return a
    t = torch.as_tensor(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)[None]
    r = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=size < a.shape[0])
    out = r[0].permute(1, 2, 0).numpy()
    return out if a.ndim == 3 else out[..., 0]


def write_png(path: Path | str, image, *, srgb: bool = False, bits: int = 8) -> Path:
    """Write ``image`` (see :func:`to_png_array`) as a PNG, atomically."""
    from PIL import Image

    array = to_png_array(image, srgb=srgb, bits=bits)
    if bits == 16 and array.ndim == 3:
        raise ValueError("16-bit PNGs are written for single-channel maps only (Pillow limitation)")
    pil = Image.fromarray(array if bits == 8 else array.astype(np.uint16), mode=None)
    return write_to_path_atomic(path, lambda temporary: pil.save(temporary, format="PNG"))
