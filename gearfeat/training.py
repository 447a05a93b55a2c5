"""``gearfeat train``: dataset folder -> cached features -> dense head + baseline -> stitched ``model.h5``."""
from __future__ import annotations

import csv
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from .baseline import BASELINE_FILE, check_baseline, make_baseline
from .dataset import Dataset, check_fractions, scan_dataset, split_dataset, write_skipped
from .errors import GearfeatError, check_seed
from .extractor import ExtractorConfig, Extraction, FeatureExtractor
from .heads import DenseHead
from .images import load_image
from .metrics import classification_metrics, max_abs_difference
from .plots import plot_confusion, plot_history
from .runs import RunDir
from .stitch import save_model, stitch
from .system import machine_summary

STITCH_CHECK_IMAGES = 64  # test images re-run through the stitched model to prove it equals the head
STITCH_TOLERANCE = 1e-4  # largest difference of probabilities between the stitched model and the head


@dataclass
class SplitConfig:
    """How the dataset is split: fractions of each class, seeded."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)
        check_seed(self.seed)

    def check_for_training(self) -> None:
        """Raise a GearfeatError naming the option unless both fractions are above 0: a trained model needs
        validation images to stop early and test images to be measured."""
        for part, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            if not fraction > 0:
                raise GearfeatError(f"--{part}-fraction is {fraction}: training needs {part} images (validation "
                                    "to stop early, test to measure); pass a fraction above 0")


@dataclass(repr=False)
class FittedRun:
    """What :func:`fit_and_save` fitted and measured: the metrics, the head and the baseline."""

    metrics: dict
    head: DenseHead
    baseline: Pipeline


@dataclass(repr=False)
class TrainResult:
    """What ``train`` produced: the run folder, its headline figures and the fitted head and baseline (the
    head is a clone of the one passed in, which is left as it was)."""

    run_dir: Path
    metrics: dict
    extraction: Extraction
    head: DenseHead
    baseline: Pipeline
    skipped: list = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"TrainResult(run_dir={str(self.run_dir)!r}, test_accuracy={self.metrics['test_accuracy']:.4f}, "
                f"baseline_test_accuracy={self.metrics['baseline_test_accuracy']:.4f}, "
                f"images={len(self.extraction.dataset.records)}, skipped={len(self.skipped)})")


def extract_dataset(data_dir: str | os.PathLike, config: ExtractorConfig, *, cache_dir: str | os.PathLike = "cache",
                    batch_size: int | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> Extraction:
    """Scan ``data_dir``, fill the cache for it and return the features (the ``gearfeat extract`` command).

    The files left out are logged and written to ``skipped.json`` in the cache folder (this run's list).
    """
    dataset = scan_dataset(data_dir)
    extractor = FeatureExtractor(config, progress=progress,
                                 **({} if batch_size is None else {"batch_size": batch_size}))
    extraction = extractor.extract(dataset, cache_dir)
    extraction.skipped = dataset.skipped + extraction.skipped
    write_skipped(extraction.skipped, Path(extraction.cache_path).parent / "skipped.json")
    for item in extraction.skipped:
        log(f"skipped {item.path}: {item.reason}")
    log(f"cache {extraction.cache_path}: {extraction.computed} images computed, {extraction.reused} reused, "
        f"{len(extraction.skipped)} skipped ({extraction.seconds:.1f} s)")
    return extraction


def image_features(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Features (N, D) of image files, computed with the settings of the ``train`` or ``search`` run
    ``run_dir``: what its head (``model_``) and its baseline (:func:`~gearfeat.baseline.load_baseline`) take.
    An unusable file raises an ImageError naming it."""
    paths = list(paths)
    if not paths:
        raise GearfeatError("image_features needs at least one image path")
    info = RunDir(run_dir).read_json("run.json")
    if "extractor" not in info:
        raise GearfeatError(f"{run_dir} is a `gearfeat {info.get('command')}` run, which has no cached-feature "
                            "settings; pass a train or search run")
    config = ExtractorConfig(**info["extractor"])
    images = [load_image(path, config.image_size) for path in paths]
    return FeatureExtractor(config, progress=False).features_of(np.stack(images))


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *, config: ExtractorConfig | None = None,
          head: DenseHead | None = None, split: SplitConfig | None = None, baseline: str = "logreg",
          baseline_c: float = 1.0, cache_dir: str | os.PathLike = "cache", progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Extract (or reuse) features, train the head and the baseline, stitch and save everything in ``out``.

    Writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (settings, sizes and wall times).
    """
    started = time.perf_counter()
    config = config or ExtractorConfig()
    head = head or DenseHead()
    split = split or SplitConfig()
    check_settings(config=config, split=split, head=head)  # before the extraction, which can take minutes
    check_baseline(baseline, baseline_c)
    run = RunDir(out, create=True, log=log)
    extraction = extract_dataset(data_dir, config, cache_dir=cache_dir, progress=progress, log=log)
    parts = split_dataset(extraction.dataset, val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                          seed=split.seed)
    fitted = fit_and_save(run, extraction, parts, head=head, split=split, baseline=baseline,
                          baseline_c=baseline_c, started=started, log=log)
    return TrainResult(run.path, fitted.metrics, extraction, fitted.head, fitted.baseline, extraction.skipped)


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
                 started: float | None = None, command: str = "train", extra: dict | None = None,
                 log: Callable[[str], None] = print) -> FittedRun:
    """Train a clone of ``head`` and the baseline on the train split, test each once, stitch, and write the run
    folder.

    The one place a transfer run is finished, for ``gearfeat train`` and for the winner of ``gearfeat search``:
    writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (``command``, settings, sizes, wall times, and
    ``extra``).
    """
    started = time.perf_counter() if started is None else started
    config = extraction.extractor.config
    dataset, X = extraction.dataset, extraction.features
    y = dataset.labels
    train_idx, val_idx, test_idx = parts["train"], parts["val"], parts["test"]

    t0 = time.perf_counter()
    if head.seed not in (0, split.seed):
        warnings.warn(f"the head's seed {head.seed} is replaced by the run's seed {split.seed} (SplitConfig.seed "
                      "seeds the split and the training)", stacklevel=3)  # the line that called train or search
    head = clone(head).set_params(seed=split.seed)
    head.fit(X[train_idx], y[train_idx], validation_data=(X[val_idx], y[val_idx]),
             classes=range(len(dataset.class_names)))
    head_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = make_baseline(baseline, baseline_c, seed=split.seed).fit(X[train_idx], y[train_idx])
    baseline_seconds = time.perf_counter() - t0

    head_proba = head.predict_proba(X[test_idx])
    head_pred = head_proba.argmax(axis=1)
    base_pred = base.predict(X[test_idx])
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
        "val_accuracy": float(head.score(X[val_idx], y[val_idx])),
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
    run.write_json("run.json", {
        "command": command,
        "data_dir": str(Path(dataset.root).resolve()),
        "extractor": asdict(config),
        "cache": str(Path(extraction.cache_path).resolve()),  # usable from any working folder
        "head": {k: (list(v) if isinstance(v, tuple) else v) for k, v in head.get_params().items()},
        "baseline_c": baseline_c,
        "best_epoch": head.best_epoch_,
        "epochs_run": len(head.history_["loss"]),
        "split": asdict(split) | {name: int(len(idx)) for name, idx in parts.items()},
        "class_names": names,
        "n_images": len(dataset.records),
        "n_skipped": len(extraction.skipped),
        "images_computed": extraction.computed,
        "images_reused": extraction.reused,
        "seconds": {"extract": extraction.seconds, "head": head_seconds, "baseline": baseline_seconds,
                    "total": time.perf_counter() - started},
        "machine": machine_summary(),
        **(extra or {}),
    })
    log(f"test accuracy {metrics['test_accuracy']:.4f} (baseline {baseline}: "
        f"{metrics['baseline_test_accuracy']:.4f}); wrote {run / 'model.h5'}")
    return FittedRun(metrics, head, base)


def _write_test_predictions(path: Path, dataset: Dataset, test_idx: np.ndarray, head_proba: np.ndarray,
                            base_pred: np.ndarray) -> None:
    """One row per test image: its file, true class, the head's class and probability, the baseline's class."""
    names = dataset.class_names
    with open(path, "w", newline="") as f:
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
