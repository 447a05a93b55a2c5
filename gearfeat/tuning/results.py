"""A search's results in the run folder: ``trials.csv``/``trials.json``, ``leaderboard.md``, ``search.png``."""
from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._internal.fileio import write_atomic
from ..outputs.plots import png_path, save_figure
from ..outputs.runs import RunDir
from .space import PARAMS
from .trials import no_influence_reason, parameter_influence, rank_trials

_RESULT_COLUMNS = ("val_loss", "val_accuracy", "epochs_run", "best_epoch", "seconds")


def write_trials(run: RunDir, trials: Sequence[Mapping[str, Any]]) -> None:
    run.write_json("trials.json", list(trials))
    names = [name for name in PARAMS if any(name in t["params"] for t in trials)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "rank", "model", *names, *_RESULT_COLUMNS])
    for t in trials:
        writer.writerow([t["trial"], t["rank"], t["model"],
                         *(_text(t["params"][n]) if n in t["params"] else "" for n in names),
                         *("" if t[c] is None else t[c] for c in _RESULT_COLUMNS)])
    write_atomic(run / "trials.csv", buffer.getvalue())
    run.record("trials.csv")


def kept_summary(tried: int, model: str) -> str:
    """Which of the ``tried`` configurations of ``model`` the run folder keeps, for the summaries."""
    if not tried:
        return "default settings, not searched"
    return f"the best of {tried} {model} configuration{'s' * (tried != 1)} tried"


def _text(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def write_leaderboard(run: RunDir, board: Sequence[Mapping[str, Any]], info: Mapping[str, Any],
                       influence: Mapping[str, float], metrics: Mapping[str, Any], kept_baseline: str) -> None:
    winner = metrics["winner"]
    lines = [
        "# Search leaderboard", "",
        f"{info['trials']} trials ({info['strategy']} search) of {info['configurations']} configurations, "
        f"{info['backend']} backend, {info['seconds']:.1f} s. Ranked by validation accuracy, then validation "
        "loss (cross-entropy; none for baselines without probabilities).", "",
        f"Winner: trial {winner['trial']} ({winner['model']}), test accuracy {winner['test_accuracy']:.4f}. "
        f"`model.h5` holds the dense head, {kept_summary(info['head_trials'], 'dense head')} (test accuracy "
        f"{metrics['test_accuracy']:.4f}); `baseline.joblib` the baseline, {kept_baseline} (test accuracy "
        f"{metrics['baseline_test_accuracy']:.4f}). These are the only uses of the test split, one per model.", "",
    ]
    if influence:
        name, share = next(iter(influence.items()))
        lines += [f"Most influential parameter: `{name}` (explains about {share:.0%} of the variance of validation "
                  "accuracy over the trials it applies to, omega squared).", ""]
    else:
        lines += [f"Most influential parameter: none named ({no_influence_reason(board)}).", ""]
    lines += ["| rank | trial | model | val accuracy | val loss | epochs | seconds | parameters |",
              "|---:|---:|---|---:|---:|---:|---:|---|"]
    for t in board:
        params = " ".join(f"{k}={_text(v)}" for k, v in t["params"].items()) or "(defaults)"
        loss = "" if t["val_loss"] is None else f"{t['val_loss']:.4f}"
        lines.append(f"| {t['rank']} | {t['trial']} | {t['model']} | {t['val_accuracy']:.4f} | {loss} | "
                     f"{t['epochs_run'] or ''} | {t['seconds']:.1f} | {params} |")
    write_atomic(run / "leaderboard.md", "\n".join(lines) + "\n")
    run.record("leaderboard.md")


def plot_search(trials: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                influence: Mapping[str, float] | None = None) -> Path:
    """Validation accuracy per trial (left; a star on the trial :func:`rank_trials` puts first) and against
    the most influential parameter (right)."""
    path = png_path(path)
    influence = parameter_influence(trials) if influence is None else influence
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    best = rank_trials(trials)[0]
    for model in sorted({t["model"] for t in trials}, key=lambda m: (m != "dense", m)):
        mine = [t for t in trials if t["model"] == model]
        left.plot([t["trial"] for t in mine], [t["val_accuracy"] for t in mine], "o" if model == "dense" else "s",
                  label=model, alpha=0.8)
    left.plot(best["trial"], best["val_accuracy"], "*", color="tab:red", markersize=16,
              label=f"best: trial {best['trial']}")
    left.set(xlabel="Trial", ylabel="Validation accuracy", title="Validation accuracy per trial")
    left.grid(alpha=0.3)
    left.legend()
    if influence:
        name, share = next(iter(influence.items()))
        _plot_by_value(right, trials, name)
        right.set_title(f"By {name} (explains about {share:.0%} of the variance)")
    else:
        right.text(0.5, 0.5, no_influence_reason(trials), ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    return save_figure(fig, path)


def _plot_by_value(ax, trials: Sequence[Mapping[str, Any]], name: str) -> None:
    """Each trial's validation accuracy over the values of ``name`` (slightly spread), with each value's mean."""
    groups: dict[str, list[float]] = defaultdict(list)
    for t in trials:
        value = t["model"] if name == "model" else t["params"].get(name)
        if name == "model" or name in t["params"]:
            groups[_text(value)].append(t["val_accuracy"])
    labels = sorted(groups, key=_sort_key)
    rng = np.random.default_rng(0)
    for x, label in enumerate(labels):
        accuracies = groups[label]
        ax.plot(x + rng.uniform(-0.12, 0.12, len(accuracies)), accuracies, "o", color="tab:blue", alpha=0.6)
        ax.plot([x - 0.25, x + 0.25], [np.mean(accuracies)] * 2, color="tab:red", linewidth=2)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=name, ylabel="Validation accuracy")
    ax.grid(alpha=0.3)


def _sort_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
