"""A dataset folder with one sub-folder per class (or a label file, see :mod:`gearfeat.data.labels`), and its
grouped, stratified split.

Files are listed, never decoded, here: a file that is clearly unusable (hidden, wrong extension,
empty, unreadable, or the same bytes as a file of another class) is listed in ``skipped`` with a
reason; files that fail to decode later are moved there with :meth:`Dataset.without`.
"""

from __future__ import annotations

import gc
import hashlib
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._internal.errors import GearfeatError, check_seed, is_int, is_real
from .._internal.fileio import hash_file, write_json_atomic
from .images import IMAGE_EXTENSIONS, os_error_reason
from .labels import LabelFile, read_label_file

__all__ = [
    "ImageRecord", "Skipped", "Dataset", "scan_dataset", "split_dataset", "write_skipped", "hash_file",
]

_HASH_THREADS = min(4, os.cpu_count() or 1)  # files hashed at once by scan_dataset
_HASH_CHUNK = 256  # files per hashing task

# Lower-case names of files and folders that operating systems and tools leave behind
# (names starting with "." are always hidden).
_SYSTEM_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})


@dataclass(frozen=True)
class ImageRecord:
    """One usable image file."""

    path: Path
    label: int  #: index into ``Dataset.class_names``
    sha256: str  #: hex digest of the file's bytes


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(repr=False)
class Dataset:
    """Image records with their class names, and the files left out."""

    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    label_file: LabelFile | None = None  #: the CSV that listed the images, None for class folders

    def __repr__(self) -> str:
        return (f"Dataset(root={str(self.root)!r}, classes={len(self.class_names)}, images={len(self.records)}, "
                f"skipped={len(self.skipped)})")

    def without(self, bad: Iterable[Skipped]) -> Dataset:
        """A copy without the records whose path is in ``bad``; ``bad`` is added to ``skipped``."""
        bad = list(bad)
        drop = {item.path for item in bad}
        records = [record for record in self.records if str(record.path) not in drop]
        return Dataset(self.root, list(self.class_names), records, [*self.skipped, *bad], self.label_file)

    def source(self) -> dict[str, object]:
        """Where the images came from, for run.json: ``data_dir`` and ``labels`` (the label file, or None)."""
        return {"data_dir": str(Path(self.root).resolve()),
                "labels": None if self.label_file is None else self.label_file.to_dict()}

    @property
    def labels(self) -> np.ndarray:
        return np.array([record.label for record in self.records], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return [str(record.path) for record in self.records]

    @property
    def hashes(self) -> list[str]:
        return [record.sha256 for record in self.records]


def scan_dataset(root: str | os.PathLike, *, labels: str | os.PathLike | LabelFile | None = None,
                 min_classes: int = 2) -> Dataset:
    """List the images of ``root``, a folder with one sub-folder of images per class, or the files that the
    CSV ``labels`` names (relative to ``root``) with their classes (see :func:`~gearfeat.data.labels.read_label_file`).

    Sub-folders are searched recursively, in sorted order; class names are the sorted folder
    names (or the label file's classes). Classes with no usable image are left out with a warning. Files with identical bytes
    in two classes are all skipped: their label is unknowable.

    Links: a folder link is followed (once: loops are skipped) only while it stays inside its
    class folder; one leading anywhere else (the dataset root, an ancestor, another class, out
    of the dataset) is skipped with a reason saying where it leads. A file link to an image
    outside the dataset is used, under its link's path. A file link to another class's image
    is skipped (an image has one label, its own folder's), so the target keeps its class. A
    file reached by two paths in its class (a link and its target) is one image: the path
    that is not a link is kept, the other skipped as the same file.

    Raises:
        GearfeatError: ``root`` is missing or unreadable, has no class folders, the label file is not a
            usable CSV, or fewer than ``min_classes`` classes have images.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise GearfeatError(f"the data folder must be a path, got {root!r}")
    if not is_int(min_classes, 1):
        raise GearfeatError(f"min_classes must be an integer >= 1, got {min_classes!r}")
    with _collection_paused():  # tens of thousands of new objects, none of them garbage
        return _scan(Path(root), min_classes, None if labels is None else LabelFile.of(labels))


def _scan(root: Path, min_classes: int, labels: LabelFile | None) -> Dataset:
    skipped: list[Skipped] = []
    found: list[tuple[str, Path, str]] = []  # (class, path, sha256)
    if labels is None:
        folders = _class_folders(root, skipped)
        places = _Places(os.path.realpath(root), {os.path.realpath(folder): folder.name for folder in folders})
        listed = [(folder.name, path) for folder in folders for path in _class_files(folder, places, skipped)]
        classes = {folder.name: str(folder) for folder in folders}  # class -> where its images are
    else:
        _check_folder(root)
        listed, bad = read_label_file(labels, root)
        skipped.extend(Skipped(path, reason) for path, reason in bad)
        classes = {name: f"in {labels.path}" for name in sorted({name for name, _ in listed})}
    paths = [path for _, path in listed]
    pool = ThreadPoolExecutor(_HASH_THREADS)  # hashlib and file reads release the GIL
    try:  # chunks of files, not one task per file: a task costs more than hashing a small image
        parts = list(pool.map(lambda start: [_digest(path) for path in paths[start:start + _HASH_CHUNK]],
                              range(0, len(paths), _HASH_CHUNK)))
    finally:  # on Ctrl-C too: drop the chunks not started, so the interrupt is felt at once
        pool.shutdown(cancel_futures=True)
    digests = [result for part in parts for result in part]
    for (name, path), (digest, reason) in zip(listed, digests):
        if digest is None:
            skipped.append(Skipped(str(path), reason))
        else:
            found.append((name, path, digest))

    usable = _without_conflicts(found, skipped)
    with_images = {name for name, _, _ in usable}
    class_names = [name for name in classes if name in with_images]
    for name, where in classes.items():
        if name not in with_images:
            warnings.warn(f"class {name!r} ({where}) has no usable images; it is left out", stacklevel=3)
    if len(class_names) < min_classes:
        raise GearfeatError(
            f"{root if labels is None else labels.path}: found only {len(class_names)} "
            f"class{'' if len(class_names) == 1 else 'es'} with images ({', '.join(class_names) or 'none'}); need "
            f"at least {min_classes}: " + ("add a sub-folder of images for each class" if labels is None else
                                           "list images of each class, one row each (see the skipped rows)"))
    label = {name: i for i, name in enumerate(class_names)}
    records = [ImageRecord(path, label[name], digest) for name, path, digest in usable]
    skipped.sort(key=lambda item: item.path)  # in path order, however the threads and checks found them
    return Dataset(root, class_names, records, skipped, labels)


def split_dataset(dataset: Dataset, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded, stratified and grouped split into sorted record indexes ``{"train", "val", "test"}``.

    Records with the same bytes (sha256) form a group that always lands in one split. Within each
    class, groups are ordered by ``sha256(f"{seed}:{digest}")``, which does not depend on file
    order, and cut into test, val and train by rounded counts, each at least one group when its
    fraction is above 0.

    Raises:
        GearfeatError: a fraction or the seed is out of range (see :class:`SplitConfig`), or a class has too few
            distinct images.
    """
    return SplitConfig(val_fraction, test_fraction, seed).parts(dataset)


def _split(dataset: Dataset, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    members: dict[str, list[int]] = defaultdict(list)
    label_of: dict[str, int] = {}
    for i, record in enumerate(dataset.records):
        if label_of.setdefault(record.sha256, record.label) != record.label:
            raise GearfeatError(f"{record.path}: the same bytes appear under two labels; "
                                "build the dataset with scan_dataset, which skips such files")
        members[record.sha256].append(i)
    groups_of: list[list[str]] = [[] for _ in dataset.class_names]
    for digest, label in label_of.items():
        groups_of[label].append(digest)

    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for name, groups in zip(dataset.class_names, groups_of):
        if len(groups) < needed:
            folder = Path(dataset.root) / name
            skipped = sum(Path(item.path).parent == folder for item in dataset.skipped)
            raise GearfeatError(
                f"class {name!r} has {len(groups)} distinct image{'' if len(groups) == 1 else 's'}"
                + (f" ({skipped} of its files were skipped, each listed above)" if skipped else "") + "; "
                f"val_fraction={val_fraction} and test_fraction={test_fraction} need at least {needed} "
                "(one per split): add images to it or lower the fractions", parameter=("val_fraction", "test_fraction"))
        groups.sort(key=lambda digest: hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest())
        n_val, n_test = _split_counts(len(groups), val_fraction, test_fraction)
        cuts = {"test": groups[:n_test], "val": groups[n_test:n_test + n_val],
                "train": groups[n_test + n_val:]}
        for split, chosen in cuts.items():
            splits[split].extend(i for digest in chosen for i in members[digest])
    return {split: np.array(sorted(index), dtype=np.int64) for split, index in splits.items()}


def write_skipped(skipped: list[Skipped], path: str | os.PathLike) -> None:
    """Write ``skipped`` as a JSON array of ``{"path", "reason"}`` objects, atomically.

    Raises:
        GearfeatError: the file cannot be written.
    """
    write_json_atomic(path, [item.to_dict() for item in skipped])


def _without_conflicts(found: list[tuple[str, Path, str]],
                       skipped: list[Skipped]) -> list[tuple[str, Path, str]]:
    """``found`` without the files whose bytes also occur in another class (added to ``skipped``)."""
    copies: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for name, path, digest in found:
        copies[digest].append((name, path))
    usable = []
    for name, path, digest in found:
        if len(copies[digest]) == 1:  # the common case: no other file has these bytes
            usable.append((name, path, digest))
            continue
        other = next(((n, p) for n, p in copies[digest] if n != name), None)
        if other is None:
            usable.append((name, path, digest))
        else:
            skipped.append(Skipped(str(path), f"identical bytes to {other[1]} in class {other[0]}: "
                                              "conflicting labels"))
    return usable


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Numbers of val and test groups out of ``n``, leaving at least one for training."""
    n_val, n_test = (max(1, round(n * f)) if f > 0 else 0 for f in (val_fraction, test_fraction))
    while n_val + n_test >= n:  # rounding up left nothing to train on: shrink the larger split
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _check_folder(root: Path) -> None:
    """Raise a GearfeatError unless ``root`` is a folder."""
    if not root.exists():
        raise GearfeatError(f"dataset folder not found: {root}; pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise GearfeatError(f"{root} is a file, not a folder; pass the folder that holds one sub-folder "
                            "per class")


def _class_folders(root: Path, skipped: list[Skipped]) -> list[Path]:
    """The class sub-folders of ``root``, sorted; other entries go to ``skipped``."""
    _check_folder(root)
    try:
        entries = _sorted_entries(root)
    except OSError as exc:
        raise GearfeatError(f"cannot read dataset folder {root}: {exc.strerror or exc}; "
                            "check its permissions") from None
    folders = []
    for path, is_dir in _entries(root, entries, skipped):
        if is_dir:
            folders.append(path)
        else:
            skipped.append(Skipped(str(path), "not in a class folder"))
    if not folders:
        raise GearfeatError(f"no class folders in {root}: expected one sub-folder per class, "
                            f"e.g. {root / 'cats'}/*.jpg")
    return folders


@dataclass(frozen=True)
class _Places:
    """Where links may lead: the dataset root's real path and each class folder's, with its name."""

    root: str
    classes: dict[str, str]

    def where(self, real: str, home: str) -> str | None:
        """None if ``real`` lies in the class folder ``home`` (both real paths), else where it lies, in words."""
        if _inside(real, home):
            return None
        if real == self.root:
            return "the dataset root"
        if _inside(home, real):
            return "a folder above its class folder"
        name = next((name for folder, name in self.classes.items() if _inside(real, folder)), None)
        if name is not None:
            return f"class {name!r}"
        return "elsewhere in the dataset" if _inside(real, self.root) else "outside the dataset"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_files(folder: Path, places: _Places, skipped: list[Skipped]) -> list[Path]:
    """The files of a class folder, each real file once (the path that is not a link preferred)."""
    home = os.path.realpath(folder)
    found: dict[str, list[tuple[bool, Path]]] = {}  # real path -> (is a link, path) in walk order
    for path, real, is_link in _walk(folder, home, places, skipped, seen=set()):
        found.setdefault(real, []).append((is_link, path))
    files = []
    for paths in found.values():
        kept = min(paths, key=lambda item: item[0])[1]  # the first one that is not a link, else the first
        files.append(kept)
        skipped.extend(Skipped(str(path), f"same file as {kept} (reached through a link)")
                       for _, path in paths if path != kept)
    return sorted(files, key=lambda path: path.parts)


def _walk(folder: Path, home: str, places: _Places, skipped: list[Skipped],
          seen: set[str]) -> Iterator[tuple[Path, str, bool]]:
    """``(path, real path, is a link)`` of the files under ``folder`` (in its class folder ``home``),
    recursively in sorted order, each folder once (symlink loops)."""
    real_folder = os.path.realpath(folder)
    seen.add(real_folder)
    try:
        entries = _sorted_entries(folder)
    except OSError as exc:
        skipped.append(Skipped(str(folder), os_error_reason(exc, "folder")))
        return
    links = {entry.name for entry in entries if entry.is_symlink()}
    for path, is_dir in _entries(folder, entries, skipped):
        is_link = path.name in links
        real = os.path.realpath(path) if is_link else os.path.join(real_folder, path.name)
        where = places.where(real, home) if is_link else None
        if is_dir and where is not None:
            skipped.append(Skipped(str(path), f"folder link leads outside its class folder, to {where} "
                                              f"({real}); not followed"))
        elif is_dir and real in seen:
            skipped.append(Skipped(str(path), f"folder already scanned (same as {real})"))
        elif is_dir:
            yield from _walk(path, home, places, skipped, seen)
        elif where is not None and where.startswith("class "):
            skipped.append(Skipped(str(path), f"link to {real} of {where}: an image has one label, its own "
                                              "folder's, so the link is not used"))
        else:
            yield path, real, is_link


def is_hidden(name: str) -> bool:
    """True for a hidden file or folder, or one the OS keeps for itself (``.DS_Store``, ``Thumbs.db``, ...)."""
    return name.startswith(".") or name.lower() in _SYSTEM_NAMES


def _entries(folder: Path, entries: list[os.DirEntry], skipped: list[Skipped]) -> Iterator[tuple[Path, bool]]:
    """``(path, is_dir)`` of visible entries; hidden ones and broken links go to ``skipped``."""
    for entry in entries:
        path = folder / entry.name
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError as exc:  # e.g. a symlink loop
            skipped.append(Skipped(str(path), os_error_reason(exc)))
            continue
        if is_hidden(entry.name):
            skipped.append(Skipped(str(path), f"hidden or system {'folder' if is_dir else 'file'}"))
        else:
            yield path, is_dir


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


@contextmanager
def _collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: in a process with a large heap (TensorFlow's), each of the
    collections that creating many objects triggers walks the whole heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _digest(path: Path) -> tuple[str | None, str | None]:
    """``(sha256, None)`` of an image file, or ``(None, reason)`` when it is not a usable image file."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return None, f"not an image extension ({suffix or 'none'})"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size == 0:
            return None, "empty file (0 bytes)"
        return hash_file(path), None
    except OSError as exc:
        return None, os_error_reason(exc)


@dataclass
class SplitConfig:
    """How the dataset is split: fractions of each class, seeded."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not is_real(value) or not 0 <= value < 1:
                raise GearfeatError(f"{name} must be a number in [0, 1), got {value!r}", parameter=name)
        if self.val_fraction + self.test_fraction >= 1:
            raise GearfeatError(f"val_fraction + test_fraction must be below 1 to leave images for training, "
                                f"got {self.val_fraction} + {self.test_fraction}",
                                parameter=("val_fraction", "test_fraction"))
        check_seed(self.seed)  # also as the split's key: 1, 1.0 and True would give three different splits

    def parts(self, dataset: Dataset) -> dict[str, np.ndarray]:
        """The split of ``dataset`` (see :func:`split_dataset`)."""
        return _split(dataset, self.val_fraction, self.test_fraction, self.seed)

    def check_for_training(self) -> None:
        """Raise a GearfeatError naming the fraction unless both are above 0: a trained model needs validation
        images to stop early and test images to be measured."""
        for part in ("val", "test"):
            name = f"{part}_fraction"
            if not getattr(self, name) > 0:
                raise GearfeatError(f"{name} is {getattr(self, name)}: training needs {part} images (validation "
                                    "to stop early, test to measure); pass a fraction above 0", parameter=name)
