"""``gearfeat finetune``: unfreeze the top of a transfer model's backbone and train it end to end on images.

The starting point is the stitched model of a ``gearfeat train`` or ``gearfeat search`` run (``image ->
upscale -> preprocess -> backbone -> head``), whose head was trained on cached features, or of a finetune run.
The top ``N`` layers of the nested ``backbone`` become trainable, except batch normalization, which stays
frozen: its moving statistics are kept and it runs in inference mode (the stitched model also calls the
backbone with ``training=False``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from .._internal.errors import GearfeatError, is_int
from ..data.dataset import SplitConfig, scan_dataset
from ..data.labels import LabelFile
from ..models.heads import compile_model
from ..models.stitch import load_model
from ..outputs.runs import RunDir, RunRecord
from .fitting import FitConfig, FitResult, evaluate, finish_run, fit, load_split

logger = logging.getLogger(__name__)

#: Fine-tuning defaults: a learning rate low enough not to wreck the pretrained features, few epochs.
DEFAULT_FIT = FitConfig(learning_rate=1e-5, batch_size=32, epochs=20, patience=3, reduce_lr_patience=None,
                        max_minutes=None)
_SOURCE_COMMANDS = ("train", "search", "finetune")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of ``model``'s nested ``backbone``, input layer excluded, bottom to top.

    Raises:
        GearfeatError: the model has no layer named "backbone" (not a gearfeat transfer model).
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise GearfeatError(f"model {model.name!r} has no nested 'backbone' layer: finetune starts from the "
                            "model.h5 of a `gearfeat train` run") from None
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def unfreeze_top(model: keras.Model, n: int) -> list[str]:
    """Make the top ``n`` backbone layers trainable, except BatchNormalization; freeze all the others.

    ``n`` counts layers as :func:`backbone_layers` lists them (weightless ones such as ReLU included, as in
    ``base_model.layers[-n:]``). Returns the names of the backbone layers now trainable. The model must be
    compiled again for the change to take effect.

    Raises:
        GearfeatError: ``n`` is not between 1 and the number of backbone layers.
    """
    layers = backbone_layers(model)
    if not is_int(n, 1) or n > len(layers):
        raise GearfeatError(f"unfreeze {n!r}: the backbone has {len(layers)} layers; pass a number from 1 "
                            f"to {len(layers)}", parameter="unfreeze")
    model.get_layer("backbone").trainable = True
    top = {id(layer) for layer in layers[len(layers) - n:]}
    for layer in layers:
        layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in layers if layer.trainable]


def _check_classes(run_dir: Path, recorded: list[str], found: list[str], data_dir: str | os.PathLike) -> None:
    """Require the classes ``found`` in ``data_dir`` to be those ``recorded`` in ``run_dir``, in that order.

    Raises:
        GearfeatError: classes are missing, extra, or in another order (labels would not match the model's).
    """
    if found == recorded:
        return
    changes = {"missing": [name for name in recorded if name not in found],
               "extra": [name for name in found if name not in recorded]}
    differ = "; ".join(f"{what}: {', '.join(names)}" for what, names in changes.items() if names)
    differ = differ or "same names in another order"
    raise GearfeatError(f"{data_dir} has classes {', '.join(found)} but {run_dir} was trained on "
                        f"{', '.join(recorded)} ({differ}); set data_dir to the folder the run was trained on",
                        parameter="data_dir")


def finetune(run_dir: str | os.PathLike, out: str | os.PathLike, *, unfreeze: int,
             config: FitConfig | None = None, data_dir: str | os.PathLike | None = None,
             progress: bool = True) -> FitResult:
    """Fine-tune the model of the transfer run ``run_dir`` and write the run folder ``out``.

    Uses the run's data folder (or ``data_dir``) and label file, image size and split, so the test split is the
    one the head-only model was measured on; ``metrics.json`` has ``test_accuracy`` after fine-tuning and
    ``head_only_test_accuracy``, the starting model on the same test images (and its ``head_only_test_loss``,
    ``head_only_val_accuracy``, ``head_only_val_loss``). Losses are the mean cross-entropy, without the
    head's L2 penalty that Keras adds to the ``val_loss`` of ``history.json``.
    """
    started = time.perf_counter()
    config = config or DEFAULT_FIT
    source = RunDir(run_dir)
    info = RunRecord.load(source)
    if info.command not in _SOURCE_COMMANDS:
        raise GearfeatError(f"{source.path} is a `gearfeat {info.command}` run; finetune starts from "
                            "a `gearfeat train`, `search` or `finetune` run (a stitched transfer model)")
    model = load_model(source / "model.h5")
    classes = info.class_names
    if model.output_shape[-1] != len(classes):
        raise GearfeatError(f"{source / 'model.h5'} has {model.output_shape[-1]} outputs but its run.json "
                            f"records {len(classes)} classes; finetune a run folder as gearfeat wrote it")
    unfrozen = unfreeze_top(model, unfreeze)  # a bad --unfreeze fails before the images are decoded
    split = SplitConfig(**{k: info.split[k] for k in ("val_fraction", "test_fraction", "seed")})
    image_size = int(model.input_shape[1])
    data_dir = data_dir or info.data_dir
    recorded = info.labels  # a run trained from a label file is fine-tuned on the same rows
    dataset = scan_dataset(data_dir, labels=LabelFile(**recorded) if recorded else None)
    _check_classes(source.path, classes, dataset.class_names, data_dir)  # before decoding or creating --out
    if Path(out).resolve() == source.path.resolve():
        raise GearfeatError(f"out {out} is the run being fine-tuned; write the fine-tuned run to another folder",
                            parameter="out")
    run = RunDir(out, create=True)
    data = load_split(dataset, split, image_size, progress=progress)
    if any(len(data.parts[k]) != info.split.get(k) for k in data.parts):
        logger.warning(f"warning: the split sizes differ from those of {source.path} (the data folder changed?); "
                       "head-only and fine-tuned accuracies below are both measured on the new test split")
    load_seconds = time.perf_counter() - started

    before = {part: evaluate(model, data, part) for part in ("test", "val")}
    head_only = before["test"]
    head_only_metrics = {f"head_only_{part}_{k}": scores[k] for part, scores in before.items()
                         for k in ("accuracy", "loss")}
    logger.info(f"head-only test accuracy {head_only['accuracy']:.4f} (loss {head_only['loss']:.4f}); unfreezing the "
                f"top {unfreeze} backbone layers ({len(unfrozen)} trainable, batch normalization stays frozen)")
    keras.utils.set_random_seed(split.seed)
    compile_model(model, config.learning_rate)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    fitted = fit(model, data, config, run / "model.h5")
    extractor = info.extractor
    result = finish_run(
        run, model, data, fitted, command="finetune", title=f"Fine-tuning the top {unfreeze} backbone layers",
        record={"source_run": str(Path(run_dir).resolve()), "unfreeze": unfreeze, "unfrozen_layers": unfrozen,
                "trainable_parameters": trainable, "fit": asdict(config), "extractor": extractor},
        seconds={"load": load_seconds}, started=started,
        metrics=head_only_metrics,
        model_meta={"backbone": extractor.get("backbone"), "unfreeze": unfreeze})
    tuned = result.metrics
    logger.info(f"fine-tuned test accuracy {tuned['test_accuracy']:.4f}, loss {tuned['test_loss']:.4f} "
                f"(head only: {head_only['accuracy']:.4f}, loss {head_only['loss']:.4f})")
    return result
