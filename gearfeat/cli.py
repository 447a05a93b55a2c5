"""The ``gearfeat`` command line (also ``python -m gearfeat``).

Exit status: 0 success; 1 error (one line on stderr); 2 bad usage; 3 success but some input files were
skipped (listed on stderr and in skipped.json; for predict, some images got no label); 130 interrupted by
Ctrl-C or SIGTERM (the cache keeps what was computed: run again to resume).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import tensorflow as tf
from PIL import Image

from ._internal.errors import GearfeatError, first_line

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def messages_to_stderr() -> Iterator[None]:
    """Inside the block, the ``gearfeat`` logger's messages (INFO and up) are printed to stderr, each as its bare
    text on one line: what a command says while it works. The logger's level, handlers and propagation are
    restored after, so that :func:`main` can run more than once in a process (the tests)."""
    logger = logging.getLogger("gearfeat")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a handler on the root logger (another library's) would print every line twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ------------------------------------------------------------------------------------------ option groups
def add_extractor_options(parser: argparse.ArgumentParser, *, cache_default: str = "./cache") -> None:
    """Options that determine the features (and so the cache file); ``cache_default`` is for the help text."""
    g = parser.add_argument_group("backbone and cache")
    g.add_argument("--backbone", default="mobilenet_v2", help="Keras Application name (see `gearfeat backbones`)")
    g.add_argument("--alpha", type=float, default=None, help="width multiplier of the MobileNets")
    g.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download), 'none' (random) or the path of a local weights .h5")
    g.add_argument("--image-size", type=int, default=128, help="standardized square image size (default 128)")
    g.add_argument("--backbone-size", type=int, default=None,
                   help="size the first Lambda layer upscales to (default: the backbone's native size)")
    g.add_argument("--cache-dir", default="cache", help=f"feature cache folder (default {cache_default})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """DATA_DIR and the label file that may list its images."""
    parser.add_argument("data_dir", help="folder with one sub-folder of images per class (or the images that "
                                         "--labels lists)")
    g = parser.add_argument_group("label file")
    g.add_argument("--labels", default=None, metavar="FILE.csv",
                   help="CSV with a header naming each image (relative to DATA_DIR) and its class, one row per image; "
                        "instead of class sub-folders")
    g.add_argument("--path-column", default=None, help="the --labels column of the image files (default: the first)")
    g.add_argument("--label-column", default=None, help="the --labels column of the classes (default: the second)")


def label_file(args: argparse.Namespace):
    """The label file of ``--labels`` with its columns, or None (class folders)."""
    from .data.labels import LabelFile
    if args.labels is None:
        if args.path_column is not None or args.label_column is not None:
            raise GearfeatError("--path-column and --label-column name columns of the --labels file; pass --labels")
        return None
    return LabelFile(args.labels, path_column=args.path_column, label_column=args.label_column)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the backbone pass runs (``extract`` and ``train``; ``search`` has its own --backend)."""
    g = parser.add_argument_group("cluster")
    g.add_argument("--backend", choices=("local", "dask"), default="local",
                   help="where the backbone runs: local (this process, default) or dask (the workers of a "
                        "dask.distributed cluster; they must see the images at the same paths)")
    g.add_argument("--address", default=None, help="dask: the scheduler address (tcp://host:8786)")


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget`` (``train`` and ``search``)."""
    parser.add_argument("--memory-budget", default=None, metavar="SIZE",
                        help="the most memory the split's feature arrays may take, e.g. 2GB or 500MB; above it the "
                             "head and the baseline train on features streamed from the cache (default: a quarter "
                             "of the machine's RAM)")


def add_split_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("split")
    g.add_argument("--val-fraction", type=float, default=0.15)
    g.add_argument("--test-fraction", type=float, default=0.15)
    g.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")


def add_augment_options(parser: argparse.ArgumentParser) -> None:
    """The cached augmented views (``extract``, ``train``, ``search``)."""
    from .features.augment import DEFAULT_AUGMENT
    g = parser.add_argument_group("augmented views")
    g.add_argument("--augment-views", type=int, default=0, metavar="K",
                   help="also run K augmented views of every training image through the backbone once and cache them; "
                        "the head trains on them too (default 0: none; not with a streamed --memory-budget)")
    g.add_argument("--augment", default=DEFAULT_AUGMENT, metavar="SPEC",
                   help=f"the views' augmentation, in the vocabulary of `gearfeat cnn --augment` "
                        f"(default {DEFAULT_AUGMENT})")
    g.add_argument("--augment-seed", type=int, default=0, help="seed of the views (default 0)")


def augment_config(args: argparse.Namespace):
    from .features.augment import AugmentConfig
    return AugmentConfig(views=args.augment_views, spec=args.augment, seed=args.augment_seed)


def add_head_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("dense head")
    g.add_argument("--hidden", type=_int_list, default=(256,), help="hidden layer sizes, e.g. 512,128 or '' (none)")
    g.add_argument("--dropout", type=float, default=0.3)
    g.add_argument("--l2", type=float, default=1e-4)
    g.add_argument("--batch-norm", action="store_true")
    g.add_argument("--learning-rate", type=float, default=1e-3)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs")
    g.add_argument("--baseline", default="logreg", help="scikit-learn baseline: logreg, linear_svc or svc")
    g.add_argument("--baseline-c", type=float, default=1.0, help="C of the baseline estimator")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_fit_options(parser: argparse.ArgumentParser, *, learning_rate: float, epochs: int, patience: int,
                    max_minutes: float, reduce_lr_patience: int) -> None:
    """Options of end-to-end training on images (``cnn``, ``finetune``), with the command's defaults."""
    g = parser.add_argument_group("training")
    g.add_argument("--learning-rate", type=float, default=learning_rate,
                   help=f"Adam's learning rate (default {learning_rate:g})")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--epochs", type=int, default=epochs, help=f"at most this many epochs (default {epochs})")
    g.add_argument("--patience", type=int, default=patience,
                   help=f"early stopping: epochs without a lower validation loss (default {patience})")
    g.add_argument("--reduce-lr-patience", type=int, default=reduce_lr_patience,
                   help="halve the learning rate after this many epochs without improvement (0: never; "
                        f"default {reduce_lr_patience})")
    g.add_argument("--max-minutes", type=float, default=max_minutes,
                   help="stop before an epoch that would end past this many minutes of training "
                        f"(0: no limit; default {max_minutes:g})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def fit_config(args: argparse.Namespace):
    from .workflows.fitting import FitConfig
    return FitConfig(learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs,
                     patience=args.patience, reduce_lr_patience=args.reduce_lr_patience or None,
                     max_minutes=args.max_minutes or None)


def extractor_config(args: argparse.Namespace):
    from .features.extractor import ExtractorConfig
    return ExtractorConfig(backbone=args.backbone, alpha=args.alpha, weights=args.weights,
                           image_size=args.image_size, backbone_size=args.backbone_size)


def dense_head(args: argparse.Namespace):
    from .models.heads import DenseHead
    return DenseHead(hidden=args.hidden, dropout=args.dropout, l2=args.l2, batch_norm=args.batch_norm,
                     learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs,
                     patience=args.patience, seed=args.seed)


# ------------------------------------------------------------------------------------------ commands
def cmd_backbones(args: argparse.Namespace) -> int:
    from .features.backbones import get_spec, list_backbones
    print(f"{'name':22} {'size':>5} {'features':>8}  preprocessing  alpha")
    for name in list_backbones():
        s = get_spec(name)
        print(f"{name:22} {s.native_size:5d} {s.features:8d}  {s.preprocess:13}  {'yes' if s.has_alpha else ''}")
    return EXIT_OK


def cmd_extract(args: argparse.Namespace) -> int:
    from .data.dataset import SplitConfig
    from .features.extractor import extract_dataset
    extraction = extract_dataset(args.data_dir, extractor_config(args), labels=label_file(args),
                                 cache_dir=args.cache_dir, batch_size=args.batch_size_extract,
                                 backend=args.backend, address=args.address, progress=not args.no_progress,
                                 augment=augment_config(args),
                                 split=SplitConfig(args.val_fraction, args.test_fraction, args.seed))
    print(extraction.cache_path)
    if extraction.views is not None:
        print(extraction.views.cache_path)
    return EXIT_SKIPPED if extraction.skipped else EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from .data.dataset import SplitConfig
    from .tuning.space import parse_space
    from .workflows.search import search
    result = search(args.data_dir, args.out, labels=label_file(args), space=parse_space(args.space, args.param),
                    n_trials=args.trials,
                    jobs=args.jobs, backend=args.backend, address=args.address, config=extractor_config(args),
                    split=SplitConfig(args.val_fraction, args.test_fraction, args.seed),
                    cache_dir=args.cache_dir, memory_budget=args.memory_budget, augment=augment_config(args),
                    progress=not args.no_progress)
    print(result.run_dir / "model.h5")
    return EXIT_SKIPPED if result.skipped else EXIT_OK


def _trials(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of trials or 'all', got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .data.dataset import SplitConfig
    from .workflows.train import train
    result = train(args.data_dir, args.out, labels=label_file(args), config=extractor_config(args),
                   head=dense_head(args),
                   split=SplitConfig(args.val_fraction, args.test_fraction, args.seed), baseline=args.baseline,
                   baseline_c=args.baseline_c, cache_dir=args.cache_dir, backend=args.backend,
                   address=args.address, memory_budget=args.memory_budget, augment=augment_config(args),
                   progress=not args.no_progress)
    print(result.run_dir / "model.h5")
    return EXIT_SKIPPED if result.skipped else EXIT_OK


def cmd_cnn(args: argparse.Namespace) -> int:
    from .data.dataset import SplitConfig
    from .workflows.cnn import train_cnn
    result = train_cnn(args.data_dir, args.out, labels=label_file(args), layers=args.layers, augment=args.augment,
                       image_size=args.image_size, config=fit_config(args),
                       split=SplitConfig(args.val_fraction, args.test_fraction, args.seed),
                       progress=not args.no_progress)
    print(result.run_dir / "model.h5")
    return EXIT_SKIPPED if result.skipped else EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    from .workflows.finetune import finetune
    result = finetune(args.run_dir, args.out, unfreeze=args.unfreeze, config=fit_config(args),
                      data_dir=args.data_dir, progress=not args.no_progress)
    print(result.run_dir / "model.h5")
    return EXIT_SKIPPED if result.skipped else EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from .outputs.plots import png_path
    from .workflows.predict import Predictor
    if args.plot is not None:
        try:
            png_path(args.plot)
        except GearfeatError as exc:
            _log(f"gearfeat predict: error: argument --plot: {exc}")
            return EXIT_USAGE
    with _warnings_last():  # a warning is about the per-file lines: it follows them
        predictor = Predictor.from_file(args.model, safe_mode=not args.unsafe)
        predictions = predictor.predict(args.images)
        if args.json:
            print(json.dumps([p.to_dict(top_k=args.top_k) for p in predictions], indent=2))
        else:
            for p in predictions:
                ranked = "\t".join(f"{label}\t{probability:.4f}" for label, probability in p.top(args.top_k))
                print(f"{p.path}\t{ranked}" if p.error is None else f"{p.path}\tERROR\t{p.error}")
        # drawn once the predictions are out: a figure that cannot be written loses none of them
        if args.plot is not None and predictor.plot(predictions, args.plot):
            _log(f"wrote {args.plot}")
    return EXIT_SKIPPED if any(p.error for p in predictions) else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .models.export import export
    export(args.source, args.out, format=args.format, quantize=args.quantize)
    print(args.out)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .outputs.report import write_report
    if not args.out.lower().endswith(".md"):
        _log(f"gearfeat report: error: argument --out: {args.out}: the report is Markdown; use a path ending in .md")
        return EXIT_USAGE
    print(write_report(args.run_dirs, args.out, predictions_png=args.predictions))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .features.backbones import get_spec
    from .workflows.demo import DEMO_CONFIG, run_demo
    if get_spec(args.backbone).name == DEMO_CONFIG.backbone:  # the demo's width and size unless given
        args.alpha = DEMO_CONFIG.alpha if args.alpha is None else args.alpha
        args.backbone_size = DEMO_CONFIG.backbone_size if args.backbone_size is None else args.backbone_size
    result = run_demo(args.out, args.weights, config=extractor_config(args), head=dense_head(args),
                      baseline=args.baseline, baseline_c=args.baseline_c, per_class=args.per_class,
                      n_new=args.new_images, seed=args.seed, cache_dir=args.cache_dir,
                      progress=not args.no_progress)
    metrics = result.train.metrics
    print(f"demo finished in {result.seconds:.0f} s: test accuracy {metrics['test_accuracy']:.4f} (dense head), "
          f"{metrics['baseline_test_accuracy']:.4f} ({metrics['baseline']} baseline)")
    if result.config.weights is None:
        print("NOTE: the backbone has random initialization, not pretrained weights (see the report)")
    for what, where in result.artifacts():
        print(f"  {what:20} {where}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="gearfeat", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gearfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the Keras Applications gearfeat can use")
    p.set_defaults(run=cmd_backbones)

    p = sub.add_parser("extract", help="fill the feature cache for a dataset folder")
    add_data_options(p)
    add_extractor_options(p)
    add_cluster_options(p)
    p.add_argument("--batch-size-extract", type=_positive_int, default=None,
                   help="images per backbone batch (default 16; the features do not depend on it)")
    add_augment_options(p)
    add_split_options(p)  # the views are of the training images: those of the split train and search make
    p.set_defaults(run=cmd_extract)

    p = sub.add_parser("train", help="extract (or reuse) features, train head and baseline, save model.h5")
    add_data_options(p)
    p.add_argument("--out", required=True, help="run folder to write")
    add_extractor_options(p)
    add_cluster_options(p)
    add_split_options(p)
    add_head_options(p)
    add_memory_option(p)
    add_augment_options(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("search", help="try many heads on the cached features in parallel; the best becomes "
                                      "model.h5")
    add_data_options(p)
    p.add_argument("--out", required=True, help="run folder to write")
    add_extractor_options(p)
    add_split_options(p)
    g = p.add_argument_group("search")
    g.add_argument("--space", default=None,
                   help="YAML or JSON file {parameter: [values]} (default: the built-in space, see docs/search.md)")
    g.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help="values of one parameter, e.g. dropout=0.2,0.5 or hidden=[256],[512,128],[] "
                        "(repeatable; on top of --space)")
    g.add_argument("--trials", type=_trials, default=24,
                   help="configurations drawn at random (seeded by --seed), shared among the space's grids "
                        "(head, baseline) equally, none more than its size; 'all' or at least the size of the space "
                        "runs the whole grid (default 24)")
    g.add_argument("--jobs", type=int, default=-1, help="trials run at once (default -1: every core or worker)")
    g.add_argument("--backend", default=None,
                   help="where trials run: local (this process, stacks of heads; default), or the joblib backends loky "
                        "(processes), threading, dask or ray (a cluster), each sent whole stacks; dask also runs the "
                        "extraction on that cluster")
    g.add_argument("--address", default=None,
                   help="dask: the scheduler address (tcp://host:8786); ray: the cluster (default 'auto')")
    add_memory_option(p)
    add_augment_options(p)
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("predict", help="classify images with a saved model")
    p.add_argument("model", help="a .h5 model written by gearfeat (or its run folder), or its .keras, .tflite or "
                   "SavedModel export")
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--json", action="store_true",
                   help="print a JSON array of {path, label, confidence} (and top, the K most probable, with --top-k)")
    p.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                   help="also print the K most probable classes, each with its probability (default 1)")
    p.add_argument("--plot", default=None, help="also draw the predictions as a grid in this PNG")
    p.add_argument("--unsafe", action="store_true",
                   help="load with safe_mode=False (runs code stored in the file: only for files you trust)")
    p.set_defaults(run=cmd_predict)

    from .models.export import FORMATS, QUANTIZATIONS
    p = sub.add_parser("export", help="export a model for deployment (SavedModel, TFLite, .keras), checked "
                                      "against model.h5 before it is kept")
    p.add_argument("source", help="a run folder or a model.h5")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the export to write (a folder for savedmodel, else .tflite/.keras)")
    p.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                   help="tflite only: quantize; kept with its deviation and test accuracy reported")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("report", help="write a journal-style Markdown report of run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="--out folders of train, search, finetune or cnn runs")
    p.add_argument("--out", required=True, help="the report to write (.md); its figures go in <name>_files/")
    p.add_argument("--predictions", default=None, help="a prediction grid PNG (from predict --plot) to include")
    p.set_defaults(run=cmd_report)

    from .workflows.demo import DEMO_CONFIG, NEW_IMAGES, PER_CLASS
    p = sub.add_parser("demo", help="the whole workflow on generated shape images, no data needed",
                       description="Draw a small shapes dataset in OUT/data, train on it (features cached in "
                                   "OUT/cache unless --cache-dir), predict new images, write OUT/report.md. "
                                   f"Backbone by default: {DEMO_CONFIG.backbone} at {DEMO_CONFIG.backbone_size} px "
                                   "(another --backbone: its own defaults). "
                                   "Offline, --weights imagenet falls back to random initialization and says so.")
    p.add_argument("--out", required=True, help="folder for everything the demo writes")
    p.add_argument("--per-class", type=int, default=PER_CLASS, help=f"images drawn per shape ({PER_CLASS})")
    p.add_argument("--new-images", type=int, default=NEW_IMAGES, help=f"new images to predict ({NEW_IMAGES})")
    add_extractor_options(p, cache_default="OUT/cache")
    add_head_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the drawing, the split and the training")
    p.set_defaults(run=cmd_demo, backbone=DEMO_CONFIG.backbone, image_size=DEMO_CONFIG.image_size, cache_dir=None)

    from .features.augment import DEFAULT_AUGMENT, list_layers
    from .models.architecture import DEFAULT_LAYERS
    p = sub.add_parser("cnn", help="train a CNN from scratch on the images, save model.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="layers: " + ", ".join(t.usage() for t in list_layers(augment=False))
                       + "\naugmentation: " + ", ".join(t.usage() for t in list_layers(augment=True)))
    add_data_options(p)
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--layers", default=DEFAULT_LAYERS,
                   help=f"architecture after the input and rescaling, before the softmax output "
                        f"(default {DEFAULT_LAYERS})")
    p.add_argument("--augment", default=DEFAULT_AUGMENT,
                   help=f"augmentation layers, active only in training, or 'none' "
                        f"(default {DEFAULT_AUGMENT})")
    p.add_argument("--image-size", type=int, default=128, help="standardized square image size (default 128)")
    add_split_options(p)
    add_fit_options(p, learning_rate=1e-3, epochs=100, patience=10, reduce_lr_patience=4, max_minutes=20)
    p.set_defaults(run=cmd_cnn)

    p = sub.add_parser("finetune", help="unfreeze the top of a transfer run's backbone and train end to end")
    p.add_argument("run_dir", help="the --out folder of a `gearfeat train`, `search` or `finetune` run")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--unfreeze", type=int, required=True,
                   help="how many top backbone layers to train (batch normalization stays frozen)")
    p.add_argument("--data-dir", default=None, help="the images (default: the data folder of RUN_DIR)")
    add_fit_options(p, learning_rate=1e-5, epochs=20, patience=3, reduce_lr_patience=0, max_minutes=0)
    p.set_defaults(run=cmd_finetune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearfeat`` console command."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    with warnings.catch_warnings(), sigterm_interrupts(), messages_to_stderr():
        warnings.showwarning = _show_warning
        # an image over Pillow's pixel limit is skipped with its own line (images.decode_image); Pillow's
        # warning about it would be a second line without the file's name
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        try:
            return run(args)
        except GearfeatError as exc:
            _log(f"gearfeat: error: {exc}")
            return EXIT_ERROR
        except (MemoryError, tf.errors.ResourceExhaustedError) as exc:
            _log(f"gearfeat: error: out of memory ({first_line(exc)}); use smaller layers, batches or images")
            return EXIT_ERROR
        except KeyboardInterrupt:
            _log("gearfeat: interrupted; what was computed is kept in the cache, run again to resume")
            return EXIT_INTERRUPTED


def console() -> None:
    """The ``gearfeat`` command: :func:`main`, then exit without the interpreter's last garbage collections.

    Those walk every object TensorFlow created (about a second here) only to free memory the process is
    about to give back; files and workers are closed by then (context managers, atexit handlers).
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _log(f"gearfeat: warning: {message}")  # one line, not Python's file:line + source echo


@contextmanager
def _warnings_last() -> Iterator[None]:
    """Hold the warnings raised inside the block; show them once it ends (also on an error), after what it
    printed to stdout."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        sys.stdout.flush()
        for warning in caught:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (a scheduler or ``kill`` stopping the job) like Ctrl-C: commit what was computed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    console()
