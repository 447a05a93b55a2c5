"""Export a gearfeat ``.h5`` model for deployment (SavedModel, TFLite, native ``.keras``), each export checked
against the ``.h5`` before it is kept, and the runners that classify standardized uint8 images with any of them.

Every export takes standardized images: ``(N, size, size, 3)`` RGB, 0-255 (uint8 for SavedModel and TFLite,
whose ``serve`` signature casts), as :func:`gearfeat.data.images.standardize` makes them. The class names are
stored beside it: ``gearfeat.json`` in a SavedModel folder, ``NAME.json`` next to a ``.tflite`` or ``.keras``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np

from .._internal.errors import GearfeatError, first_line
from .._internal.fileio import write_json_atomic
from .stitch import load_model, model_info, quiet_absl

logger = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite", "keras")
QUANTIZATIONS = ("float16", "dynamic")
TOLERANCE = 1e-4
PARITY_IMAGES = 32
SIGNATURE, INPUT = "serve", "images"


def metadata_path(path: str | os.PathLike) -> Path:
    """Where an export's class names and check figures are: inside a SavedModel folder, else ``NAME.json``."""
    path = Path(path)
    return path / "gearfeat.json" if path.suffix not in (".tflite", ".keras") else path.with_name(path.name + ".json")


class ModelRunner(ABC):
    """A loaded classifier of one format: standardized images (N, size, size, 3) -> probabilities (N, classes)."""

    suffix: ClassVar[str]

    def __init__(self, image_size: int, n_classes: int, class_names: list[str] | None):
        self.image_size, self.n_classes, self.class_names = image_size, n_classes, class_names

    @classmethod
    def matches(cls, path: Path) -> bool:
        return path.suffix.lower() == cls.suffix and path.is_file()

    @classmethod
    @abstractmethod
    def open(cls, path: Path, *, safe_mode: bool = True) -> ModelRunner:
        """Load ``path``."""

    @abstractmethod
    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities of ``images`` (0-255 RGB, any numeric dtype)."""


def _sidecar_names(path: Path) -> list[str] | None:
    try:
        return json.loads(metadata_path(path).read_text())["class_names"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class KerasRunner(ModelRunner):
    """A Keras model (``.h5`` with the class names inside)."""

    suffix = ".h5"

    def __init__(self, model: keras.Model, class_names: list[str] | None = None):
        self.model = model
        super().__init__(image_size_of(model), int(model.output_shape[-1]), class_names)

    @classmethod
    def open(cls, path: Path, *, safe_mode: bool = True) -> KerasRunner:
        names = model_info(path).get("class_names")
        model = load_model(path, safe_mode=safe_mode, compile=False)
        try:
            return cls(model, names)
        except GearfeatError as exc:
            raise GearfeatError(f"{path}: {exc}") from None

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return self.model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)


class KerasFileRunner(KerasRunner):
    """A native ``.keras`` file, loaded in safe mode (gearfeat's Lambda functions are registered)."""

    suffix = ".keras"

    @classmethod
    def open(cls, path: Path, *, safe_mode: bool = True) -> KerasFileRunner:
        try:
            with quiet_absl():
                model = keras.models.load_model(path, safe_mode=safe_mode, compile=False)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            raise GearfeatError(f"{path}: not a loadable .keras model ({first_line(exc)})") from None
        return cls(model, _sidecar_names(path))


class SavedModelRunner(ModelRunner):
    """A SavedModel folder, through its ``serve`` signature."""

    suffix = ""

    @classmethod
    def matches(cls, path: Path) -> bool:
        return (path / "saved_model.pb").is_file()

    @classmethod
    def open(cls, path: Path, *, safe_mode: bool = True) -> SavedModelRunner:
        import tensorflow as tf
        try:
            fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        except (KeyError, ValueError, OSError, tf.errors.OpError) as exc:
            raise GearfeatError(f"{path}: not a SavedModel with a '{SIGNATURE}' signature ({first_line(exc)})") \
                from None
        spec = fn.structured_input_signature[1][INPUT]
        [output] = fn.structured_outputs.values()
        runner = cls(int(spec.shape[1]), int(output.shape[-1]), _sidecar_names(path))
        runner.fn = fn
        return runner

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        import tensorflow as tf
        images = np.asarray(images).astype(np.uint8)
        return np.concatenate([next(iter(self.fn(**{INPUT: tf.constant(images[i:i + batch_size])}).values())).numpy()
                               for i in range(0, len(images), batch_size)])


class TFLiteRunner(ModelRunner):
    """A ``.tflite`` file, through the TFLite interpreter's ``serve`` signature."""

    suffix = ".tflite"

    @classmethod
    def open(cls, path: Path, *, safe_mode: bool = True) -> TFLiteRunner:
        import tensorflow as tf
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the interpreter's deprecation notice: it still ships with TF
                interpreter = tf.lite.Interpreter(model_path=str(path))
            run = interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as exc:
            raise GearfeatError(f"{path}: not a TFLite model with a '{SIGNATURE}' signature ({first_line(exc)})") \
                from None
        shape = interpreter.get_input_details()[0]["shape_signature"]
        runner = cls(int(shape[1]), int(interpreter.get_output_details()[0]["shape"][-1]), _sidecar_names(path))
        runner.run = run
        return runner

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        images = np.asarray(images).astype(np.uint8)
        return np.concatenate([next(iter(self.run(**{INPUT: images[i:i + batch_size]}).values()))
                               for i in range(0, len(images), batch_size)])


RUNNERS: dict[str, type[ModelRunner]] = {"h5": KerasRunner, "keras": KerasFileRunner,
                                         "savedmodel": SavedModelRunner, "tflite": TFLiteRunner}


def open_model(path: str | os.PathLike, *, safe_mode: bool = True) -> ModelRunner:
    """The runner of ``path``: a ``.h5``, ``.keras`` or ``.tflite`` file, a SavedModel folder, or a run folder
    (its ``model.h5``)."""
    path = Path(path)
    if path.is_dir() and not SavedModelRunner.matches(path):
        path = path / "model.h5"
    for runner in RUNNERS.values():
        if runner.matches(path):
            return runner.open(path, safe_mode=safe_mode)
    if not path.exists():
        raise GearfeatError(f"model file not found: {path}")
    raise GearfeatError(f"{path}: not a model gearfeat reads (a .h5, .keras or .tflite file, a SavedModel folder "
                        "or a run folder)")


def image_size_of(model: keras.Model) -> int:
    """The side of the square RGB images ``model`` classifies; a GearfeatError for other models."""
    inputs, outputs = model.input_shape, model.output_shape
    if not (isinstance(inputs, tuple) and len(inputs) == 4 and inputs[3] == 3 and inputs[1] is not None
            and inputs[1] == inputs[2]):
        raise GearfeatError(f"the model takes input {inputs}; gearfeat predicts with models that take square "
                            "RGB images of a fixed size, (None, size, size, 3), as gearfeat saves them")
    if not (isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], int)):
        raise GearfeatError(f"the model gives output {outputs}; gearfeat predicts with models that give one "
                            "vector of class probabilities, (None, classes)")
    return int(inputs[1])


# ------------------------------------------------------------------------------------------------ writers
def _write_savedmodel(model: keras.Model, path: Path, quantize: str | None = None) -> None:
    import tensorflow as tf
    size = image_size_of(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=lambda images: model(tf.cast(images, tf.float32), training=False),
                         input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT)])
    with quiet_absl():
        archive.write_out(str(path), verbose=False)


def _write_tflite(model: keras.Model, path: Path, quantize: str | None = None) -> None:
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as tmp:
        _write_savedmodel(model, Path(tmp) / "sm")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"), signature_keys=[SIGNATURE])
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        path.write_bytes(converter.convert())


def _write_keras(model: keras.Model, path: Path, quantize: str | None = None) -> None:
    model.save(path)


WRITERS = {"savedmodel": (_write_savedmodel, ""), "tflite": (_write_tflite, ".tflite"),
           "keras": (_write_keras, ".keras")}


def export(source: str | os.PathLike, out: str | os.PathLike, *, format: str,
           quantize: str | None = None) -> dict[str, Any]:
    """Export ``source`` (a run folder or a ``.h5``) as ``format`` to ``out``, kept only when its probabilities
    equal the ``.h5``'s within 1e-4 on a sample of the run's test images (generated images for a bare ``.h5``);
    a quantized TFLite is kept with its deviation and test accuracy reported. Returns the record written beside
    it."""
    if format not in WRITERS:
        raise GearfeatError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if quantize is not None and (format != "tflite" or quantize not in QUANTIZATIONS):
        raise GearfeatError(f"quantize {quantize} is not available for {format}: it takes "
                            f"{' or '.join(QUANTIZATIONS)}, with format tflite", parameter=("quantize", "format"))
    write, suffix = WRITERS[format]
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise GearfeatError(f"{out}: a {format} export's path must end in {suffix!r}" if suffix else
                            f"{out}: a SavedModel is a folder; pass a path without .tflite/.keras/.h5")
    for taken in (out, metadata_path(out)):
        if taken.exists():
            raise GearfeatError(f"out {out}: {taken} exists; remove it or pass another path", parameter="out")
    source = Path(source)
    if not source.exists():
        raise GearfeatError(f"not found: {source}; pass a gearfeat run folder or its model.h5")
    h5 = source / "model.h5" if source.is_dir() else source
    if source.is_dir() and not h5.is_file():
        raise GearfeatError(f"{source} is not a gearfeat run folder (no model.h5); pass a folder that a gearfeat "
                            "run wrote")
    if h5.suffix.lower() != ".h5":
        raise GearfeatError(f"{source}: not a .h5 model; export takes a gearfeat run folder or its model.h5")
    reference = KerasRunner.open(h5)
    names = reference.class_names or [str(i) for i in range(reference.n_classes)]
    images, labels, where = _check_images(h5.parent, reference.image_size)
    expected = reference(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{suffix}")
    record = {"format": format, "quantize": quantize, "source": str(h5.resolve()), "class_names": names,
              "image_size": reference.image_size, "input": "standardized RGB images (N, size, size, 3), 0-255",
              "check_images": f"{len(images)} {where}"}
    try:
        write(reference.model, tmp, quantize)
        write_json_atomic(metadata_path(tmp), record)
        got = RUNNERS[format].open(tmp)(images)
        record["max_deviation"] = float(np.abs(got - expected).max())
        if labels is not None:
            record["test_accuracy"] = float(np.mean(got.argmax(1) == labels))
            record["h5_test_accuracy"] = float(np.mean(expected.argmax(1) == labels))
        if quantize is None and not record["max_deviation"] <= TOLERANCE:
            raise GearfeatError(f"export refused: its probabilities differ from {h5}'s by up to "
                                f"{record['max_deviation']:.2g} on {record['check_images']} (tolerance {TOLERANCE})")
        write_json_atomic(metadata_path(tmp), record)
        os.replace(metadata_path(tmp), metadata_path(out)) if suffix else None
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.unlink(missing_ok=True) if not tmp.is_dir() else None
        metadata_path(tmp).unlink(missing_ok=True) if suffix else None
    accuracy = (f"; test accuracy {record['test_accuracy']:.4f} (model.h5: {record['h5_test_accuracy']:.4f})"
                if "test_accuracy" in record else "")
    logger.info(f"wrote {out}: max deviation from model.h5 {record['max_deviation']:.2g} on {record['check_images']}"
                + (f" ({quantize}-quantized, kept regardless)" if quantize else "") + accuracy)
    return record


def _check_images(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The run's test images (all of them, with their labels; from its label file when it had one) when ``folder``
    is a run whose data is at hand, else PARITY_IMAGES generated images without labels."""
    from ..data.dataset import scan_dataset, split_dataset
    from ..data.images import load_image
    from ..data.labels import LabelFile
    from ..outputs.runs import RunRecord
    try:
        record = RunRecord.load(folder)
        recorded = record.labels  # a run trained from a label file is checked on the same rows
        dataset = scan_dataset(record.data_dir, labels=LabelFile(**recorded) if recorded else None)
        split = {k: record.split[k] for k in ("val_fraction", "test_fraction", "seed")}
        test = split_dataset(dataset, **split)["test"]
        if dataset.class_names != record.class_names:
            raise GearfeatError("the data folder's classes changed")
        images = np.stack([load_image(dataset.records[i].path, size) for i in test])
        return images, dataset.labels[test], "test images of the run"
    except (OSError, ValueError, KeyError, TypeError, GearfeatError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (PARITY_IMAGES, size, size, 3), dtype=np.uint8), None, "generated images"
