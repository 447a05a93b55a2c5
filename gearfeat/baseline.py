"""The scikit-learn baseline on the same cached features: scaler + a linear or kernel classifier."""
from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from .errors import GearfeatError

BASELINES = {
    "logreg": lambda C, seed: LogisticRegression(C=C, max_iter=3000, random_state=seed),
    "linear_svc": lambda C, seed: LinearSVC(C=C, max_iter=20000, random_state=seed),
    "svc": lambda C, seed: SVC(C=C, kernel="rbf", random_state=seed),
}
"""Baseline estimators by name."""


def make_baseline(kind: str = "logreg", C: float = 1.0, seed: int = 0) -> Pipeline:
    """``StandardScaler`` followed by the estimator ``kind`` ("logreg", "linear_svc" or "svc")."""
    if kind not in BASELINES:
        raise GearfeatError(f"unknown baseline {kind!r}; choose one of: {', '.join(BASELINES)}")
    if not C > 0:
        raise GearfeatError(f"baseline C must be > 0, got {C!r}")
    return make_pipeline(StandardScaler(), BASELINES[kind](float(C), seed))
