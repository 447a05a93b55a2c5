"""A run folder: the artifacts of one training run, with a manifest of their sha256 digests, and its record
``run.json`` (:class:`RunRecord`, the one module that writes and reads that file).

joblib/pickle files execute code when loaded, so gearfeat loads them only from run folders it wrote
itself, after checking the digest recorded in ``manifest.json`` at write time.
"""
from __future__ import annotations

import json
import logging
import os
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import joblib

from .._internal.errors import GearfeatError, is_int, is_real
from .._internal.fileio import atomic_path, hash_file, write_json_atomic
from .._version import __version__

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_FILE = "run.json"


class RunDir:
    """The output folder of a run: writes artifacts and records their digests in ``manifest.json``.

    A folder created for writing (``create=True``) that holds an earlier gearfeat run gets a clean start: when
    this run writes its first file, the files the earlier run recorded in its manifest are removed (and an info
    message of the ``gearfeat`` logger says so), so that none of them outlives it to describe another model. Other
    files are left alone, and a run that fails before writing anything leaves the earlier one intact.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = False):
        self.path = Path(path)
        self._earlier: set[str] | None = None  # a created folder's earlier run, until this run's first write
        self._to_create = create  # made at the first write: a run that fails before it leaves no empty folder
        if create:
            _check_creatable(self.path)  # now, not after a long extraction
            self._earlier = set(self.manifest())
        elif not (self.path / MANIFEST).is_file():
            raise GearfeatError(f"{self.path} is not a gearfeat run folder (no {MANIFEST}); pass a folder that a "
                                "gearfeat run wrote")

    def __truediv__(self, name: str) -> Path:
        """The path of artifact ``name`` (for writing, in a created folder: the earlier run is cleared first)."""
        self._clear_earlier_run()
        return self.path / name

    def _clear_earlier_run(self, written: str | None = None) -> None:
        """Create the folder, or remove the earlier run's files in it (but ``written``, just written by this
        run) and its manifest, once."""
        if self._to_create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GearfeatError(f"cannot create run folder {self.path}: {exc.strerror}") from None
            self._to_create = False
        earlier, self._earlier = self._earlier, None
        if not earlier:
            return
        try:
            command = json.loads((self.path / RUN_FILE).read_text()).get("command", "")  # for this line only
        except (OSError, ValueError, AttributeError):
            command = ""
        for name in sorted(earlier - {written}) + [MANIFEST]:
            if name == Path(name).name:  # only names in the folder itself, whatever the manifest says
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError as exc:
                    raise GearfeatError(f"cannot replace {self.path / name} of the earlier run: "
                                        f"{exc.strerror}") from None
        logger.info(f"{self.path}: replaced the earlier gearfeat {command + ' ' if command else ''}run in it")

    def manifest(self) -> dict[str, str]:
        """The recorded digests by file name; empty when there is none (or it is not a JSON object)."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def record(self, name: str) -> Path:
        """Record the digest of an artifact written into the folder; returns its path."""
        self._clear_earlier_run(written=name)
        manifest = self.manifest()
        manifest[name] = hash_file(self.path / name)
        write_json_atomic(self.path / MANIFEST, manifest)
        return self.path / name

    def write_json(self, name: str, payload: Any) -> Path:
        write_json_atomic(self / name, payload)
        return self.record(name)

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise GearfeatError(f"{path} is missing (the run did not finish, or the file was removed); run the "
                                "command again") from None
        except (OSError, ValueError) as exc:
            raise GearfeatError(f"cannot read {path}: {exc}") from None

    def save_joblib(self, obj: Any, name: str) -> Path:
        with atomic_path(self / name) as tmp:
            joblib.dump(obj, tmp)
        return self.record(name)

    def load_joblib(self, name: str) -> Any:
        """Load a joblib artifact only if its bytes match the digest recorded when gearfeat wrote it."""
        path = self.path / name
        expected = self.manifest().get(name)
        if expected is None:
            raise GearfeatError(f"refusing to load {path}: not recorded in {self.path / MANIFEST} (gearfeat "
                                "loads pickled files only from its own runs)")
        if not path.is_file() or hash_file(path) != expected:
            raise GearfeatError(f"refusing to load {path}: its sha256 does not match the one recorded when it "
                                "was written (modified or replaced?)")
        return joblib.load(path)


def _check_creatable(path: Path) -> None:
    """Raise a GearfeatError unless ``path`` is a writable folder or one that can be created."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        in_the_way = "a file of that name" if existing == path else f"the file {existing}"
        raise GearfeatError(f"out {path}: cannot create the run folder, {in_the_way} is in the way; pass another "
                            "folder", parameter="out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GearfeatError(f"out {path}: cannot create the run folder, permission denied in {existing}; pass "
                            "another folder", parameter="out")


# ------------------------------------------------------------------------------------------ run.json
FORMAT_VERSION = 2
"""The version of the ``run.json`` format written by :meth:`RunRecord.save`. Version 1 is the files written
before ``format_version`` existed, in two shapes: ``train`` and ``search`` kept the image size only inside
``extractor``, ``cnn`` and ``finetune`` at the top; :meth:`RunRecord.load` reads both."""

COMMANDS = ("train", "search", "finetune", "cnn")
"""The commands that write a run folder, as recorded in ``run.json`` ``command``."""


@dataclass
class RunRecord:
    """What a run folder's ``run.json`` records: the command, its data, split, settings, sizes and wall times.

    The fields of every run come first; the others belong to some commands only (:data:`COMMAND_FIELDS`) and
    are None for the rest. Settings of types from the layers above (the extractor's ``ExtractorConfig``, the
    dense head's parameters, the fit settings, the search summary) are kept as the dicts they write.
    """

    command: str  # one of COMMANDS
    data_dir: str  # absolute
    class_names: list[str]
    image_size: int  # the side of the standardized images the model takes
    split: dict[str, float]  # val_fraction, test_fraction, seed, and the sizes train, val, test
    n_images: int
    n_skipped: int
    epochs_run: int
    best_epoch: int
    seconds: dict[str, float]  # wall time of each phase, and total
    machine: dict[str, str | int]  # gearfeat._internal.system.machine_summary()
    labels: dict[str, Any] | None = None  # the label file (LabelFile.to_dict()), None for class folders
    extractor: dict[str, Any] | None = None  # the frozen backbone's ExtractorConfig (train, search, finetune)
    cache: str | None = None  # train, search: the feature cache, absolute
    head: dict[str, Any] | None = None  # train, search: the dense head's parameters
    baseline: str | None = None  # train, search: the baseline that ran, its class and parameters (None: older runs)
    baseline_c: float | None = None
    images_computed: int | None = None
    images_reused: int | None = None
    features: dict[str, Any] | None = None  # train, search: in memory or streamed from the cache, and the budget
    search: dict[str, Any] | None = None  # search: the space, trials, backend and winner
    views: dict[str, Any] | None = None  # train, search: the cached augmented views (None: none, or an older run)
    fit: dict[str, Any] | None = None  # cnn, finetune: the FitConfig
    stopped_by: str | None = None
    layers: str | None = None  # cnn: the architecture and augmentation specs, the parameter count
    augment: str | None = None
    parameters: int | None = None
    source_run: str | None = None  # finetune: the run it started from, absolute
    unfreeze: int | None = None
    unfrozen_layers: list[str] | None = None
    trainable_parameters: int | None = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike | RunDir) -> RunRecord:
        """Read the ``run.json`` of a gearfeat run folder, of this format or an earlier one.

        Raises:
            GearfeatError: one line naming the file when it is missing, damaged, of another command or of a
                format this gearfeat does not read.
        """
        folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        return cls.from_json(folder.read_json(RUN_FILE), folder.path / RUN_FILE)

    @classmethod
    def from_json(cls, payload: Any, path: str | os.PathLike = RUN_FILE) -> RunRecord:
        """The record of a decoded ``run.json`` (``path`` names it in errors); earlier formats are migrated."""
        if not isinstance(payload, dict):
            raise GearfeatError(f"{path} is damaged (a JSON {type(payload).__name__}, not an object); run the "
                                "command again")
        version = payload.get("format_version", 1)
        if not is_int(version, 1) or version > FORMAT_VERSION:
            raise GearfeatError(f"{path} has run format_version {version!r}, which gearfeat {__version__} does not "
                                f"read (it reads 1 to {FORMAT_VERSION}); use the gearfeat that wrote it, or run the "
                                "command again")
        command = payload.get("command")
        if command not in COMMANDS:
            raise GearfeatError(f"{Path(path).parent} is not a run of gearfeat {', '.join(COMMANDS)} (run.json "
                                f"command {command!r}); pass a folder that one of those wrote")
        if version == 1 and "image_size" not in payload and isinstance(payload.get("extractor"), dict):
            payload = {**payload, "image_size": payload["extractor"].get("image_size")}  # train, search
        hints = typing.get_type_hints(cls)
        values = {}
        for name in _fields_of(command):
            value = payload.get(name)
            if value is None:
                # null: no label file; a run from before memory budgets (features), baseline estimators (baseline)
                # or augmented views (views), or a run without views
                if name not in ("labels", "features", "baseline", "views"):
                    raise GearfeatError(f"{path} has no {name} (the file was edited, or written by an "
                                        "unfinished run); run the command again")
                continue
            if not _is_a(value, hints[name]):
                raise GearfeatError(f"{path} is damaged: {name} is {value!r:.60}, not {_type_name(hints[name])}; "
                                    "run the command again")
            values[name] = value
        missing = [key for key in ("val_fraction", "test_fraction", "seed") if key not in values["split"]]
        if missing:
            raise GearfeatError(f"{path} is damaged: its split has no {', '.join(missing)}; run the command again")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The ``run.json`` payload: ``format_version``, then the fields of every run and of its command."""
        return {"format_version": FORMAT_VERSION, **{name: getattr(self, name) for name in _fields_of(self.command)}}

    def save(self, run: RunDir) -> Path:
        """Write ``run.json`` into ``run`` (atomically, recorded in its manifest)."""
        return run.write_json(RUN_FILE, self.to_json())


_TRANSFER_FIELDS = ("extractor", "cache", "head", "baseline", "baseline_c", "images_computed", "images_reused",
                    "features", "views")
_FIT_FIELDS = ("fit", "stopped_by")
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "train": _TRANSFER_FIELDS,
    "search": (*_TRANSFER_FIELDS, "search"),
    "finetune": ("extractor", *_FIT_FIELDS, "source_run", "unfreeze", "unfrozen_layers", "trainable_parameters"),
    "cnn": (*_FIT_FIELDS, "layers", "augment", "parameters"),
}
"""The fields of :class:`RunRecord` (beyond those of every run) that each command records."""


def _fields_of(command: str) -> tuple[str, ...]:
    """The fields a run of ``command`` records: those of every run (the ones without a default, and the label
    file) and its own."""
    common = tuple(f.name for f in fields(RunRecord) if f.default is MISSING)
    return (*common, "labels", *COMMAND_FIELDS[command])


def _is_a(value: Any, hint: Any) -> bool:
    """True when a decoded JSON ``value`` is of the type ``hint`` (a float may be written as an integer)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_is_a(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is float:
        return is_real(value)
    if hint is int:
        return is_int(value, -2**63)
    if origin is list:
        return isinstance(value, list) and all(_is_a(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _is_a(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``hint`` as the error says it: ``an int``, ``a list[str]``."""
    name = (str(hint).replace("typing.", "") if typing.get_origin(hint) else hint.__name__).removesuffix(" | None")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
