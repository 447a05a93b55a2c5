"""The scikit-learn baseline on the same cached features: scaler + a linear or kernel classifier."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
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
"""Baseline estimators by name."""


def check_baseline(kind: str, C: float) -> None:
    """Raise a GearfeatError unless ``kind`` is a known baseline and ``C`` a finite number above 0."""
    if not isinstance(kind, str) or kind not in BASELINES:
        raise GearfeatError(f"unknown baseline {kind!r}; choose one of: {', '.join(BASELINES)}")
    if not is_real(C) or not 0 < C < math.inf:
        raise GearfeatError(f"baseline C must be a finite number above 0, got {C!r}")


def make_baseline(kind: str = "logreg", C: float = 1.0, seed: int = 0) -> Pipeline:
    """``StandardScaler`` followed by the estimator ``kind`` ("logreg", "linear_svc" or "svc")."""
    check_baseline(kind, C)
    check_seed(seed)
    return make_pipeline(StandardScaler(), BASELINES[kind](float(C), seed))


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


def load_baseline(run_dir: str | os.PathLike) -> Pipeline:
    """The fitted baseline of a ``train`` or ``search`` run, for features extracted with the run's settings.
    Loaded only if its bytes match the sha256 that run recorded in ``manifest.json`` (unpickling runs code)."""
    return RunDir(run_dir).load_joblib(BASELINE_FILE)
