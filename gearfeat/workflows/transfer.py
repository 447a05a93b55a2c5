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
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .._internal.errors import GearfeatError
from .._internal.fileio import atomic_path
from .._internal.system import machine_summary, memory_budget as memory_budget_of, size_text
from ..data.dataset import Dataset, SplitConfig, write_skipped
from ..data.images import load_image
from ..features.extractor import Extraction, ExtractorConfig
from ..models.baseline import BASELINE_FILE, fit_streamed_baseline, make_baseline
from ..models.heads import DenseHead
from ..models.stitch import save_model, stitch
from ..outputs.metrics import classification_metrics, max_abs_difference
from ..outputs.plots import plot_confusion, plot_history
from ..outputs.runs import RunDir, RunRecord

STITCH_CHECK_IMAGES = 64  # test images re-run through the stitched model to prove it equals the head


STITCH_TOLERANCE = 1e-4  # largest difference of probabilities between the stitched model and the head


STREAM_WINDOW_BYTES = 32 << 20  # the most feature bytes a streamed run reads at once (a quarter of a smaller budget)


@dataclass(repr=False)
class FittedRun:
    """What :func:`fit_and_save` fitted and measured: the metrics, the head and the baseline."""

    metrics: dict
    head: DenseHead
    baseline: Pipeline


def check_settings(*, config: ExtractorConfig, split: SplitConfig, head: DenseHead | None = None) -> None:
    """Raise a GearfeatError naming the first setting of a run that is of the wrong kind or invalid."""
    for name, value, kind in (("config", config, ExtractorConfig), ("split", split, SplitConfig),
                              ("head", head, DenseHead)):
        if not isinstance(value, kind) and not (name == "head" and value is None):
            raise GearfeatError(f"{name} must be an instance of {kind.__name__}, got {value!r:.60}")
    if head is not None:
        head.validate()
    split.check_for_training()


def fit_and_save(run: RunDir, extraction: Extraction, parts: dict[str, np.ndarray], *, head: DenseHead,
                 split: SplitConfig, baseline: str = "logreg", baseline_c: float = 1.0,
                 started: float | None = None, command: str = "train", search: dict | None = None,
                 fitted: bool = False, memory_budget: int | None = None,
                 log: Callable[[str], None] = print) -> FittedRun:
    """Train a clone of ``head`` (unless ``fitted``: a head already trained on the train split, with the run's
    seed, such as the winner of a search, used as it is) and the baseline on the train split, test each once,
    stitch, and write the run folder.

    The one place a transfer run is finished, for ``gearfeat train`` and for the winner of ``gearfeat search``:
    writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (its :class:`~gearfeat.outputs.runs.RunRecord`:
    ``command``, settings, sizes, wall times, and the ``search`` summary of a search).

    Only the rows of the split are read from the cache. When they hold more than ``memory_budget`` bytes
    (default: :func:`~gearfeat._internal.system.memory_budget`), nothing is loaded whole: the head trains on
    windows streamed from the HDF5 file (:meth:`DenseHead.fit_streamed`), the baseline is the streamed SGD
    logistic regression (:func:`~gearfeat.models.baseline.fit_streamed_baseline`) whatever ``baseline`` says, and
    predictions are made a window at a time. The log and ``run.json``'s ``features`` say which path was taken.
    """
    started = time.perf_counter() if started is None else started
    config = extraction.extractor.config
    dataset, rows = extraction.dataset, extraction.rows
    y = dataset.labels
    train_idx, val_idx, test_idx = parts["train"], parts["val"], parts["test"]
    budget = memory_budget_of(memory_budget)
    split_bytes = 4 * rows.dim * sum(len(idx) for idx in (train_idx, val_idx, test_idx))
    streamed = split_bytes > budget
    window = min(STREAM_WINDOW_BYTES, max(budget // 4, 1 << 20))
    path = f"streamed from the cache, budget {size_text(budget)}" if streamed else "in memory"
    log(f"features: {path} ({size_text(split_bytes)} for the split"
        + (f", more than the budget; baseline: SGD logistic regression in place of {baseline})" if streamed else ")"))
    X_parts = {} if streamed else {name: rows.read(parts[name]) for name in ("train", "val", "test")}

    def apply(function: Callable[[np.ndarray], np.ndarray], part: str) -> np.ndarray:
        """``function`` of the features of one part of the split (a window at a time when streamed)."""
        return rows.apply(function, parts[part], window_bytes=window) if streamed else function(X_parts[part])

    t0 = time.perf_counter()
    if fitted:
        check_is_fitted(head, "model_")
        if head.seed != split.seed:
            raise GearfeatError(f"the fitted head was trained with seed {head.seed}, not the run's {split.seed}")
    else:
        if head.seed not in (0, split.seed):
            warnings.warn(f"the head's seed {head.seed} is replaced by the run's seed {split.seed} (SplitConfig.seed "
                          "seeds the split and the training)", stacklevel=3)  # the line that called train or search
        head = clone(head).set_params(seed=split.seed)
        classes = range(len(dataset.class_names))
        if streamed:
            head.fit_streamed(rows, train_idx, y[train_idx], validation=(val_idx, y[val_idx]), classes=classes,
                              window_bytes=window)
        else:
            head.fit(X_parts["train"], y[train_idx], validation_data=(X_parts["val"], y[val_idx]), classes=classes)
    head_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if streamed:
        y_train = y[train_idx]
        base = fit_streamed_baseline(
            lambda epoch: ((X, y_train[at]) for at, X in rows.shuffled(train_idx, seed=split.seed + epoch,
                                                                        window_bytes=window)),
            range(len(dataset.class_names)), n_rows=len(train_idx), C=baseline_c, seed=split.seed)
    else:
        base = make_baseline(baseline, baseline_c, seed=split.seed).fit(X_parts["train"], y[train_idx])
    baseline_seconds = time.perf_counter() - t0

    head_proba = apply(head.predict_proba, "test")
    head_pred = head_proba.argmax(axis=1)
    base_pred = apply(base.predict, "test")
    model = stitch(extraction.extractor.model, head.model_, head.learning_rate)
    stitch_delta = _stitch_check(model, dataset, test_idx[:STITCH_CHECK_IMAGES], head_proba, config.image_size)
    if stitch_delta > STITCH_TOLERANCE:
        log(f"warning: model.h5 does not reproduce the head on the cached features (probabilities differ by "
            f"{stitch_delta:.2g}, tolerance {STITCH_TOLERANCE:g}): the cache {extraction.cache_path} may hold "
            "features this code would not compute; delete it and run again")

    names = dataset.class_names
    head_metrics = classification_metrics(y[test_idx], head_pred, names)
    metrics = {
        "test_accuracy": head_metrics["accuracy"],
        "baseline_test_accuracy": float(np.mean(base_pred == y[test_idx])),
        "val_accuracy": float(np.mean(apply(head.predict, "val") == y[val_idx])),
        "per_class": head_metrics["per_class"],
        "baseline": baseline,
        "stitched_vs_head_max_abs_diff": stitch_delta,
        "n_test": int(len(test_idx)),
    }
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
        baseline_c=baseline_c,
        best_epoch=head.best_epoch_,
        epochs_run=len(head.history_["loss"]),
        split=asdict(split) | {name: int(len(idx)) for name, idx in parts.items()},
        class_names=names,
        n_images=len(dataset.records),
        n_skipped=len(extraction.skipped),
        images_computed=extraction.computed,
        images_reused=extraction.reused,
        seconds={"extract": extraction.seconds, "head": head_seconds, "baseline": baseline_seconds,
                 "total": time.perf_counter() - started},
        features={"path": "streamed" if streamed else "in memory", "memory_budget": budget,
                  "split_bytes": split_bytes,
                  "baseline": "SGDClassifier(log_loss), partial_fit" if streamed else baseline},
        machine=machine_summary(),
        search=search,
    ).save(run)
    log(f"test accuracy {metrics['test_accuracy']:.4f} (baseline {baseline}: "
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
