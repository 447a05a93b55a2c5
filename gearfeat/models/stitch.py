"""Stitch backbone and head into one compiled Keras model, save it as .h5 and load it back safely."""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import keras

from .._internal.errors import GearfeatError, first_line
from .._internal.fileio import atomic_path
from .heads import compile_model

_META_KEY = "gearfeat"


def stitch(extractor: keras.Model, head: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """One compiled model: image -> upscale -> preprocess -> frozen backbone -> trained head -> probabilities."""
    outputs = head(extractor.output)
    model = keras.Model(extractor.input, outputs, name="gearfeat_classifier")
    return compile_model(model, learning_rate, for_training=False)  # saved, not trained here


def save_model(model: keras.Model, path: str | os.PathLike, class_names: list[str], **meta: Any) -> Path:
    """Save a compiled model as ``.h5`` with its class names (and ``meta``) stored inside the file."""
    path = Path(path)
    if path.suffix != ".h5":
        raise GearfeatError(f"model path must end in .h5, got {path}")
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise GearfeatError(f"class_names must be a list of strings, got {class_names!r}")
    if model.output_shape[-1] != len(class_names):
        raise GearfeatError(f"the model has {model.output_shape[-1]} outputs but {len(class_names)} class names")
    try:
        metadata = json.dumps({"class_names": list(class_names), **meta})
    except TypeError as exc:
        raise GearfeatError(f"model metadata must be JSON values: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = sum(w.nbytes for w in model.get_weights()) + (4 << 20)  # weights, the layout, and room to spare
    with atomic_path(path, needed=needed) as tmp:  # a failed save (a full disk too) leaves no model.h5 and no temporary file
        with quiet_absl():  # Keras calls .h5 "legacy"; it is the format this project promises
            model.save(tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs[_META_KEY] = metadata
    return path


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The gearfeat metadata stored in a saved model (``class_names`` and whatever was saved with it)."""
    path = _existing(path)
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(_META_KEY)
    except OSError as exc:
        raise GearfeatError(f"{path}: not a readable .h5 model file ({first_line(exc)})") from None
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise GearfeatError(f"{path}: its gearfeat metadata is not a JSON object (edited or damaged?); save the "
                            "model again with gearfeat")
    return info


def load_model(path: str | os.PathLike, *, safe_mode: bool = True, compile: bool = True) -> keras.Model:
    """Load a saved gearfeat (or any Keras ``.h5``) model with Keras's ``safe_mode`` on by default.

    A file whose ``Lambda`` layers carry Python bytecode is refused unless ``safe_mode=False`` is passed
    knowingly: loading it would run code from the file.
    """
    path = _existing(path)
    try:
        with quiet_absl():
            return keras.models.load_model(path, safe_mode=safe_mode, compile=compile)
    except ValueError as exc:
        if "lambda" in str(exc).lower() and "safe_mode" in str(exc):
            raise GearfeatError(
                f"{path}: refused to load, it contains a Lambda layer with Python bytecode that would run on "
                "load; if you trust this file, pass safe_mode=False", parameter="safe_mode=False") from None
        raise GearfeatError(f"{path}: cannot load model: {first_line(exc)}") from None
    except (OSError, KeyError, TypeError) as exc:
        raise GearfeatError(f"{path}: not a loadable Keras model file ({first_line(exc)})") from None


@contextmanager
def quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise GearfeatError(f"model file not found: {path}")
    if path.suffix.lower() == ".keras":
        raise GearfeatError(f"{path}: gearfeat reads models saved as .h5 (the format it writes), not .keras")
    return path
