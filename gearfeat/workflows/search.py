"""``gearfeat search``: many heads tried on the same cached features, in parallel; the best becomes model.h5.

The backbone runs once (the feature cache). Every trial trains one configuration, a :class:`DenseHead` or a
scikit-learn baseline, on the same seeded train split and is scored on the validation split. The test split
is used once: the best dense head, its weights as its trial left them (sliced out of its stack, not trained
again), and the best baseline (retrained: it is cheap) are tested, and the run folder is written exactly as
``gearfeat train`` writes it (:func:`gearfeat.workflows.transfer.fit_and_save`), plus ``trials.csv``,
``trials.json``, ``leaderboard.md`` and ``search.png``.

Dense-head trials of one shape train together as a stack (:mod:`gearfeat.models.stacked`). ``local`` (the
default) runs the stacks in this process and the baseline trials beside them in a thread; ``loky`` runs
stacks and baseline trials in worker processes, each with TensorFlow's thread pools sized to cores /
workers; ``threading`` in threads; ``dask`` (a running ``dask.distributed`` scheduler) and ``ray`` (a Ray
cluster) spread them over a cluster. The feature arrays are sent once, not read from HDF5 per trial: loky
memory-maps arrays above joblib's ``max_nbytes`` (1 MB) into a shared folder that every worker maps, dask
scatters each array once (joblib's auto-scatter of large arguments, by identity), Ray holds each in its
object store (put once, read by reference), and threads share them. Over ``--memory-budget`` the ``local``
backend's trials read the cache rows instead, a window at a time (see :func:`search`)."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._internal.system import memory_budget as memory_budget_of, size_text
from ..data.dataset import Skipped, SplitConfig
from ..data.labels import LabelFile
from ..features.augment import AugmentConfig
from ..features.cache import FeatureRows
from ..features.extractor import ExtractorConfig, extract_dataset
from ..models.baseline import baseline_name
from ..models.heads import DenseHead
from ..outputs.runs import RunDir
from ..tuning.backends import Workers
from ..tuning.results import kept_summary, plot_search, write_leaderboard, write_trials
from ..tuning.space import SearchSpace, parse_space
from ..tuning.trials import parameter_influence, rank_trials, run_trials
from .transfer import check_settings, fit_and_save, stream_window, training_rows, training_views

logger = logging.getLogger(__name__)


@dataclass(repr=False)
class SearchResult:
    """What :func:`search` produced: the run folder, every trial, the leaderboard (best first), the metrics of
    the retrained models and the models themselves (the best dense head, in ``model.h5``, and the best
    baseline)."""

    run_dir: Path
    trials: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    metrics: dict[str, Any]
    skipped: list[Skipped]
    head: DenseHead
    baseline: Any

    @property
    def best(self) -> dict[str, Any]:
        """The first trial of the leaderboard, of any model (a baseline may beat every dense head)."""
        return self.leaderboard[0]

    def __repr__(self) -> str:
        return (f"SearchResult(run_dir={str(self.run_dir)!r}, trials={len(self.trials)}, best_trial="
                f"{self.best['trial']} ({self.best['model']}), test_accuracy={self.metrics['test_accuracy']:.4f})")


def search(data_dir: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | LabelFile | None = None,
           space: SearchSpace | str | os.PathLike | Mapping | Sequence | None = None, params: Sequence[str] = (),
           n_trials: int | None = 24, jobs: int = -1, backend: str | None = None, address: str | None = None,
           config: ExtractorConfig | None = None, split: SplitConfig | None = None,
           cache_dir: str | os.PathLike = "cache", memory_budget: str | int | None = None,
           augment: AugmentConfig | None = None, progress: bool = True) -> SearchResult:
    """Extract (or reuse) features, try ``n_trials`` configurations of ``space`` on the validation split, then
    keep the best head as its trial trained it, retrain the best baseline (the defaults of a model no trial
    tried) and write the run folder like ``gearfeat train``.

    ``space`` and ``params`` (``NAME=V1,V2`` texts on top of it) as :func:`~gearfeat.tuning.space.parse_space` reads
    them. ``n_trials`` configurations are drawn at random, every grid of the space getting its share (seeded by
    ``split.seed``, see :meth:`SearchSpace.configurations`); None (or "all"), or at least the size of the space,
    runs the whole grid. ``labels``: a CSV file listing the images of ``data_dir`` (see ``train``). With
    ``backend="dask"`` the extraction runs on the same cluster as the trials. Writes ``trials.csv``,
    ``trials.json``, ``leaderboard.md`` and ``search.png`` besides ``model.h5`` (the best dense head) and the
    rest of a train run.

    ``memory_budget`` (e.g. ``"2GB"``; default a quarter of the RAM): train and validation features of more
    bytes are never held whole. The ``local`` backend's trials stream them from the cache a window at a time
    (the stacks of heads as ``train`` streams its head, each baseline trial as the streamed SGD logistic
    regression of its C); for the other backends they are written once, a window at a time, to ``.npy`` files
    beside the cache (removed at the end), which the workers map. The winner is finished as ``train`` finishes
    an over-budget run.

    ``augment`` (an :class:`AugmentConfig` with ``views`` > 0): every trial trains on the plain and the cached
    augmented rows of the training split, and is scored on plain validation images (as ``train``).
    """
    started = time.perf_counter()
    space = parse_space(space, params)
    config = config or ExtractorConfig()
    split = split or SplitConfig()
    check_settings(config=config, split=split, augment=augment)
    n_trials = None if n_trials == "all" else n_trials  # as --trials all
    configurations = space.configurations(n_trials, seed=split.seed)
    checked = Workers(jobs, backend, address)  # before the extraction, which can take minutes
    backend, in_process = checked.backend, checked.spec.in_process
    budget = memory_budget_of(memory_budget)
    run = RunDir(out, create=True)
    extraction = extract_dataset(data_dir, config, labels=labels, cache_dir=cache_dir, progress=progress,
                                 **({"backend": "dask", "address": address} if backend == "dask" else {}))
    rows, y = extraction.rows, extraction.dataset.labels
    parts = split.parts(extraction.dataset)
    training_views(extraction, parts, augment, budget=budget, cache_dir=cache_dir)
    t0 = time.perf_counter()
    with _trial_features(rows, parts, extraction.cache_path, budget, in_process) as (X_train, X_val):
        X_train, y_train = training_rows(extraction, parts["train"], X_train)
        found = run_trials(configurations, X_train, y_train, X_val, y[parts["val"]],
                           n_classes=len(extraction.dataset.class_names), seed=split.seed, workers=checked,
                           progress=progress)
    search_seconds = time.perf_counter() - t0
    board = rank_trials(found)
    by_trial = {t["trial"]: t for t in board}
    trials = [by_trial[t["trial"]] for t in found]
    write_trials(run, trials)
    best_head = next((t for t in board if t["model"] == "dense"), None)
    best_base = next((t for t in board if t["model"] != "dense"), None)
    base_params = configurations[best_base["trial"]] if best_base else {}  # a baseline estimator itself, not its name
    baseline, baseline_c = base_params.get("baseline", "logreg"), base_params.get("baseline_c", 1.0)
    info = {
        "space": space.to_json(), "configurations": len(space), "trials": len(trials),
        "strategy": "grid" if len(trials) == len(space) else "random", "jobs": jobs, "backend": backend,
        "address": address, "seconds": search_seconds, "winner": board[0]["trial"],
        "head_trials": sum(t["model"] == "dense" for t in trials),
        "baseline_trials": sum(t["model"] != "dense" for t in trials),
        "best_head_trial": best_head and best_head["trial"], "best_baseline_trial": best_base and best_base["trial"],
    }
    kept_baseline = (f"{kept_summary(info['baseline_trials'], 'baseline')}: {baseline_name(baseline)}"
                     + (f", C={baseline_c:g}" if isinstance(baseline, str) else ""))
    logger.info(f"search: {len(trials)} trials in {search_seconds:.1f} s; best: trial {board[0]['trial']} "
                f"({board[0]['model']}, validation accuracy {board[0]['val_accuracy']:.4f}); baseline: {kept_baseline}")
    head = found.best_head if best_head else DenseHead()  # no dense trial: the default head, trained
    fitted = fit_and_save(run, extraction, parts, head=head, split=split, baseline=baseline, baseline_c=baseline_c,
                          started=started, command="search", search=info, fitted=best_head is not None,
                          memory_budget=budget)
    metrics = fitted.metrics
    winner = board[0]
    test_key = "test_accuracy" if winner["model"] == "dense" else "baseline_test_accuracy"
    metrics["winner"] = {"trial": winner["trial"], "model": winner["model"], "params": winner["params"],
                         "val_accuracy": winner["val_accuracy"], "test_accuracy": metrics[test_key]}
    run.write_json("metrics.json", metrics)
    influence = parameter_influence(trials)
    write_leaderboard(run, board, info, influence, metrics, kept_baseline)
    plot_search(trials, run / "search.png", influence)
    run.record("search.png")
    return SearchResult(run.path, trials, board, metrics, extraction.skipped, fitted.head, fitted.baseline)


@contextmanager
def _trial_features(rows: FeatureRows, parts: Mapping[str, np.ndarray], cache_path: Path, budget: int,
                    in_process: bool) -> Iterator[tuple[np.ndarray | FeatureRows, np.ndarray | FeatureRows]]:
    """The train and validation features of the trials: read into memory within ``budget``; else, for trials in
    this process, the cache rows themselves (read a window of at most a sixteenth of the budget at a time), and for
    workers ``.npy`` files written a window at a time in a temporary folder beside the cache and memory-mapped
    (the folder is removed after)."""
    need = 4 * rows.dim * (len(parts["train"]) + len(parts["val"]))
    if need <= budget:
        yield rows.read(parts["train"]), rows.read(parts["val"])
        return
    over = f"the trials' features ({size_text(need)}, more than the budget {size_text(budget)})"
    if in_process:  # two streams at once (the stacks; the baselines beside), each window copied while it is
        # shuffled and batched: a quarter of train's window each
        window = stream_window(budget) // 4
        logger.info(f"search: {over} are streamed from the cache, {size_text(window)} at a time; baseline "
                    "trials: SGD logistic regression of their C")
        yield tuple(rows.subset(parts[name], window_bytes=window) for name in ("train", "val"))
        return
    with tempfile.TemporaryDirectory(prefix=".gearfeat-trials-", dir=Path(cache_path).parent) as folder:
        logger.info(f"search: {over} are memory-mapped from {folder}")
        yield tuple(rows.to_npy(parts[name], Path(folder) / f"{name}.npy") for name in ("train", "val"))
