"""gearfeat: fast, dependable transfer learning for image classification.

Data flow: images (:mod:`~gearfeat.images`, :mod:`~gearfeat.dataset`) -> features cache
(:mod:`~gearfeat.extractor`, :mod:`~gearfeat.cache`) -> heads and baseline (:mod:`~gearfeat.heads`,
:mod:`~gearfeat.baseline`) -> stitched model (:mod:`~gearfeat.stitch`) -> predictions and report
(:mod:`~gearfeat.prediction`, :mod:`~gearfeat.report`).
"""
import os

# TensorFlow's C++ chatter (CUDA probing on CPU hosts); errors still raise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

from ._startup import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports it: its C++ start-up log lines are held back

from . import layers  # noqa: E402,F401  registers the Lambda functions saved models refer to
from .stitch import load_model  # noqa: E402,F401  gearfeat.load_model: Keras safe_mode by default
from .backbones import create_backbone, list_backbones  # noqa: E402,F401
from .baseline import load_baseline  # noqa: E402,F401
from .prediction import predict_images as predict  # noqa: E402,F401  same names as the CLI commands
from .training import extract_dataset as extract, image_features, train  # noqa: E402,F401
from .tuning import search  # noqa: E402,F401

__all__ = ["__version__", "create_backbone", "extract", "image_features", "list_backbones", "load_baseline",
           "load_model", "predict", "search", "train"]
