"""Small file helpers shared by the cache, the dataset scanner and run folders."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import GearfeatError, first_line


def hash_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike, *, needed: int = 0) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds, removed when
    it fails, so readers never see a half-written file. An OSError, or the RuntimeError h5py raises on a full
    disk, becomes a GearfeatError naming ``path``, the reason and what to do. With ``needed`` (bytes), the disk
    is checked first: HDF5 writers can crash the process when the disk fills under them."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = needed  # the write itself will say what is wrong
    if free < needed:
        raise GearfeatError(f"cannot write {path}: {free / 1e6:.1f} MB free in {path.parent}, it needs about "
                            f"{needed / 1e6:.1f} MB; free space on that disk or write to another folder")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix for writers that need it
    tmp.unlink(missing_ok=True)  # left by a killed run of a process with this id
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise GearfeatError(f"cannot write {path}: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes, or text as UTF-8, through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON through :func:`atomic_path`: readers never see a half-written file."""
    return write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def _reason(exc: BaseException) -> str:
    """Why a write failed, with what to do for a full or read-only disk."""
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or first_line(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        return f"{text}; free space on that disk or write to another folder"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}; write to a folder you can write to"
    return text
