"""End-to-end training on images in memory, shared by ``gearfeat cnn`` and ``gearfeat finetune``.

Images are decoded once (thread pool) into a uint8 array, split exactly as ``gearfeat train`` splits them
(same seed, same split), fed to Keras through ``tf.data``, and trained with callbacks: the best model so far
(lowest validation loss) is checkpointed into the run folder, early stopping restores it, and a wall-clock
limit stops training before an epoch that would end past it. :func:`finish_run` writes the run folder.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss

from .._internal.errors import GearfeatError, ImageError
from .._internal.progress import Progress
from .._internal.system import machine_summary
from ..data.dataset import Dataset, Skipped, SplitConfig, scan_dataset, write_skipped
from ..data.images import decoded_batches, load_image
from ..data.labels import LabelFile
from ..models.stitch import quiet_absl, save_model
from ..outputs.metrics import classification_metrics
from ..outputs.plots import plot_confusion, plot_history
from ..outputs.runs import RunDir, RunRecord

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How a model is trained end to end on images."""

    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10  #: epochs without a lower validation loss before early stopping
    reduce_lr_patience: int | None = 4  #: halve the learning rate after this many flat epochs (None: never)
    max_minutes: float | None = 20.0  #: wall-clock limit of the training (None: no limit)

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": 0 < self.learning_rate < math.inf,
            "batch_size": int(self.batch_size) == self.batch_size >= 1,
            "epochs": int(self.epochs) == self.epochs >= 1,
            "patience": int(self.patience) == self.patience >= 0,
            "reduce_lr_patience": self.reduce_lr_patience is None or int(self.reduce_lr_patience) >= 1,
            "max_minutes": self.max_minutes is None or self.max_minutes > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise GearfeatError(f"invalid training parameter {name}={getattr(self, name)!r}", parameter=name)


@dataclass
class ImageSplit:
    """A dataset decoded into memory (``images`` aligned with ``dataset.records``) and its split."""

    dataset: Dataset
    images: np.ndarray  #: uint8 (N, size, size, 3)
    parts: dict[str, np.ndarray]  #: record indexes of "train", "val", "test"
    split: SplitConfig
    skipped: list[Skipped] = field(default_factory=list)

    def arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and integer labels of one part ("train", "val" or "test")."""
        index = self.parts[part]
        return self.images[index], self.dataset.labels[index]


@dataclass
class FitResult:
    """What an end-to-end training command produced: the run folder and its headline figures."""

    run_dir: Path
    metrics: dict
    skipped: list[Skipped] = field(default_factory=list)


def decode_images(dataset: Dataset, size: int, *, workers: int | None = None,
                  progress: bool = True) -> tuple[np.ndarray, Dataset]:
    """Decode every record of ``dataset`` at ``size`` with a thread pool.

    Returns the uint8 images and the dataset without the files that failed to decode (moved to its
    ``skipped``), aligned with each other.
    """
    paths = dataset.paths
    images, failed = [], []
    with Progress(len(dataset.records), f"decode {size}px", unit="img", enabled=progress) as bar:
        for batch in decoded_batches(len(paths), lambda i: load_image(paths[i], size), batch_size=64,
                                     workers=workers or min(4, os.cpu_count() or 1)):
            for _, result in batch:
                if isinstance(result, ImageError):
                    failed.append(Skipped(result.path, result.reason))
                else:
                    images.append(result)
                bar.update()
    kept = dataset.without(failed)
    if not images:
        raise GearfeatError(f"{dataset.root}: no image could be decoded; see the skipped files above")
    return np.stack(images), kept


def load_split(data: str | os.PathLike | Dataset, split: SplitConfig, image_size: int, *,
               labels: str | os.PathLike | LabelFile | None = None, progress: bool = True) -> ImageSplit:
    """Scan the folder ``data`` (by its ``labels`` file, if given; or take it already scanned), decode its images
    at ``image_size`` and split them as ``gearfeat train`` does.

    Raises:
        GearfeatError: a fraction is 0 (training needs validation images to stop early and test images to
            be measured), or the data folder cannot be used.
    """
    split.check_for_training()
    images, dataset = decode_images(data if isinstance(data, Dataset) else scan_dataset(data, labels=labels),
                                    image_size,
                                    progress=progress)
    for item in dataset.skipped:
        logger.warning(f"skipped {item.path}: {item.reason}")
    parts = split.parts(dataset)
    logger.info(f"{len(dataset.records)} images of {len(dataset.class_names)} classes "
                f"({', '.join(f'{k} {len(v)}' for k, v in parts.items())}), {len(dataset.skipped)} skipped")
    return ImageSplit(dataset, images, parts, split, list(dataset.skipped))


def batches(images: np.ndarray, labels: np.ndarray | None, batch_size: int, *, shuffle: bool = False,
            seed: int = 0) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of float32 image batches (0..255) with their labels (if given).

    With ``shuffle``, the order is reshuffled every epoch from ``seed``.
    """
    data = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    if shuffle:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return (data.batch(batch_size).map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _as_float(images, *labels):
    images = tf.cast(images, tf.float32)
    return (images, *labels) if labels else images


class TimeLimit(keras.callbacks.Callback):
    """Stop training before an epoch that, at the slowest pace seen so far, would end past ``max_minutes``."""

    def __init__(self, max_minutes: float):
        super().__init__()
        self.max_seconds = max_minutes * 60.0
        self.stopped = False

    def on_train_begin(self, logs=None) -> None:
        self._start = self._epoch_start = time.perf_counter()
        self._slowest = 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        now = time.perf_counter()
        self._slowest = max(self._slowest, now - self._epoch_start)
        if now - self._start + self._slowest > self.max_seconds:
            self.stopped = True
            self.model.stop_training = True


class EpochLog(keras.callbacks.Callback):
    """One info message per epoch: losses, accuracies and the epoch's wall time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        figures = " ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                           if k in logs)
        logger.info(f"epoch {epoch + 1}/{self.epochs}: {figures} ({time.perf_counter() - self._start:.1f} s)")


def fit(model: keras.Model, data: ImageSplit, config: FitConfig, checkpoint: Path) -> dict[str, Any]:
    """Train a compiled ``model`` on the train part, validating on the val part; return a fit summary.

    ``checkpoint`` (a ``.h5`` path) always holds the model of the lowest validation loss so far; at the end
    the model carries the weights of that epoch (EarlyStopping restores them however training ended).
    """
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(config.patience),
                                          restore_best_weights=True)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True), early,
        EpochLog(int(config.epochs))]
    if config.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, min_lr=1e-6,
                                                           patience=int(config.reduce_lr_patience)))
    limit = TimeLimit(config.max_minutes) if config.max_minutes else None
    if limit:
        callbacks.append(limit)
    seed = data.split.seed
    started = time.perf_counter()
    with quiet_absl():  # ModelCheckpoint's .h5 saves would each warn that the format is "legacy"
        history = model.fit(batches(*data.arrays("train"), int(config.batch_size), shuffle=True, seed=seed),
                            validation_data=batches(*data.arrays("val"), int(config.batch_size)),
                            epochs=int(config.epochs), callbacks=callbacks, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    epochs_run = len(history["loss"])
    stopped_by = ("time limit" if limit and limit.stopped else
                  "early stopping" if early.stopped_epoch > 0 else "epoch count")
    logger.info(f"trained {epochs_run} epoch{'' if epochs_run == 1 else 's'} in {seconds:.0f} s "
                f"(stopped by {stopped_by}); "
                f"best epoch {early.best_epoch + 1} (val_loss {early.best:.4f})")
    return {"history": history, "seconds": seconds, "epochs_run": epochs_run,
            "best_epoch": early.best_epoch + 1, "stopped_by": stopped_by}


def evaluate(model: keras.Model, data: ImageSplit, part: str = "test",
             batch_size: int = 64) -> dict[str, Any]:
    """``predicted`` classes, ``accuracy`` and mean cross-entropy ``loss`` on one part of ``data``."""
    images, labels = data.arrays(part)
    proba = model.predict(batches(images, None, batch_size), verbose=0)
    predicted = proba.argmax(axis=1)
    return {"predicted": predicted, "accuracy": float(np.mean(predicted == labels)),
            "loss": float(log_loss(labels, proba, labels=range(proba.shape[1])))}


def finish_run(run: RunDir, model: keras.Model, data: ImageSplit, fitted: dict[str, Any], *, command: str,
               title: str, record: dict[str, Any], seconds: dict[str, float], started: float,
               metrics: dict[str, Any] | None = None,
               model_meta: dict[str, Any] | None = None) -> FitResult:
    """Evaluate ``model`` on the test part and write the run folder.

    Writes ``model.h5`` (compiled, class names inside), ``metrics.json`` (``test_accuracy``, ``val_accuracy``,
    ``per_class`` precision/recall/F1 plus ``metrics``), ``history.json``, ``loss.png``, ``confusion.png``,
    ``skipped.json`` and ``run.json`` (a :class:`~gearfeat.outputs.runs.RunRecord`: ``command``, data, split,
    classes, the command's own fields in ``record``,
    ``seconds`` (``seconds`` plus ``train``, ``evaluate`` and ``total`` since ``started``), machine), all
    listed in ``manifest.json``.
    """
    t0 = time.perf_counter()
    names = data.dataset.class_names
    _, y_test = data.arrays("test")
    test, val = evaluate(model, data, "test"), evaluate(model, data, "val")
    predicted = test["predicted"]
    scores = classification_metrics(y_test, predicted, names)
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": test["loss"],
               "val_accuracy": val["accuracy"], "val_loss": val["loss"], **(metrics or {}),
               "per_class": scores["per_class"], "n_test": int(len(y_test))}
    evaluate_seconds = time.perf_counter() - t0

    save_model(model, run / "model.h5", names, image_size=int(data.images.shape[1]), kind=command,
               **(model_meta or {}))
    run.record("model.h5")
    run.write_json("metrics.json", metrics)
    run.write_json("history.json", fitted["history"])
    plot_history(fitted["history"], run / "loss.png", title=title)
    run.record("loss.png")
    plot_confusion(y_test, predicted, names, run / "confusion.png")
    run.record("confusion.png")
    write_skipped(data.skipped, run / "skipped.json")
    run.record("skipped.json")
    RunRecord(
        command=command,
        **data.dataset.source(),
        **record,
        image_size=int(data.images.shape[1]),
        epochs_run=fitted["epochs_run"],
        best_epoch=fitted["best_epoch"],
        stopped_by=fitted["stopped_by"],
        split=asdict(data.split) | {name: int(len(idx)) for name, idx in data.parts.items()},
        class_names=names,
        n_images=len(data.dataset.records),
        n_skipped=len(data.skipped),
        seconds={**seconds, "train": fitted["seconds"], "evaluate": evaluate_seconds,
                 "total": time.perf_counter() - started},
        machine=machine_summary(),
    ).save(run)
    logger.info(f"test accuracy {metrics['test_accuracy']:.4f} after {fitted['seconds']:.0f} s of training; "
                f"wrote {run / 'model.h5'}")
    return FitResult(run.path, metrics, data.skipped)
