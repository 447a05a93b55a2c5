"""Run images once through a frozen backbone and keep the pooled features in the HDF5 cache.

The extractor is a Keras model: ``Input(image) -> Lambda(resize to the backbone's size) ->
Lambda(preprocessing) -> frozen backbone with global pooling``. Images stream through in batches, decoded
by a thread pool while the backbone computes, so memory stays flat and decoding overlaps with compute.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .backbones import create_backbone, get_spec, parse_weights, weights_identity
from .cache import FeatureCache
from .dataset import Dataset, Skipped
from .errors import GearfeatError, ImageError
from .images import decode_image
from .layers import PREPROCESSING_VERSION, preprocess_images, resize_images
from .progress import Progress

DEFAULT_BATCH_SIZE = 64
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
        self.backbone_size = int(self.backbone_size or spec.native_size)
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise GearfeatError(f"--image-size must be an integer >= 8, got {self.image_size!r}")
        if self.backbone_size < 8:
            raise GearfeatError(f"--backbone-size must be an integer >= 8, got {self.backbone_size!r}")
        if self.pooling not in ("avg", "max"):
            raise GearfeatError(f"pooling must be 'avg' or 'max', got {self.pooling!r}")
        if self.alpha is not None:
            self.alpha = float(self.alpha)

    @property
    def preprocess(self) -> str:
        return get_spec(self.backbone).preprocess

    def cache_attrs(self) -> dict[str, object]:
        """The fingerprint attributes of the cache (see :mod:`gearfeat.cache`)."""
        return {
            "backbone": self.backbone,
            "alpha": "default" if self.alpha is None else self.alpha,
            "weights": weights_identity(self.weights),
            "image_size": self.image_size,
            "backbone_size": self.backbone_size,
            "pooling": self.pooling,
            "preprocessing": f"{self.preprocess}/v{PREPROCESSING_VERSION}",
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


@dataclass
class Extraction:
    """The result of :func:`extract`: features aligned with ``dataset.records``."""

    features: np.ndarray
    dataset: Dataset
    cache_path: Path
    computed: int
    reused: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)
    extractor: "FeatureExtractor | None" = None


class FeatureExtractor:
    """Holds a built extractor model and streams images through it into a :class:`FeatureCache`."""

    def __init__(self, config: ExtractorConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int | None = None, progress: bool = True):
        if batch_size < 1:
            raise GearfeatError(f"batch size must be >= 1, got {batch_size}")
        self.config = config
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.progress = progress
        self._model: keras.Model | None = None
        self._forward = None

    @property
    def model(self) -> keras.Model:
        if self._model is None:
            self._model = build_extractor(self.config)
            model = self._model
            size = self.config.image_size
            self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        return self._model

    def features_of(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch of standardized uint8 images already in memory."""
        self.model  # noqa: B018 - builds the model and its compiled forward pass
        return self._forward(tf.convert_to_tensor(images, tf.float32)).numpy()

    def extract(self, dataset: Dataset, cache_dir: str | os.PathLike = "cache") -> Extraction:
        """Features for every record of ``dataset``, computing only images the cache does not hold yet.

        Files that fail to decode are skipped (listed in ``Extraction.skipped``) and left out of the
        returned dataset; a file whose bytes changed since the scan is skipped too.
        """
        start = time.perf_counter()
        size = self.config.image_size
        with FeatureCache.open(cache_dir, self.config.cache_attrs()) as cache:
            todo: dict[str, tuple[Path, str]] = {}
            for record in dataset.records:
                if record.sha256 not in cache and record.sha256 not in todo:
                    todo[record.sha256] = (record.path, dataset.class_names[record.label])
            hashes = list(todo)

            def load(i: int) -> np.ndarray:
                path = todo[hashes[i]][0]
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
                if hashlib.sha256(data).hexdigest() != hashes[i]:
                    raise ImageError(path, "file changed while gearfeat was running; run again")
                return decode_image(data, size, name=str(path))

            failed = self._stream(cache, hashes, [str(todo[h][0]) for h in hashes],
                                  [todo[h][1] for h in hashes], load, desc=f"extract {self.config.backbone}")
            kept = dataset.without(failed)
            features = cache.read(kept.hashes)
            return Extraction(features, kept, cache.path, computed=len(hashes) - len(failed),
                              reused=len(kept.records) - (len(hashes) - len(failed)),
                              seconds=time.perf_counter() - start, skipped=failed, extractor=self)

    def extract_arrays(self, images: np.ndarray, labels: Sequence[str], cache_dir: str | os.PathLike = "cache",
                       *, source: str = "array") -> tuple[np.ndarray, Path]:
        """Features of in-memory uint8 images (N, image_size, image_size, 3), cached by their bytes."""
        images = np.asarray(images)
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise GearfeatError(f"expected uint8 images of shape (N, {size}, {size}, 3), "
                                f"got {images.dtype} {images.shape}")
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
        """Decode (threads) -> backbone (batches) -> cache, committing every few seconds and on interrupt."""
        failed: list[Skipped] = []
        pending: list[int] = []
        pending_features: list[np.ndarray] = []

        def commit() -> None:
            if pending:
                cache.append([hashes[i] for i in pending], np.concatenate(pending_features),
                             [paths[i] for i in pending], [labels[i] for i in pending])
                pending.clear()
                pending_features.clear()

        last_commit = time.perf_counter()
        with Progress(len(hashes), desc, unit="img", enabled=self.progress) as bar:
            try:
                for batch_index, batch in self._decoded_batches(len(hashes), load, failed):
                    pending_features.append(self.features_of(batch))
                    pending.extend(batch_index)
                    bar.update(len(batch_index))
                    if time.perf_counter() - last_commit >= _COMMIT_SECONDS:
                        commit()
                        last_commit = time.perf_counter()
            finally:
                commit()  # also on KeyboardInterrupt: everything computed so far is kept
        return failed

    def _decoded_batches(self, n: int, load: Callable[[int], np.ndarray],
                         failed: list[Skipped]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Batches of (indexes, images) decoded by a thread pool one batch ahead of the consumer."""
        def load_batch(start: int) -> tuple[list[int], list[np.ndarray], list[Skipped]]:
            ok, images, bad = [], [], []
            indexes = range(start, min(n, start + self.batch_size))
            for i, result in zip(indexes, pool.map(_try(load), indexes)):
                if isinstance(result, ImageError):
                    bad.append(Skipped(result.path, result.reason))
                else:
                    ok.append(i)
                    images.append(result)
            return ok, images, bad

        starts = range(0, n, self.batch_size)
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as prefetch:
            future = prefetch.submit(load_batch, 0) if n else None
            for k in range(len(starts)):
                ok, images, bad = future.result()
                if k + 1 < len(starts):
                    future = prefetch.submit(load_batch, starts[k + 1])
                failed.extend(bad)
                if ok:
                    yield ok, np.stack(images)


def _try(load: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray | ImageError]:
    def wrapped(i: int):
        try:
            return load(i)
        except ImageError as exc:
            return exc
    return wrapped

