"""``gearfeat train``: dataset folder -> cached features -> dense head + baseline -> stitched ``model.h5``."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.pipeline import Pipeline

from .._internal.system import memory_budget as memory_budget_of
from ..data.dataset import SplitConfig
from ..data.labels import LabelFile
from ..features.extractor import Extraction, ExtractorConfig, extract_dataset
from ..models.baseline import check_baseline
from ..models.heads import DenseHead
from ..outputs.runs import RunDir
from .transfer import check_settings, fit_and_save


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


def train(data_dir: str | os.PathLike, out: str | os.PathLike, *,
          labels: str | os.PathLike | LabelFile | None = None, config: ExtractorConfig | None = None,
          head: DenseHead | None = None, split: SplitConfig | None = None, baseline: str = "logreg",
          baseline_c: float = 1.0, cache_dir: str | os.PathLike = "cache", backend: str = "local",
          address: str | None = None, memory_budget: str | int | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Extract (or reuse) features, train the head and the baseline, stitch and save everything in ``out``.

    ``data_dir`` has one sub-folder per class, or ``labels`` (a CSV file, or a :class:`LabelFile` naming its
    columns) lists its images and their classes.

    Writes ``model.h5``, ``metrics.json``, ``history.json``, ``loss.png``, ``confusion.png``,
    ``baseline.joblib``, ``skipped.json`` and ``run.json`` (settings, sizes and wall times). ``backend="dask"``
    and ``address`` run the extraction on a dask.distributed cluster (see :func:`extract_dataset`).
    ``memory_budget`` (e.g. ``"2GB"``; default a quarter of the RAM): above it the split's features are streamed
    from the cache instead of loaded (see :func:`~gearfeat.workflows.transfer.fit_and_save`).
    """
    started = time.perf_counter()
    config = config or ExtractorConfig()
    head = head or DenseHead()
    split = split or SplitConfig()
    check_settings(config=config, split=split, head=head)  # before the extraction, which can take minutes
    check_baseline(baseline, baseline_c)
    budget = memory_budget_of(memory_budget)
    run = RunDir(out, create=True, log=log)
    extraction = extract_dataset(data_dir, config, labels=labels, cache_dir=cache_dir, backend=backend,
                                 address=address, progress=progress, log=log)
    parts = split.parts(extraction.dataset)
    fitted = fit_and_save(run, extraction, parts, head=head, split=split, baseline=baseline,
                          baseline_c=baseline_c, started=started, memory_budget=budget, log=log)
    return TrainResult(run.path, fitted.metrics, extraction, fitted.head, fitted.baseline, extraction.skipped)
