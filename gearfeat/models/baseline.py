"""The scikit-learn baseline on the same cached features: scaler + a linear or kernel classifier by name, or any
scikit-learn classifier."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

import numpy as np
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from .._internal.errors import GearfeatError, check_seed, is_real
from ..outputs.runs import RunDir

BASELINE_FILE = "baseline.joblib"
"""Where a train or search run keeps its fitted baseline."""

BASELINES = {
    "logreg": lambda C, seed: LogisticRegression(C=C, max_iter=3000, random_state=seed),
    "linear_svc": lambda C, seed: LinearSVC(C=C, max_iter=20000, random_state=seed),
    "svc": lambda C, seed: SVC(C=C, kernel="rbf", random_state=seed),
}
"""Baseline estimators by name (shortcuts: each follows a StandardScaler, with the run's C and seed)."""

Baseline = Union[str, BaseEstimator]
"""A baseline: a name of :data:`BASELINES`, or a scikit-learn classifier (cloned before it is fitted)."""


def baseline_error(value: Any) -> str | None:
    """Why ``value`` is not a baseline (a name of :data:`BASELINES` or a scikit-learn classifier with ``fit`` and
    ``predict``), in words that name it; None when it is one."""
    if isinstance(value, str):
        return None if value in BASELINES else f"unknown baseline {value!r}"
    try:
        classifier = is_classifier(value)
    except (AttributeError, TypeError):  # not an estimator instance (a class, a number, ...)
        classifier = False
    lacking = [name for name in ("fit", "predict") if not callable(getattr(value, name, None))]
    if classifier and not lacking:
        return None
    why = ("a class: pass an instance of it" if isinstance(value, type) else
           f"it has no {' or '.join(lacking)}" if lacking else "it is not a classifier")
    return f"baseline {value!r:.80} is not a scikit-learn classifier ({why})"


def check_baseline(kind: Baseline, C: float) -> None:
    """Raise a GearfeatError unless ``kind`` is a baseline (see :func:`baseline_error`) and ``C`` a finite number
    above 0 (for an estimator, ``C`` must be left at 1.0: it sets the C of a named baseline)."""
    error = baseline_error(kind)
    if error:
        raise GearfeatError(f"{error}; choose one of: {', '.join(BASELINES)}"
                            + ("" if isinstance(kind, str) else ", or pass a scikit-learn classifier"))
    if not is_real(C) or not 0 < C < math.inf:
        raise GearfeatError(f"baseline_c must be a finite number above 0, got {C!r}", parameter="baseline_c")
    if not isinstance(kind, str) and C != 1.0:
        raise GearfeatError(f"baseline_c={C!r} sets the C of a named baseline; set it on the estimator "
                            f"{baseline_name(kind)} instead", parameter="baseline_c")


def make_baseline(kind: Baseline = "logreg", C: float = 1.0, seed: int = 0) -> BaseEstimator:
    """``StandardScaler`` followed by the estimator ``kind`` ("logreg", "linear_svc" or "svc"), or an unfitted
    clone of the scikit-learn classifier ``kind``."""
    check_baseline(kind, C)
    check_seed(seed)
    if not isinstance(kind, str):
        return clone(kind)
    return make_pipeline(StandardScaler(), BASELINES[kind](float(C), seed))


def describe_estimator(estimator: BaseEstimator) -> str:
    """A readable one-line name of an estimator: its class and the parameters set away from their defaults, the
    steps of a pipeline joined by ``+``: ``StandardScaler() + LogisticRegression(max_iter=3000, random_state=0)``."""
    if isinstance(estimator, Pipeline):
        return " + ".join(describe_estimator(step) for _, step in estimator.steps)
    return " ".join(repr(estimator).split())


def baseline_name(kind: Baseline) -> str:
    """What ``metrics.json``, the log and a search's trials call a baseline: its name, or the estimator's class and
    parameters (:func:`describe_estimator`)."""
    return kind if isinstance(kind, str) else describe_estimator(kind)


STREAMED_EPOCHS = 5
"""Passes over the training rows of the streamed baseline (:func:`fit_streamed_baseline`)."""


def fit_streamed_baseline(windows: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]], classes: Sequence[int],
                          *, n_rows: int, C: float = 1.0, seed: int = 0, epochs: int = STREAMED_EPOCHS) -> Pipeline:
    """The baseline for training features that do not fit in memory: ``StandardScaler`` fitted by ``partial_fit``
    over one pass of ``windows(0)``, then ``SGDClassifier(loss="log_loss")`` (logistic regression by stochastic
    gradient; ``alpha = 1 / (C * n_rows)``, the L2 penalty of a LogisticRegression of that ``C``) fitted by
    ``partial_fit`` on the standardized windows of ``epochs`` passes, ``windows(epoch)`` each. ``windows(epoch)``
    yields (features, labels) pairs; it should give each pass its own order."""
    check_baseline("logreg", C)
    check_seed(seed)
    scaler = StandardScaler()
    for X, _ in windows(0):
        scaler.partial_fit(X)
    model = SGDClassifier(loss="log_loss", alpha=1.0 / (float(C) * max(n_rows, 1)), random_state=seed)
    for epoch in range(epochs):
        for X, y in windows(epoch):
            model.partial_fit(scaler.transform(X), y, classes=np.asarray(classes))
    return Pipeline([("standardscaler", scaler), ("sgdclassifier", model)])


def load_baseline(run_dir: str | os.PathLike) -> BaseEstimator:
    """The fitted baseline of a ``train`` or ``search`` run (a pipeline, or the run's own estimator), for features
    extracted with the run's settings.
    Loaded only if its bytes match the sha256 that run recorded in ``manifest.json`` (unpickling runs code)."""
    return RunDir(run_dir).load_joblib(BASELINE_FILE)
