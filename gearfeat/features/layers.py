"""Registered, serializable functions for the `Lambda` layers of gearfeat models.

Saved models refer to these by name (package ``gearfeat``) and their arguments, never by Python
bytecode, so they load with Keras's default ``safe_mode=True`` once :mod:`gearfeat` is imported.
Preprocessing lives here, not in ``keras.applications.*.preprocess_input``: calling that on a symbolic
tensor adds TF-op layers that an ``.h5`` file cannot load back.
"""
from __future__ import annotations

import keras
from keras import ops

PREPROCESSING_VERSION = 1
"""Bump whenever a function below changes its output: it is part of every cache fingerprint."""

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _tf_mode(x):
    return x / 127.5 - 1.0


def _caffe_mode(x):
    return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=x.dtype)


def _torch_mode(x):
    mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
    std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
    return (x / 255.0 - mean) / std


def _identity(x):
    return x


PREPROCESSORS = {"tf": _tf_mode, "caffe": _caffe_mode, "torch": _torch_mode, "none": _identity}
"""The ``preprocess_input`` modes of keras.applications; "none" where the model rescales itself."""


@keras.saving.register_keras_serializable(package="gearfeat")
def resize_images(images, size):
    """Bilinearly resize a batch of images to ``size`` x ``size`` (the backbone's input size)."""
    return ops.image.resize(images, (size, size), interpolation="bilinear")


@keras.saving.register_keras_serializable(package="gearfeat")
def preprocess_images(images, mode):
    """Apply a keras.applications preprocessing mode ("tf", "caffe", "torch" or "none") to 0..255 RGB."""
    return PREPROCESSORS[mode](ops.cast(images, "float32"))
