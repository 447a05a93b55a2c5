#!/usr/bin/env python3
"""Transfer learning on CIFAR-10 with a frozen Keras Application; saves ./cifar10.h5 (compiled).

The saved model is: 32x32 image -> Lambda upscaling it to the application's input size -> Lambda
preprocessing -> frozen application with global average pooling -> trained dense head. The frozen part runs
once per image; its output is cached (gearfeat's HDF5 feature cache, reused by later runs) and only the dense
head trains on those cached features. The Lambda layers refer to functions registered by gearfeat, which
this file imports, so cifar10.h5 loads with keras.models.load_model in its default safe mode:

    preprocess_data = __import__('0-transfer').preprocess_data
    X_p, Y_p = preprocess_data(X, Y)
    keras.models.load_model('cifar10.h5').evaluate(X_p, Y_p)

Importing this file trains nothing and writes nothing; running it does the training.
"""
import argparse
import sys

import gearfeat  # noqa: F401  registers the Lambda functions that cifar10.h5 refers to
from gearfeat.workflows.cifar import (CIFAR_BATCH_SIZE, DEFAULT_BACKBONE, HEAD_DEFAULTS, IMAGE_SIZE, model_inputs,
                                      train_cifar10)
from gearfeat.cli import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, _positive_int, add_head_options, dense_head,
                          flag_names, messages_to_stderr, sigterm_interrupts)
from gearfeat._internal.errors import GearfeatError
from gearfeat.features.extractor import ExtractorConfig

EPILOG = """\
dense head: gearfeat's defaults (--l2 0.0001 --learning-rate 0.001) except
  {head}
Early stopping on the validation part restores the best epoch. The --baseline (default logreg:
L2-regularized logistic regression on standardized features, the linear-probe protocol of published
results, C not tuned) is fitted on the same cached features; its test accuracy is printed beside the head's.

exit status: 0 ok, 1 error (one line on stderr), 2 bad usage, 130 interrupted by Ctrl-C or SIGTERM (the
cache keeps what was computed; run again to resume).

with a GPU and a network (Keras downloads CIFAR-10 and the ImageNet weights):
  python scripts/0-transfer.py --backbone resnet50 --weights imagenet --plots runs/cifar10
offline, with local copies:
  python scripts/0-transfer.py --data cifar-10-python.tar.gz --weights resnet50_notop.h5
""".format(head=" ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         for k, v in HEAD_DEFAULTS.items()))


def preprocess_data(X, Y):
    """Pre-process CIFAR-10 for cifar10.h5.

    X: uint8 array (m, 32, 32, 3) of images; Y: array (m,) or (m, 1) of labels 0..9.
    Returns X_p, float32 with the same pixel values (the model upscales and preprocesses them itself), and
    Y_p, the labels one-hot (m, 10).
    """
    return model_inputs(X, Y)


def build_parser() -> argparse.ArgumentParser:
    """The script's options (the dense-head group is gearfeat's, with CIFAR-10 defaults)."""
    parser = argparse.ArgumentParser(prog="0-transfer.py", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="the official cifar-10-python.tar.gz or its extracted cifar-10-batches-py "
                             "folder (default: keras.datasets.cifar10, which downloads it once)")
    g = parser.add_argument_group("frozen application and feature cache")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"Keras Application (default {DEFAULT_BACKBONE}; list: `gearfeat backbones`)")
    g.add_argument("--alpha", type=float, default=None, help="width multiplier (MobileNets only)")
    g.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default; Keras downloads it), 'none' (random: tests only) or a local "
                        "weights .h5 file of the headless application")
    g.add_argument("--backbone-size", type=int, default=None,
                   help="size the Lambda layer upscales 32x32 images to (default: the application's own)")
    g.add_argument("--cache-dir", default="cache", help="feature cache folder (default ./cache)")
    # refused here: the library's batch_size errors are the head's (--batch-size)
    g.add_argument("--batch-size-extract", type=_positive_int, default=CIFAR_BATCH_SIZE,
                   help=f"images per backbone batch (default {CIFAR_BATCH_SIZE})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("validation and output")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="stratified part of the 50,000 training images held out for early stopping "
                        "(default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    g.add_argument("--plots", default=None, help="folder for loss.png and confusion.png (default: none)")
    add_head_options(parser)
    parser.set_defaults(**HEAD_DEFAULTS)
    return parser


def main(argv=None) -> int:
    """Train on CIFAR-10 and save ./cifar10.h5; exit status 0 ok, 1 error (one line), 130 interrupted (Ctrl-C
    or SIGTERM, as for gearfeat's commands)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_interrupts(), messages_to_stderr():
            config = ExtractorConfig(backbone=args.backbone, alpha=args.alpha, weights=args.weights,
                                     image_size=IMAGE_SIZE, backbone_size=args.backbone_size)
            result = train_cifar10("cifar10.h5", data=args.data, config=config, head=dense_head(args),
                                   val_fraction=args.val_fraction, seed=args.seed, baseline=args.baseline,
                                   baseline_c=args.baseline_c, cache_dir=args.cache_dir,
                                   batch_size=args.batch_size_extract, plots=args.plots,
                                   progress=not args.no_progress)
    except GearfeatError as exc:
        _log(f"0-transfer.py: error: {exc.renamed(flag_names(parser))}")  # the library's parameters, by flag
        return EXIT_ERROR
    except KeyboardInterrupt:
        _log("0-transfer.py: interrupted; the features computed so far stay in the cache, run again to "
             "resume")
        return EXIT_INTERRUPTED
    m = result.metrics
    print(f"test accuracy {m['test_accuracy']:.4f} on the {m['n_test']} CIFAR-10 test images (validation "
          f"{m['val_accuracy']:.4f}; {args.baseline} baseline {m['baseline_test_accuracy']:.4f}); saved "
          f"{result.model_path}")
    return EXIT_OK


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
