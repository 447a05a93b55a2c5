"""A generated image-folder dataset of coloured shapes, for the demo and the tests.

Each image is one filled shape of random colour, size and position on a light background.
Adding a shape is one entry in ``_DRAWERS``.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .._internal.errors import GearfeatError, is_int

# A drawer fills one shape centred at ``center`` inside the square of half-side ``radius``.
Drawer = Callable[[ImageDraw.ImageDraw, tuple[float, float], float, tuple[int, int, int], np.random.Generator], None]


def _circle(draw: ImageDraw.ImageDraw, center, radius, fill, rng) -> None:
    (x, y), r = center, radius
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _square(draw: ImageDraw.ImageDraw, center, radius, fill, rng) -> None:
    (x, y), r = center, radius
    draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, center, radius, fill, rng) -> None:
    draw.regular_polygon((*center, radius), 3, rotation=float(rng.uniform(0.0, 360.0)), fill=fill)


_DRAWERS: dict[str, Drawer] = {"circle": _circle, "square": _square, "triangle": _triangle}
SHAPES: tuple[str, ...] = tuple(_DRAWERS)

_FORMATS = {"png": "PNG", "jpg": "JPEG"}
_SUPERSAMPLE = 4  # draw large, then box-average down: anti-aliased edges without ringing
_MIN_LUMA_CONTRAST = 80.0  # of 255, between shape and background


def draw_shape(kind: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one filled ``kind`` of random colour, size and position on a light background.

    The shape spans roughly 25-70 % of the ``size`` x ``size`` RGB image and lies fully inside it.
    """
    drawer = _drawer(kind)
    _check_int("size", size, minimum=8)
    background = (255, 255, 255) if rng.random() < 0.25 else tuple(int(c) for c in rng.integers(200, 256, 3))
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    while abs(_luma(fill) - _luma(background)) < _MIN_LUMA_CONTRAST:
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    radius = rng.uniform(0.125, 0.35) * size
    center = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))

    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), background)
    drawer(
        ImageDraw.Draw(image), (center[0] * _SUPERSAMPLE, center[1] * _SUPERSAMPLE), radius * _SUPERSAMPLE, fill, rng
    )
    return image.reduce(_SUPERSAMPLE)


def make_shapes_dataset(
    root: str | os.PathLike,
    *,
    per_class: int = 100,
    size: int = 128,
    seed: int = 0,
    kinds: Sequence[str] = SHAPES,
    fmt: str = "png",
) -> Path:
    """Write ``root/<kind>/<kind>_<i:04d>.<fmt>`` for ``per_class`` images of each kind; return ``root``.

    Deterministic for a seed; each kind has its own random stream, so an image does not change
    when ``per_class`` grows or other kinds are added.
    """
    _check_int("per_class", per_class, minimum=1)
    _check_int("size", size, minimum=8)
    kinds = _check_kinds(kinds)
    if fmt not in _FORMATS:
        raise GearfeatError(f"fmt={fmt!r} is not supported; use one of {sorted(_FORMATS)}")
    root = Path(root)
    for kind in kinds:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        for i in range(per_class):
            draw_shape(kind, rng, size).save(folder / f"{kind}_{i:04d}.{fmt}", _FORMATS[fmt])
    return root


def make_shape_images(
    root: str | os.PathLike,
    n: int,
    *,
    size: int = 128,
    seed: int = 1,
    kinds: Sequence[str] = SHAPES,
) -> list[Path]:
    """Write ``n`` new images, cycling through ``kinds``, as ``root/new_<i>_<kind>.png``.

    Their random stream differs from :func:`make_shapes_dataset`'s, so they are not in its
    training set (whatever the seeds).
    """
    _check_int("n", n, minimum=1)
    _check_int("size", size, minimum=8)
    kinds = _check_kinds(kinds)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = max(2, len(str(n - 1)))
    paths = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        path = root / f"new_{i:0{width}d}_{kind}.png"
        draw_shape(kind, rng, size).save(path, "PNG")
        paths.append(path)
    return paths


def _drawer(kind: str) -> Drawer:
    """The drawing function of ``kind``."""
    try:
        return _DRAWERS[kind]
    except (KeyError, TypeError):
        raise GearfeatError(f"unknown shape kind {kind!r}; known kinds: {', '.join(_DRAWERS)}") from None


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    """``kinds`` as a list, checked to be non-empty, known and without repeats."""
    if isinstance(kinds, str):
        raise GearfeatError(f"kinds={kinds!r} is one string; pass a sequence such as ({kinds!r},)")
    kinds = list(kinds)
    if not kinds:
        raise GearfeatError(f"kinds is empty; pick some of {', '.join(_DRAWERS)}")
    for kind in kinds:
        _drawer(kind)
    if len(set(kinds)) != len(kinds):
        raise GearfeatError(f"kinds {kinds} has repeats; list each kind once")
    return kinds


def _check_int(name: str, value: int, *, minimum: int) -> None:
    if not is_int(value, minimum):
        raise GearfeatError(f"{name}={value!r} must be an integer >= {minimum}")


def _luma(rgb: tuple[int, int, int]) -> float:
    """Rec. 601 luma of an RGB colour, 0-255."""
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b
