"""The HDF5 bottleneck-feature cache, keyed by content and fingerprinted like Hugging Face datasets.

One file per *fingerprint*: a hash of everything that determines the features (backbone, alpha, weights
identity, image and backbone sizes, pooling, preprocessing version and library versions), so features of
different settings are never mixed. Rows are keyed by the sha256 of each image's bytes: an image already in
the cache is never run through the backbone again, whatever its path.

Crash safety: rows are appended in short open-write-close sessions and only the rows counted by the
``n_rows`` attribute (written last) are valid, so an interrupted extraction never reads as complete and the
next run resumes after the last committed row. Every row carries a digest of its feature bytes.

Opening a file reads its structure, settings, keys and digests, never its features (1M rows x 1,280 float32
are 5 GB): a file that fails that check is moved aside and rebuilt. Feature rows are checked against their
digests when they are read, in windows of rows (:meth:`FeatureCache.verify`, which ``extract`` runs over
the rows of its dataset before it returns, and :class:`FeatureRows`, the on-demand view the workflows read a
split's rows through): a damaged row is found before any caller gets its features, and a file with one is
moved aside and rebuilt by the extraction that finds it. A process killed inside a write session can
also leave a file that reads fine but refuses further writes (HDF5's space bookkeeping for variable-length
strings): the first write that fails copies the committed rows into a fresh file and carries on. An
exclusive file lock serializes writers across processes; readers take a shared lock.

A full disk: HDF5 that runs out of space mid-write can leave its library state broken (errors from object
deallocation, then a segmentation fault), so every append first allocates the rows' size (with a chunk and
a margin to spare) at the end of the file with ``posix_fallocate``, where HDF5 then writes, and stops with
one clear error naming the space the rest of the run needs if that fails: HDF5 never meets a full disk,
the committed rows stay valid and a later run resumes.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Mapping

import h5py
import numpy as np

from .._internal.errors import GearfeatError, first_line
from .._internal.fileio import atomic_path
from .._internal.system import size_text

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 256
_COLUMNS = ("features", "sha256", "digest", "path", "label")
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)  # what h5py raises on a damaged file
_SPACE_MARGIN = 1 << 20  # bytes left free besides an append's rows: HDF5 metadata, heap and B-tree growth
_ROW_OVERHEAD = 64 + 8 + 2 * 32  # bytes a row takes besides its features and strings: sha256, digest, heap entries
_READ_BYTES = 32 << 20  # the most feature bytes one read window holds in memory

logger = logging.getLogger(__name__)


def _settings_json(attrs: Mapping[str, object]) -> str:
    return json.dumps(dict(attrs), sort_keys=True, default=str)


def fingerprint(attrs: Mapping[str, object]) -> str:
    """A short stable hash of the attributes that determine the features."""
    return hashlib.sha256(_settings_json(attrs).encode()).hexdigest()[:16]


def row_digest(features: np.ndarray) -> np.ndarray:
    """Per-row 8-byte blake2b digests of float32 feature rows, as an (N,) array of bytes."""
    rows = np.ascontiguousarray(features, dtype=np.float32)
    return np.array([hashlib.blake2b(r, digest_size=8).digest() for r in rows], dtype="S8")  # no copy of a row


class CacheCorrupt(Exception):
    """A cache file failed its structure or checksum verification."""


class FeatureCache:
    """An HDF5 file of features keyed by image sha256. Use :meth:`open` (with its lock) to get one."""

    def __init__(self, path: Path, attrs: Mapping[str, object]):
        self.path = Path(path)
        self.attrs = dict(attrs)
        self._index = KeyIndex()  # each committed row's sha256 and row number: 72 bytes a row
        self._digests = np.zeros(0, "S8")  # the digest of every committed row, as recorded in the file
        self.n_rows = 0
        self.dim: int | None = None
        self.pending = 0  #: rows the running extraction still means to append (for the space it needs)

    # ----------------------------------------------------------------- locating and locking
    @staticmethod
    def path_for(cache_dir: str | os.PathLike, attrs: Mapping[str, object], *, stem: str | None = None) -> Path:
        """The cache file for these attributes: ``CACHE_DIR/<stem>-<fingerprint>.h5``, the stem by default the
        backbone's name (the augmented views' file: ``<backbone>-views``)."""
        return Path(cache_dir) / f"{stem or attrs.get('backbone', 'features')}-{fingerprint(attrs)}.h5"

    @classmethod
    @contextmanager
    def open(cls, cache_dir: str | os.PathLike, attrs: Mapping[str, object], *, write: bool = True,
             stem: str | None = None) -> Iterator["FeatureCache"]:
        """Lock (exclusive for writers, shared for readers), check the structure of a cache file and load its
        keys and digests (not its features: see :meth:`verify`). ``stem``: see :meth:`path_for`."""
        path = cls.path_for(cache_dir, attrs, stem=stem)
        with _locked(path, write=write):
            cache = cls(path, attrs)
            cache._load()
            yield cache

    # ----------------------------------------------------------------- reading
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            self._check_and_index()
        except CacheCorrupt as exc:
            self._discard(exc)

    def _discard(self, reason: CacheCorrupt) -> None:
        """Move a damaged file aside (``.corrupt``) and start an empty cache in its place."""
        aside = self.path.with_suffix(".corrupt")
        os.replace(self.path, aside)
        logger.warning(f"warning: cache {self.path} failed verification ({reason}); moved to {aside.name} and "
                       "rebuilding")
        self._index, self.n_rows, self.dim, self._digests = KeyIndex(), 0, None, np.zeros(0, "S8")

    def _check_and_index(self) -> None:
        try:
            with h5py.File(self.path, "r") as f:
                n = int(f.attrs.get("n_rows", -1))
                if f.attrs.get("settings") != _settings_json(self.attrs):
                    raise CacheCorrupt(f"settings differ from the expected {_settings_json(self.attrs)}")
                needed = ("features", "sha256", "digest", "path", "label")
                if n < 0 or any(k not in f for k in needed) or any(f[k].shape[0] < n for k in needed):
                    raise CacheCorrupt("missing or short datasets")
                dim = int(f["features"].shape[1])
                digests = f["digest"][:n]
                hashes = f["sha256"][:n]
        except CacheCorrupt:
            raise
        except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError on damaged files
            raise CacheCorrupt(f"unreadable HDF5: {first_line(exc)}")
        self.n_rows, self.dim = n, (dim if n else None)
        self._index = KeyIndex()
        self._index.add(hashes, np.arange(n, dtype=np.int64))
        self._digests = digests

    def __contains__(self, sha256: str) -> bool:
        return bool(self.find([sha256])[0] >= 0)

    def __len__(self) -> int:
        return self.n_rows

    def rows(self, hashes: list[str]) -> np.ndarray:
        """Row numbers of these image hashes (KeyError for one not cached)."""
        rows = self.find(hashes)
        if (rows < 0).any():
            raise KeyError(hashes[int(np.argmax(rows < 0))])
        return rows

    def find(self, hashes: list[str]) -> np.ndarray:
        """Row numbers of these image hashes, -1 for those not cached."""
        return self._index.find(np.array(hashes, dtype="S64"))

    def read(self, hashes: list[str]) -> np.ndarray:
        """The (N, D) float32 features of these image hashes, in the order given, each row checked against its
        digest (:class:`CacheCorrupt` names the first that fails)."""
        return self.view(self.rows(hashes), locked=False).read()

    def view(self, rows: np.ndarray, *, locked: bool = True) -> "FeatureRows":
        """These committed rows as a :class:`FeatureRows`, read on demand. ``locked`` views take the shared
        lock for each read: use them once this cache is closed (inside, they would wait for its own lock)."""
        rows = np.asarray(rows, np.int64)
        return FeatureRows(self.path, rows, self._digests[rows], self.dim or 0, locked=locked)

    def verify(self, rows: np.ndarray | None = None) -> bool:
        """Check ``rows`` (default: every committed row) against their digests, a window at a time (memory:
        :data:`_READ_BYTES`). A damaged file is moved aside and this cache starts empty: returns False."""
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows, np.int64)
        try:
            for _ in self.view(rows, locked=False).windows(np.arange(len(rows))):
                pass
        except CacheCorrupt as exc:
            self._discard(exc)
            return False
        return True

    # ----------------------------------------------------------------- writing
    def append(self, hashes: list[str], features: np.ndarray, paths: list[str], labels: list[str]) -> None:
        """Commit new rows: data first, then the ``n_rows`` counter, each append in its own file session."""
        features = np.asarray(features, dtype=np.float32)
        n_new, dim = features.shape
        if self.dim is not None and dim != self.dim:
            raise GearfeatError(f"feature width {dim} does not match cache {self.path} ({self.dim})")
        columns = {"features": features, "sha256": np.array(hashes, dtype="S64"), "digest": row_digest(features),
                   "path": paths, "label": labels}
        text = sum(len(p.encode()) + len(label.encode()) for p, label in zip(paths, labels))
        self._reserve(features.nbytes + n_new * _ROW_OVERHEAD + text + _CHUNK_ROWS * dim * 4 + _SPACE_MARGIN,
                      n_new, dim, text / max(n_new, 1), columns)
        for attempt in (1, 2):
            try:
                self._write(self.path, self.n_rows, columns)
                break
            except _H5_ERRORS as exc:
                if attempt == 2 or _no_space(exc) or not self._rewrite():
                    raise GearfeatError(f"cannot write cache {self.path}: {first_line(exc)} (disk full or "
                                        "read-only? free space or pass another cache_dir)",
                                        parameter="cache_dir") from None
                logger.warning(f"warning: cache {self.path} could not be written ({first_line(exc)}); copied "
                               f"its {self.n_rows} committed rows to a fresh file")
        start = self.n_rows
        self._index.add(columns["sha256"], np.arange(start, start + n_new, dtype=np.int64))
        self._digests = np.concatenate([self._digests, columns["digest"]])
        self.n_rows, self.dim = start + n_new, dim
        self.pending = max(0, self.pending - n_new)

    def _reserve(self, needed: int, n_rows: int, dim: int, text_per_row: float,
                 columns: Mapping[str, np.ndarray | list]) -> None:
        """Allocate ``needed`` bytes at the end of the file before HDF5 writes into them, or raise a GearfeatError
        (folder, free space, what the rest of the run needs). HDF5 trims the unused part when it closes the file."""
        def no_room(free: int) -> GearfeatError:
            rows = max(self.pending, n_rows)
            total = rows * (dim * 4 + _ROW_OVERHEAD + text_per_row) + _CHUNK_ROWS * dim * 4 + _SPACE_MARGIN
            return GearfeatError(
                f"not enough space for the feature cache in {self.path.parent}: {size_text(free)} free, the run needs "
                f"about {size_text(total)} more ({rows} image{'' if rows == 1 else 's'} of {dim} features); free space "
                f"there (the {self.n_rows} rows cached so far are kept) or pass another cache_dir on a disk with room",
                parameter="cache_dir")

        def free() -> int:
            try:
                return shutil.disk_usage(self.path.parent).free
            except OSError:
                return 0

        if free() < needed:
            raise no_room(free())
        if not self.path.exists():  # an empty cache first, so that its rows go into allocated space too
            self._write(self.path, 0, {key: value[:0] for key, value in columns.items()})
        try:
            fd = os.open(self.path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, needed)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_room(free()) from None
            raise GearfeatError(f"cannot write cache {self.path}: {exc.strerror or exc}; pass a writable "
                                "cache_dir", parameter="cache_dir") from None

    def _write(self, path: Path, start: int, columns: Mapping[str, np.ndarray | list]) -> None:
        stop = start + len(columns["features"])
        with h5py.File(path, "a") as f:
            if "features" not in f:
                self._create(f, columns["features"].shape[1])
            for key in _COLUMNS:
                ds = f[key]
                if ds.shape[0] < stop:
                    ds.resize(stop, axis=0)
                ds[start:stop] = columns[key]
            f.flush()
            f.attrs["n_rows"] = stop

    def _rewrite(self) -> bool:
        """Replace the file with a fresh copy of its committed, verified rows (atomic rename), copied a window of
        :data:`_READ_BYTES` at a time; False if not possible (a row fails its digest, or a read or write fails)."""
        try:
            with h5py.File(self.path, "r") as old, atomic_path(self.path) as tmp:
                span = _rows_per_window(_READ_BYTES, int(old["features"].shape[1]))
                for start in range(0, max(self.n_rows, 1), span):  # one window at least: an empty file is a file
                    stop = min(start + span, self.n_rows)
                    columns = {key: old[key][start:stop] for key in _COLUMNS}
                    if not np.array_equal(row_digest(columns["features"]), columns["digest"]):
                        raise CacheCorrupt(f"a row of {start}-{stop - 1} fails its digest")
                    self._write(tmp, start, columns)
            return True
        except (CacheCorrupt, GearfeatError, *_H5_ERRORS):  # atomic_path turns a failed write into a GearfeatError
            return False

    def _create(self, f: h5py.File, dim: int) -> None:
        for key, value in self.attrs.items():  # one attribute each for people browsing the file
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        f.attrs["settings"] = _settings_json(self.attrs)
        f.attrs["n_rows"] = 0
        f.attrs["format_version"] = FORMAT_VERSION
        f.create_dataset("features", (0, dim), np.float32, maxshape=(None, dim), chunks=(_CHUNK_ROWS, dim))
        f.create_dataset("sha256", (0,), "S64", maxshape=(None,), chunks=(4096,))
        f.create_dataset("digest", (0,), "S8", maxshape=(None,), chunks=(4096,))
        f.create_dataset("path", (0,), _STR, maxshape=(None,), chunks=(1024,))
        f.create_dataset("label", (0,), _STR, maxshape=(None,), chunks=(1024,))


class KeyIndex:
    """Row numbers by sha256 without a Python object per row: sorted runs of (key, row) arrays, 72 bytes a row.

    :meth:`add` sorts the new keys into a run of their own, then merges it with the runs before it while the last
    of them is no larger (a binary counter: each key is merged O(log N) times, and there are O(log N) runs), so
    that the keys of a file opened with 1M rows stay one run while a session's 256-row appends come and go.
    :meth:`find` searches each run; a key added more than once has its last row.
    """

    def __init__(self):
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Index ``rows`` (int64) under ``keys`` (S64), later than every key added before."""
        keys, rows = np.asarray(keys, "S64"), np.asarray(rows, np.int64)
        while self._runs and len(self._runs[-1][0]) <= len(keys):
            older_keys, older_rows = self._runs.pop()
            keys, rows = np.concatenate([older_keys, keys]), np.concatenate([older_rows, rows])
        order = np.argsort(keys, kind="stable")  # equal keys keep the order they were added in
        if len(keys):
            self._runs.append((keys[order], rows[order]))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The row of each of ``keys`` (S64), -1 for a key never added."""
        found = np.full(len(keys), -1, np.int64)
        for run_keys, run_rows in self._runs:  # oldest first: a later run's row wins
            at = np.maximum(np.searchsorted(run_keys, keys, side="right") - 1, 0)  # the last of equal keys
            found = np.where(run_keys[at] == keys, run_rows[at], found)
        return found

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self._runs)


class FeatureRows:
    """Some rows of a cache file (``rows``, in this order), read on demand without loading the others.

    Every read opens the file (under a shared lock, if ``locked``) and checks each row against the digest
    recorded when the view was made (the file's as the cache opened it), the first time this view reads it:
    a damaged row, or a file rebuilt since, is an error before its features are handed out (a one-line
    GearfeatError naming the file; :class:`CacheCorrupt` for an unlocked view, read by the open cache, which
    moves the file aside). ``np.asarray(view)`` reads them all. ``window_bytes``: the most feature bytes one read
    holds, unless a call says otherwise.
    """

    def __init__(self, path: Path, rows: np.ndarray, digests: np.ndarray, dim: int, *, locked: bool = True,
                 window_bytes: int = _READ_BYTES):
        self.path, self.rows, self.digests, self.dim, self.locked = Path(path), rows, digests, dim, locked
        self.window_bytes = int(window_bytes)
        self._checked = np.zeros(len(rows), bool)

    def subset(self, indexes: np.ndarray, *, window_bytes: int | None = None) -> "FeatureRows":
        """The view of the positions ``indexes`` of this one (e.g. a split's rows), read on demand as this one is."""
        indexes = np.asarray(indexes, np.int64)
        return FeatureRows(self.path, self.rows[indexes], self.digests[indexes], self.dim, locked=self.locked,
                           window_bytes=self.window_bytes if window_bytes is None else window_bytes)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.dim)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.dim * 4

    def __len__(self) -> int:
        return len(self.rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        features = self.read()
        return features if dtype is None else features.astype(dtype)

    def read(self, indexes: np.ndarray | None = None) -> np.ndarray:
        """The (len(indexes), D) features of the view's positions ``indexes`` (default: all), in that order."""
        indexes = np.arange(len(self.rows)) if indexes is None else np.asarray(indexes, np.int64)
        features = np.empty((len(indexes), self.dim), np.float32)
        for at, block in self.windows(indexes):
            features[at] = block
        return features

    def windows(self, indexes: np.ndarray | None = None, *,
                window_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(at, features)`` pairs covering the positions ``indexes`` in the order of their rows in the file:
        ``features`` are those of ``indexes[at]`` (default: every position). Each pair comes from one contiguous
        read of at most ``window_bytes`` (default: the view's; h5py reads a slice far faster than scattered rows;
        a split takes most of each 256-row HDF5 chunk anyway)."""
        indexes = np.arange(len(self.rows)) if indexes is None else np.asarray(indexes, np.int64)
        if not len(indexes):
            return
        order = np.argsort(self.rows[indexes], kind="stable")
        rows = self.rows[indexes][order]  # increasing
        span = self._span(window_bytes)
        with _locked(self.path, write=False) if self.locked else nullcontext():
            try:
                with h5py.File(self.path, "r") as f:
                    features = f["features"]
                    first = 0
                    while first < len(order):
                        start = int(rows[first])
                        last = int(np.searchsorted(rows, start + span, side="left"))
                        at = order[first:last]
                        block = features[start:int(rows[last - 1]) + 1]
                        if (np.diff(rows[first:last]) != 1).any():  # gaps or repeats: only the rows asked for
                            block = block[rows[first:last] - start]
                        self._check(indexes[at], block)
                        yield at, block
                        first = last
            except CacheCorrupt as exc:
                if not self.locked:  # the open cache's own reads: it moves the file aside
                    raise
                raise GearfeatError(f"cache {self.path} changed or was damaged since this run checked it ({exc}); "
                                    "run again: the extraction moves a damaged file aside and rebuilds it") from None
            except _H5_ERRORS as exc:
                if not self.locked:
                    raise CacheCorrupt(f"unreadable HDF5: {first_line(exc)}") from None
                raise GearfeatError(f"cannot read cache {self.path}: {first_line(exc)}; run again: the extraction "
                                    "moves a damaged file aside and rebuilds it") from None

    def apply(self, function: Callable[[np.ndarray], np.ndarray], indexes: np.ndarray | None = None, *,
              window_bytes: int | None = None) -> np.ndarray:
        """``function`` of the features of the positions ``indexes`` (default: all), applied a window at a time and
        put together in ``indexes``' order: for functions that treat rows independently, such as predictions."""
        indexes = np.arange(len(self.rows)) if indexes is None else np.asarray(indexes, np.int64)
        out = None
        for at, X in self.windows(indexes, window_bytes=window_bytes):
            value = np.asarray(function(X))
            if out is None:
                out = np.empty((len(indexes), *value.shape[1:]), value.dtype)
            out[at] = value
        return np.zeros(0) if out is None else out

    def to_npy(self, indexes: np.ndarray, path: str | os.PathLike, *, window_bytes: int | None = None) -> np.memmap:
        """Write the features of ``indexes`` (in that order) to the ``.npy`` file ``path``, a window at a time, and
        return it memory-mapped read-only: worker processes map the same file (joblib passes a memmap by
        reference) instead of each receiving a copy."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(indexes), self.dim))
        for at, block in self.windows(indexes, window_bytes=window_bytes):
            out[at] = block
        out.flush()
        del out
        return np.load(path, mmap_mode="r")

    def shuffled(self, indexes: np.ndarray, *, seed: int, window_bytes: int | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(at, features)`` pairs covering ``indexes`` (``features`` those of ``indexes[at]``) for one pass of
        streamed training: the rows are cut into windows of consecutive rows in the file (``window_bytes``
        each, default the view's), the windows come in an order drawn from ``seed`` and the rows of each window are
        shuffled. Not a full shuffle: rows of one window stay together in the pass. One contiguous read per
        window."""
        indexes = np.asarray(indexes, np.int64)
        span = self._span(window_bytes)
        by_row = np.argsort(self.rows[indexes], kind="stable")
        rng = np.random.default_rng(seed)
        groups = [by_row[i:i + span] for i in range(0, len(by_row), span)]
        for g in rng.permutation(len(groups)):
            at = groups[g]
            block = self.read(indexes[at])
            mix = rng.permutation(len(at))
            yield at[mix], block[mix]

    def _span(self, window_bytes: int | None) -> int:
        """Rows in a window of ``window_bytes`` (None: the view's)."""
        return _rows_per_window(self.window_bytes if window_bytes is None else window_bytes, self.dim)

    def _check(self, positions: np.ndarray, block: np.ndarray) -> None:
        fresh = ~self._checked[positions]
        if fresh.any():
            bad = row_digest(block[fresh]) != self.digests[positions[fresh]]
            if bad.any():
                raise CacheCorrupt(f"feature checksum mismatch at row {int(self.rows[positions[fresh][bad][0]])}")
            self._checked[positions[fresh]] = True


@contextmanager
def _locked(path: Path, *, write: bool) -> Iterator[None]:
    """Hold the lock file of the cache ``path``: exclusive for writers, shared for readers."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a+")
    except OSError as exc:
        raise GearfeatError(f"cannot use cache folder {path.parent}: {exc.strerror}; "
                            "pass a writable cache_dir", parameter="cache_dir") from None
    with lock:
        mode = fcntl.LOCK_EX if write else fcntl.LOCK_SH
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(f"waiting for another gearfeat process using {path.name} ...")
            fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _rows_per_window(window_bytes: int, dim: int) -> int:
    """How many float32 rows of ``dim`` features one read of ``window_bytes`` holds (at least one)."""
    return max(1, window_bytes // max(4 * dim, 1))


def _no_space(exc: BaseException) -> bool:
    """True for a write error from a full disk or quota (h5py puts the errno in its message only)."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "errno = 28" in str(exc) \
        or "No space left" in str(exc)
