"""Running trials: configurations trained and scored on the validation split, many in parallel, ranked.

Dense-head trials of the same shape train together as one :class:`StackedHeads` (split to fit
:data:`STACK_BUDGET`); a stack is one unit of work for a backend, a baseline trial another. The ``local``
backend runs the units in threads of this process, one per core (``jobs``), the costliest stacks first and
the baseline trials last, each thread with its share of the cores for BLAS (one each on a 2-core machine):
NumPy releases the GIL in its products and element-wise loops, so two stacks train at once, Adam's updates
included, without the waits of a product split over two threads, and a worker process would pay about 4 s
importing TensorFlow, more than all the default space's baseline fits."""
from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import joblib
import numpy as np
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from .._internal.progress import Progress
from ..features.cache import FeatureRows
from ..models.baseline import baseline_name, fit_streamed_baseline, make_baseline
from ..models.heads import DenseHead
from ..models.stacked import Features, StackedHeads, plan_stacks
from .backends import RayObject, Workers, limit_tf_threads
from .space import BASELINE, kind_of

logger = logging.getLogger(__name__)

STACK_BUDGET = 256 << 20
"""Bytes one stack of heads may allocate while it trains (:func:`~gearfeat.models.stacked.stack_bytes`); larger
stacks are split. The default space's whole grid on 1,280 features trains within 2 GB in the local backend."""

Row = tuple[int, dict[str, Any]]


class Trials(list):
    """The trial rows (a list), plus ``best_head``: the best dense trial's fitted :class:`DenseHead`, sliced out of
    its stack (None without dense trials), the one :func:`rank_trials` ranks first among the dense trials."""

    best_head: DenseHead | None = None


def run_trial(params: Mapping[str, Any], X_train: Features, y_train: np.ndarray, X_val: Features,
              y_val: np.ndarray, n_classes: int, seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Train one configuration on the training features and score it on the validation features.

    Returns ``model`` ("dense" or the baseline's name, see :func:`baseline_name`), ``val_loss`` (cross-entropy of
    the predicted probabilities; None for a baseline without probabilities), ``val_accuracy``, ``epochs_run``,
    ``best_epoch`` and ``seconds``. ``threads`` sizes TensorFlow's pools if this process has not used them yet.

    Features given as cache rows (:class:`~gearfeat.features.cache.FeatureRows`) are streamed, never held whole:
    a dense head trains as a stack of one (:func:`run_stack`), and a baseline is the streamed SGD logistic
    regression of its ``baseline_c`` whatever its ``baseline`` (as ``train`` fits over its memory budget).
    """
    limit_tf_threads(threads)
    start = time.perf_counter()
    if kind_of(params) == BASELINE:
        kind = params.get("baseline", "logreg")
        model = baseline_name(kind)
        if isinstance(X_train, FeatureRows):
            everything = np.arange(len(X_train))
            estimator = fit_streamed_baseline(
                lambda epoch: ((X, y_train[at]) for at, X in X_train.shuffled(everything, seed=seed + epoch)),
                range(n_classes), n_rows=len(X_train), C=params.get("baseline_c", 1.0), seed=seed)
        else:
            estimator = make_baseline(kind, params.get("baseline_c", 1.0), seed=seed).fit(X_train, y_train)
        apply = X_val.apply if isinstance(X_val, FeatureRows) else lambda function: function(X_val)
        proba = apply(estimator.predict_proba) if hasattr(estimator, "predict_proba") else None
        predicted = apply(estimator.predict)
        epochs_run = best_epoch = None
    elif isinstance(X_train, FeatureRows):
        [(_, row)], _ = run_stack([0], [params], X_train, y_train, X_val, y_val, n_classes, seed)
        return row
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


def _rank_key(index: int, row: Mapping[str, Any]) -> tuple:
    """:func:`rank_trials`'s order, for one trial."""
    return -row["val_accuracy"], math.inf if row["val_loss"] is None else row["val_loss"], index


def _resolved(args: Sequence) -> list:
    return [arg.get() if isinstance(arg, RayObject) else arg for arg in args]


def _baseline_work(index: int, params: Mapping[str, Any], *args) -> tuple[list[Row], None]:
    return [(index, run_trial(params, *_resolved(args)))], None


def run_stack(indexes: Sequence[int], configurations: Sequence[Mapping[str, Any]], X_train: Features,
              y_train: np.ndarray, X_val: Features, y_val: np.ndarray, n_classes: int, seed: int = 0,
              threads: int | None = None) -> tuple[list[Row], StackedHeads]:
    """Train the dense-head ``configurations`` (trials ``indexes``, one shape) as one stack, each with ``seed``,
    and score each as :func:`run_trial` does. Returns the ``(trial, row)`` pairs, a row's ``seconds`` the stack's
    time shared by its heads, and the stack of its best head only (:meth:`StackedHeads.select`)."""
    X_train, y_train, X_val, y_val = _resolved((X_train, y_train, X_val, y_val))
    limit_tf_threads(threads)
    start = time.perf_counter()
    stack = StackedHeads([DenseHead(**params, seed=seed) for params in configurations])
    stack.fit(X_train, y_train, validation_data=(X_val, y_val), classes=range(n_classes))
    probabilities = stack.predict_proba(X_val)
    seconds = (time.perf_counter() - start) / len(indexes)
    rows = [(index, {"model": "dense", "val_loss": float(log_loss(y_val, proba, labels=range(n_classes))),
                     "val_accuracy": float(np.mean(proba.argmax(axis=1) == y_val)),
                     "epochs_run": len(history["loss"]), "best_epoch": int(best), "seconds": seconds})
            for index, proba, history, best in zip(indexes, probabilities, stack.histories_, stack.best_epochs_)]
    best = min(range(len(rows)), key=lambda j: _rank_key(*rows[j]))
    return rows, stack.select([best])


def run_trials(configurations: Sequence[Mapping[str, Any]], X_train: Features, y_train: np.ndarray,
               X_val: Features, y_val: np.ndarray, *, n_classes: int | None = None, seed: int = 0,
               workers: Workers | None = None, progress: bool = True, budget: int = STACK_BUDGET) -> Trials:
    """Run every configuration (dense heads in stacks of at most ``budget`` bytes, see :func:`run_stack`;
    baselines with :func:`run_trial`); rows in configuration order, each with its ``trial`` number and
    ``params`` (a baseline estimator by its :func:`baseline_name`), on ``workers`` (default ``Workers()``: this
    process, a thread per core). Features given as cache rows
    (:class:`~gearfeat.features.cache.FeatureRows`) are streamed by every trial (see :func:`run_trial`); arrays are
    sent to the workers once."""
    workers = workers or Workers()
    backend, spec, jobs, address = workers.backend, workers.spec, workers.jobs, workers.address
    arrays = [_features(X_train), np.asarray(y_train, np.int64), _features(X_val), np.asarray(y_val, np.int64)]
    n_classes = int(n_classes or max(arrays[1].max(), arrays[3].max()) + 1)
    dense = [i for i, params in enumerate(configurations) if kind_of(params) != BASELINE]
    baselines = [i for i, params in enumerate(configurations) if kind_of(params) == BASELINE]
    specs = [DenseHead(**configurations[i]) for i in dense]
    plan = plan_stacks(specs, n_features=arrays[0].shape[1], n_classes=n_classes, n_val=len(arrays[2]), budget=budget)
    stacks = [[dense[j] for j in part] for part in plan]
    rows = Trials({} for _ in configurations)
    best: list[tuple[tuple, StackedHeads]] = []
    with spec.connect(address) as settings, Progress(len(configurations), "search", unit="trial",
                                                     enabled=progress) as bar:
        share = settings.pop("share", None)
        shared = [share(array) for array in arrays] if share else arrays
        trials = f"{len(configurations)} trial{'s' * (len(configurations) != 1)}"

        def calls(threads: int | None) -> list:
            return ([joblib.delayed(run_stack)(stack, [dict(configurations[i]) for i in stack], *shared, n_classes,
                                               seed, threads) for stack in stacks]
                    + [joblib.delayed(_baseline_work)(i, dict(configurations[i]), *shared, n_classes, seed, threads)
                       for i in baselines])

        if spec.in_process:
            threads = max(1, min(len(stacks) + len(baselines), joblib.effective_n_jobs(int(jobs))))
            logger.info(f"search: {trials} in this process on {threads} thread{'s' * (threads > 1)} ({len(dense)} "
                        f"head{'s' * (len(dense) != 1)} in {len(stacks)} stack{'s' * (len(stacks) != 1)}, "
                        f"{len(baselines)} baseline{'s' * (len(baselines) != 1)})")
            costs = [_stack_cost([specs[j] for j in part], *arrays[0].shape, n_classes) for part in plan]
            results = _in_process(calls(None), costs, threads)
        else:
            with joblib.parallel_config(n_jobs=int(jobs), **settings):
                units = len(stacks) + len(baselines)
                n_workers = max(1, min(units, joblib.effective_n_jobs(int(jobs))))
                threads = spec.threads(n_workers)
                logger.info(f"search: {trials} on {n_workers} {backend} worker{'s' * (n_workers > 1)}"
                            + (f", {threads} TensorFlow thread{'s' * (threads > 1)} each" if threads else ""))
                results = _finished(calls(threads), workers=n_workers, streams=spec.streams)
        for done, stack in results:
            for i, row in done:
                params = dict(configurations[i])
                if "baseline" in params:  # an estimator by its class and parameters, as trials.json writes it
                    params["baseline"] = baseline_name(params["baseline"])
                rows[i] = {"trial": i, "params": params, **row}
                bar.update()
            if stack is not None:  # the stack of its best head: ranked as that head's row
                best.append((min(_rank_key(*pair) for pair in done), stack))
    if best:
        rows.best_head = min(best, key=lambda pair: pair[0])[1].head(0)
    return rows


def _features(X: Features) -> Features:
    """Float32 C-ordered features (no copy when they are: a memory-mapped array stays mapped), or cache rows."""
    return X if isinstance(X, FeatureRows) else np.ascontiguousarray(X, np.float32)


def _stack_cost(heads: Sequence[DenseHead], n_rows: int, n_features: int, n_classes: int) -> float:
    """A stack's relative cost per epoch, to start the costliest first: each step's products cost about
    ``batch_size`` multiply-adds per weight and its Adam update about as much as 75 (measured on this project's
    2-core CPU), for every head."""
    sizes = [n_features, *heads[0].hidden, n_classes]
    weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    steps = -(-n_rows // int(heads[0].batch_size))
    return len(heads) * weights * steps * (int(heads[0].batch_size) + 75)


def _in_process(calls: list, costs: Sequence[float], workers: int
                ) -> Iterator[tuple[list[Row], StackedHeads | None]]:
    """The units as they end, on ``workers`` threads of this process: the stacks (``calls`` first, one cost
    each) costliest first, then the baseline trials; BLAS gets ``cores // workers`` threads (at least one) while
    they run."""
    stacks = [c for c in calls if c[0] is run_stack]
    order = [stacks[i] for i in sorted(range(len(stacks)), key=lambda i: -costs[i])]
    order += [c for c in calls if c[0] is not run_stack]
    with threadpool_limits(max(1, joblib.cpu_count() // workers), user_api="blas"), \
            ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, *args, **kwargs) for function, args, kwargs in order]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # on an error, the units not started yet are not run
            for future in futures:
                future.cancel()


def _finished(calls: list, *, workers: int, streams: bool) -> Iterator[tuple[list[Row], StackedHeads | None]]:
    """The units' results as they end, on ``workers`` workers (never more than there are trials). A
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
