"""``gearfeat cnn``: a convolutional network trained from scratch on the images.

The architecture is text (see :mod:`gearfeat.models.architecture`); the images are decoded once, split as
``gearfeat train`` splits them, and trained end to end with the callbacks of :mod:`gearfeat.workflows.fitting`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

import keras

from ..data.dataset import SplitConfig
from ..data.images import check_image_size
from ..data.labels import LabelFile
from ..models.architecture import DEFAULT_AUGMENT, DEFAULT_LAYERS, build_cnn
from ..models.heads import compile_model
from ..outputs.runs import RunDir
from .fitting import FitConfig, FitResult, finish_run, fit, load_split

logger = logging.getLogger(__name__)


def train_cnn(data_dir: str | os.PathLike, out: str | os.PathLike, *,
              labels: str | os.PathLike | LabelFile | None = None, layers: str = DEFAULT_LAYERS,
              augment: str = DEFAULT_AUGMENT, image_size: int = 128, config: FitConfig | None = None,
              split: SplitConfig | None = None, progress: bool = True) -> FitResult:
    """Train a CNN from scratch on ``data_dir`` and write the run folder ``out``.

    ``labels``: a CSV file listing the images of ``data_dir`` (see ``train``). The split is the one
    ``gearfeat train`` uses for the same seed. Writes ``model.h5`` (checkpointed during training at every new
    lowest validation loss), ``metrics.json``, ``history.json``, ``loss.png``,
    ``confusion.png``, ``skipped.json``, ``run.json`` and ``manifest.json``.
    """
    started = time.perf_counter()
    config = config or FitConfig()
    split = split or SplitConfig()
    image_size = check_image_size(image_size, "image_size")
    build_cnn(2, image_size, layers, augment)  # a bad architecture fails before the images are decoded
    run = RunDir(out, create=True)
    data = load_split(data_dir, split, image_size, labels=labels, progress=progress)
    load_seconds = time.perf_counter() - started

    keras.utils.set_random_seed(split.seed)
    model = compile_model(build_cnn(len(data.dataset.class_names), image_size, layers, augment),
                          config.learning_rate)
    logger.info(f"CNN {layers!r}, augmentation {augment!r}: {model.count_params():,} parameters")
    fitted = fit(model, data, config, run / "model.h5")
    return finish_run(
        run, model, data, fitted, command="cnn", title=f"CNN from scratch ({image_size} px)",
        record={"layers": layers, "augment": augment, "fit": asdict(config),
                "parameters": model.count_params()},
        seconds={"load": load_seconds}, started=started, model_meta={"layers": layers})
