"""The scikit-learn baseline on the same cached features: scaler + a linear or kernel classifier."""
from __future__ import annotations

import math
import os

from sklearn.linear_model import LogisticRegression
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


def load_baseline(run_dir: str | os.PathLike) -> Pipeline:
    """The fitted baseline of a ``train`` or ``search`` run, for features extracted with the run's settings.
    Loaded only if its bytes match the sha256 that run recorded in ``manifest.json`` (unpickling runs code)."""
    return RunDir(run_dir).load_joblib(BASELINE_FILE)
