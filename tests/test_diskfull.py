"""A full disk and a read-only folder: one clear line, committed rows kept, a re-run completes the same cache.

The real cases use a small tmpfs (mounting needs root; they skip with the reason where it fails); the
simulated ones patch the writes and run everywhere.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest

import gearfeat.features.cache as cache_module
from gearfeat._internal.errors import GearfeatError
from gearfeat._internal.fileio import write_json_atomic
from gearfeat.cli import main
from gearfeat.features.cache import FeatureCache
from gearfeat.outputs.runs import RunDir

from conftest import TINY

ATTRS = {"backbone": "x"}
DIM = 256
MOBILENET = ["--backbone", TINY["backbone"], "--alpha", str(TINY["alpha"]), "--weights", "none",
             "--image-size", "32", "--backbone-size", "32", "--no-progress"]


def batch(b: int, n: int = 100):
    """Rows of batch ``b``: (hashes, features, paths, labels), the same every time."""
    return ([f"{b:04d}{i:060d}" for i in range(n)], np.full((n, DIM), b + np.arange(n)[:, None] / n, np.float32),
            [f"class/p{b}_{i}.jpg" for i in range(n)], ["class"] * n)


def columns(cache_dir: Path) -> dict[str, list]:
    with h5py.File(FeatureCache.path_for(cache_dir, ATTRS), "r") as f:
        n = int(f.attrs["n_rows"])
        return {key: f[key][:n].tolist() for key in ("features", "sha256", "digest", "path", "label")}


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); the patched tests cover it")


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards."""
    folder = tmp_path / "small"
    mount_tmpfs(folder, "2m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(cache_dir: Path) -> tuple[int, str]:
    """Append batches until the cache refuses one; (batches committed, the error)."""
    with FeatureCache.open(cache_dir, ATTRS) as cache:
        for b in range(100):
            try:
                cache.append(*batch(b))
            except GearfeatError as exc:
                return b, str(exc)
    raise AssertionError("the disk never filled")


def test_a_full_disk_stops_with_one_line_keeps_the_rows_and_a_rerun_completes_the_same_cache(small_disk, tmp_path):
    committed, message = fill(small_disk)
    assert 0 < committed < 20
    assert message.startswith(f"not enough space for the feature cache in {small_disk}: ") and "\n" not in message
    assert "the run needs about" in message and "pass another cache_dir on a disk" in message
    with FeatureCache.open(small_disk, ATTRS, write=False) as cache:  # verifies every committed row's digest
        assert len(cache) == committed * 100
    remount(small_disk, "size=64m")  # space freed
    with FeatureCache.open(small_disk, ATTRS) as cache:
        for b in range(committed, 20):
            cache.append(*batch(b))
    with FeatureCache.open(tmp_path / "clean", ATTRS) as cache:
        for b in range(20):
            cache.append(*batch(b))
    assert columns(small_disk) == columns(tmp_path / "clean")


def test_hdf5_never_meets_the_full_disk_even_when_free_space_is_misreported(small_disk):
    """The free-space check can be wrong (another process fills the disk); the allocation before each write
    still stops it cleanly. Without it, h5py prints RuntimeErrors from deallocation and the process segfaults."""
    script = f"""
import collections, shutil, sys
sys.path[:0] = {[str(Path(__file__).parent)]!r}
import gearfeat.features.cache as cache_module
from test_diskfull import fill
usage = collections.namedtuple("usage", "total used free")
cache_module.shutil.disk_usage = lambda path: usage(1 << 40, 0, 1 << 40)
for attempt in (1, 2):  # the second run starts on the full disk, with the file the first left
    print(fill(__import__("pathlib").Path({str(small_disk)!r})))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and "Traceback" not in done.stderr and "RuntimeError" not in done.stderr, done.stderr
    assert done.stdout.count("not enough space for the feature cache") == 2, done.stdout
    with FeatureCache.open(small_disk, ATTRS, write=False) as cache:
        assert len(cache) > 0


def test_a_read_only_cache_folder_is_one_line(small_disk):
    with FeatureCache.open(small_disk, ATTRS) as cache:
        cache.append(*batch(0))
    remount(small_disk, "ro")
    try:
        with pytest.raises(GearfeatError, match=f"cannot use cache folder {small_disk}: Read-only file system; "
                                                "pass a writable cache_dir$"):
            with FeatureCache.open(small_disk, ATTRS):
                pass
    finally:
        remount(small_disk, "rw")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_extract_on_a_full_disk_exits_1_with_one_line_and_the_rerun_matches_a_clean_cache(
        shapes_dir, tmp_path, capsys, monkeypatch):
    """Simulated: the allocation before the first write fails as on a full disk."""
    monkeypatch.setattr(cache_module.os, "posix_fallocate", no_space)
    code = main(["extract", str(shapes_dir), *MOBILENET, "--cache-dir", str(tmp_path / "full")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err, err
    assert f"not enough space for the feature cache in {tmp_path / 'full'}" in err and "60 images" in err, err
    monkeypatch.undo()  # space freed
    for cache_dir in ("full", "clean"):
        assert main(["extract", str(shapes_dir), *MOBILENET, "--cache-dir", str(tmp_path / cache_dir)]) == 0
    (full,), (clean,) = (list((tmp_path / d).glob("*.h5")) for d in ("full", "clean"))
    with h5py.File(full, "r") as a, h5py.File(clean, "r") as b:
        assert int(a.attrs["n_rows"]) == int(b.attrs["n_rows"]) == 60
        for key in ("features", "sha256", "digest", "path", "label"):
            assert a[key][:60].tolist() == b[key][:60].tolist(), key


def test_a_full_disk_mid_write_leaves_no_half_written_run_file(tmp_path):
    """Simulated for JSON and joblib: the earlier whole file stays, no temporary file is left."""
    run = RunDir(tmp_path / "run", create=True)
    run.write_json("metrics.json", {"accuracy": 1.0})
    run.save_joblib({"a": 1}, "baseline.joblib")
    real_dump = joblib.dump

    def dump_then_fail(obj, path):
        real_dump(obj, path)  # most of the bytes are written ...
        with open(path, "r+b") as f:
            f.truncate(5)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    real_write_bytes = Path.write_bytes

    def write_then_fail(self, data):
        real_write_bytes(self, data[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(joblib, "dump", dump_then_fail)
        with pytest.raises(GearfeatError, match="cannot write .*baseline.joblib: No space left on device; free space"):
            run.save_joblib({"a": 2}, "baseline.joblib")
        patch.setattr(Path, "write_bytes", write_then_fail)
        with pytest.raises(GearfeatError, match="cannot write .*metrics.json: No space left on device; free space"):
            run.write_json("metrics.json", {"accuracy": 0.5})
    assert json.loads((run.path / "metrics.json").read_text()) == {"accuracy": 1.0}
    assert run.load_joblib("baseline.joblib") == {"a": 1}
    assert sorted(p.name for p in run.path.iterdir()) == ["baseline.joblib", "manifest.json", "metrics.json"]


def test_train_into_a_full_run_folder_exits_1_and_leaves_only_whole_files(shapes_dir, tmp_path):
    """Real: --out on a tmpfs with a few kB free (a fresh process: a crash must show as its exit status);
    whatever is there afterwards is whole and recorded in the manifest."""
    out_disk = tmp_path / "out"
    mount_tmpfs(out_disk, "1m")
    try:
        (out_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(out_disk).free - 48_000))
        done = subprocess.run([sys.executable, "-m", "gearfeat", "train", str(shapes_dir), *MOBILENET,
                               "--cache-dir", str(tmp_path / "cache"), "--out", str(out_disk / "run"), "--epochs", "2"],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        err = done.stderr.strip().splitlines()
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert err[-1].startswith("gearfeat: error: cannot write ") and "free space" in err[-1], err
        run = out_disk / "run"
        manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
        for path in run.iterdir() if run.exists() else ():
            assert not path.name.startswith("."), path  # no temporary file left
            assert path.name == "manifest.json" or path.name in manifest, path  # every file was finished
    finally:
        subprocess.run(["umount", "-l", str(out_disk)], capture_output=True)


def test_write_json_atomic_refuses_a_read_only_folder_in_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(GearfeatError, match="cannot write .*x.json: Read-only file system; write to a folder"):
        write_json_atomic(tmp_path / "x.json", {})
    assert list(tmp_path.iterdir()) == []
