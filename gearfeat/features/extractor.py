"""Run images once through a frozen backbone and keep the pooled features in the HDF5 cache.

The extractor is a Keras model: ``Input(image) -> Lambda(resize to the backbone's size) ->
Lambda(preprocessing) -> frozen backbone with global pooling``. Images stream through in batches, decoded
by a thread pool while the backbone computes, so memory stays flat and decoding overlaps with compute.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import PIL
import tensorflow as tf

from .._internal.errors import GearfeatError, ImageError, is_int, is_real
from .._internal.progress import Progress
from .._version import __version__
from ..data.dataset import Dataset, Skipped, SplitConfig, scan_dataset, write_skipped
from ..data.images import STANDARDIZE_VERSION, check_image_size, decode_image, decoded_batches
from ..data.labels import LabelFile
from .augment import AugmentConfig, augmenter as augmenter_of, view_key
from .backbones import create_backbone, get_spec, parse_weights, weights_identity
from .cache import FeatureCache, FeatureRows
from .layers import PREPROCESSING_VERSION, preprocess_images, resize_images

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16  # small batches in several streams interleave best with decoding (bench_extract.py)
DEFAULT_STREAMS = 4  # batches in the backbone at once: fills the cores that one call leaves idle
DEFAULT_PREFETCH = 2  # batches decoded ahead of the backbone
_COMMIT_SECONDS = 5.0  # how often computed rows are committed to the cache file


@dataclass
class ExtractorConfig:
    """Everything that determines the features of an image."""

    backbone: str = "mobilenet_v2"
    alpha: float | None = None
    weights: str | None = "imagenet"
    image_size: int = 128
    backbone_size: int | None = None
    pooling: str = "avg"

    def __post_init__(self) -> None:
        spec = get_spec(self.backbone)
        self.backbone = spec.name
        self.weights = parse_weights(self.weights)
        self.backbone_size = spec.native_size if self.backbone_size is None else self.backbone_size
        self.image_size = check_image_size(self.image_size, "image_size")
        self.backbone_size = check_image_size(self.backbone_size, "backbone_size")
        if self.pooling not in ("avg", "max"):
            raise GearfeatError(f"pooling must be 'avg' or 'max', got {self.pooling!r}", parameter="pooling")
        if self.alpha is not None:
            if not is_real(self.alpha) or not 0 < self.alpha < math.inf:
                raise GearfeatError(f"alpha must be a width multiplier above 0, got {self.alpha!r}", parameter="alpha")
            self.alpha = float(self.alpha)

    @property
    def preprocess(self) -> str:
        return get_spec(self.backbone).preprocess

    def cache_attrs(self) -> dict[str, object]:
        """The fingerprint attributes of the cache (see :mod:`gearfeat.features.cache`)."""
        return {
            "backbone": self.backbone,
            "alpha": "default" if self.alpha is None else self.alpha,
            "weights": weights_identity(self.weights),
            "image_size": self.image_size,
            "backbone_size": self.backbone_size,
            "pooling": self.pooling,
            "preprocessing": f"{self.preprocess}/v{PREPROCESSING_VERSION}",
            "standardize": f"v{STANDARDIZE_VERSION}",
            "pillow_version": PIL.__version__,
            "gearfeat_version": __version__,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }


def build_extractor(config: ExtractorConfig) -> keras.Model:
    """The feature-extractor model for ``config`` (a frozen backbone behind resize and preprocessing)."""
    backbone = create_backbone(config.backbone, weights=config.weights, input_size=config.backbone_size,
                               alpha=config.alpha, pooling=config.pooling)
    backbone.name = "backbone"
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = keras.layers.Lambda(resize_images, arguments={"size": config.backbone_size}, name="upscale")(inputs)
    x = keras.layers.Lambda(preprocess_images, arguments={"mode": config.preprocess}, name="preprocess")(x)
    features = backbone(x, training=False)
    return keras.Model(inputs, features, name=f"{config.backbone}_extractor")


@dataclass(repr=False)
class Extraction:
    """The result of :func:`extract`: ``rows``, the cached features of ``dataset.records`` (in that order), read
    on demand; ``features`` reads them all (once, then kept), ``rows.read(indexes)`` only those of ``indexes``."""

    rows: FeatureRows
    dataset: Dataset
    cache_path: Path
    computed: int
    reused: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)
    extractor: "FeatureExtractor | None" = None
    views: "ViewExtraction | None" = None  #: the augmented views of the training images, when asked for

    _features: np.ndarray | None = field(default=None, init=False)

    @property
    def features(self) -> np.ndarray:
        """All the features (N, D), aligned with ``dataset.records``: read from the cache on first use."""
        if self._features is None:
            self._features = self.rows.read()
        return self._features

    def __repr__(self) -> str:
        return (f"Extraction(features={self.rows.shape}, cache_path={str(self.cache_path)!r}, "
                f"computed={self.computed}, reused={self.reused}, skipped={len(self.skipped)}, "
                f"seconds={self.seconds:.1f})")


@dataclass(repr=False)
class ViewExtraction:
    """The result of :meth:`FeatureExtractor.extract_views`: ``rows``, the cached features of the augmented
    views, read on demand; row ``j`` is view ``views[j]`` of the record ``owners[j]`` of the dataset."""

    rows: FeatureRows
    owners: np.ndarray
    views: np.ndarray
    config: AugmentConfig
    cache_path: Path
    computed: int
    reused: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """What run.json's ``views`` records: the settings, the rows, what was computed and the time."""
        return {**self.config.to_dict(), "rows": int(len(self.owners)), "images": int(len(np.unique(self.owners))),
                "computed": self.computed, "reused": self.reused, "seconds": self.seconds,
                "cache": str(Path(self.cache_path).resolve())}

    def __repr__(self) -> str:
        return (f"ViewExtraction(rows={self.rows.shape}, views={self.config.views}, spec={self.config.spec!r}, "
                f"computed={self.computed}, reused={self.reused}, seconds={self.seconds:.1f})")


class FeatureExtractor:
    """Holds a built extractor model and streams images through it into a :class:`FeatureCache`."""

    def __init__(self, config: ExtractorConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 streams: int = DEFAULT_STREAMS, workers: int | None = None, prefetch: int = DEFAULT_PREFETCH,
                 progress: bool = True):
        if not isinstance(config, ExtractorConfig):
            raise GearfeatError(f"config must be an ExtractorConfig, got {config!r}")
        for name, value, least in (("batch_size", batch_size, 1), ("streams", streams, 1),
                                   ("prefetch", prefetch, 0), ("workers", 1 if workers is None else workers, 1)):
            if not is_int(value, least):
                raise GearfeatError(f"{name} must be an integer >= {least}, got {value!r}", parameter=name)
        self.config = config
        self.batch_size = batch_size
        self.streams = streams
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.prefetch = prefetch
        self.progress = progress
        self._model: keras.Model | None = None
        self._build_error: GearfeatError | None = None
        self._forward = None
        self._building = threading.Lock()
        self._tracing = threading.Lock()
        self._traced = False

    @property
    def model(self) -> keras.Model:
        """The extractor model, built (with its compiled forward pass) on first use, by one thread; a build
        that failed is not tried again (each stream would retry it: offline, one more download attempt each)."""
        with self._building:
            if self._build_error is not None:
                raise self._build_error
            if self._model is None:
                try:
                    model = build_extractor(self.config)
                except GearfeatError as exc:
                    self._build_error = exc
                    raise
                size = self.config.image_size
                # uint8 in, cast inside the graph: a quarter of the bytes to hand over, no numpy float copy
                self._forward = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                                            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)],
                                            autograph=False)
                self._model = model
        return self._model

    def features_of(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch of standardized uint8 images already in memory."""
        images = np.asarray(images)
        size = self.config.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            # checked here: a tf.function that refuses its input keeps a lock that the extraction threads then
            # wait on forever (TensorFlow 2.21)
            raise GearfeatError(f"features_of expects standardized uint8 images of shape (N, {size}, {size}, 3), "
                                f"got {images.dtype} {images.shape}")
        if not len(images):
            return np.zeros((0, int(self.model.output.shape[-1])), np.float32)
        return self._compiled_forward()(images).numpy()

    def _compiled_forward(self):
        """The forward pass, traced once, by one thread (streams racing to make its first call would each
        trace it). Only computing features needs it: stitching uses :attr:`model` alone."""
        self.model  # noqa: B018 - builds the model and creates its forward pass
        with self._tracing:
            if not self._traced:
                self._forward.get_concrete_function()
                self._traced = True
        return self._forward

    def extract(self, dataset: Dataset, cache_dir: str | os.PathLike = "cache", *, client=None) -> Extraction:
        """Features for every record of ``dataset``, computing only images the cache does not hold yet
        (with a ``distributed.Client``, on its cluster's workers: see :mod:`gearfeat.features.distributed`).

        Files that fail to decode are skipped (listed in ``Extraction.skipped``) and left out of the
        returned dataset; a file whose bytes changed since the scan is skipped too, and so are the files
        with the same bytes as a skipped one.

        The features are not read into memory (see :class:`Extraction`), but every row of the dataset is
        checked against its digest here, a window of rows at a time, before this returns: a damaged cache is
        moved aside and its images extracted again.
        """
        start = time.perf_counter()
        with FeatureCache.open(cache_dir, self.config.cache_attrs()) as cache:
            def fill() -> tuple[int, list[Skipped], list[str]]:
                computed, failed = self._fill(dataset, cache, client)
                return computed, failed, dataset.without(failed).hashes

            computed, failed, rows = _filled_and_verified(cache, fill)
            kept = dataset.without(failed)
            return Extraction(cache.view(rows), kept, cache.path, computed=computed,
                              reused=len(kept.records) - computed, seconds=time.perf_counter() - start,
                              skipped=failed, extractor=self)

    def extract_views(self, dataset: Dataset, indexes: np.ndarray, augment: AugmentConfig,
                      cache_dir: str | os.PathLike = "cache") -> ViewExtraction:
        """The features of views ``0 .. augment.views - 1`` of the records ``indexes`` of ``dataset`` (the
        training split), computing only those the views cache lacks.

        The views cache is its own file, ``<backbone>-views-<fingerprint>.h5`` beside the plain one; its
        fingerprint covers the extractor's settings, the augmentation spec and its seed, and its rows are keyed by
        (image sha256, view index) (:func:`~gearfeat.features.augment.view_key`): a re-run computes nothing, more
        views compute only the new indexes, another spec or seed is another file. Views run in this process
        (not on a cluster). A file that cannot be read now (changed since the scan) loses its views, listed
        in ``skipped``.
        """
        if not isinstance(augment, AugmentConfig):
            raise GearfeatError(f"augment must be an AugmentConfig, got {augment!r:.60}")
        start = time.perf_counter()
        indexes = np.asarray(indexes, np.int64)
        owners, views = np.repeat(indexes, augment.views), np.tile(np.arange(augment.views), len(indexes))
        records = [dataset.records[i] for i in owners]
        keys = [view_key(r.sha256, int(v)) for r, v in zip(records, views)]
        augmenter = augmenter_of(augment)
        size = self.config.image_size
        attrs = {**self.config.cache_attrs(), **augment.cache_attrs()}
        with FeatureCache.open(cache_dir, attrs, stem=f"{self.config.backbone}-views") as cache:
            def fill() -> tuple[int, list[Skipped], list[str]]:
                todo: dict[str, int] = {}  # key -> position in owners: each view once, also of identical files
                for j, (key, known) in enumerate(zip(keys, (cache.find(keys) >= 0).tolist())):
                    if not known:
                        todo.setdefault(key, j)
                at = list(todo.values())
                paths = [str(records[j].path) for j in at]

                def load(i: int) -> np.ndarray:
                    record = records[at[i]]
                    image = load_checked_image(paths[i], record.sha256, size)
                    return augmenter.view(image, record.sha256, int(views[at[i]]))

                failed = self._stream(cache, list(todo), [f"{p}#view{int(views[j])}" for p, j in zip(paths, at)],
                                      [dataset.class_names[records[j].label] for j in at], load,
                                      desc=f"views {self.config.backbone}")
                lost = {item.path for item in failed}
                kept = [k for k, r in zip(keys, records) if str(r.path) not in lost]
                return len(at) - len(failed), failed, kept

            computed, failed, rows = _filled_and_verified(cache, fill)
            lost = {item.path for item in failed}
            keep = np.array([str(r.path) not in lost for r in records], bool)
            return ViewExtraction(cache.view(rows), owners[keep], views[keep], augment, cache.path,
                                  computed=computed, reused=int(keep.sum()) - computed,
                                  seconds=time.perf_counter() - start, skipped=failed)

    def _fill(self, dataset: Dataset, cache: FeatureCache, client) -> tuple[int, list[Skipped]]:
        """Extract the images of ``dataset`` that ``cache`` lacks into it: (images computed, files skipped)."""
        size = self.config.image_size
        todo: dict[str, tuple[Path, str]] = {}
        cached = cache.find(dataset.hashes) >= 0
        for record, known in zip(dataset.records, cached.tolist()):
            if not known and record.sha256 not in todo:
                todo[record.sha256] = (record.path, dataset.class_names[record.label])
        hashes = list(todo)
        paths = [str(todo[h][0]) for h in hashes]
        labels = [todo[h][1] for h in hashes]
        desc = f"extract {self.config.backbone}"
        if client is None:
            failed = self._stream(cache, hashes, paths, labels,
                                  lambda i: load_checked_image(paths[i], hashes[i], size), desc=desc)
        else:
            from .distributed import stream_on_cluster
            failed = stream_on_cluster(client, self, cache, hashes, paths, labels, desc=desc)
        computed = len(hashes) - len(failed)
        failed += _copies_of_failed(dataset, dict(zip(hashes, paths)), failed)
        return computed, failed

    def extract_arrays(self, images: np.ndarray, labels: Sequence[str], cache_dir: str | os.PathLike = "cache",
                       *, source: str = "array") -> tuple[np.ndarray, Path]:
        """Features of in-memory uint8 images (N, image_size, image_size, 3), cached by their bytes."""
        images = np.asarray(images)
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise GearfeatError(f"expected uint8 images of shape (N, {size}, {size}, 3), "
                                f"got {images.dtype} {images.shape}")
        if isinstance(labels, str) or len(labels) != len(images):
            raise GearfeatError(f"expected one label per image ({len(images)}), got {labels!r:.60}")
        keys = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
        with FeatureCache.open(cache_dir, self.config.cache_attrs()) as cache:
            first: dict[str, int] = {}
            for i, key in enumerate(keys):
                if key not in cache:
                    first.setdefault(key, i)
            hashes = list(first)
            index = list(first.values())
            self._stream(cache, hashes, [f"{source}[{i}]" for i in index], [str(labels[i]) for i in index],
                         lambda j: images[index[j]], desc=f"extract {self.config.backbone}")
            return cache.read(keys), cache.path

    def _stream(self, cache: FeatureCache, hashes: list[str], paths: list[str], labels: list[str],
                load: Callable[[int], np.ndarray], desc: str) -> list[Skipped]:
        """Decode (threads) -> backbone (``streams`` batches at once) -> cache, committing every few seconds
        and on the way out, interrupted or not."""
        failed: list[Skipped] = []
        in_flight: deque[tuple[list[int], Future]] = deque()  # in dataset order
        computed: list[tuple[list[int], np.ndarray]] = []  # collected, not yet committed

        def commit() -> None:
            if computed:
                rows = [i for batch_index, _ in computed for i in batch_index]
                cache.append([hashes[i] for i in rows], np.concatenate([f for _, f in computed]),
                             [paths[i] for i in rows], [labels[i] for i in rows])
                computed.clear()

        def collect_oldest() -> None:
            batch_index, future = in_flight[0]
            computed.append((batch_index, future.result()))  # one step: an interrupt leaves it in flight
            in_flight.popleft()
            bar.update(len(batch_index))

        cache.pending = len(hashes)
        last_commit = time.perf_counter()
        with Progress(len(hashes), desc, unit="img", enabled=self.progress) as bar, \
                ThreadPoolExecutor(self.streams, thread_name_prefix="gearfeat-backbone") as backbone:
            if hashes:
                backbone.submit(self._compiled_forward)  # build and trace while the first batches decode
            try:
                for batch_index, batch in self._decoded_batches(len(hashes), load, failed):
                    in_flight.append((batch_index, backbone.submit(self.features_of, batch)))
                    if len(in_flight) >= self.streams:
                        collect_oldest()
                    if time.perf_counter() - last_commit >= _COMMIT_SECONDS:
                        commit()
                        last_commit = time.perf_counter()
                while in_flight:
                    collect_oldest()
            finally:  # also on KeyboardInterrupt or an error: keep every batch the backbone finished
                for batch_index, future in in_flight:
                    collected = bool(computed) and computed[-1][0] is batch_index
                    if not collected and not future.cancel() and future.exception() is None:
                        computed.append((batch_index, future.result()))
                commit()
        return failed

    def _decoded_batches(self, n: int, load: Callable[[int], np.ndarray],
                         failed: list[Skipped]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Batches of (indexes, images), decoded image by image by a thread pool that works up to
        ``prefetch`` batches ahead of the consumer (so it never idles at a batch boundary)."""
        for batch in decoded_batches(n, load, batch_size=self.batch_size, workers=self.workers,
                                     prefetch=self.prefetch):
            ok, images = [], []
            for i, result in batch:
                if isinstance(result, ImageError):
                    failed.append(Skipped(result.path, result.reason))
                else:
                    ok.append(i)
                    images.append(result)
            if ok:
                yield ok, np.stack(images)


def _filled_and_verified(cache: FeatureCache, fill: Callable[[], tuple[int, list[Skipped], list[str]]]
                         ) -> tuple[int, list[Skipped], np.ndarray]:
    """Run ``fill`` (rows computed, files skipped, the keys wanted), then check the wanted rows against their
    digests; a damaged file is moved aside by the check and filled once more. Returns the rows of the keys."""
    for attempt in (1, 2):
        computed, failed, keys = fill()
        rows = cache.rows(keys)
        if cache.verify(np.unique(rows)):  # else moved aside: this cache is empty now
            break
        if attempt == 2:
            raise GearfeatError(f"cache {cache.path} fails verification right after it was written; "
                                "check the disk, or pass another cache_dir", parameter="cache_dir")
    return computed, failed, rows


def load_checked_image(path: str, sha256: str, size: int) -> np.ndarray:
    """The standardized image of the file at ``path``, whose bytes must still hash to ``sha256``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ImageError(path, "file changed while gearfeat was running; run again")
    return decode_image(data, size, name=str(path))


def _copies_of_failed(dataset: Dataset, first: dict[str, str], failed: list[Skipped]) -> list[Skipped]:
    """The records with the same bytes as a failed file, skipped for its reason: only the ``first`` path of
    each content (sha256) was read."""
    reasons = {item.path: item.reason for item in failed}
    copies = []
    for record in dataset.records:
        original = first.get(record.sha256)
        if original in reasons and original != str(record.path):
            copies.append(Skipped(str(record.path), f"identical bytes to {original}: {reasons[original]}"))
    return copies


def extract_dataset(data_dir: str | os.PathLike, config: ExtractorConfig, *,
                    labels: str | os.PathLike | LabelFile | None = None, cache_dir: str | os.PathLike = "cache",
                    batch_size: int | None = None, progress: bool = True, backend: str = "local",
                    address: str | None = None, augment: AugmentConfig | None = None,
                    split: SplitConfig | None = None) -> Extraction:
    """Scan ``data_dir`` (its class folders, or the files the CSV ``labels`` names), fill the cache for it and
    return the features (the ``gearfeat extract`` command).

    ``augment`` with ``views`` > 0 also fills the views cache with the augmented views of the training images
    of ``split`` (default :class:`SplitConfig`), as ``train`` and ``search`` with the same settings use them
    (:func:`add_views`; ``Extraction.views``).

    ``backend="dask"`` runs the backbone pass on the workers of the dask.distributed scheduler at ``address``
    (see :mod:`gearfeat.features.distributed`); it is connected to before the scan. The files left out are
    logged (warnings of the ``gearfeat`` logger) and written to ``skipped.json`` in the cache folder (this run's
    list); the counts are an info message.
    """
    from .distributed import cluster_client
    extractor = FeatureExtractor(config, progress=progress,
                                 **({} if batch_size is None else {"batch_size": batch_size}))
    with cluster_client(backend, address) as client:
        dataset = scan_dataset(data_dir, labels=labels)
        extraction = extractor.extract(dataset, cache_dir, client=client)
    extraction.skipped = dataset.skipped + extraction.skipped
    write_skipped(extraction.skipped, Path(extraction.cache_path).parent / "skipped.json")
    for item in extraction.skipped:
        logger.warning(f"skipped {item.path}: {item.reason}")
    logger.info(f"cache {extraction.cache_path}: {extraction.computed} images computed, {extraction.reused} "
                f"reused, {len(extraction.skipped)} skipped ({extraction.seconds:.1f} s)")
    if augment is not None and augment.views:
        add_views(extraction, (split or SplitConfig()).parts(extraction.dataset)["train"], augment, cache_dir)
    return extraction


def add_views(extraction: Extraction, train_idx: np.ndarray, augment: AugmentConfig,
              cache_dir: str | os.PathLike = "cache") -> ViewExtraction:
    """Extract (or reuse) the augmented views of the training records ``train_idx`` of ``extraction``'s dataset
    into ``extraction.views``, and log what it took."""
    views = extraction.extractor.extract_views(extraction.dataset, train_idx, augment, cache_dir)
    for item in views.skipped:
        logger.warning(f"no views of {item.path}: {item.reason}")
    logger.info(f"views cache {views.cache_path}: {augment.views} views ({augment.spec}, seed {augment.seed}) of "
                f"{len(train_idx)} training images, {views.computed} rows computed, {views.reused} reused "
                f"({views.seconds:.1f} s)")
    extraction.views = views
    return views
