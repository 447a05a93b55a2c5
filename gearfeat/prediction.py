"""Classify image files with a saved model, standardizing each exactly as training did."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from .errors import GearfeatError, ImageError
from .images import load_image
from .plots import png_path, plot_predictions
from .stitch import load_model, model_info


@dataclass
class Prediction:
    """One image's prediction; ``label`` is None and ``error`` says why when the image was unusable."""

    path: str
    label: str | None
    confidence: float | None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "error" or v is not None}


class Predictor:
    """A loaded model with its class names: ``Predictor.from_file("run/model.h5").predict(paths)``."""

    def __init__(self, model: keras.Model, class_names: Sequence[str]):
        self.model = model
        self.class_names = list(class_names)
        self.image_size = int(model.input_shape[1])
        if model.output_shape[-1] != len(self.class_names):
            raise GearfeatError(f"model has {model.output_shape[-1]} outputs but {len(self.class_names)} "
                                "class names")

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, safe_mode: bool = True) -> "Predictor":
        info = model_info(path)
        model = load_model(path, safe_mode=safe_mode, compile=False)
        names = info.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
        return cls(model, names)

    def predict(self, paths: Sequence[str | os.PathLike], *, plot: str | os.PathLike | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Predictions in the order of ``paths``; an unreadable image gets an error, the others a label.

        With ``plot`` (a ``.png`` path, checked first), also draws the usable images in a grid titled with class
        and confidence; with none usable it warns and draws nothing.
        """
        plot = None if plot is None else png_path(plot)
        images: list[np.ndarray | None] = []
        results: list[Prediction | None] = []
        for path in paths:
            try:
                images.append(load_image(path, self.image_size))
                results.append(None)
            except ImageError as exc:
                images.append(None)
                results.append(Prediction(str(path), None, None, exc.reason))
        ok = [i for i, r in enumerate(results) if r is None]
        if ok:
            proba = self.model.predict(np.stack([images[i] for i in ok]).astype(np.float32),
                                       batch_size=batch_size, verbose=0)
            for i, p in zip(ok, proba):
                k = int(np.argmax(p))
                results[i] = Prediction(str(paths[i]), self.class_names[k], float(p[k]))
        if plot is not None and not ok:
            warnings.warn(f"no readable image, {plot} not drawn", stacklevel=2)
        elif plot is not None:
            plot_predictions([images[i] for i in ok],
                             [f"{results[i].label} {results[i].confidence:.2f}" for i in ok], plot,
                             captions=[Path(paths[i]).name for i in ok])
        return results


def predict_images(model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], *,
                   plot: str | os.PathLike | None = None, safe_mode: bool = True) -> list[Prediction]:
    """Load ``model_path`` safely and classify ``paths``; optionally draw the prediction grid to ``plot``."""
    return Predictor.from_file(model_path, safe_mode=safe_mode).predict(paths, plot=plot)
