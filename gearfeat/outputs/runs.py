"""A run folder: the artifacts of one training run, with a manifest of their sha256 digests.

joblib/pickle files execute code when loaded, so gearfeat loads them only from run folders it wrote
itself, after checking the digest recorded in ``manifest.json`` at write time.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

from .._internal.errors import GearfeatError
from .._internal.fileio import atomic_path, hash_file, write_json_atomic

MANIFEST = "manifest.json"


class RunDir:
    """The output folder of a run: writes artifacts and records their digests in ``manifest.json``.

    A folder created for writing (``create=True``) that holds an earlier gearfeat run gets a clean start: when
    this run writes its first file, the files the earlier run recorded in its manifest are removed (and ``log``
    says so), so that none of them outlives it to describe another model. Other files are left alone, and a
    run that fails before writing anything leaves the earlier one intact.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = False, log: Callable[[str], None] = print):
        self.path = Path(path)
        self._log = log
        self._earlier: set[str] | None = None  # a created folder's earlier run, until this run's first write
        self._to_create = create  # made at the first write: a run that fails before it leaves no empty folder
        if create:
            _check_creatable(self.path)  # now, not after a long extraction
            self._earlier = set(self.manifest())
        elif not (self.path / MANIFEST).is_file():
            raise GearfeatError(f"{self.path} is not a gearfeat run folder (no {MANIFEST}); pass the --out "
                                "folder of a gearfeat run")

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
            command = json.loads((self.path / "run.json").read_text()).get("command", "")
        except (OSError, ValueError, AttributeError):
            command = ""
        for name in sorted(earlier - {written}) + [MANIFEST]:
            if name == Path(name).name:  # only names in the folder itself, whatever the manifest says
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError as exc:
                    raise GearfeatError(f"cannot replace {self.path / name} of the earlier run: "
                                        f"{exc.strerror}") from None
        self._log(f"{self.path}: replaced the earlier gearfeat {command + ' ' if command else ''}run in it")

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
        raise GearfeatError(f"cannot create run folder {path}: {in_the_way} is in the way; pass another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GearfeatError(f"cannot create run folder {path}: permission denied in {existing}; pass another --out")
