"""A registry of CNN layers and architectures as text, e.g. ``conv:32,pool,conv:64,pool,dense:128``.

Each comma-separated entry is ``name[:arg[:arg]]`` from a registry (timm style: :func:`register_layer` adds
one, :func:`list_layers` lists them; it lives in :mod:`gearfeat.features.augment` with the augmentation layers,
which the cached augmented views use too). :func:`build_cnn` makes::

    image (0..255) -> augmentation layers (active only in training) -> Rescaling(1/255) -> your layers
    -> [Flatten, if still spatial] -> Dense(n_classes, softmax)

so a saved model classifies raw standardized images, like the transfer model does.
"""
from __future__ import annotations

import keras

from .._internal.errors import GearfeatError
# the registry, shared with the cached augmented views; list_layers and register_layer are this module's API too
from ..features.augment import (DEFAULT_AUGMENT, apply_layer, fraction, list_layers,  # noqa: F401
                                parse_layers, register_layer)

#: The default architecture: the challenge's conv/pool/dense start, deepened to four conv blocks with batch
#: normalization, global average pooling and dropout so that it generalizes from ~1,300 images.
DEFAULT_LAYERS = "conv:32,bn,pool,conv:64,bn,pool,conv:128,bn,pool,conv:256,bn,pool,gap,dropout:0.3"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


@register_layer("conv", ("filters", _positive_int), ("kernel", _positive_int, 3))
def _conv(filters: int, kernel: int) -> keras.layers.Layer:
    """2-D convolution, 'same' padding, ReLU."""
    return keras.layers.Conv2D(filters, kernel, padding="same", activation="relu")


@register_layer("bn", ("momentum", fraction, 0.9))
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


@register_layer("dropout", ("rate", fraction))
def _dropout(rate: float) -> keras.layers.Layer:
    """Dropout (training only)."""
    return keras.layers.Dropout(rate)


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
        x = apply_layer(kind, args, x, augment)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for kind, args in parse_layers(layers):
        x = apply_layer(kind, args, x, layers)
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_output")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="gearfeat_cnn")

