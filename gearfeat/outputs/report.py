"""``gearfeat report``: a short journal-style write-up of gearfeat runs, every number read from their files.

The report is Markdown; the figures of the runs (``loss.png``, ``confusion.png``) and an optional prediction
grid are copied into a ``<report name>_files/`` folder beside it and referred to by relative path, so the
report and its folder can be moved together. Nothing in it is typed by hand: the numbers come from each
run's ``run.json`` (its :class:`~gearfeat.outputs.runs.RunRecord`) and ``metrics.json``.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._internal.errors import GearfeatError
from .._internal.fileio import write_atomic
from .runs import RunDir, RunRecord

ACCURACY_DIGITS = 4


@dataclass
class Run:
    """One run folder's records: ``record`` is its ``run.json``, ``metrics`` its ``metrics.json``."""

    path: Path
    name: str
    record: RunRecord
    metrics: dict[str, Any]

    @property
    def command(self) -> str:
        return self.record.command


@dataclass(frozen=True)
class Row:
    """A line of the results table: which run kind provides it, and which ``metrics.json`` key is its accuracy."""

    label: str  # in sentence case, as it reads mid-sentence
    commands: tuple[str, ...]  # the run kinds (run.json "command") that provide it
    accuracy_key: str
    seconds_key: str  # the phase of run.json["seconds"] that trained this model
    describe: Callable[[Run], str]
    purpose: str  # one sentence for the introduction


def _describe_baseline(run: Run) -> str:
    name = str(run.metrics.get("baseline", "?"))
    if "(" in name:  # an estimator's class and parameters, not one of the named baselines
        return f"`{name}`"
    return f"StandardScaler + `{name}` (C={run.record.baseline_c:g})"


def _describe_head(run: Run) -> str:
    hidden = run.record.head.get("hidden") or []
    return f"dense {'-'.join(str(h) for h in hidden) or 'linear'} on frozen {_backbone(run)} features"


def _describe_finetune(run: Run) -> str:
    return f"top {run.record.unfreeze} layers of {_backbone(run)} trained end to end"


def _describe_cnn(run: Run) -> str:
    return f"`{run.record.layers}`, {_count(run.record.parameters)} parameters"


TRANSFER = ("train", "search")  # runs that write a stitched transfer model, its head and baseline

ROWS: tuple[Row, ...] = (
    Row("scikit-learn baseline", TRANSFER, "baseline_test_accuracy", "baseline", _describe_baseline,
        "a linear scikit-learn model on the cached features, the bar any neural head must clear"),
    Row("dense head", TRANSFER, "test_accuracy", "head", _describe_head,
        "a small dense network on the cached features, stitched behind the backbone into one Keras model"),
    Row("fine-tuned model", ("finetune",), "test_accuracy", "train", _describe_finetune,
        "the stitched model with the top of its backbone unfrozen and trained end to end on the images"),
    Row("CNN from scratch", ("cnn",), "test_accuracy", "train", _describe_cnn,
        "a convolutional network trained on the images alone, without pretrained features"),
)
"""The rows of the results table, in order; a run kind may give several rows."""


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder written by gearfeat; anything else is refused with one line."""
    folder = RunDir(path)  # refuses a folder without a manifest
    record = RunRecord.load(folder)  # refuses a damaged run.json, and one of a command the report does not know
    metrics = folder.read_json("metrics.json")
    if not isinstance(metrics, dict) or "test_accuracy" not in metrics:
        raise GearfeatError(f"{folder / 'metrics.json'} has no test_accuracy (edited, or written by an unfinished "
                            "run?); run the command again")
    return Run(folder.path, folder.path.resolve().name, record, metrics)


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                 predictions_png: str | os.PathLike | None = None, *, notes: Sequence[str] = ()) -> Path:
    """Write the Markdown report of ``run_dirs`` to ``out`` and copy its figures beside it; return ``out``.

    ``predictions_png`` (a grid drawn by ``gearfeat predict --plot``) is shown in the results; ``notes`` are
    sentences the caller wants the reader to see under the abstract (e.g. why the weights are random).
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)  # one folder
    if not run_dirs:
        raise GearfeatError("run_dirs is empty; pass the folders of gearfeat runs", parameter="run_dirs")
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise GearfeatError(f"{out}: the report is Markdown; use a path ending in .md")
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    if predictions_png is not None:
        _check_png(Path(predictions_png))
    files = out.parent / f"{out.stem}_files"
    try:
        files.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GearfeatError(f"cannot create {files}: {exc.strerror}") from None
    figures = _Figures(out.parent, files)
    sections = [_title(runs), _abstract(runs, notes), _introduction(runs), _methods(runs),
                _results(runs, figures, predictions_png), _discussion(runs), _appendix(runs)]
    write_atomic(out, "\n\n".join(s.strip() for s in sections) + "\n")
    return out


def _check_png(path: Path) -> None:
    try:
        with path.open("rb") as file:
            signature = file.read(len(_PNG_SIGNATURE))
    except OSError as exc:
        raise GearfeatError(f"prediction figure {path}: {exc.strerror}") from None
    if signature != _PNG_SIGNATURE:
        raise GearfeatError(f"prediction figure {path} is not a PNG image; pass the file gearfeat predict --plot "
                            "wrote")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ the table
@dataclass
class Result:
    """One filled row of the results table."""

    row: Row
    run: Run
    accuracy: float

    @property
    def n_test(self) -> int | None:
        n = self.run.metrics.get("n_test", self.run.record.split.get("test"))
        return int(n) if n is not None else None

    @property
    def seconds(self) -> float | None:
        return self.run.record.seconds.get(self.row.seconds_key)

    @property
    def name(self) -> str:
        return f"the {self.row.label} of `{self.run.name}`"


def results(runs: Sequence[Run]) -> list[Result]:
    """Every row the runs provide, in :data:`ROWS` order then run order."""
    return [Result(row, run, float(run.metrics[row.accuracy_key]))
            for row in ROWS for run in runs
            if run.command in row.commands and row.accuracy_key in run.metrics]


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of an accuracy measured on ``n`` images."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _present(runs: Sequence[Run]) -> list[Row]:
    given = {r.row for r in results(runs)}
    return [row for row in ROWS if row in given]


def _accuracy(value: float) -> str:
    return f"{value:.{ACCURACY_DIGITS}f}"


def _results_table(runs: Sequence[Run]) -> str:
    lines = ["| Model | Run | Test accuracy | 95 % interval | Correct / test images | Fit time (s) | Description |",
             "| --- | --- | ---: | :---: | ---: | ---: | --- |"]
    for r in results(runs):
        n = r.n_test
        interval = "[{:.3f}, {:.3f}]".format(*wilson_interval(r.accuracy, n)) if n else "–"
        correct = f"{round(r.accuracy * n)} / {n}" if n else "–"
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else "–"
        lines.append(f"| {_cap(r.row.label)} | `{r.run.name}` | {_accuracy(r.accuracy)} | {interval} | {correct} | "
                     f"{seconds} | {r.row.describe(r.run)} |")
    return "\n".join(lines)


def _per_class_table(runs: Sequence[Run]) -> str:
    with_classes = [r for r in results(runs)
                    if r.row.accuracy_key == "test_accuracy" and "per_class" in r.run.metrics]
    if not with_classes:
        return ""
    names = list(with_classes[0].run.metrics["per_class"])
    if any(list(r.run.metrics["per_class"]) != names for r in with_classes):
        return "The runs have different classes, so their per-class recalls are not tabulated side by side."
    header = " | ".join(f"{_cap(r.row.label)} (`{r.run.name}`)" for r in with_classes)
    lines = [f"| Class | Test images | {header} |", "| --- | ---: |" + " ---: |" * len(with_classes)]
    for name in names:
        cells = " | ".join(f"{r.run.metrics['per_class'][name]['recall']:.3f}" for r in with_classes)
        lines.append(f"| {name} | {with_classes[0].run.metrics['per_class'][name]['support']} | {cells} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ sections
def _title(runs: Sequence[Run]) -> str:
    data = sorted({Path(r.record.data_dir).name for r in runs})
    return (f"# Classifying the `{'`, `'.join(data)}` images: "
            f"{_join(row.label for row in _present(runs))} compared")


def _abstract(runs: Sequence[Run], notes: Sequence[str]) -> str:
    first = runs[0].record
    rows = results(runs)
    compared = _join(f"{r.name} ({_accuracy(r.accuracy)})" for r in rows)
    text = (f"We classify the {first.n_images} images of the data folder "
            f"`{Path(first.data_dir).name}` into {len(first.class_names)} classes and "
            f"measure the test accuracy, {_test_images(runs)}, of {compared}. {_best_sentence(rows)}")
    random = [r.name for r in runs if _is_random(r)]
    if random:
        backbone, has = ("backbone", "has") if len(random) == 1 else ("backbones", "have")
        text += (f" **The {backbone} of {_join(f'`{n}`' for n in random)} {has} random initialization, not "
                 "pretrained (ImageNet) weights**: the features are not transfer-learned, so these figures show "
                 "the workflow, not what pretrained features achieve.")
    return "## Abstract\n\n" + text + "".join(f"\n\n> **Note.** {note}" for note in notes)


def _introduction(runs: Sequence[Run]) -> str:
    models = "\n".join(f"- **{_cap(row.label)}**: {row.purpose}." for row in _present(runs))
    return f"""## Introduction

Transfer learning reuses a network trained on a large image collection as a fixed feature extractor: each
image runs once through the frozen backbone, its pooled features are cached, and only a small classifier is
trained on them, which takes seconds instead of hours. The question is how much accuracy that gives up, or
gains, against models that cost more to train. The models compared here are:

{models}

{"All of them are evaluated on the same held-out test split." if _one_split(runs) else
 "They do not share one data folder and split (see Data and split), so their test accuracies are measured on "
 "different held-out images."}"""


def _methods(runs: Sequence[Run]) -> str:
    parts = ["## Materials and methods", "### Data and split", _data_text(runs)]
    for run in runs:
        parts += [f"### {KINDS[run.command].heading} (run `{run.name}`)", KINDS[run.command].methods(run)]
    parts += ["### Hardware and wall times", _hardware_text(runs), _times_table(runs)]
    return "\n\n".join(parts)


def _data_text(runs: Sequence[Run]) -> str:
    lines = []
    for key, group in _by_split(runs).items():
        record = group[0].record
        split, names = record.split, record.class_names
        who = "All runs use" if len(group) == len(runs) else f"{_join(f'`{r.name}`' for r in group)} use"
        lines.append(
            f"{who} the image folder `{record.data_dir}` ({record.n_images} images used, "
            f"{record.n_skipped} skipped as unusable) with {len(names)} classes: "
            f"{', '.join(names)}. Every image is standardized the same way for every model: EXIF orientation "
            f"applied, transparency composited on white, converted to 8-bit RGB, the longer side scaled to "
            f"the image size and centred on a white square. The split is stratified by class and seeded "
            f"(seed {split.get('seed')}): {split.get('train')} training, {split.get('val')} validation and "
            f"{split.get('test')} test images (fractions {split.get('val_fraction')} validation, "
            f"{split.get('test_fraction')} test); byte-identical files always fall in the same part. The "
            f"validation images choose the stopping epoch; the test images are used only for the results.")
    return "\n\n".join(lines)


def _methods_train(run: Run) -> str:
    record = run.record
    ex, head = record.extractor, record.head
    text = (f"Backbone: Keras `{ex.get('backbone')}`" + (f" (alpha {ex['alpha']:g})" if ex.get("alpha") else "")
            + f" with {_weights_text(run)}, frozen, global {ex.get('pooling')} pooling. Images are standardized "
            f"to {ex.get('image_size')} px and resized inside the model to {ex.get('backbone_size')} px for "
            f"the backbone. Features of {record.n_images} images were cached "
            f"({record.images_computed} computed in this run, {record.images_reused} reused "
            f"from the cache).{_views_text(record.views)}\n\n"
            f"Dense head: hidden layers {head.get('hidden')}, dropout {head.get('dropout')}, L2 {head.get('l2')}, "
            f"batch normalization {'on' if head.get('batch_norm') else 'off'}; Adam with learning rate "
            f"{head.get('learning_rate')}, batch size {head.get('batch_size')}, at most {head.get('epochs')} "
            f"epochs with early stopping on the validation loss (patience {head.get('patience')}, best weights "
            f"restored): {record.epochs_run} epochs run, best epoch {record.best_epoch}. "
            f"Baseline: {_describe_baseline(run)} on the same cached features.")
    delta = run.metrics.get("stitched_vs_head_max_abs_diff")
    if delta is not None:
        text += (f" The saved model (`model.h5`) is the backbone and the head stitched into one compiled Keras "
                 f"model; its class probabilities on test images differ from the head's on cached features by "
                 f"at most {delta:.1e}.")
    return text


def _views_text(views: dict | None) -> str:
    """The sentence on the cached augmented views of a train or search run ("" without views)."""
    if not views:
        return ""
    return (f" Besides the plain images, {views.get('views')} augmented views of each of the {views.get('images')} "
            f"training images (`{views.get('spec')}`, seed {views.get('seed')}) were run through the backbone and "
            f"cached: {views.get('rows')} view rows ({views.get('computed')} computed in this run, "
            f"{views.get('reused')} reused). The dense head trained on the plain and view rows of the training "
            f"split, the baseline on {'both' if views.get('baseline') else 'the plain rows only'}; validation and "
            "test used plain images only.")


def _methods_finetune(run: Run) -> str:
    record = run.record
    return (f"Starting from the stitched model of run `{Path(record.source_run).name}` ({_backbone(run)} with "
            f"{_weights_text(run)}), the top {record.unfreeze} backbone layers are unfrozen "
            f"({len(record.unfrozen_layers)} trainable layers, batch normalization kept frozen; "
            f"{_count(record.trainable_parameters)} trainable parameters) and trained end to end with "
            f"the head on {record.image_size} px images. {_fit_text(run)}")


def _methods_cnn(run: Run) -> str:
    record = run.record
    return (f"A convolutional network trained from scratch on {record.image_size} px images: layers "
            f"`{record.layers}`, augmentation `{record.augment}` (active in training only), "
            f"{_count(record.parameters)} parameters. {_fit_text(run)}")


@dataclass(frozen=True)
class Kind:
    """How the report presents one kind of run (its run.json ``command``)."""

    heading: str
    short: str  # in figure captions
    methods: Callable[[Run], str]


_TRANSFER_KIND = Kind("Transfer learning: frozen backbone, dense head and baseline", "dense head on frozen features",
                      _methods_train)
KINDS: dict[str, Kind] = {"train": _TRANSFER_KIND, "search": _TRANSFER_KIND,
                          "finetune": Kind("Fine-tuning", "fine-tuning", _methods_finetune),
                          "cnn": Kind("CNN from scratch", "CNN from scratch", _methods_cnn)}
"""How the report presents each of :data:`~gearfeat.outputs.runs.COMMANDS`."""


def _fit_text(run: Run) -> str:
    fit = run.record.fit
    text = (f"Adam with learning rate {fit.get('learning_rate')}, batch size {fit.get('batch_size')}, at most "
            f"{fit.get('epochs')} epochs, early stopping on the validation loss (patience {fit.get('patience')}, "
            f"best weights kept)")
    if fit.get("reduce_lr_patience"):
        text += f", learning rate halved after {fit['reduce_lr_patience']} epochs without improvement"
    if fit.get("max_minutes"):
        text += f", time limit {fit['max_minutes']:g} min"
    stopped = run.record.stopped_by
    return (text + f": {run.record.epochs_run} epochs run, best epoch {run.record.best_epoch}"
            + (f", stopped by {stopped}" if stopped else "") + ".")


def _hardware_text(runs: Sequence[Run]) -> str:
    lines = []
    for _, group in _groups(runs, lambda r: tuple(sorted(r.record.machine.items()))).items():
        m = group[0].record.machine
        who = "All runs ran" if len(group) == len(runs) else f"{_join(f'`{r.name}`' for r in group)} ran"
        lines.append(f"{who} on {m.get('cpu', '?')} with {m.get('cores', '?')} CPU cores and "
                     f"{m.get('gpus', 0)} GPUs (Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, "
                     f"Keras {m.get('keras')}).")
    return " ".join(lines) + " Wall times in seconds, per phase, as each run recorded them:"


def _times_table(runs: Sequence[Run]) -> str:
    phases = list(dict.fromkeys(p for r in runs for p in r.record.seconds if p != "total"))
    lines = ["| Run | " + " | ".join(phases) + " | total |", "| --- |" + " ---: |" * (len(phases) + 1)]
    for r in runs:
        s = r.record.seconds
        cells = [f"{s[p]:.1f}" if p in s else "–" for p in (*phases, "total")]
        lines.append(f"| `{r.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _results(runs: Sequence[Run], figures: "_Figures", predictions_png) -> str:
    parts = ["## Results", "Table 1. Test accuracy of each model on the held-out test images, with its 95 % "
             "Wilson score interval. Fit time: seconds spent training that model (for the models on frozen "
             "features, after the features were extracted; see the wall times above).", _results_table(runs)]
    absent = [row for row in ROWS if row not in _present(runs)]
    if absent:
        parts.append("Absent rows: " + "; ".join(
            f"{row.label} (no `gearfeat {row.commands[0]}` run was given)" for row in absent) + ".")
    for r in runs:
        if r.command == "finetune" and "head_only_test_accuracy" in r.metrics:
            parts.append(f"Before fine-tuning, the starting model of `{r.name}` scored "
                         f"{_accuracy(r.metrics['head_only_test_accuracy'])} on the same test images; after, "
                         f"{_accuracy(r.metrics['test_accuracy'])}.")
    per_class = _per_class_table(runs)
    if per_class:
        parts += ["Table 2. Recall of each class on the test images (the diagonal of the confusion matrices).",
                  per_class]
    captions = {"loss.png": "training and validation loss (and accuracy) by epoch",
                "confusion.png": "confusion matrix on the test images, rows normalized by the true class"}
    for r in runs:
        for file, caption in captions.items():
            if (r.path / file).is_file():
                parts.append(figures.add(r.path / file, f"{r.name}-{file}",
                                         f"Run `{r.name}` ({KINDS[r.command].short}): {caption}."))
            elif file in RunDir(r.path).manifest():
                warnings.warn(f"{r.path / file} is missing (the run wrote it); the report goes on without it",
                              stacklevel=2)
    if predictions_png is not None:
        parts.append(figures.add(Path(predictions_png), "predictions.png",
                                 "Predictions of a saved model on new images, not in the data folder, each "
                                 "titled with the predicted class and its confidence."))
    return "\n\n".join(parts)


def _discussion(runs: Sequence[Run]) -> str:
    rows = results(runs)
    text = [_best_sentence(rows)]
    best = max(rows, key=lambda r: r.accuracy)
    if best.n_test:
        low, high = wilson_interval(best.accuracy, best.n_test)
        text.append(f"With {best.n_test} test images one image weighs {1 / best.n_test:.4f} of accuracy, and "
                    f"the 95 % interval of the best figure is [{low:.3f}, {high:.3f}]: differences between "
                    "models smaller than that width are not evidence of a better model, and every figure comes "
                    "from one split and one seed.")
    for run in runs:
        base, head = (next((r for r in rows if r.run is run and r.row is row), None) for row in ROWS[:2])
        if base and head:
            text.append(f"On the same features of `{run.name}`, the dense head scores "
                        f"{_compare(head.accuracy, base.accuracy)} the linear baseline.")
    transfer = [r for r in rows if r.run.command in TRANSFER]
    for cnn in (r for r in rows if r.run.command == "cnn"):
        if transfer:
            top = max(transfer, key=lambda r: r.accuracy)
            total = top.run.record.seconds.get("total", 0.0)
            text.append(f"The CNN trained from scratch (`{cnn.run.name}`) scores "
                        f"{_compare(cnn.accuracy, top.accuracy)} {top.name}, after {cnn.seconds or 0:.0f} s "
                        f"of training against {total:.0f} s for the whole run `{top.run.name}` (feature "
                        "extraction included).")
    weak = _weakest_class(best)
    if weak:
        text.append(f"The hardest class for {best.name} is {weak[0]} (recall {weak[1]:.3f} on {weak[2]} "
                    "test images).")
    if any(_is_random(r) for r in runs):
        text.append("The frozen backbone was randomly initialized, so its features carry nothing learned from "
                    "pretraining; with pretrained weights (`--weights imagenet` on a connected machine, or a "
                    "local weights file) the rows on frozen features are expected to be much higher.")
    return "## Discussion\n\n" + " ".join(text)


def _appendix(runs: Sequence[Run]) -> str:
    listing = "\n".join(f"- `{r.name}`: `gearfeat {r.command}`, folder `{r.path}`" for r in runs)
    return ("## Runs\n\nEach run folder holds its model (`model.h5`), `run.json` (settings, sizes, wall times, "
            "machine), `metrics.json`, `history.json`, the figures and `manifest.json` (sha256 of every "
            f"artifact). Every number above is read from those files.\n\n{listing}")


# ------------------------------------------------------------------------------------------ helpers
class _Figures:
    """Copies figures into the report's folder and numbers them."""

    def __init__(self, root: Path, folder: Path):
        self.root, self.folder, self.count = root, folder, 0

    def add(self, source: Path, name: str, caption: str) -> str:
        self.count += 1
        target = self.folder / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        rel = os.path.relpath(target, self.root).replace(os.sep, "/")
        return f"![Figure {self.count}]({rel})\n\n*Figure {self.count}. {caption}*"


def _weights(run: Run) -> str | None:
    return (run.record.extractor or {}).get("weights")


def _is_random(run: Run) -> bool:
    """True when the run's backbone had no pretrained weights (a CNN from scratch has no backbone)."""
    return run.record.extractor is not None and _weights(run) is None


def _weights_text(run: Run) -> str:
    weights = _weights(run)
    if weights is None:
        return "**random initialization (no pretrained weights)**"
    if weights == "imagenet":
        return "ImageNet-pretrained weights (the Keras download)"
    return f"pretrained weights from the local file `{Path(weights).name}`"


def _backbone(run: Run) -> str:
    ex = run.record.extractor or {}
    name = ex.get("backbone", "?")
    return f"{name} {ex['alpha']:g}" if ex.get("alpha") else name


def _by_split(runs: Sequence[Run]) -> dict:
    """The runs grouped by data folder and split: a group shares its test images."""
    return _groups(runs, lambda r: (r.record.data_dir, _split_key(r)))


def _one_split(runs: Sequence[Run]) -> bool:
    return len(_by_split(runs)) == 1


def _test_images(runs: Sequence[Run]) -> str:
    return "on the same held-out test images" if _one_split(runs) else "each on its own run's held-out test images"


def _split_key(run: Run) -> tuple:
    return tuple(sorted(run.record.split.items()))


def _groups(items, key) -> dict:
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _unique_names(runs: Sequence[Run]) -> None:
    """Give runs whose folders share a name distinct names (their figures are copied by name)."""
    taken: set[str] = set()
    for run in runs:
        name, k = run.name, 1
        while name in taken:
            k += 1
            name = f"{run.name}-{k}"
        run.name = name
        taken.add(name)


def _best_sentence(rows: Sequence[Result]) -> str:
    top = max(r.accuracy for r in rows)
    best = [r for r in rows if _accuracy(r.accuracy) == _accuracy(top)]
    n = _on_n(best[0])
    if len(best) == 1:
        return f"The most accurate is {best[0].name}, with {_accuracy(top)}{n}."
    return f"{_cap(_join(r.name for r in best))} tie for the highest accuracy, {_accuracy(top)}{n}."


def _weakest_class(result: Result) -> tuple[str, float, int] | None:
    per_class = result.run.metrics.get("per_class") if result.row.accuracy_key == "test_accuracy" else None
    if not per_class:
        return None
    name = min(per_class, key=lambda k: (per_class[k]["recall"], k))
    return name, per_class[name]["recall"], per_class[name]["support"]


def _on_n(result: Result) -> str:
    return f" on {result.n_test} test images" if result.n_test else ""


def _compare(a: float, b: float) -> str:
    if _accuracy(a) == _accuracy(b):
        return f"the same ({_accuracy(a)}) as"
    direction = "higher" if a > b else "lower"
    return f"{abs(a - b):.{ACCURACY_DIGITS}f} {direction} ({_accuracy(a)} against {_accuracy(b)}) than"


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
