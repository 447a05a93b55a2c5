"""Tests for gearfeat.data.images: standardization and a hostile corpus of image files."""

import io
import os
import random
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gearfeat._internal.errors import GearfeatError, ImageError
from gearfeat.data.images import (IMAGE_EXTENSIONS, STANDARDIZE_VERSION, check_image_size, decode_image,
                                  decoded_batches, load_image, standardize)

SIZE = 32
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width x height`` pixels but holds (almost) no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def reason_for(data: bytes) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, SIZE, name="x.jpg")
    assert info.value.path == "x.jpg"
    return info.value.reason


def close(pixel, colour, tolerance=12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - colour) <= tolerance))


def test_extensions_are_lower_case_with_dot():
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif"} == IMAGE_EXTENSIONS


def test_image_size_check_names_the_option_and_gives_an_int():
    assert check_image_size(np.int64(32)) == 32 and type(check_image_size(np.int64(32))) is int
    with pytest.raises(GearfeatError, match=r"^image size must be an integer from 8 to 4096, got 7$"):
        check_image_size(7)
    with pytest.raises(GearfeatError, match=r"^--backbone-size must be an integer from 8 to 4096, got True$"):
        check_image_size(True, "--backbone-size")
    assert check_image_size(8) == 8 and check_image_size(4096) == 4096  # both ends are in the range
    with pytest.raises(GearfeatError, match="got 4097$"):
        check_image_size(4097)


def test_resizing_is_bicubic_as_the_cache_version_records():
    """The resampling decides every feature: changing it must come with a new STANDARDIZE_VERSION (part of
    the cache key), or caches made with the old one would be reused."""
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 160, 3), np.uint8))
    out = decode_image(encode(source, "PNG"), SIZE)
    top = int(np.argmax((out != 255).any(axis=(1, 2))))  # the first row of the picture on its white square
    height = int((out != 255).any(axis=(1, 2)).sum())

    def resized(method):
        return np.array(source.resize((SIZE, height), method, reducing_gap=3.0))

    band = out[top:top + height]
    assert np.array_equal(band, resized(Image.Resampling.BICUBIC)) and STANDARDIZE_VERSION == 1
    assert not np.array_equal(band, resized(Image.Resampling.BILINEAR))


def test_wide_image_is_scaled_to_longer_side_and_centred_on_white():
    out = decode_image(encode(Image.new("RGB", (200, 100), RED), "PNG"), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert (out[:8] == WHITE).all() and (out[24:] == WHITE).all()
    assert (out[8:24] == RED).all()
    out[0, 0] = 0  # a writable array the caller owns


def test_small_image_is_scaled_up():
    out = decode_image(encode(Image.new("RGB", (5, 10), BLUE), "PNG"), SIZE)
    assert (out[:, 8:24] == BLUE).all() and (out[:, :8] == WHITE).all() and (out[:, 24:] == WHITE).all()


def test_one_pixel_image_fills_the_square():
    out = decode_image(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), SIZE)
    assert (out == (10, 200, 30)).all()


def test_deterministic():
    data = encode(Image.effect_noise((300, 200), 60).convert("RGB"), "JPEG")
    np.testing.assert_array_equal(decode_image(data, SIZE), decode_image(data, SIZE))


def test_jpeg_decoded_at_reduced_size_keeps_geometry():
    gradient = np.tile(np.linspace(0, 255, 1024, dtype=np.uint8), (512, 1))
    data = encode(Image.fromarray(np.dstack([gradient, gradient[:, ::-1], gradient])), "JPEG", quality=95)
    full = Image.open(io.BytesIO(data))
    full.load()  # already decoded: no reduced-size decoding
    difference = np.abs(decode_image(data, 64).astype(int) - standardize(full, 64).astype(int))
    assert difference.mean() < 2


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF", "JPEG"])
def test_common_formats(fmt):
    assert close(decode_image(encode(Image.new("RGB", (16, 16), BLUE), fmt), SIZE)[16, 16], BLUE)


def test_png_named_jpeg_works(tmp_path):
    path = tmp_path / "really a png.jpeg"
    path.write_bytes(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    assert (load_image(path, SIZE) == RED).all()


def test_cmyk_jpeg():
    out = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), SIZE)
    assert close(out[16, 16], RED)


def test_16bit_grey_png_keeps_mid_grey():
    image = Image.fromarray(np.full((16, 16), 32896, np.uint16))  # 32896 = 128 * 257
    assert image.mode.startswith("I;16")
    assert (decode_image(encode(image, "PNG"), SIZE) == 128).all()


@pytest.mark.parametrize("mode, value, expected",
                         [("I", 1000, 4), ("I", 100, 100), ("F", 0.5, 128), ("F", 1.0, 255), ("F", 200.0, 200)])
def test_32bit_modes_scaled_by_the_range_they_use(mode, value, expected):
    assert (standardize(Image.new(mode, (4, 4), value), SIZE) == expected).all()


def test_grey_and_bilevel():
    assert (decode_image(encode(Image.new("L", (8, 8), 77), "PNG"), SIZE) == 77).all()
    assert (decode_image(encode(Image.new("1", (8, 8), 0), "PNG"), SIZE) == 0).all()


def test_palette_png_without_transparency():
    image = Image.new("RGB", (8, 8), BLUE).convert("P")
    assert (decode_image(encode(image, "PNG"), SIZE) == BLUE).all()


def test_palette_png_transparent_index_becomes_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half index 1 (blue), right half index 0 (red, transparent)
    out = decode_image(encode(image, "PNG", transparency=0), SIZE)
    assert (out[:, :14] == BLUE).all() and (out[:, 18:] == WHITE).all()  # edges blend in between


def test_rgb_png_with_transparent_colour_key():
    image = Image.new("RGB", (8, 8), RED)
    image.paste(BLUE, (0, 0, 4, 8))
    out = decode_image(encode(image, "PNG", transparency=RED), SIZE)
    assert (out[:, :14] == BLUE).all() and (out[:, 18:] == WHITE).all()


def test_rgba_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    image.paste((*RED, 255), (0, 0, 4, 8))
    out = decode_image(encode(image, "PNG"), SIZE)
    assert (out[:, :14] == RED).all() and (out[:, 18:] == WHITE).all()


def test_half_transparent_black_becomes_grey():
    out = decode_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG"), SIZE)
    assert close(out, (127, 127, 127), tolerance=1)


def test_la_grey_with_alpha():
    image = Image.new("LA", (8, 8), (0, 0))
    image.paste((50, 255), (0, 0, 8, 4))
    out = decode_image(encode(image, "PNG"), SIZE)
    assert (out[:8] == 50).all() and (out[24:] == WHITE).all()  # bicubic rings near the edge


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (0, 10, 40, 20))  # red top, blue bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    out = decode_image(encode(stored, "JPEG", exif=exif, quality=95), SIZE)
    # Displayed 20 wide, 40 tall: portrait with white margins; the red top is now on the right.
    assert (out[:, :7] == WHITE).all() and (out[:, 25:] == WHITE).all()
    assert close(out[16, 11], BLUE) and close(out[16, 20], RED)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert (decode_image(data, SIZE) == RED).all()
    image = Image.open(io.BytesIO(data))
    image.seek(1)
    assert (standardize(image, SIZE) == RED).all()


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageError, match="empty file") as info:
        load_image(path, SIZE)
    assert info.value.path == str(path) and info.value.reason == "empty file (0 bytes)"


def test_truncated_jpeg():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert reason_for(data[: len(data) // 2]) == "truncated or corrupt image data"


def test_corrupt_png_data():
    data = bytearray(encode(Image.effect_noise((64, 64), 50), "PNG"))
    data[60:80] = bytes(20)
    assert reason_for(bytes(data)) == "truncated or corrupt image data"


@pytest.mark.parametrize("text", [
    "<!DOCTYPE html>\n<html><body>404 Not Found</body></html>",
    "\ufeff<html>x" + "é" * 600,  # a BOM, and a two-byte character cut by the 1024-byte sniff
])
def test_html_named_jpg(text):
    assert reason_for(text.encode()) == "not an image (looks like HTML/text)"


def test_binary_junk_and_unsupported_formats():
    assert reason_for(os.urandom(2000)).startswith("not an image in a supported format (JPEG")
    assert reason_for(b"\xaa\xd8}").startswith("not an image in a supported format")
    ico = encode(Image.new("RGB", (8, 8)), "ICO")
    assert reason_for(ico).startswith("not an image in a supported format")


def test_decompression_bomb_refused_from_declared_size():
    assert reason_for(png_header(100_000, 100_000)) == (
        f"image too large: declared size exceeds the {Image.MAX_IMAGE_PIXELS}-pixel safety limit "
        "(decompression bomb?)")


def test_an_image_of_exactly_the_pixel_limit_is_allowed(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    image = Image.new("RGB", (40, 40), RED)
    assert (decode_image(encode(image, "PNG"), SIZE) == RED).all()


def test_bomb_between_pillow_warning_and_error_is_refused_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = png_header(40, 40)  # 1600 pixels: Pillow would only warn; no pixel data to decode
    expected = ("image too large: declared 40x40 pixels exceeds the 1000-pixel safety limit "
                "(decompression bomb?)")
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own (the CLI hides it: the skip line says it)
        assert reason_for(data) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reason_for(data).startswith("image too large")


def test_unreadable_files(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError) as info:
        load_image(loop, SIZE)
    assert info.value.reason == "cannot read file: [Errno 40] Too many levels of symbolic links"
    with pytest.raises(ImageError, match=r"cannot read file: \[Errno 2\] No such file or directory"):
        load_image(tmp_path / "missing.jpg", SIZE)


def test_unsupported_mode():
    with pytest.raises(ImageError, match="unsupported image mode LAB"):
        standardize(Image.new("LAB", (4, 4)), SIZE)


@pytest.mark.parametrize("size", [7, 0, -32, 32.0, "32", True, None])
def test_bad_size_is_named(size):
    with pytest.raises(GearfeatError, match=re.escape(f"got {size!r}")):
        decode_image(b"anything", size)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own notes on damaged TIFF tags
def test_mutated_files_only_ever_raise_image_error():
    rng = random.Random(0)
    seeds = [encode(Image.effect_noise((24, 16), 60).convert(mode), fmt)
             for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")]]
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i:i + 1] = bytes([rng.randrange(256)]) if rng.random() < 0.8 else b""
        try:
            assert decode_image(bytes(data), SIZE).shape == (SIZE, SIZE, 3)
        except ImageError as exc:
            assert exc.reason


@pytest.mark.parametrize("data", ["photo.jpg", Path("photo.jpg"), 3, None])
def test_decode_image_names_a_wrong_argument_type_not_a_corrupt_image(data):
    with pytest.raises(GearfeatError, match=f"^decode_image takes the bytes of an image file, got "
                                            f"{type(data).__name__}; load_image reads a path$"):
        decode_image(data, 32)


def test_decoded_batches_keep_order_and_hand_back_image_errors():
    def load(i):
        if i == 3:
            raise ImageError(f"img{i}.png", "not an image")
        return np.full((2, 2, 3), i, np.uint8)

    batches = list(decoded_batches(7, load, batch_size=3, workers=2, prefetch=1))
    assert [[i for i, _ in batch] for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    bad = batches[1][0][1]
    assert isinstance(bad, ImageError) and bad.reason == "not an image"
    assert all(result[0, 0, 0] == i for batch in batches for i, result in batch if i != 3)
