"""One atomic-write helper: the file is replaced whole or not at all, and no temporary file stays behind."""
import json

import pytest

from gearfeat._internal.errors import GearfeatError
from gearfeat._internal.fileio import atomic_path, write_atomic, write_json_atomic


def test_bytes_text_and_json(tmp_path):
    assert write_atomic(tmp_path / "a.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    assert write_atomic(tmp_path / "a.txt", "é\n").read_bytes() == "é\n".encode("utf-8")
    path = write_json_atomic(tmp_path / "a.json", {"x": 1, "p": tmp_path})
    assert json.loads(path.read_text()) == {"x": 1, "p": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "a.txt"]


def test_failed_writer_keeps_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "model.h5"
    out.write_text("old")
    with pytest.raises(ValueError):  # the writer's own error passes through
        with atomic_path(out) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".h5" and tmp != out  # the writer sees the format
            tmp.write_text("half")
            raise ValueError("save failed")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.h5"]
    with atomic_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["model.h5"]


def test_unwritable_place_is_one_error_line(tmp_path):
    with pytest.raises(GearfeatError, match=r"cannot write .*missing/a\.json: No such file or directory"):
        write_json_atomic(tmp_path / "missing" / "a.json", [])
