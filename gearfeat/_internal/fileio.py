"""Small file helpers shared by the cache, the dataset scanner and run folders."""
from __future__ import annotations

import hashlib
import json
import os
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


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON through a temporary file and ``os.replace``: readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GearfeatError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
