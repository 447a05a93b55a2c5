"""The transfer pipeline that ``train`` and ``search`` share: check settings, fit the head and the baseline on
cached features, stitch, check the stitched model against the head, write the run folder."""
from __future__ import annotations

import csv
import logging
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
from ..features.augment import AugmentConfig
from ..features.cache import FeatureRows
from ..features.extractor import Extraction, ExtractorConfig, ViewExtraction, add_views
from ..models.baseline import (BASELINE_FILE, Baseline, baseline_name, describe_estimator, fit_streamed_baseline,
                               make_baseline)
from ..models.heads import Head, check_head
from ..models.stitch import save_model, stitch
from ..outputs.metrics import classification_metrics, max_abs_difference
from ..outputs.plots import plot_confusion, plot_history
from ..outputs.runs import RunDir, RunRecord

logger = logging.getLogger(__name__)

STITCH_CHECK_IMAGES = 64  # test images re-run through the stitched model to prove it equals the head


STITCH_TOLERANCE = 1e-4  # largest difference of probabilities between the stitched model and the head


STREAM_WINDOW_BYTES = 32 << 20  # the most feature bytes a streamed run reads at once (a quarter of a smaller budget)


#: Whether the baseline trains on the augmented views too (the dense head always does). Yes: in
#: benchmarks/augment_bench.py (gear, MobileNetV2 0.35 at 128 px, 289 fixed test images, seeds 0-2) the
#: logistic-regression baseline's mean test accuracy went from 0.953 to 0.967 with 4 views at 8 images per class
#: and from 0.986 to 0.992 at 32, never lower than without views (benchmarks/RESULTS.md, "Cached augmented views").
BASELINE_USES_VIEWS = True
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
    baseline_rows: int | None = None  #: the baseline fits the first rows of the train part only (None: all)

    @property
    def streamed(self) -> bool:
        """True when the features are read from the cache a window at a time, not held in memory."""
        return self.arrays is None

    def apply(self, function: Callable[[np.ndarray], np.ndarray], part: str) -> np.ndarray:
        """``function`` of the features of one part (a window at a time when streamed; ``function`` must treat
        rows independently, as predictions do)."""
        if self.streamed:
            return self.rows.apply(function, self.indexes[part], window_bytes=self.window_bytes)
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
        n = features.baseline_rows
        base = make_baseline(baseline, baseline_c, seed=seed).fit(features.arrays["train"][:n], y_train[:n])
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


def check_settings(*, config: ExtractorConfig, split: SplitConfig, head: Head | None = None,
                   augment: AugmentConfig | None = None) -> None:
    """Raise a GearfeatError naming the first setting of a run that is of the wrong kind or invalid (a head that
    lacks a member of the :class:`~gearfeat.models.heads.Head` protocol, or a bad head parameter)."""
    for name, value, kind in (("config", config, ExtractorConfig), ("split", split, SplitConfig),
                              ("augment", augment, AugmentConfig)):
        if not isinstance(value, kind) and not (name == "augment" and value is None):
            raise GearfeatError(f"{name} must be an instance of {kind.__name__}, got {value!r:.60}")
    if head is not None:
        check_head(head)
        head.validate()
    split.check_for_training()


def stream_window(budget: int) -> int:
    """The feature bytes a run streamed under ``budget`` reads at once: a quarter of the budget, at least 1 MB
    and at most :data:`STREAM_WINDOW_BYTES`."""
    return min(STREAM_WINDOW_BYTES, max(budget // 4, 1 << 20))


def split_bytes(dim: int, parts: dict[str, np.ndarray], views: int = 0) -> int:
    """The bytes of a split's features, with ``views`` augmented rows for each training record."""
    return 4 * dim * (sum(len(idx) for idx in parts.values()) + views * len(parts["train"]))


def _refuse_streamed_views(need: int, budget: int, views: int) -> None:
    if need > budget:
        raise GearfeatError(f"AugmentConfig views {views} needs the split's features and their views in memory "
                            f"({size_text(need)}), more than the memory budget: raise memory_budget above "
                            f"{size_text(budget)} or take no views (streamed runs take none)",
                            parameter=("AugmentConfig views", "memory_budget"))


def training_views(extraction: Extraction, parts: dict[str, np.ndarray], augment: AugmentConfig | None, *,
                   budget: int, cache_dir) -> ViewExtraction | None:
    """The augmented views of the training split (``extraction.views``), extracted or reused, or None when
    ``augment`` asks for none; refused in one line before any work when the split and its views would not fit
    ``budget``."""
    if augment is None or not augment.views:
        return None
    _refuse_streamed_views(split_bytes(extraction.rows.dim, parts, augment.views), budget, augment.views)
    return add_views(extraction, parts["train"], augment, cache_dir)


def training_rows(extraction: Extraction, train_idx: np.ndarray,
                  X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training features and labels: ``X_train`` (the plain rows of ``train_idx``), then the rows of the
    augmented views of those records (``extraction.views``, if any)."""
    y = extraction.dataset.labels
    if extraction.views is None:
        return X_train, y[train_idx]
    owners = extraction.views.owners
    if not np.isin(owners, train_idx).all():
        raise GearfeatError("the augmented views belong to images outside the training split (another split "
                            "seed?); extract the views for this split")
    return np.concatenate([X_train, extraction.views.rows.read()]), np.concatenate([y[train_idx], y[owners]])


def fit_and_save(run: RunDir, extraction: Extraction, parts: dict[str, np.ndarray], *, head: Head,
                 split: SplitConfig, baseline: Baseline = "logreg", baseline_c: float = 1.0,
                 started: float | None = None, command: str = "train", search: dict | None = None,
                 fitted: bool = False, memory_budget: int | None = None) -> FittedRun:
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

    ``extraction.views`` (the augmented views of the training split, see :func:`training_views`): the head trains
    on the plain and view rows of the training split (the baseline too, if :data:`BASELINE_USES_VIEWS`);
    validation and test use plain rows only. Views need the in-memory path: over the budget they are refused.
    """
    started = time.perf_counter() if started is None else started
    config = extraction.extractor.config
    dataset, rows = extraction.dataset, extraction.rows
    y = dataset.labels
    test_idx = parts["test"]
    budget = memory_budget_of(memory_budget)
    views = extraction.views
    n_views = views.config.views if views is not None else 0
    need = split_bytes(rows.dim, parts, n_views)
    if views is not None:
        _refuse_streamed_views(need, budget, n_views)
    streamed = need > budget
    path = f"streamed from the cache, budget {size_text(budget)}" if streamed else "in memory"
    logger.info(f"features: {path} ({size_text(need)} for the split"
                + (f" and its {len(views.owners)} view rows" if views is not None else "")
                + (f", more than the budget; baseline: SGD logistic regression in place of {baseline_name(baseline)})"
                   if streamed else ")"))
    labels = {name: y[parts[name]] for name in PARTS}
    if streamed:
        features = SplitFeatures(labels, rows=rows, indexes=parts, window_bytes=stream_window(budget))
    else:
        arrays = {name: rows.read(parts[name]) for name in PARTS}
        arrays["train"], labels["train"] = training_rows(extraction, parts["train"], arrays["train"])
        features = SplitFeatures(labels, arrays=arrays,
                                 baseline_rows=None if BASELINE_USES_VIEWS else len(parts["train"]))
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
        logger.warning(f"warning: model.h5 does not reproduce the head on the cached features (probabilities "
                       f"differ by {stitch_delta:.2g}, tolerance {STITCH_TOLERANCE:g}): the cache "
                       f"{extraction.cache_path} may hold features this code would not compute; delete it and run "
                       "again")
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
                  "split_bytes": need,
                  "baseline": "SGDClassifier(log_loss), partial_fit" if streamed else models.baseline_name},
        machine=machine_summary(),
        search=search,
        views=None if views is None else {**views.summary(), "baseline": BASELINE_USES_VIEWS},
    ).save(run)
    logger.info(f"test accuracy {metrics['test_accuracy']:.4f} (baseline {models.baseline_name}: "
                f"{metrics['baseline_test_accuracy']:.4f}); wrote {run / 'model.h5'}")
    return FittedRun(metrics, head, base)


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
