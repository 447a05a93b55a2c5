"""Running trials: one configuration trained and scored on the validation split, many in parallel, ranked."""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import joblib
import numpy as np
from sklearn.metrics import log_loss

from .._internal.progress import Progress
from ..models.baseline import make_baseline
from ..models.heads import DenseHead
from .backends import DEFAULT_BACKEND, RayObject, check_jobs, get_backend, limit_tf_threads
from .space import BASELINE, kind_of

Log = Callable[[str], None]


def run_trial(params: Mapping[str, Any], X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray, n_classes: int, seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Train one configuration on the training features and score it on the validation features.

    Returns ``model`` ("dense" or the baseline's name), ``val_loss`` (cross-entropy of the predicted
    probabilities; None for a baseline without probabilities), ``val_accuracy``, ``epochs_run``,
    ``best_epoch`` and ``seconds``. ``threads`` sizes TensorFlow's pools if this process has not used them yet.
    """
    limit_tf_threads(threads)
    start = time.perf_counter()
    if kind_of(params) == BASELINE:
        model = params.get("baseline", "logreg")
        estimator = make_baseline(model, params.get("baseline_c", 1.0), seed=seed).fit(X_train, y_train)
        proba = estimator.predict_proba(X_val) if hasattr(estimator, "predict_proba") else None
        predicted = estimator.predict(X_val)
        epochs_run = best_epoch = None
    else:
        model = "dense"
        head = DenseHead(**params, seed=seed).fit(X_train, y_train, validation_data=(X_val, y_val),
                                                  classes=range(n_classes))
        proba = head.predict_proba(X_val)
        predicted = proba.argmax(axis=1)
        epochs_run, best_epoch = len(head.history_["loss"]), int(head.best_epoch_)
    return {
        "model": model,
        "val_loss": None if proba is None else float(log_loss(y_val, proba, labels=range(n_classes))),
        "val_accuracy": float(np.mean(predicted == y_val)),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - start,
    }


def _numbered_trial(index: int, params: Mapping[str, Any], *args) -> tuple[int, dict[str, Any]]:
    return index, run_trial(params, *(arg.get() if isinstance(arg, RayObject) else arg for arg in args))


def run_trials(configurations: Sequence[Mapping[str, Any]], X_train: np.ndarray, y_train: np.ndarray,
               X_val: np.ndarray, y_val: np.ndarray, *, n_classes: int | None = None, seed: int = 0,
               jobs: int = -1, backend: str | None = None, address: str | None = None,
               progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Run every configuration with :func:`run_trial` in parallel; rows in configuration order, each with its
    ``trial`` number and ``params``. ``backend`` is a name in :data:`BACKENDS` (None: :data:`DEFAULT_BACKEND`)."""
    backend = backend or DEFAULT_BACKEND
    spec = get_backend(backend, address)
    check_jobs(jobs)
    arrays = [np.ascontiguousarray(X_train, np.float32), np.asarray(y_train, np.int64),
              np.ascontiguousarray(X_val, np.float32), np.asarray(y_val, np.int64)]
    n_classes = int(n_classes or max(arrays[1].max(), arrays[3].max()) + 1)
    rows: list[dict[str, Any]] = [{} for _ in configurations]
    with spec.connect(address) as settings:
        share = settings.pop("share", None)
        shared = [share(array) for array in arrays] if share else arrays
        with joblib.parallel_config(n_jobs=int(jobs), **settings):
            workers = max(1, min(len(configurations), joblib.effective_n_jobs(int(jobs))))
            threads = spec.threads(workers)
            log(f"search: {len(configurations)} trial{'s' * (len(configurations) != 1)} on {workers} {backend} "
                f"worker{'s' * (workers > 1)}"
                + (f", {threads} TensorFlow thread{'s' * (threads > 1)} each" if threads else ""))
            calls = [joblib.delayed(_numbered_trial)(i, dict(params), *shared, n_classes, seed, threads)
                     for i, params in enumerate(configurations)]
            with Progress(len(configurations), "search", unit="trial", enabled=progress) as bar:
                for i, row in _finished(calls, workers=workers, streams=spec.streams):
                    rows[i] = {"trial": i, "params": dict(configurations[i]), **row}
                    bar.update()
    return rows


def _finished(calls: list, *, workers: int, streams: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """The trials' ``(index, row)`` as they end, on ``workers`` workers (never more than there are trials). A
    backend that cannot stream results (Ray's hands back all of a call's at its end) runs them in waves of
    twice the workers on one pool, so that the progress bar moves."""
    if streams:
        yield from joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(calls)
        return
    with joblib.Parallel(n_jobs=workers) as parallel:
        for first in range(0, len(calls), 2 * workers):
            yield from parallel(calls[first:first + 2 * workers])


def rank_trials(trials: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trials best first, each with its ``rank``: highest validation accuracy, then lowest validation loss
    (none last), then trial number."""
    order = sorted(trials, key=lambda t: (-t["val_accuracy"],
                                          math.inf if t["val_loss"] is None else t["val_loss"], t["trial"]))
    return [{**t, "rank": rank} for rank, t in enumerate(order, 1)]


def parameter_influence(trials: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """For each parameter that varied, the share of the validation accuracy's variance its values explain over
    the trials it applies to (``model`` compares the models), most influential first.

    The share is omega squared, clipped at 0: eta squared corrected for the number of values. Uncorrected,
    a parameter whose values all differ "explains" 100 % of any noise, so a parameter is ranked only when some
    of its values were tried more than once (more trials than values).
    """
    values: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for t in trials:
        for name, value in {"model": t["model"], **t["params"]}.items():
            values[name].append((json.dumps(value), t["val_accuracy"]))
    influence = {}
    for name, pairs in values.items():
        groups: dict[str, list[float]] = defaultdict(list)
        for key, accuracy in pairs:
            groups[key].append(accuracy)
        n, k = len(pairs), len(groups)
        if k < 2 or n <= k:
            continue
        accuracies = np.array([a for _, a in pairs])
        total = float(((accuracies - accuracies.mean()) ** 2).sum())
        between = sum(len(g) * (np.mean(g) - accuracies.mean()) ** 2 for g in groups.values())
        within_mean_square = (total - between) / (n - k)
        omega = (between - (k - 1) * within_mean_square) / (total + within_mean_square) if total > 0 else 0.0
        influence[name] = max(0.0, float(omega))
    return dict(sorted(influence.items(), key=lambda item: -item[1]))


def no_influence_reason(trials: Sequence[Mapping[str, Any]]) -> str:
    """Why :func:`parameter_influence` names no parameter for ``trials``."""
    keys = {key for t in trials for key in t["params"]}
    varied = any(len({json.dumps(t["params"].get(key)) for t in trials}) > 1 for key in keys)
    if varied or len({t["model"] for t in trials}) > 1:
        return "too few trials per value to tell which parameter matters most"
    return "no parameter varied"
