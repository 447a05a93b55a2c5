"""Image augmentation: the layer registry that ``gearfeat cnn --augment`` and the cached augmented views share.

A spec is text, e.g. ``flip,rotation:0.05,zoom:0.15``: comma-separated ``name[:arg[:arg]]`` entries of one
registry (:func:`register_layer` adds an entry, :func:`list_layers` lists them, :func:`parse_layers` reads a
spec). The CNN layers of :mod:`gearfeat.models.architecture` live in the same registry, not marked ``augment``.

:class:`Augmenter` makes view ``v`` of an image from ``(seed, sha256 of its file, v)`` alone, with stateless
random draws: the view does not depend on the batch it is made in, the order of the images or the thread.
The cached views (``--augment-views K``) are these images run through the frozen backbone
(:meth:`gearfeat.features.extractor.FeatureExtractor.extract_views`).
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .._internal.errors import GearfeatError, check_seed, first_line, is_int

#: The default augmentation: left-right flips, small rotations, zooms and shifts (filled with white).
DEFAULT_AUGMENT = "flip,rotation:0.05,zoom:0.15,translation:0.1"
#: Bumped when the same spec and seed would make other views (part of the views cache's fingerprint).
VIEWS_VERSION = 1

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


def fraction(text: str) -> float:
    """A number in [0, 1) from text (ValueError otherwise): the argument type of rates and factors."""
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("must be a number in [0, 1)")
    return value


_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _flip_mode(text: str) -> str:
    if text not in _FLIP_MODES:  # Keras takes any other string and then flips nothing
        raise ValueError(f"must be one of {', '.join(_FLIP_MODES)}")
    return text


@register_layer("flip", ("mode", _flip_mode, "horizontal"), augment=True)
def _flip(mode: str) -> keras.layers.Layer:
    """Random flip: horizontal, vertical or horizontal_and_vertical."""
    return keras.layers.RandomFlip(mode)


@register_layer("rotation", ("factor", fraction), augment=True)
def _rotation(factor: float) -> keras.layers.Layer:
    """Random rotation by up to factor x 360 degrees either way."""
    return keras.layers.RandomRotation(factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("zoom", ("factor", fraction), augment=True)
def _zoom(factor: float) -> keras.layers.Layer:
    """Random zoom in or out by up to factor."""
    return keras.layers.RandomZoom(factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("translation", ("factor", fraction), augment=True)
def _translation(factor: float) -> keras.layers.Layer:
    """Random shift by up to factor of the width and height."""
    return keras.layers.RandomTranslation(factor, factor, fill_mode="constant", fill_value=_WHITE)


@register_layer("contrast", ("factor", fraction), augment=True)
def _contrast(factor: float) -> keras.layers.Layer:
    """Random contrast change by up to factor."""
    return keras.layers.RandomContrast(factor, value_range=(0, 255))


@register_layer("brightness", ("factor", fraction), augment=True)
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
    if not isinstance(spec, str):
        raise GearfeatError(f"the {what} spec must be text such as {DEFAULT_AUGMENT!r}, got {spec!r:.60}")
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


def apply_layer(kind: LayerType, args: tuple, x, spec: str):
    """``kind``'s layer built with ``args`` and called on ``x``; a misfit is a GearfeatError naming ``spec``."""
    try:
        return kind.build(*args)(x)
    except (ValueError, TypeError) as exc:
        raise GearfeatError(f"cannot add {kind.usage()} with {args} in {spec!r} to a {tuple(x.shape)} "
                            f"tensor: {first_line(exc)}") from None


@dataclass(frozen=True)
class AugmentConfig:
    """The cached augmented views: ``views`` views of every training image (0: none), made by the augmentation
    ``spec`` (the ``gearfeat cnn --augment`` vocabulary) from ``seed``."""

    views: int = 0
    spec: str = DEFAULT_AUGMENT
    seed: int = 0

    def __post_init__(self) -> None:
        if not is_int(self.views, 0):
            raise GearfeatError(f"AugmentConfig views must be an integer >= 0, got {self.views!r}",
                                parameter="AugmentConfig views")
        check_seed(self.seed, "AugmentConfig seed")
        layers = parse_layers(self.spec, augment=True)
        if self.views and not layers:
            raise GearfeatError(f"AugmentConfig views {self.views} needs augmentation layers; AugmentConfig spec is "
                                f"{self.spec!r}", parameter=("AugmentConfig views", "AugmentConfig spec"))
        # one spelling per augmentation, so that the cache file does not depend on spaces or case
        object.__setattr__(self, "spec", ",".join(
            ":".join([kind.name, *map(str, args)]) for kind, args in layers) or "none")

    def cache_attrs(self) -> dict[str, object]:
        """What the views depend on besides the extractor's settings (part of the views cache's fingerprint);
        not ``views``: raising it adds view indexes to the same file."""
        return {"augment": self.spec, "augment_seed": self.seed, "views_version": VIEWS_VERSION}

    def to_dict(self) -> dict[str, object]:
        return {"views": self.views, "spec": self.spec, "seed": self.seed}


def view_key(sha256: str, view: int) -> str:
    """The cache key (64 hex digits, as an image's sha256) of view ``view`` of the image with ``sha256``."""
    return hashlib.sha256(f"{sha256}/view{view}".encode()).hexdigest()


class _DerivedSeeds(keras.random.SeedGenerator):
    """Stateless seeds for the layers of one view, derived from its own seed: no variable, no shared state."""

    def __init__(self, seed: tf.Tensor):  # noqa: D107 - deliberately not SeedGenerator's: no state variable
        self._seed, self._drawn = seed, 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._drawn += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._drawn)


class Augmenter:
    """Makes the augmented views of standardized uint8 images; thread-safe, one traced graph per image size."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._layers = [kind.build(*args) for kind, args in parse_layers(config.spec, augment=True)]
        self._view = tf.function(self._make, autograph=False, reduce_retracing=True,
                                 input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                                  tf.TensorSpec([2], tf.int64)])

    def _make(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seeds = _DerivedSeeds(seed)
        x = tf.cast(image, tf.float32)
        for layer in self._layers:
            x = layer.transform_images(x, layer.get_random_transformation(x, training=True, seed=seeds),
                                       training=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)

    def seed_of(self, sha256: str, view: int) -> np.ndarray:
        """The two-integer stateless seed of view ``view`` of the image ``sha256``."""
        digest = hashlib.blake2b(f"{self.config.seed}/{sha256}/{view}".encode(), digest_size=16).digest()
        return np.frombuffer(digest, np.int64).copy()

    def view(self, image: np.ndarray, sha256: str, view: int) -> np.ndarray:
        """View ``view`` of ``image`` (uint8, H x W x 3), the image of the file with ``sha256``."""
        return self._view(image, self.seed_of(sha256, view)).numpy()


@functools.lru_cache(maxsize=8)
def augmenter(config: AugmentConfig) -> Augmenter:
    """The :class:`Augmenter` of ``config``, made (and its graph traced) once per process."""
    return Augmenter(config)
