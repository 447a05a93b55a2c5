"""gearfeat: fast, dependable transfer learning for image classification.

The subpackages follow the data flow: :mod:`~gearfeat.data` (images, datasets, the split) ->
:mod:`~gearfeat.features` (backbones, the extractor, the HDF5 cache) -> :mod:`~gearfeat.models` (heads, baseline,
stitched model) and :mod:`~gearfeat.tuning` (many heads at once) -> :mod:`~gearfeat.workflows` (the commands as
functions) -> :mod:`~gearfeat.outputs` (run folders, metrics, figures, the report). ``gearfeat.cli`` is a thin
shell over the functions exported here.

Progress and warnings (``cache ...: 40 images computed``, ``epoch 3/20: ...``, ``skipped PATH: reason``) go to
the standard :mod:`logging` logger ``gearfeat`` (one child per module, e.g. ``gearfeat.features.cache``): INFO
for progress, WARNING for what needs attention. The library prints nothing by itself (a
:class:`logging.NullHandler` on ``gearfeat``); to see the messages, configure logging, e.g.
``logging.basicConfig(level=logging.INFO, format="%(message)s")``. The ``gearfeat`` command prints them to
stderr.
"""
import logging
import os

# TensorFlow's C++ chatter (CUDA probing on CPU hosts); errors still raise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

logging.getLogger(__name__).addHandler(logging.NullHandler())  # the library convention: the application decides

from ._version import __version__  # noqa: E402
from ._internal.startup import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports it: its C++ start-up log lines are held back

# isort: off
from .features import layers  # noqa: E402,F401  registers the Lambda functions saved models refer to
from .data.dataset import SplitConfig  # noqa: E402
from .features.augment import AugmentConfig  # noqa: E402
from .features.backbones import create_backbone, list_backbones, register_backbone  # noqa: E402
from .features.extractor import ExtractorConfig, extract_dataset as extract  # noqa: E402
from .models.baseline import load_baseline  # noqa: E402
from .models.heads import DenseHead, Head  # noqa: E402
from .models.export import export  # noqa: E402
from .models.stitch import load_model  # noqa: E402  gearfeat.load_model: Keras safe_mode by default
from .tuning.space import SearchSpace  # noqa: E402
from .workflows.cnn import train_cnn  # noqa: E402
from .workflows.finetune import finetune  # noqa: E402
from .workflows.predict import image_features, predict_images as predict  # noqa: E402  same names as the commands
from .workflows.search import search  # noqa: E402
from .workflows.train import train  # noqa: E402
from .outputs.report import write_report  # noqa: E402
# isort: on

__all__ = ["__version__", "AugmentConfig", "DenseHead", "Head", "ExtractorConfig", "SearchSpace", "SplitConfig", "create_backbone", "export", "extract",
           "finetune", "image_features", "list_backbones", "load_baseline", "load_model", "predict",
           "register_backbone", "search", "train", "train_cnn", "write_report"]
