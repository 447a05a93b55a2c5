"""``gearfeat demo``: the whole workflow on generated images, needing no data from the user.

It draws a small image-folder dataset of shapes (circles, squares, triangles of random size, position and
colour), then runs extract and cache, dense head and baseline, the stitched ``model.h5``, predictions with a
figure on freshly drawn images that are not in the dataset, and the report, and prints where everything is.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .._internal.errors import GearfeatError, WeightsUnavailableError, is_int
from ..data.dataset import SplitConfig
from ..data.synthetic import SHAPES, make_shape_images, make_shapes_dataset
from ..features.backbones import create_backbone
from ..features.extractor import ExtractorConfig
from ..models.baseline import BASELINE_FILE, Baseline
from ..models.heads import Head
from ..outputs.report import write_report
from .predict import Prediction, predict_images
from .train import TrainResult, train

logger = logging.getLogger(__name__)

DEMO_CONFIG = ExtractorConfig("densenet121", weights="imagenet", image_size=128, backbone_size=128)
"""The demo's backbone: seconds for the demo's images on 2 CPU cores, a 29 MB ImageNet download; offline, its
random features still separate the shapes better than MobileNetV2's (whose random features are ~1e-11 in
scale, leaving the dense head at chance) or ResNet50's, with both the head and the baseline (measured on 3
split seeds)."""
PER_CLASS = 200
NEW_IMAGES = 6


@dataclass
class DemoResult:
    """Where the demo put everything, and what it found."""

    out: Path
    config: ExtractorConfig  # as used: weights None when random (asked for, or the download failed)
    data_dir: Path
    train: TrainResult
    predictions: list[Prediction]
    predictions_png: Path
    report: Path
    weights_note: str | None
    seconds: float

    def artifacts(self) -> list[tuple[str, Path]]:
        """(what, where) for every artifact, in the order the workflow made them."""
        run = self.train.run_dir
        return [("generated dataset", self.data_dir), ("new images", self.predictions_png.parent / "new_images"),
                ("feature cache", Path(self.train.extraction.cache_path)), ("model", run / "model.h5"),
                ("metrics", run / "metrics.json"), ("loss curves", run / "loss.png"),
                ("confusion matrix", run / "confusion.png"), ("baseline", run / BASELINE_FILE),
                ("run record", run / "run.json"), ("predictions figure", self.predictions_png),
                ("report", self.report)]


def run_demo(out: str | os.PathLike, weights: str | os.PathLike | None = "imagenet", *,
             config: ExtractorConfig | None = None, head: Head | None = None, baseline: Baseline = "logreg",
             baseline_c: float = 1.0, per_class: int = PER_CLASS, n_new: int = NEW_IMAGES, seed: int = 0,
             cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DemoResult:
    """Generate the shapes dataset under ``out/data`` and run the whole workflow on it.

    ``weights`` as everywhere ("imagenet", None for random, or a local file). When the ImageNet download
    fails (offline) the backbone falls back to random initialization, and the terminal and the report say so.
    ``config`` overrides the backbone settings (its ``image_size`` is also the size of the drawn images);
    ``head``, ``baseline`` and ``baseline_c`` are passed to :func:`gearfeat.train`.
    """
    started = time.perf_counter()
    for name, value, least in (("per_class", per_class, 3), ("n_new", n_new, 1)):
        if not is_int(value, least):
            raise GearfeatError(f"{name} must be an integer >= {least}, got {value!r}"
                                + (" (one image each for training, validation and test)" if least == 3 else ""),
                                parameter=name)
    out = Path(out)
    config = replace(config or DEMO_CONFIG, weights=weights)
    data_dir = out / "data" / "shapes"
    expected = {f"{kind}/{kind}_{i:04d}.png" for kind in SHAPES for i in range(per_class)}
    _check_generated(data_dir, expected.__contains__)  # a bigger earlier demo would leave extra images
    new_dir = out / "new_images"
    _check_generated(new_dir, lambda name: re.fullmatch(r"new_\d+_[a-z]+\.png", name) is not None)
    logger.info(f"drawing {per_class} images of each of {', '.join(SHAPES)} ({config.image_size} px) in {data_dir}")
    try:
        make_shapes_dataset(data_dir, per_class=per_class, size=config.image_size, seed=seed)
        new_images = make_shape_images(new_dir, n_new, size=config.image_size, seed=seed + 1)
    except OSError as exc:
        raise GearfeatError(f"out {out}: cannot draw the demo images there ({exc.strerror or exc}); pass another "
                            "folder", parameter="out") from None

    config, note = _usable_weights(config)
    result = train(data_dir, out / "transfer", config=config, head=head, split=SplitConfig(seed=seed),
                   baseline=baseline, baseline_c=baseline_c, cache_dir=cache_dir or out / "cache",
                   progress=progress)
    predictions_png = out / "predictions.png"
    predictions = predict_images(result.run_dir / "model.h5", new_images, plot=predictions_png)
    right = sum(p.label is not None and Path(p.path).stem.endswith(f"_{p.label}") for p in predictions)
    for p in predictions:
        logger.info(f"new image {Path(p.path).name}: predicted {p.label} ({p.confidence:.2f})")
    logger.info(f"{right} of {len(predictions)} new images predicted as the shape they show")
    report = write_report([result.run_dir], out / "report.md", predictions_png=predictions_png,
                          notes=[note] if note else ())
    return DemoResult(out, config, data_dir, result, predictions, predictions_png, report, note,
                      time.perf_counter() - started)


def _usable_weights(config: ExtractorConfig) -> tuple[ExtractorConfig, str | None]:
    """``config``, or a copy with random weights when the ImageNet download fails; and what to tell the reader."""
    if config.weights is None:
        logger.info("backbone weights: random initialization; features are not pretrained")
        return config, None
    if config.weights != "imagenet":
        return config, None
    try:
        create_backbone(config.backbone, weights="imagenet", input_size=config.backbone_size, alpha=config.alpha,
                        pooling=config.pooling)
    except WeightsUnavailableError as exc:
        note = (f"ImageNet weights were asked for but could not be downloaded: {exc}. The demo therefore uses "
                "a backbone with random initialization, and its accuracy says nothing about pretrained transfer "
                "learning.")
        logger.warning(f"WARNING: {note}")
        return replace(config, weights=None), note
    return config, None


def _check_generated(folder: Path, allowed: Callable[[str], bool]) -> None:
    """Refuse to draw into a folder holding files (by relative path) this demo would not have written there."""
    if not folder.is_dir():
        return
    foreign = sorted(name for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                     if not allowed(name))
    if foreign:
        raise GearfeatError(f"{folder} already holds files the demo did not draw with these settings (e.g. "
                            f"{foreign[0]}); pass another out, or delete {folder}", parameter="out")
