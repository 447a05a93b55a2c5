"""A registry of CNN layers and architectures as text, e.g. ``conv:32,pool,conv:64,pool,dense:128``.

Each comma-separated entry is ``name[:arg[:arg]]`` from a registry (timm style: :func:`register_layer` adds
one, :func:`list_layers` lists them). :func:`build_cnn` makes::

    image (0..255) -> augmentation layers (active only in training) -> Rescaling(1/255) -> your layers
    -> [Flatten, if still spatial] -> Dense(n_classes, softmax)

so a saved model classifies raw standardized images, like the transfer model does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from .._internal.errors import GearfeatError, first_line

#: The default architecture: the challenge's conv/pool/dense start, deepened to four conv blocks with batch
#: normalization, global average pooling and dropout so that it generalizes from ~1,300 images.
DEFAULT_LAYERS = "conv:32,bn,pool,conv:64,bn,pool,conv:128,bn,pool,conv:256,bn,pool,gap,dropout:0.3"
#: The default augmentation: left-right flips, small rotations, zooms and shifts (filled with white).
DEFAULT_AUGMENT = "flip,rotation:0.05,zoom:0.15,translation:0.1"

_WHITE = 255.0  # fill of pixels brought in by rotations, zooms and shifts: the background of standardize()


@dataclass(frozen=True)
class LayerType:
    """One entry of the layer registry: its builder and the types of its ``:``-separated arguments."""

    name: str
    build: Callable[..., keras.layers.Layer]
    params: tuple[tuple[str, Callable[[str], Any], Any], ...]  #: (name, converter, default or _REQUIRED)
    augment: bool  #: an augmentation layer (random, active only in training)
    help: str

    def usage(self) -> str:
        args = "".join(f":{n}" if d is _REQUIRED else f"[:{n}]" for n, _, d in self.params)
        return f"{self.name}{args}"


_REQUIRED = object()
_LAYERS: dict[str, LayerType] = {}


def register_layer(name: str, *params: tuple, augment: bool = False):
    """Decorator adding a layer builder to the registry; ``params`` are ``(name, converter[, default])``."""
    def add(build: Callable[..., keras.layers.Layer]) -> Callable[..., keras.layers.Layer]:
        specs = tuple((p[0], p[1], p[2] if len(p) > 2 else _REQUIRED) for p in params)
        _LAYERS[name] = LayerType(name, build, specs, augment, (build.__doc__ or "").strip())
        return build
    return add


def list_layers(*, augment: bool | None = None) -> list[LayerType]:
    """The registered layer types (only augmentation ones, or only the others, when ``augment`` is given)."""
    return [t for t in _LAYERS.values() if augment is None or t.augment == augment]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("must be a number in [0, 1)")
    return value


_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _flip_mode(text: str) -> str:
    if text not in _FLIP_MODES:  # Keras takes any other string and then flips nothing
        raise ValueError(f"must be one of {', '.join(_FLIP_MODES)}")
    return text


@register_layer("conv", ("filters", _positive_int), ("kernel", _positive_int, 3))
def _conv(filters: int, kernel: int) -> keras.layers.Layer:
    """2-D convolution, 'same' padding, ReLU."""
    return keras.layers.Conv2D(filters, kernel, padding="same", activation="relu")


@register_layer("bn", ("momentum", _fraction, 0.9))
def _batch_norm(momentum: float) -> keras.layers.Layer:
    """Batch normalization; its moving statistics use momentum 0.9 (Keras: 0.99) to keep up on small data."""
    return keras.layers.BatchNormalization(momentum=momentum)


@register_layer("pool", ("size", _positive_int, 2))
def _max_pool(size: int) -> keras.layers.Layer:
    """Max pooling (stride = size)."""
    return keras.layers.MaxPooling2D(size)


@register_layer("avgpool", ("size", _positive_int, 2))
def _average_pool(size: int) -> keras.layers.Layer:
    """Average pooling (stride = size)."""
    return keras.layers.AveragePooling2D(size)


@register_layer("gap")
def _global_average_pool() -> keras.layers.Layer:
    """Global average pooling: one value per channel."""
    return keras.layers.GlobalAveragePooling2D()


@register_layer("flatten")
def _flatten() -> keras.layers.Layer:
    """Flatten to a vector."""
    return keras.layers.Flatten()


@register_layer("dense", ("units", _positive_int))
def _dense(units: int) -> keras.layers.Layer:
    """Fully connected layer, ReLU."""
    return keras.layers.Dense(units, activation="relu")


@register_layer("dropout", ("rate", _fraction))
def _dropout(rate: float) -> keras.layers.Layer:
    """Dropout (training only)."""
    return keras.layers.Dropout(rate)


@register_layer("flip", ("mode", _flip_mode, "horizontal"), augment=True)
def _flip(mode: str) -> keras.layers.Layer:
    """Random flip: horizontal, vertical or horizontal_and_vertical."""
    return keras.layers.RandomFlip(mode)


@register_layer("rotation", ("factor", _fraction), augment=True)
def _rotation(factor: float) -> keras.layers.Layer:
    """Random rotation by up to factor x 360 degrees either way."""
    return keras.layers.RandomRotation(factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("zoom", ("factor", _fraction), augment=True)
def _zoom(factor: float) -> keras.layers.Layer:
    """Random zoom in or out by up to factor."""
    return keras.layers.RandomZoom(factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("translation", ("factor", _fraction), augment=True)
def _translation(factor: float) -> keras.layers.Layer:
    """Random shift by up to factor of the width and height."""
    return keras.layers.RandomTranslation(factor, factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("contrast", ("factor", _fraction), augment=True)
def _contrast(factor: float) -> keras.layers.Layer:
    """Random contrast change by up to factor."""
    return keras.layers.RandomContrast(factor, value_range=(0, 255))


@register_layer("brightness", ("factor", _fraction), augment=True)
def _brightness(factor: float) -> keras.layers.Layer:
    """Random brightness change by up to factor of the range."""
    return keras.layers.RandomBrightness(factor, value_range=(0, 255))


def parse_layers(spec: str, *, augment: bool = False) -> list[tuple[LayerType, tuple]]:
    """Parse ``"conv:32,pool,..."`` into registry entries and converted arguments (``""``/``"none"``: none).

    ``augment`` selects which registry part is allowed: augmentation layers, or the others.

    Raises:
        GearfeatError: an unknown layer, a layer of the other part, or a missing/extra/invalid argument.
    """
    what = "augmentation" if augment else "layers"
    if spec.strip().lower() in ("", "none"):
        return []
    parsed = []
    for token in (t.strip() for t in spec.split(",")):
        name, *args = token.split(":")
        kind = _LAYERS.get(name.strip().lower())
        if kind is None or kind.augment != augment:
            known = ", ".join(t.usage() for t in list_layers(augment=augment))
            raise GearfeatError(f"unknown {what} entry {token!r} in {spec!r}; known: {known}")
        if len(args) > len(kind.params) or any(d is _REQUIRED for _, _, d in kind.params[len(args):]):
            raise GearfeatError(f"{what} entry {token!r}: expected {kind.usage()}")
        values = []
        for (param, convert, _), text in zip(kind.params, args):
            try:
                values.append(convert(text.strip()))
            except ValueError as exc:
                raise GearfeatError(f"{what} entry {token!r}: bad {param} {text!r} ({exc})") from None
        values += [default for _, _, default in kind.params[len(args):]]
        parsed.append((kind, tuple(values)))
    return parsed


def build_cnn(n_classes: int, image_size: int = 128, layers: str = DEFAULT_LAYERS,
              augment: str = DEFAULT_AUGMENT) -> keras.Model:
    """The uncompiled CNN for standardized ``image_size`` images with pixels 0..255 (see the module doc).

    Raises:
        GearfeatError: a bad architecture or augmentation string, or layers that do not fit together.
    """
    if n_classes < 2:
        raise GearfeatError(f"need at least 2 classes, got {n_classes}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for kind, args in parse_layers(augment, augment=True):
        x = _apply(kind, args, x, augment)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for kind, args in parse_layers(layers):
        x = _apply(kind, args, x, layers)
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_output")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="gearfeat_cnn")


def _apply(kind: LayerType, args: tuple, x, spec: str):
    try:
        return kind.build(*args)(x)
    except (ValueError, TypeError) as exc:
        raise GearfeatError(f"cannot add {kind.usage()} with {args} in {spec!r} to a {tuple(x.shape)} "
                            f"tensor: {first_line(exc)}") from None
