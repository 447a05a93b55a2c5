"""Shared fixtures: small generated image folders and a tiny random-weight backbone."""
from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gearfeat.features.extractor import ExtractorConfig  # noqa: E402
from gearfeat.data.synthetic import make_shapes_dataset  # noqa: E402
from gearfeat.outputs.runs import RunRecord  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = dict(backbone="mobilenet_v2", alpha=0.35, weights=None, image_size=32, backbone_size=32)


def tiny_config(**overrides) -> ExtractorConfig:
    """A MobileNetV2 (alpha 0.35, random weights) at 32 px: fast enough for unit tests."""
    return ExtractorConfig(**{**TINY, **overrides})


def cnn_record(data_dir: str | os.PathLike = "/data", **fields) -> RunRecord:
    """The record of a small ``gearfeat cnn`` run on ``data_dir`` (the shapes' classes, the default split), as
    a test folder's ``run.json``; ``fields`` replace its fields."""
    return RunRecord(**{
        "command": "cnn", "data_dir": str(data_dir), "class_names": ["circle", "square", "triangle"],
        "image_size": 32, "split": {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 0, "train": 42, "val": 9,
                                    "test": 9},
        "n_images": 60, "n_skipped": 0, "epochs_run": 3, "best_epoch": 2,
        "seconds": {"load": 0.5, "train": 2.0, "evaluate": 0.1, "total": 2.6}, "machine": {"cores": 2},
        "fit": {"epochs": 3}, "stopped_by": "epoch count", "layers": "conv:8,gap", "augment": "none",
        "parameters": 300, **fields})


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """3 classes x 20 generated 32 px images (read-only: copy it before changing it)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", per_class=20, size=32, seed=0)


@pytest.fixture
def shapes_copy(shapes_dir, tmp_path) -> Path:
    """A private, modifiable copy of the shapes dataset."""
    import shutil
    return Path(shutil.copytree(shapes_dir, tmp_path / "data"))


@pytest.fixture
def logged(caplog) -> Callable[[], list[str]]:
    """``logged()``: the messages of gearfeat's loggers (INFO and up) since the test began or ``caplog.clear()``,
    in order: what ``gearfeat`` commands print to stderr."""
    caplog.set_level(logging.INFO, logger="gearfeat")
    return lambda: [r.getMessage() for r in caplog.records if r.name.split(".")[0] == "gearfeat"]
