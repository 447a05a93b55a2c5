"""Small file helpers shared by the cache, the dataset scanner and run folders."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import GearfeatError


def hash_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(out) as tmp: writer(tmp)``: a temporary name beside ``path`` (same suffix, so h5py and
    Keras's ``save`` see the format) that replaces ``path`` with ``os.replace`` when the block ends well, and is
    removed when it does not. Readers never see a half-written file. Errors pass through unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)  # left by a killed run of a process with this id
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes, or text as UTF-8, through :func:`atomic_path`; an OSError becomes one GearfeatError line."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise GearfeatError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (values JSON lacks as their ``str``) through :func:`write_atomic`."""
    return write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
