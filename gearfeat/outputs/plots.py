"""PNG figures of training runs and results.

Figures are built on :class:`matplotlib.figure.Figure` directly and rendered with the Agg
canvas, so these functions neither touch pyplot's global state nor switch the backend of an
interactive session.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix

from .._internal.errors import GearfeatError
from .._internal.fileio import atomic_path

_DPI = 120
_CURVES = ("loss", "val_loss", "accuracy", "val_accuracy")


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "Training and validation loss",
) -> Path:
    """Plot Keras-style training curves (``loss``, ``val_loss``, optional accuracies).

    The left panel shows loss by epoch (numbered from 1) and marks the epoch with the
    lowest ``val_loss``; a right panel shows ``accuracy``/``val_accuracy`` when present.
    """
    path = png_path(path)
    if "loss" not in history:
        raise GearfeatError(f"history has no 'loss' key (keys: {sorted(history)}); pass a Keras History.history")
    curves = {key: np.asarray(history[key], dtype=float) for key in _CURVES if key in history}
    n_epochs = len(curves["loss"])
    if n_epochs == 0:
        raise GearfeatError("history['loss'] is empty; train for at least one epoch")
    for key, values in curves.items():
        if values.shape != (n_epochs,):
            raise GearfeatError(
                f"history[{key!r}] has {values.size} values but history['loss'] has {n_epochs}; "
                "every curve needs one value per epoch"
            )
    epochs = np.arange(1, n_epochs + 1)
    has_accuracy = "accuracy" in curves or "val_accuracy" in curves

    fig = Figure(figsize=(11 if has_accuracy else 6.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    loss_ax, *acc_ax = fig.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    _plot_curves(loss_ax, epochs, curves, "loss", "Loss")
    val_loss = curves.get("val_loss")
    if val_loss is not None and np.isfinite(val_loss).any():
        best = int(np.nanargmin(val_loss))
        loss_ax.axvline(epochs[best], color="0.5", linestyle="--", linewidth=1)
        loss_ax.plot(
            epochs[best], val_loss[best], marker="*", markersize=14, color="tab:red", linestyle="none",
            label=f"best epoch {epochs[best]} (val_loss {val_loss[best]:.3g})",
        )
        loss_ax.legend()
    if has_accuracy:
        _plot_curves(acc_ax[0], epochs, curves, "accuracy", "Accuracy")
    return save_figure(fig, path)


def plot_confusion(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix (test split, normalized by true class)",
) -> Path:
    """Plot the confusion matrix of integer labels, each row normalized by its true class.

    A class absent from ``y_true`` gets a zero row; the y labels show each class's count.
    """
    path = png_path(path)
    n_classes = len(class_names)
    if n_classes < 2:
        raise GearfeatError(f"class_names has {n_classes} name(s) ({list(class_names)}); need at least 2")
    y_true = _labels("y_true", y_true, n_classes)
    y_pred = _labels("y_pred", y_pred, n_classes)
    if y_true.size != y_pred.size:
        raise GearfeatError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}; they must match")
    if y_true.size == 0:
        raise GearfeatError("y_true and y_pred are empty; nothing to plot")
    matrix = confusion_matrix(y_true, y_pred, labels=range(n_classes), normalize="true")
    support = np.bincount(y_true, minlength=n_classes)

    side = 3.0 + 0.55 * n_classes
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of true class")
    ticks = np.arange(n_classes)
    ax.set_xticks(ticks, list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, [f"{name} (n={count})" for name, count in zip(class_names, support)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    fontsize = max(6, 11 - n_classes // 4)
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(
            col, row, "0" if value == 0 else f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
            color="white" if value > 0.6 else ("0.6" if value == 0 else "black"),
        )
    return save_figure(fig, path)


def plot_predictions(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Show uint8 ``HxWx3`` images in a grid, each with its (wrapped) title, e.g. ``"tents 0.97"``.

    ``ncols`` defaults to at most 5 columns. ``captions`` (e.g. file names) go in small grey type under the
    images; each image gets a light frame, so the square the model sees shows on a white page.
    """
    path = png_path(path)
    if len(images) != len(titles):
        raise GearfeatError(f"got {len(images)} images but {len(titles)} titles; pass one title per image")
    if captions is not None and len(captions) != len(images):
        raise GearfeatError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
    if len(images) == 0:
        raise GearfeatError("no images to plot; pass at least one")
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise GearfeatError(
                f"images[{i}] has shape {image.shape} and dtype {image.dtype}; expected uint8 HxWx3"
            )
    if ncols is None:
        ncols = 5
    elif ncols < 1:
        raise GearfeatError(f"ncols={ncols} must be at least 1")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)

    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(np.asarray(images[i]))
        ax.set_title(textwrap.fill(str(titles[i]), width=24, max_lines=3, placeholder="…"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")
        if captions is not None:
            ax.set_xlabel(_middle_ellipsis(str(captions[i]), 34), fontsize=7, color="0.4")
    return save_figure(fig, path)


def _plot_curves(ax: Axes, epochs: np.ndarray, curves: Mapping[str, np.ndarray], key: str, ylabel: str) -> None:
    """Draw the training and validation curves of ``key`` on ``ax``."""
    for name, label in ((key, "training"), (f"val_{key}", "validation")):
        if name in curves:
            ax.plot(epochs, curves[name], marker="o", markersize=4, label=label)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, epochs[-1] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend()


def _middle_ellipsis(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters, keeping both ends (a file's extension)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _labels(name: str, values: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """``values`` as a 1-D int array of class indices in ``[0, n_classes)``."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise GearfeatError(
            f"{name} has shape {array.shape} and dtype {array.dtype}; expected a 1-D sequence of class indices"
        )
    bad = array[(array < 0) | (array >= n_classes)]
    if bad.size:
        raise GearfeatError(f"{name} contains {bad[0]}, outside the {n_classes} classes (0..{n_classes - 1})")
    return array.astype(np.intp)


def png_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, checked (nothing created) to name a ``.png`` file that can be written: not a
    folder, and the nearest existing folder above it writable."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise GearfeatError(f"{path}: figures are written as PNG; use a path ending in .png")
    if path.is_dir():
        raise GearfeatError(f"{path} is a folder; pass the path of the .png file to write")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise GearfeatError(f"cannot write {path}: {ancestor} is not a writable folder")
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (checked by :func:`png_path`), creating its folder, and free its artists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    except OSError as exc:
        raise GearfeatError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        fig.clear()
    return path
