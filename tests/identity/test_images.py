"""Photo loading: every format, orientation, colour mode and size people really have; bad files
get an error naming the file and the problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.identity import PhotoError, load_photo


@pytest.fixture(scope="module")
def face_rgb(photos_dir) -> np.ndarray:
    return np.asarray(Image.open(photos_dir / "grace_hopper.jpg").convert("RGB"))  # 512×600


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"),
                                        ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_formats_load_as_uint8_rgb(tmp_path, face_rgb, fmt, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(face_rgb).save(path, format=fmt)
    photo = load_photo(path)
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == face_rgb.shape
    assert photo.format == fmt
    # Lossy formats differ a little; the image is the same.
    assert np.abs(photo.rgb.astype(int) - face_rgb).mean() < 6


@pytest.mark.parametrize("orientation,expected", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_is_applied(tmp_path, orientation, expected):
    rng = np.random.default_rng(0)
    stored = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    stored[:10, :10] = 255  # a marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    photo = load_photo(path)
    assert np.array_equal(photo.rgb, expected(stored))
    assert photo.original_size == (photo.rgb.shape[1], photo.rgb.shape[0])
    assert (orientation != 1) == any("EXIF orientation" in n for n in photo.notes)


def test_colour_modes(tmp_path, face_rgb):
    gray = Image.fromarray(face_rgb).convert("L")
    cases = {
        "gray.png": gray,
        "rgba.png": Image.fromarray(face_rgb).convert("RGBA"),
        "palette.png": Image.fromarray(face_rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "cmyk.jpg": Image.fromarray(face_rgb).convert("CMYK"),
        "cmyk.tif": Image.fromarray(face_rgb).convert("CMYK"),
        "bilevel.png": gray.convert("1"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        photo = load_photo(tmp_path / name)
        assert photo.rgb.shape == face_rgb.shape and photo.rgb.dtype == np.uint8, name
        reference = np.asarray(gray.convert("RGB"), dtype=float) if name in ("gray.png", "bilevel.png") else face_rgb
        tolerance = 70 if name == "bilevel.png" else 12
        assert np.abs(photo.rgb.astype(float) - reference).mean() < tolerance, name


def test_sixteen_bit_gray_keeps_its_range(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    photo = load_photo(tmp_path / "g16.png")
    assert photo.rgb.shape == (64, 64, 3)
    assert photo.rgb.min() == 0 and photo.rgb.max() == 255  # scaled, not clipped to white
    assert np.allclose(photo.rgb[..., 0], np.rint(ramp / 257.0), atol=1)
    assert any("16-bit" in n for n in photo.notes)


def test_sixteen_bit_rgb_tiff(tmp_path):
    import tifffile

    values = (np.linspace(0, 65535, 32 * 32 * 3).reshape(32, 32, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", values)
    photo = load_photo(tmp_path / "rgb16.tif")
    assert photo.rgb.shape == (32, 32, 3)
    assert np.abs(photo.rgb.astype(int) - values // 256).max() <= 1


def test_transparency_composited_over_white(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:10, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    rgb = load_photo(tmp_path / "cutout.png").rgb
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[-1, -1]) == (255, 255, 255)


def test_very_large_jpeg_is_downscaled_at_decode(tmp_path):
    big = Image.new("RGB", (9000, 6000), (120, 90, 60))
    big.save(tmp_path / "big.jpg", quality=70)
    del big
    photo = load_photo(tmp_path / "big.jpg", max_side=2048)
    assert photo.rgb.shape == (1365, 2048, 3)
    assert photo.original_size == (9000, 6000) and photo.scale == pytest.approx(2048 / 9000, rel=1e-3)
    assert any("downscaled from 9000×6000" in n for n in photo.notes)


def test_huge_non_jpeg_is_refused_before_decoding(tmp_path, monkeypatch):
    from engine.identity import images

    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 1000)
    Image.new("RGB", (50, 50)).save(tmp_path / "huge.png")
    with pytest.raises(PhotoError) as err:
        load_photo(tmp_path / "huge.png")
    assert err.value.code == "too_large" and "huge.png" in str(err.value) and "megapixels" in str(err.value)


def test_tiny_image_loads(tmp_path):
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "tiny.png")
    photo = load_photo(tmp_path / "tiny.png")
    assert photo.rgb.shape == (2, 3, 3) and tuple(photo.rgb[0, 0]) == (1, 2, 3)


def test_unicode_and_spaces_in_path(tmp_path, face_rgb):
    folder = tmp_path / "Фото für Zoë 写真"
    folder.mkdir()
    path = folder / "my photo ü 1.jpg"
    Image.fromarray(face_rgb).save(path)
    assert load_photo(path).rgb.shape == face_rgb.shape


def _truncated_jpeg(face_rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face_rgb).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _corrupt_png(face_rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face_rgb).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 4: idat + 400] = bytes(396)  # zero the compressed stream: zlib fails
    return bytes(data)


BAD_INPUTS = {
    # name: (bytes or None for "do not create", expected code, words expected in the message)
    "missing.jpg": (None, "missing", "not found"),
    "empty.jpg": (b"", "empty", "0 bytes"),
    "notes.jpg": (b"these are my notes, not a photo\n" * 20, "not_image", "not an image"),
    "truncated.jpg": ("truncated", "truncated", "truncated"),
    "corrupt.png": ("corrupt", "corrupt", "corrupt"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_files_name_the_file_and_the_problem(tmp_path, face_rgb, name):
    content, code, words = BAD_INPUTS[name]
    path = tmp_path / name
    if content == "truncated":
        content = _truncated_jpeg(face_rgb)
    elif content == "corrupt":
        content = _corrupt_png(face_rgb)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PhotoError) as err:
        load_photo(path)
    assert err.value.code == code
    assert name in str(err.value) and words in str(err.value)


def test_folder_is_not_a_photo(tmp_path):
    (tmp_path / "album").mkdir()
    with pytest.raises(PhotoError) as err:
        load_photo(tmp_path / "album")
    assert err.value.code == "not_a_file" and "album" in str(err.value)
