"""A registry of the Keras Applications usable as frozen feature extractors (timm-style list/create)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import keras

from .._internal.errors import GearfeatError, WeightsUnavailableError, first_line
from .._internal.fileio import hash_file
from .._internal.progress import keras_downloads
from .layers import PREPROCESSORS

A = keras.applications


@dataclass(frozen=True)
class BackboneSpec:
    """What gearfeat needs to know about one Keras Application."""

    name: str
    factory: Callable[..., keras.Model]
    native_size: int
    preprocess: str  # a key of gearfeat.features.layers.PREPROCESSORS
    features: int  # width of the pooled features (at alpha 1.0 for the MobileNets)
    has_alpha: bool = False
    extra_kwargs: tuple = ()  # fixed keyword arguments, e.g. include_preprocessing


# name, keras.applications attribute, native input size, preprocessing mode, pooled feature width
_TABLE = [
    ("mobilenet", "MobileNet", 224, "tf", 1024),
    ("mobilenet_v2", "MobileNetV2", 224, "tf", 1280),
    ("mobilenet_v3_small", "MobileNetV3Small", 224, "none", 576),
    ("mobilenet_v3_large", "MobileNetV3Large", 224, "none", 960),
    ("efficientnet_b0", "EfficientNetB0", 224, "none", 1280),
    ("efficientnet_b1", "EfficientNetB1", 240, "none", 1280),
    ("efficientnet_b2", "EfficientNetB2", 260, "none", 1408),
    ("efficientnet_b3", "EfficientNetB3", 300, "none", 1536),
    ("efficientnet_b4", "EfficientNetB4", 380, "none", 1792),
    ("efficientnet_b5", "EfficientNetB5", 456, "none", 2048),
    ("efficientnet_b6", "EfficientNetB6", 528, "none", 2304),
    ("efficientnet_b7", "EfficientNetB7", 600, "none", 2560),
    ("efficientnet_v2_b0", "EfficientNetV2B0", 224, "none", 1280),
    ("efficientnet_v2_b1", "EfficientNetV2B1", 240, "none", 1280),
    ("efficientnet_v2_b2", "EfficientNetV2B2", 260, "none", 1408),
    ("efficientnet_v2_b3", "EfficientNetV2B3", 300, "none", 1536),
    ("efficientnet_v2_s", "EfficientNetV2S", 384, "none", 1280),
    ("efficientnet_v2_m", "EfficientNetV2M", 480, "none", 1280),
    ("efficientnet_v2_l", "EfficientNetV2L", 480, "none", 1280),
    ("resnet50", "ResNet50", 224, "caffe", 2048),
    ("resnet101", "ResNet101", 224, "caffe", 2048),
    ("resnet152", "ResNet152", 224, "caffe", 2048),
    ("resnet50_v2", "ResNet50V2", 224, "tf", 2048),
    ("resnet101_v2", "ResNet101V2", 224, "tf", 2048),
    ("resnet152_v2", "ResNet152V2", 224, "tf", 2048),
    ("densenet121", "DenseNet121", 224, "torch", 1024),
    ("densenet169", "DenseNet169", 224, "torch", 1664),
    ("densenet201", "DenseNet201", 224, "torch", 1920),
    ("vgg16", "VGG16", 224, "caffe", 512),
    ("vgg19", "VGG19", 224, "caffe", 512),
    ("inception_v3", "InceptionV3", 299, "tf", 2048),
    ("inception_resnet_v2", "InceptionResNetV2", 299, "tf", 1536),
    ("xception", "Xception", 299, "tf", 2048),
    ("nasnet_mobile", "NASNetMobile", 224, "tf", 1056),
    ("nasnet_large", "NASNetLarge", 331, "tf", 4032),
    ("convnext_tiny", "ConvNeXtTiny", 224, "none", 768),
    ("convnext_small", "ConvNeXtSmall", 224, "none", 768),
    ("convnext_base", "ConvNeXtBase", 224, "none", 1024),
    ("convnext_large", "ConvNeXtLarge", 224, "none", 1536),
    ("convnext_xlarge", "ConvNeXtXLarge", 224, "none", 2048),
]
_WITH_ALPHA = {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"}
# Applications whose preprocessing is built into the model only when asked (their "none" mode relies on it).
_BUILT_IN_PREPROCESSING = ("MobileNetV3", "EfficientNetV2", "ConvNeXt")

_REGISTRY: dict[str, BackboneSpec] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_backbone(name: str, factory: Callable[..., keras.Model], *, native_size: int, features: int,
                      preprocess: str = "none", has_alpha: bool = False, extra_kwargs: tuple = ()) -> BackboneSpec:
    """Add a backbone to the registry (the built-in Keras Applications are added the same way).

    ``factory`` is called like a Keras Application: ``factory(include_top=False, weights=..., input_shape=...,
    pooling=..., [alpha=...], **extra_kwargs)`` and returns a model whose output is ``features`` wide.
    ``preprocess`` is a key of :data:`gearfeat.features.layers.PREPROCESSORS`.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GearfeatError(f"backbone name {name!r} is not valid: use lower-case letters, digits and '_', "
                            "starting with a letter")
    if name in _REGISTRY:
        raise GearfeatError(f"backbone {name!r} is already registered; pick another name")
    if not callable(factory):
        raise GearfeatError(f"backbone {name!r}: the factory must be callable, got {factory!r}")
    if preprocess not in PREPROCESSORS:
        raise GearfeatError(f"backbone {name!r}: preprocess {preprocess!r} is not one of "
                            f"{', '.join(sorted(PREPROCESSORS))}")
    for field, value in (("native_size", native_size), ("features", features)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GearfeatError(f"backbone {name!r}: {field} must be a positive integer, got {value!r}")
    spec = BackboneSpec(name, factory, native_size, preprocess, features, has_alpha=has_alpha,
                        extra_kwargs=tuple(extra_kwargs))
    _REGISTRY[name] = spec
    return spec


for _name, _attr, _size, _mode, _width in _TABLE:
    register_backbone(_name, getattr(A, _attr), native_size=_size, preprocess=_mode, features=_width,
                      has_alpha=_name in _WITH_ALPHA,
                      extra_kwargs=(("include_preprocessing", True),) if _attr.startswith(_BUILT_IN_PREPROCESSING)
                      else ())


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (case-insensitive; '-' and '_' alike)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _REGISTRY:
        raise GearfeatError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    return _REGISTRY[key]


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hash_file(path)  # memoized on (path, size, mtime): weights files can be large


def weights_identity(weights: str | os.PathLike | None) -> str:
    """"imagenet", "random" (for None) or "sha256:<hex>" of a local weights file: part of the cache key."""
    if weights is None:
        return "random"
    if str(weights) == "imagenet":
        return "imagenet"
    path = Path(weights)
    if path.is_dir():
        raise GearfeatError(f"weights {path} is a folder; pass the path of the weights .h5 file in it",
                            parameter="weights")
    if not path.is_file():
        raise GearfeatError(f"weights file not found: {path} (pass 'imagenet', 'none' or the path of a .h5 file)")
    stat = path.stat()
    return "sha256:" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def parse_weights(value: str | os.PathLike | None) -> str | None:
    """Normalize a ``weights`` value: 'imagenet', None (from 'none'/'random') or a file path."""
    if value is None or str(value).lower() in ("none", "random"):
        return None
    if str(value).lower() == "imagenet":
        return "imagenet"
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise GearfeatError(f"weights must be 'imagenet', 'none' or the path of a weights .h5 file, got {value!r}",
                            parameter="weights")
    return str(value)


def create_backbone(name: str, *, weights: str | os.PathLike | None = "imagenet", input_size: int | None = None,
                    alpha: float | None = None, pooling: str = "avg") -> keras.Model:
    """Build the headless application ``name`` with global pooling, frozen (``trainable=False``).

    ``weights`` is "imagenet" (downloaded by Keras on a connected machine), None (random) or a local file.
    Random weights are seeded (Keras's global seed is reset to 0): the cache keys them as "random", so
    every process must draw the same ones.
    """
    spec = get_spec(name)
    size = input_size or spec.native_size
    kwargs = dict(spec.extra_kwargs, include_top=False, weights=weights, input_shape=(size, size, 3),
                  pooling=pooling)
    if alpha is not None:
        if not spec.has_alpha:
            raise GearfeatError(f"backbone {spec.name!r} has no width multiplier; drop alpha {alpha}",
                                parameter="alpha")
        kwargs["alpha"] = alpha
    if weights not in (None, "imagenet"):
        weights_identity(weights)  # clear error for a missing file
        kwargs["weights"] = str(weights)
    if weights is None:
        keras.utils.set_random_seed(0)
    try:
        with keras_downloads():
            model = spec.factory(**kwargs)
    except ValueError as exc:
        hint = _weights_hint(spec, weights, str(exc))
        if hint:  # the advice first: the first mention of alpha is the one the command line names by its flag
            raise GearfeatError(f"cannot build {spec.name} from {weights}: {hint}; with input {size} and alpha "
                                f"{alpha}: {first_line(exc)}", parameter="alpha") from None
        raise GearfeatError(f"cannot build {spec.name} (input {size}, alpha {alpha}, weights {weights}): "
                            f"{first_line(exc)}") from None
    except Exception as exc:  # Keras's download failure is a bare Exception
        if weights == "imagenet" and "fetch" in str(exc).lower():
            raise WeightsUnavailableError(
                f"the ImageNet download for {spec.name} failed (offline?); set weights to the path of a local "
                "weights .h5 file, or to 'none' for random initialization", parameter="weights") from None
        if weights not in (None, "imagenet"):  # e.g. not an HDF5 file (OSError from h5py)
            raise GearfeatError(f"{weights}: cannot load {spec.name} weights from this file ({first_line(exc)}); "
                                f"pass a Keras Applications weights .h5 of {spec.name}") from None
        raise
    model.trainable = False
    return model


def _weights_hint(spec: BackboneSpec, weights: str | os.PathLike | None, error: str) -> str:
    """For weights that do not fit the network built: the alpha that the Keras file's name says they are for."""
    if weights in (None, "imagenet") or "shape" not in error.lower():
        return ""
    name = Path(weights).name
    v2 = re.search(r"_(\d\.\d+)_(\d+)_no_top\.h5$", name)  # mobilenet_v2_..._0.35_224_no_top.h5
    v1 = re.fullmatch(r"mobilenet_(1_0|7_5|5_0|2_5)_(\d+)_tf_no_top\.h5", name)  # mobilenet_2_5_224_...: 0.25
    if spec.has_alpha and (v2 or v1):
        alpha = v2[1] if v2 else {"1_0": "1.0", "7_5": "0.75", "5_0": "0.5", "2_5": "0.25"}[v1[1]]
        size = (v2 or v1)[2]
        return f"pass alpha={alpha} (the file's name says alpha {alpha}, size {size})"
    return f"check alpha and the file (the weights are for another variant of {spec.name})"
