"""Loading the photos people really have: any common format, orientation, colour mode or size.

Every photo becomes an 8-bit RGB array (row 0 = top), upright per its EXIF orientation and no
larger than ``max_side`` on its long side. Files that cannot be used raise :class:`PhotoError`
naming the file and the problem, so a batch can report it and carry on with the other photos.

Bounded memory for very large photos: JPEGs are decoded at a reduced DCT scale (``Image.draft``)
so a 50-megapixel photo never exists in memory at full size; other formats are refused above
``MAX_DECODE_PIXELS`` before decoding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EngineError

DEFAULT_MAX_SIDE = 2048  # faces in real photos stay well above the 112-px ArcFace crop at this size
MAX_DECODE_PIXELS = 120_000_000  # non-JPEG images above this are refused (about 360 MB as RGB)
READABLE = "JPEG, PNG, WebP, TIFF or BMP"


class PhotoError(EngineError):
    """A photo that cannot be used. ``code`` is one of: missing, not_a_file, empty, not_image,
    truncated, corrupt, too_large."""

    code = "unreadable"

    def __init__(self, path: Path | str, problem: str, *, code: str, hint: str | None = None):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{Path(path).name}: {problem}", code=code, hint=hint)


@dataclass
class LoadedPhoto:
    path: Path
    rgb: np.ndarray  # uint8 [H, W, 3], upright, at most max_side on the long side
    original_size: tuple[int, int]  # (width, height) after EXIF rotation, before downscaling
    scale: float  # loaded pixels per original pixel (<= 1)
    format: str
    notes: list[str] = field(default_factory=list)  # what was converted, for the report

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Size is policed below (draft for JPEG, MAX_DECODE_PIXELS otherwise).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        raise PhotoError(path, f"not an image file that can be read (expected {READABLE})",
                         code="not_image", hint="remove it from the list or export it as JPEG/PNG") from None
    except Image.DecompressionBombError as exc:
        raise PhotoError(path, f"image is too large to decode safely ({exc})", code="too_large",
                         hint="resize it below 100 megapixels") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot be opened: {exc}", code="corrupt") from None


def _to_uint8_rgb(img, notes: list[str]) -> np.ndarray:
    """Any PIL mode -> uint8 RGB. Alpha is composited over white (a cut-out face on white)."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            values = values / 257.0  # 16-bit range -> 8-bit
            notes.append(f"converted from 16-bit ({mode})")
        elif mode == "F" and peak <= 1.0:
            values = values * 255.0
            notes.append("converted from floating point")
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"transparency ({mode}) composited over white")
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        notes.append(f"converted from {mode}")
        img = img.convert("RGB")
    return np.asarray(img)


def load_photo(path: Path | str, max_side: int = DEFAULT_MAX_SIDE) -> LoadedPhoto:
    """Read one photo as upright uint8 RGB no larger than ``max_side``; raise :class:`PhotoError`."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.exists():
        raise PhotoError(path, f"file not found ({path})", code="missing",
                         hint="it was moved or deleted; add it again")
    if not path.is_file():
        raise PhotoError(path, "is a folder, not an image file", code="not_a_file")
    if path.stat().st_size == 0:
        raise PhotoError(path, "file is empty (0 bytes)", code="empty",
                         hint="the copy or download did not finish; get the photo again")
    img = _open(path)
    notes: list[str] = []
    try:
        fmt = img.format or "unknown"
        width, height = img.size
        if fmt in ("JPEG", "MPO") and max(width, height) > max_side:
            # Decode at 1/2, 1/4 or 1/8 scale directly (never the full image). Accepting a long side
            # down to 3/4 of max_side lets a 4000-px phone photo decode at 1/2 scale (4× faster)
            # with no resampling at all; faces stay far above the 112-px crop.
            ratio = 0.75 * max_side / max(width, height)
            img.draft("RGB", (max(1, int(width * ratio)), max(1, int(height * ratio))))
        elif width * height > MAX_DECODE_PIXELS:
            raise PhotoError(path, f"image is {width}×{height} = {width * height / 1e6:.0f} megapixels, "
                             f"above the {MAX_DECODE_PIXELS / 1e6:.0f}-megapixel limit for {fmt}",
                             code="too_large", hint="save a smaller copy (or a JPEG) of it")
        try:
            img.load()
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError... on bad data
            text = str(exc) or type(exc).__name__
            if "truncated" in text.lower():
                raise PhotoError(path, f"file is truncated ({text})", code="truncated",
                                 hint="the copy or download did not finish; get the photo again") from None
            raise PhotoError(path, f"image data is corrupt ({text})", code="corrupt",
                             hint="open and re-save it in an image editor, or use another photo") from None
        orientation = 1
        try:
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            upright = ImageOps.exif_transpose(img)
            if orientation != 1 and upright is not None:
                notes.append(f"rotated upright (EXIF orientation {orientation})")
                img = upright
        except Exception as exc:  # broken EXIF must not cost the photo
            orientation = 1
            notes.append(f"EXIF orientation ignored ({exc})")
        rgb = _to_uint8_rgb(img, notes)
    finally:
        img.close()
    # Orientations 5-8 swap the axes; the original size is reported in the upright frame.
    original = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    long_side = max(rgb.shape[:2])
    if long_side > max_side:
        factor = max_side / long_side
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0))
    scale = rgb.shape[1] / original[0]
    if scale < 0.999:
        notes.append(f"downscaled from {original[0]}×{original[1]} to {rgb.shape[1]}×{rgb.shape[0]}")
    return LoadedPhoto(path=path, rgb=np.ascontiguousarray(rgb), original_size=original, scale=scale,
                       format=fmt, notes=notes)
