"""The transfer pipeline that ``train`` and ``search`` share: check settings, fit the head and the baseline on
cached features, stitch, check the stitched model against the head, write the run folder."""
from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, clone

from .._internal.errors import GearfeatError, first_line
from .._internal.fileio import atomic_path
from .._internal.system import machine_summary, memory_budget as memory_budget_of, size_text
from ..data.dataset import Dataset, SplitConfig, write_skipped
from ..data.images import load_image
from ..features.cache import FeatureRows
from ..features.extractor import Extraction, ExtractorConfig
from ..models.baseline import (BASELINE_FILE, Baseline, baseline_name, describe_estimator, fit_streamed_baseline,
                               make_baseline)
from ..models.heads import Head, check_head
from ..models.stitch import save_model, stitch
from ..outputs.metrics import classification_metrics, max_abs_difference
from ..outputs.plots import plot_confusion, plot_history
from ..outputs.runs import RunDir, RunRecord

STITCH_CHECK_IMAGES = 64  # test images re-run through the stitched model to prove it equals the head


STITCH_TOLERANCE = 1e-4  # largest difference of probabilities between the stitched model and the head


STREAM_WINDOW_BYTES = 32 << 20  # the most feature bytes a streamed run reads at once (a quarter of a smaller budget)


PARTS = ("train", "val", "test")


@dataclass
class SplitFeatures:
    """The features of a transfer run's parts ("train", "val", "test") and their ``labels``: arrays in memory
    (``arrays``), or else the records ``indexes`` of the cache view ``rows``, read ``window_bytes`` at a time."""

    labels: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray] | None = None
    rows: FeatureRows | None = None
    indexes: dict[str, np.ndarray] | None = None
    window_bytes: int = STREAM_WINDOW_BYTES

    @property
    def streamed(self) -> bool:
        """True when the features are read from the cache a window at a time, not held in memory."""
        return self.arrays is None

    def apply(self, function: Callable[[np.ndarray], np.ndarray], part: str) -> np.ndarray:
        """``function`` of the features of one part (a window at a time when streamed; ``function`` must treat
        rows independently, as predictions do)."""
        if self.streamed:
            return _in_windows(self.rows, self.indexes[part], function, self.window_bytes)
        return function(self.arrays[part])


@dataclass(repr=False)
class FittedModels:
    """What :func:`fit_models` trained: the head, the baseline, the baseline's name (what ran) and the seconds."""

    head: Head
    baseline: BaseEstimator
    baseline_name: str
    head_seconds: float
    baseline_seconds: float


def fit_models(features: SplitFeatures, *, head: Head, baseline: Baseline = "logreg", baseline_c: float = 1.0,
               n_classes: int, seed: int, fitted: bool = False) -> FittedModels:
    """Train a clone of ``head`` with ``seed`` (unless ``fitted``: used as it is) on the train part, stopping
    early on the val part, and the baseline on the train part; outputs for the classes ``range(n_classes)``.

    Streamed ``features``: the head's ``fit_streamed`` and the streamed SGD logistic regression
    (:func:`~gearfeat.models.baseline.fit_streamed_baseline`) in place of ``baseline``.
    """
    streamed = features.streamed
    check_head(head, streamed=streamed and not fitted, fitted=fitted)
    classes = range(n_classes)
    y_train, y_val = features.labels["train"], features.labels["val"]
    t0 = time.perf_counter()
    if not fitted:
        try:
            head = clone(head).set_params(seed=seed)
        except (TypeError, RuntimeError) as exc:  # what clone raises for get_params that do not round-trip
            raise GearfeatError(f"head {type(head).__name__} cannot be cloned by scikit-learn: "
                                f"{first_line(exc)}") from None
        if streamed:
            head.fit_streamed(features.rows, features.indexes["train"], y_train,
                              validation=(features.indexes["val"], y_val), classes=classes,
                              window_bytes=features.window_bytes)
        else:
            head.fit(features.arrays["train"], y_train, validation_data=(features.arrays["val"], y_val),
                     classes=classes)
        check_head(head, fitted=True)
    head_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if streamed:
        base = fit_streamed_baseline(
            lambda epoch: ((X, y_train[at]) for at, X in features.rows.shuffled(
                features.indexes["train"], seed=seed + epoch, window_bytes=features.window_bytes)),
            classes, n_rows=len(y_train), C=baseline_c, seed=seed)
    else:
        base = make_baseline(baseline, baseline_c, seed=seed).fit(features.arrays["train"], y_train)
    name = describe_estimator(base) if streamed else baseline_name(baseline)
    return FittedModels(head, base, name, head_seconds, time.perf_counter() - t0)


def score_models(features: SplitFeatures, models: FittedModels,
                 class_names: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test the head and the baseline once on the test part: the metrics (``test_accuracy``,
    ``baseline_test_accuracy``, ``val_accuracy`` of the head, ``per_class`` precision/recall/F1 of the head,
    ``baseline``: the name of what ran), the head's test probabilities and the baseline's test predictions."""
    head_proba = features.apply(models.head.predict_proba, "test")
    base_pred = features.apply(models.baseline.predict, "test")
    y_test, y_val = features.labels["test"], features.labels["val"]
    head_metrics = classification_metrics(y_test, head_proba.argmax(axis=1), class_names)
    metrics = {
        "test_accuracy": head_metrics["accuracy"],
        "baseline_test_accuracy": float(np.mean(base_pred == y_test)),
        "val_accuracy": float(np.mean(features.apply(models.head.predict_proba, "val").argmax(axis=1) == y_val)),
        "per_class": head_metrics["per_class"],
        "baseline": models.baseline_name,
    }
    return metrics, head_proba, base_pred


@dataclass(repr=False)
class FittedRun:
    """What :func:`fit_and_save` fitted and measured: the metrics, the head and the baseline."""

    metrics: dict
    head: Head
    baseline: BaseEstimator


def check_settings(*, config: ExtractorConfig, split: SplitConfig, head: Head | None = None) -> None:
    """Raise a GearfeatError naming the first setting of a run that is of the wrong kind or invalid (a head that
    lacks a member of the :class:`~gearfeat.models.heads.Head` protocol, or a bad head parameter)."""
    for name, value, kind in (("config", config, ExtractorConfig), ("split", split, SplitConfig)):
        if not isinstance(value, kind):
            raise GearfeatError(f"{name} must be an instance of {kind.__name__}, got {value!r:.60}")
    if head is not None:
        check_head(head)
        head.validate()
    split.check_for_training()


def fit_and_save(run: RunDir, extraction: Extraction, parts: dict[str, np.ndarray], *, head: Head,
                 split: SplitConfig, baseline: Baseline = "logreg", baseline_c: float = 1.0,
                 started: float | None = None, command: str = "train", search: dict | None = None,
                 fitted: bool = False, memory_budget: int | None = None,
                 log: Callable[[str], None] = print) -> FittedRun:
    """Train a clone of ``head`` (unless ``fitted``: a head already trained on the train split, with the run's
    seed, such as the winner of a search, used as it is) and the baseline on the train split, test each once,
    stitch, and write the run folder. ``head`` is any :class:`~gearfeat.models.heads.Head` (a
    :class:`~gearfeat.models.heads.StreamingHead` where the split is streamed).

    The one place a transfer run is finished, for ``gearfeat train`` and for the winner of ``gearfeat search``:
    writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (its :class:`~gearfeat.outputs.runs.RunRecord`:
    ``command``, settings, sizes, wall times, and the ``search`` summary of a search). ``baseline`` is a name of
    :data:`~gearfeat.models.baseline.BASELINES` or a scikit-learn classifier (fitted as a clone);
    ``metrics.json``'s ``baseline`` names the one that ran, ``run.json``'s ``baseline`` gives its class and
    parameters.

    Only the rows of the split are read from the cache. When they hold more than ``memory_budget`` bytes
    (default: :func:`~gearfeat._internal.system.memory_budget`), nothing is loaded whole: the head trains on
    windows streamed from the HDF5 file (its ``fit_streamed``), the baseline is the streamed SGD
    logistic regression (:func:`~gearfeat.models.baseline.fit_streamed_baseline`) whatever ``baseline`` says, and
    predictions are made a window at a time. The log and ``run.json``'s ``features`` say which path was taken.
    """
    started = time.perf_counter() if started is None else started
    config = extraction.extractor.config
    dataset, rows = extraction.dataset, extraction.rows
    y = dataset.labels
    test_idx = parts["test"]
    budget = memory_budget_of(memory_budget)
    split_bytes = 4 * rows.dim * sum(len(parts[name]) for name in PARTS)
    streamed = split_bytes > budget
    path = f"streamed from the cache, budget {size_text(budget)}" if streamed else "in memory"
    log(f"features: {path} ({size_text(split_bytes)} for the split"
        + (f", more than the budget; baseline: SGD logistic regression in place of {baseline_name(baseline)})"
           if streamed else ")"))
    labels = {name: y[parts[name]] for name in PARTS}
    features = (SplitFeatures(labels, rows=rows, indexes=parts, window_bytes=min(STREAM_WINDOW_BYTES,
                                                                                 max(budget // 4, 1 << 20)))
                if streamed else SplitFeatures(labels, arrays={name: rows.read(parts[name]) for name in PARTS}))
    check_head(head, streamed=streamed and not fitted, fitted=fitted)  # before its seed is read
    if fitted:
        if head.seed != split.seed:
            raise GearfeatError(f"the fitted head was trained with seed {head.seed}, not the run's {split.seed}")
    elif head.seed not in (0, split.seed):
        warnings.warn(f"the head's seed {head.seed} is replaced by the run's seed {split.seed} (SplitConfig.seed "
                      "seeds the split and the training)", stacklevel=3)  # the line that called train or search
    models = fit_models(features, head=head, baseline=baseline, baseline_c=baseline_c,
                        n_classes=len(dataset.class_names), seed=split.seed, fitted=fitted)
    head, base = models.head, models.baseline
    names = dataset.class_names
    scores, head_proba, base_pred = score_models(features, models, names)

    model = stitch(extraction.extractor.model, head.model_, head.learning_rate)
    stitch_delta = _stitch_check(model, dataset, test_idx[:STITCH_CHECK_IMAGES], head_proba, config.image_size)
    if stitch_delta > STITCH_TOLERANCE:
        log(f"warning: model.h5 does not reproduce the head on the cached features (probabilities differ by "
            f"{stitch_delta:.2g}, tolerance {STITCH_TOLERANCE:g}): the cache {extraction.cache_path} may hold "
            "features this code would not compute; delete it and run again")
    metrics = {**scores, "stitched_vs_head_max_abs_diff": stitch_delta, "n_test": int(len(test_idx))}
    head_pred = head_proba.argmax(axis=1)
    save_model(model, run / "model.h5", names, image_size=config.image_size, backbone=config.backbone,
               kind="transfer")
    run.record("model.h5")
    run.write_json("metrics.json", metrics)
    run.write_json("history.json", head.history_)
    plot_history(head.history_, run / "loss.png", title=f"Dense head on {config.backbone} features")
    run.record("loss.png")
    plot_confusion(y[test_idx], head_pred, names, run / "confusion.png")
    run.record("confusion.png")
    run.save_joblib(base, BASELINE_FILE)
    _write_test_predictions(run / "test_predictions.csv", dataset, test_idx, head_proba, base_pred)
    run.record("test_predictions.csv")
    write_skipped(extraction.skipped, run / "skipped.json")
    run.record("skipped.json")
    RunRecord(
        command=command,
        **dataset.source(),
        extractor=asdict(config),
        image_size=config.image_size,
        cache=str(Path(extraction.cache_path).resolve()),  # usable from any working folder
        head={k: (list(v) if isinstance(v, tuple) else v) for k, v in head.get_params().items()},
        baseline=describe_estimator(base),
        baseline_c=baseline_c,
        best_epoch=head.best_epoch_,
        epochs_run=len(head.history_["loss"]),
        split=asdict(split) | {name: int(len(idx)) for name, idx in parts.items()},
        class_names=names,
        n_images=len(dataset.records),
        n_skipped=len(extraction.skipped),
        images_computed=extraction.computed,
        images_reused=extraction.reused,
        seconds={"extract": extraction.seconds, "head": models.head_seconds, "baseline": models.baseline_seconds,
                 "total": time.perf_counter() - started},
        features={"path": "streamed" if streamed else "in memory", "memory_budget": budget,
                  "split_bytes": split_bytes,
                  "baseline": "SGDClassifier(log_loss), partial_fit" if streamed else models.baseline_name},
        machine=machine_summary(),
        search=search,
    ).save(run)
    log(f"test accuracy {metrics['test_accuracy']:.4f} (baseline {models.baseline_name}: "
        f"{metrics['baseline_test_accuracy']:.4f}); wrote {run / 'model.h5'}")
    return FittedRun(metrics, head, base)


def _in_windows(rows: FeatureRows, idx: np.ndarray, function: Callable[[np.ndarray], np.ndarray],
                window_bytes: int) -> np.ndarray:
    """``function`` of the features of the records ``idx``, read and applied a window at a time; in ``idx``'s
    order (``function`` must treat rows independently, as predictions do)."""
    out = None
    for at, X in rows.windows(idx, window_bytes=window_bytes):
        value = np.asarray(function(X))
        if out is None:
            out = np.empty((len(idx), *value.shape[1:]), value.dtype)
        out[at] = value
    return np.zeros(0) if out is None else out


def _write_test_predictions(path: Path, dataset: Dataset, test_idx: np.ndarray, head_proba: np.ndarray,
                            base_pred: np.ndarray) -> None:
    """One row per test image: its file, true class, the head's class and probability, the baseline's class."""
    names = dataset.class_names
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", "confidence", "baseline"])
        for i, proba, base in zip(test_idx, head_proba, base_pred):
            record = dataset.records[i]
            writer.writerow([str(record.path), names[record.label], names[int(proba.argmax())],
                             f"{float(proba.max()):.4f}", names[int(base)]])


def _stitch_check(model, dataset: Dataset, indexes: np.ndarray, head_proba: np.ndarray, image_size: int) -> float:
    """max |p_stitched - p_head| on the first test images: the stitched model must equal head(features)."""
    if len(indexes) == 0:
        return 0.0
    images = np.stack([load_image(dataset.records[i].path, image_size) for i in indexes]).astype(np.float32)
    return max_abs_difference(model.predict(images, batch_size=32, verbose=0), head_proba[: len(indexes)])
