"""``gearfeat train``: dataset folder -> cached features -> dense head + baseline -> stitched ``model.h5``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.base import BaseEstimator

from .._internal.system import memory_budget as memory_budget_of
from ..data.dataset import SplitConfig
from ..data.labels import LabelFile
from ..features.augment import AugmentConfig
from ..features.extractor import Extraction, ExtractorConfig, extract_dataset
from ..models.baseline import Baseline, check_baseline
from ..models.heads import DenseHead, Head
from ..outputs.runs import RunDir
from .transfer import check_settings, fit_and_save, training_views


@dataclass(repr=False)
class TrainResult:
    """What ``train`` produced: the run folder, its headline figures and the fitted head and baseline (the
    head is a clone of the one passed in, which is left as it was)."""

    run_dir: Path
    metrics: dict
    extraction: Extraction
    head: Head
    baseline: BaseEstimator
    skipped: list = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"TrainResult(run_dir={str(self.run_dir)!r}, test_accuracy={self.metrics['test_accuracy']:.4f}, "
                f"baseline_test_accuracy={self.metrics['baseline_test_accuracy']:.4f}, "
                f"images={len(self.extraction.dataset.records)}, skipped={len(self.skipped)})")


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *,
          labels: str | os.PathLike | LabelFile | None = None, config: ExtractorConfig | None = None,
          head: Head | None = None, split: SplitConfig | None = None, baseline: Baseline = "logreg",
          baseline_c: float = 1.0, cache_dir: str | os.PathLike = "cache", backend: str = "local",
          address: str | None = None, memory_budget: str | int | None = None,
          augment: AugmentConfig | None = None, progress: bool = True) -> TrainResult:
    """Extract (or reuse) features, train the head and the baseline, stitch and save everything in ``out``.

    ``data_dir`` has one sub-folder per class, or ``labels`` (a CSV file, or a :class:`LabelFile` naming its
    columns) lists its images and their classes. ``head`` is a :class:`DenseHead` or any other
    :class:`~gearfeat.models.heads.Head`; ``baseline`` a name (``"logreg"``, ``"linear_svc"``, ``"svc"``: after a
    StandardScaler, with ``baseline_c``) or a scikit-learn classifier, cloned before it is fitted.

    Writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (settings, sizes and wall times). ``backend="dask"``
    and ``address`` run the extraction on a dask.distributed cluster (see :func:`extract_dataset`).
    ``memory_budget`` (e.g. ``"2GB"``; default a quarter of the RAM): above it the split's features are streamed
    from the cache instead of loaded (see :func:`~gearfeat.workflows.transfer.fit_and_save`).
    ``augment`` (an :class:`AugmentConfig` with ``views`` > 0): the head also trains on that many cached augmented
    views of every training image (``--augment-views``; refused over the memory budget).
    """
    started = time.perf_counter()
    config = config or ExtractorConfig()
    head = head or DenseHead()
    split = split or SplitConfig()
    # before the extraction, which can take minutes
    check_settings(config=config, split=split, head=head, augment=augment)
    check_baseline(baseline, baseline_c)
    budget = memory_budget_of(memory_budget)
    run = RunDir(out, create=True)
    extraction = extract_dataset(data_dir, config, labels=labels, cache_dir=cache_dir, backend=backend,
                                 address=address, progress=progress)
    parts = split.parts(extraction.dataset)
    training_views(extraction, parts, augment, budget=budget, cache_dir=cache_dir)
    fitted = fit_and_save(run, extraction, parts, head=head, split=split, baseline=baseline,
                          baseline_c=baseline_c, started=started, memory_budget=budget)
    return TrainResult(run.path, fitted.metrics, extraction, fitted.head, fitted.baseline, extraction.skipped)
