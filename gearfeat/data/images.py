"""Decode one image file into a standardized ``(size, size, 3)`` uint8 RGB array.

Every problem with a file's content is reported as :class:`~gearfeat._internal.errors.ImageError`
with a short human reason, so that a bad file can be skipped and listed, never crash a run.
"""

from __future__ import annotations

import io
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .._internal.errors import GearfeatError, ImageError, is_int

__all__ = ["IMAGE_EXTENSIONS", "load_image", "decode_image", "standardize", "os_error_reason"]

#: File extensions (lower case, with the dot) that are treated as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)

# Pillow formats matching IMAGE_EXTENSIONS. The format is sniffed from the content (a PNG named
# .jpg works); other formats are refused, which also keeps exotic parsers (EPS runs Ghostscript)
# away from untrusted files.
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

STANDARDIZE_VERSION = 1
"""Bump whenever :func:`standardize` changes its output: it is part of every cache fingerprint (with
Pillow's version, whose decoders and resampling it uses)."""

_MIN_SIZE = 8
_MAX_SIZE = 4096  # 48 MiB an image as uint8, more than any Keras application takes
_WHITE = (255, 255, 255)
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SUPPORTED_MODES = _ALPHA_MODES | _HIGH_BIT_MODES | {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}

# Pillow's own failures on malformed data: besides OSError (which includes
# UnidentifiedImageError), its parsers let these escape on crafted input.
_DECODE_ERRORS = (
    OSError, EOFError, ValueError, SyntaxError, struct.error,
    IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, MemoryError,
)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read an image file and return it standardized (see :func:`standardize`).

    Raises:
        ImageError: the file cannot be read or is not a usable image.
    """
    check_image_size(size)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ImageError(path, os_error_reason(exc)) from exc
    return decode_image(data, size, name=os.fspath(path))


def decode_image(data: bytes, size: int, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, GIF, BMP, WebP, TIFF) and standardize it.

    ``name`` is only used in error messages. Images whose declared size exceeds
    ``PIL.Image.MAX_IMAGE_PIXELS`` are refused before any pixel is decoded.

    Raises:
        ImageError: the data is empty, not an image, truncated or corrupt, or too large.
    """
    check_image_size(size)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise GearfeatError(f"decode_image takes the bytes of an image file, got {type(data).__name__}; "
                            "load_image reads a path")
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
        _check_pixels(image.size)  # Pillow only warns below twice its limit
        return standardize(image, size)
    except ImageError as exc:
        raise ImageError(name, exc.reason) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # warning: under -W error
        raise ImageError(name, _too_large()) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(name, _unidentified_reason(data)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(name, "truncated or corrupt image data") from exc


def standardize(image: Image.Image, size: int) -> np.ndarray:
    """Return ``image`` as a ``(size, size, 3)`` uint8 RGB array, the same way every time.

    Takes the first frame of animations, applies the EXIF orientation, composites transparency
    onto white, converts any mode (grey, palette, CMYK, 16-bit...) to 8-bit RGB, scales the
    longer side to ``size`` keeping the aspect ratio, and centres the result on a white square.
    A JPEG not loaded yet is decoded at reduced resolution (DCT scaling) when larger than
    needed: ``image`` itself is changed by this, and by seeking to its first frame.

    Raises:
        ImageError: the image mode cannot be converted to RGB (e.g. LAB).
    """
    check_image_size(size)
    if image.tell() != 0:
        image.seek(0)
    if image.mode not in _SUPPORTED_MODES:
        raise ImageError("<image>", f"unsupported image mode {image.mode}")
    if 0 in image.size:
        raise ImageError("<image>", f"image has no pixels ({image.size[0]}x{image.size[1]})")
    image.draft("RGB", _fit(image.size, size))
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_MODES:
        image = _to_8bit(image)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    target_mode = "RGBA" if has_alpha else "RGB"
    if image.mode != target_mode:
        image = image.convert(target_mode)
    width, height = _fit(image.size, size)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), _WHITE)
    canvas.paste(image, ((size - width) // 2, (size - height) // 2), image if has_alpha else None)
    return np.array(canvas)


def os_error_reason(exc: OSError, what: str = "file") -> str:
    """Short reason without the path, e.g. ``cannot read file: [Errno 13] Permission denied``."""
    detail = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
    return f"cannot read {what}: {detail}"


def check_image_size(size: int, name: str = "image size") -> int:
    """``size`` as an int if it is an integer image side from the minimum to the maximum; else a GearfeatError
    naming it as ``name`` (the parameter, such as ``image_size``). The maximum keeps a typo from asking for more
    memory than the machine has (one 100,000-pixel square is 30 GB)."""
    if not is_int(size, _MIN_SIZE) or size > _MAX_SIZE:
        raise GearfeatError(f"{name} must be an integer from {_MIN_SIZE} to {_MAX_SIZE}, got {size!r}", parameter=name)
    return int(size)


def _check_pixels(declared: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and declared[0] * declared[1] > limit:
        raise ImageError("<image>", _too_large(declared))


def _too_large(declared: tuple[int, int] | None = None) -> str:
    what = f"{declared[0]}x{declared[1]} pixels" if declared else "size"
    return (
        f"image too large: declared {what} exceeds the {Image.MAX_IMAGE_PIXELS}-pixel "
        "safety limit (decompression bomb?)"
    )


def _unidentified_reason(data: bytes) -> str:
    if _looks_like_text(data):
        return "not an image (looks like HTML/text)"
    return f"not an image in a supported format ({', '.join(_FORMATS)})"


def _looks_like_text(data: bytes) -> bool:
    head = data[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(data) == len(head) or exc.start < len(head) - 3:  # not a character cut by data[:1024]
            return False
        text = head[: exc.start].decode("utf-8")
    text = text.lstrip("\ufeff")
    return bool(text.strip()) and all(char.isprintable() or char.isspace() for char in text)


def _fit(image_size: tuple[int, int], size: int) -> tuple[int, int]:
    """Width and height with the longer side equal to ``size``, keeping the aspect ratio."""
    width, height = image_size
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_8bit(image: Image.Image) -> Image.Image:
    """Grey 16-bit, 32-bit int or float image -> 8-bit 'L', scaled by the range the data uses.

    16-bit modes map 0..65535 to 0..255. For 'I' and 'F' the range is the smallest of
    0..1 (float only), 0..255 and 0..65535 that holds the data, else 0..max.
    """
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(pixels.max())
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    elif image.mode == "F" and peak <= 1.0:
        full_scale = 1.0
    else:
        full_scale = next((r for r in (255.0, 65535.0) if peak <= r), peak)
    scaled = np.clip(pixels * (255.0 / full_scale) + 0.5, 0, 255)
    return Image.fromarray(scaled.astype(np.uint8))


def decoded_batches(n: int, load: Callable[[int], np.ndarray], *, batch_size: int, workers: int,
                    prefetch: int = 1) -> Iterator[list[tuple[int, np.ndarray | ImageError]]]:
    """Batches of ``(index, image or the ImageError it raised)`` for ``load(0) .. load(n - 1)``, in order.

    One thread pool of ``workers`` decodes image by image up to ``prefetch`` batches ahead of the consumer
    (so it never idles at a batch boundary); stopping early drops the decoding not started yet.
    """
    def guarded(i: int) -> np.ndarray | ImageError:
        try:
            return load(i)
        except ImageError as exc:
            return exc

    starts = iter(range(0, n, batch_size))
    with ThreadPoolExecutor(workers, thread_name_prefix="gearfeat-decode") as pool:
        ahead: deque[list[tuple[int, Future]]] = deque()

        def submit_next_batch() -> None:
            start = next(starts, None)
            if start is not None:
                ahead.append([(i, pool.submit(guarded, i)) for i in range(start, min(n, start + batch_size))])

        try:
            for _ in range(prefetch + 1):
                submit_next_batch()
            while ahead:
                batch = ahead.popleft()
                submit_next_batch()
                yield [(i, future.result()) for i, future in batch]
        finally:
            for batch in ahead:
                for _, future in batch:
                    future.cancel()
