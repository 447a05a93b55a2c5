"""Classify image files with a saved model, standardizing each exactly as training did."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from .._internal.errors import GearfeatError, ImageError, InvalidArgumentError, is_int
from ..data.dataset import is_hidden
from ..data.images import IMAGE_EXTENSIONS, load_image
from ..features.extractor import ExtractorConfig, FeatureExtractor
from ..models.export import KerasRunner, ModelRunner, open_model
from ..outputs.plots import plot_predictions, png_path
from ..outputs.runs import RunRecord


@dataclass
class Prediction:
    """One image's prediction: the most probable class and its probability, and every class's probability in
    the model's output order; ``label`` is None and ``error`` says why when the image was unusable."""

    path: str
    label: str | None
    confidence: float | None
    error: str | None = None
    probabilities: dict[str, float] | None = field(default=None, repr=False)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities, most probable first (none for an error)."""
        if not is_int(k, 1):
            raise InvalidArgumentError(f"k must be an integer >= 1, got {k!r}")
        ranked = sorted((self.probabilities or {}).items(), key=lambda item: -item[1])
        return ranked[:k]

    def to_dict(self, top_k: int = 1) -> dict:
        """``path``, ``label``, ``confidence`` (and ``error``); with ``top_k`` > 1 also ``top``, the ``top_k``
        most probable classes as ``{"label", "probability"}``."""
        result = {k: v for k, v in asdict(self).items() if k != "probabilities" and (k != "error" or v is not None)}
        if top_k > 1 and self.error is None:
            result["top"] = [{"label": label, "probability": p} for label, p in self.top(top_k)]
        return result


class Predictor:
    """A loaded model with its class names: ``Predictor.from_file("run/model.h5").predict(paths)``."""

    def __init__(self, model: keras.Model | ModelRunner, class_names: Sequence[str]):
        self.runner = model if isinstance(model, ModelRunner) else KerasRunner(model)
        self.image_size = self.runner.image_size
        self.class_names = list(class_names)
        if self.runner.n_classes != len(self.class_names):
            raise GearfeatError(f"model has {self.runner.n_classes} outputs but {len(self.class_names)} "
                                "class names")

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, safe_mode: bool = True) -> "Predictor":
        """Load ``path`` (a ``.h5``, ``.keras``, ``.tflite``, a SavedModel folder or a run folder; Keras
        ``safe_mode`` by default) with the class names gearfeat saved with it; a model without them is used with
        its output indexes as labels, with a warning."""
        runner = open_model(path, safe_mode=safe_mode)
        names = runner.class_names
        if not names:
            size = runner.image_size
            warnings.warn(f"{path} holds no class names (not saved by gearfeat?): the labels are output indexes, "
                          f"and images go in as gearfeat standardizes them ({size} x {size} RGB, 0-255)",
                          stacklevel=2)
            names = [str(i) for i in range(runner.n_classes)]
        return cls(runner, names)

    def predict(self, paths: Sequence[str | os.PathLike], *, plot: str | os.PathLike | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Predictions in the order of ``paths`` (or of the one path given), a folder standing for the image
        files directly in it, by name; an unreadable image (or a folder without images) gets an error, the
        others a label.

        With ``plot`` (a ``.png`` path, checked first), also draws them as :meth:`plot` does.
        """
        plot = None if plot is None else png_path(plot)
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)  # one path is one image
        for path in paths:
            if not isinstance(path, (str, os.PathLike)):
                raise GearfeatError(f"predict takes image file paths, got {type(path).__name__}; save the image "
                                    "first, or standardize it with gearfeat.data.images.standardize and call the "
                                    "model directly")
        paths = [image for path in paths for image in _images_in(path)]
        images: list[np.ndarray | None] = []
        results: list[Prediction | None] = []
        for path in paths:
            try:
                if Path(path).is_dir():
                    raise ImageError(path, "no image files in this folder")
                images.append(load_image(path, self.image_size))
                results.append(None)
            except ImageError as exc:
                images.append(None)
                results.append(Prediction(str(path), None, None, exc.reason))
        ok = [i for i, r in enumerate(results) if r is None]
        if ok:
            proba = self.runner(np.stack([images[i] for i in ok]), batch_size=batch_size)
            if proba.min() < 0 or not np.allclose(proba.sum(axis=1), 1, atol=1e-3):
                warnings.warn("the model's outputs are not probabilities (no softmax?): the confidences are its "
                              "raw outputs", stacklevel=2)
            for i, p in zip(ok, proba):
                k = int(np.argmax(p))
                results[i] = Prediction(str(paths[i]), self.class_names[k], float(p[k]),
                                        probabilities=dict(zip(self.class_names, map(float, p))))
        if plot is not None:
            _draw(results, images, plot)
        return results

    def plot(self, predictions: Sequence[Prediction], path: str | os.PathLike) -> Path | None:
        """Draw the images of ``predictions`` that got a label in a grid titled with class and confidence, the
        file names underneath; with none labelled, warn and draw nothing. Returns the figure's path, if drawn."""
        images = [None if p.error else load_image(p.path, self.image_size) for p in predictions]
        return _draw(predictions, images, png_path(path))


def _images_in(path: str | os.PathLike) -> list[str | os.PathLike]:
    """``path``, or for a folder the visible image files directly in it, sorted (itself when it has none)."""
    if not Path(path).is_dir():
        return [path]
    found = sorted(str(p) for p in Path(path).iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p.name) and p.is_file())
    return found or [path]


def _draw(predictions: Sequence[Prediction], images: Sequence[np.ndarray | None], path: Path) -> Path | None:
    ok = [i for i, p in enumerate(predictions) if p.error is None]
    if not ok:
        warnings.warn(f"no readable image, {path} not drawn", stacklevel=3)
        return None
    return plot_predictions([images[i] for i in ok],
                            [f"{predictions[i].label} {predictions[i].confidence:.2f}" for i in ok], path,
                            captions=[Path(predictions[i].path).name for i in ok])


def predict_images(model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], *,
                   plot: str | os.PathLike | None = None, safe_mode: bool = True) -> list[Prediction]:
    """Load ``model_path`` safely and classify ``paths``; optionally draw the prediction grid to ``plot``."""
    return Predictor.from_file(model_path, safe_mode=safe_mode).predict(paths, plot=plot)


def image_features(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Features (N, D) of image files, computed with the settings of the ``train`` or ``search`` run
    ``run_dir``: what its head (``model_``) and its baseline (:func:`~gearfeat.models.baseline.load_baseline`) take.
    An unusable file raises an ImageError naming it."""
    paths = list(paths)
    if not paths:
        raise GearfeatError("image_features needs at least one image path")
    record = RunRecord.load(run_dir)
    if record.extractor is None:
        raise GearfeatError(f"{run_dir} is a `gearfeat {record.command}` run, which has no cached-feature "
                            "settings; pass a train or search run")
    config = ExtractorConfig(**record.extractor)
    images = [load_image(path, config.image_size) for path in paths]
    return FeatureExtractor(config, progress=False).features_of(np.stack(images))
