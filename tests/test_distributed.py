"""Extraction on a local dask.distributed cluster (2 worker processes, 1 thread each, on 127.0.0.1): the cache
it fills equals a one-process run's, through the API and the CLI, also when a worker is killed mid-shard."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time

import h5py
import numpy as np
import pytest

from gearfeat.cli import main
from gearfeat.features import distributed as dist
from gearfeat.features.cache import FeatureCache, row_digest
from gearfeat.features.extractor import extract_dataset

from conftest import tiny_config

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install gearfeat[dask])")

TINY_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
             "--backbone-size", "32", "--no-progress"]
COLUMNS = ("features", "sha256", "digest", "path", "label")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:  # as the CLI's: not the default client
        client.run(_import_extractor)  # TensorFlow's import, once per worker, outside the tests' time
        yield cluster


def _import_extractor() -> None:
    import gearfeat.features.extractor  # noqa: F401


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(dist, "DEFAULT_SHARD_SIZE", 7)  # 60 images: 9 shards, the last one short


def _columns(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_rows"])
        assert sorted(f) == sorted(COLUMNS)
        return {key: f[key][:n] for key in COLUMNS} | {"settings": f.attrs["settings"]}


def _assert_same_cache(cluster_cache, local_cache) -> None:
    assert cluster_cache.name == local_cache.name  # the same fingerprint, so the same file
    got, want = _columns(cluster_cache), _columns(local_cache)
    assert got["settings"] == want["settings"]
    for key in ("sha256", "path", "label"):  # the same rows in the same order
        assert list(got[key]) == list(want[key])
    np.testing.assert_allclose(got["features"], want["features"], atol=1e-5, rtol=0)
    assert np.array_equal(got["digest"], row_digest(got["features"]))  # the cache verifies on opening


def test_cluster_extraction_equals_one_process(cluster, shapes_copy, tmp_path, small_shards, logged):
    (shapes_copy / "circle" / "broken.png").write_bytes(b"not a png")
    config = tiny_config()
    local = extract_dataset(shapes_copy, config, cache_dir=tmp_path / "local", progress=False)
    remote = extract_dataset(shapes_copy, config, cache_dir=tmp_path / "cluster", progress=False,
                             backend="dask", address=cluster.scheduler_address)
    _assert_same_cache(remote.cache_path, local.cache_path)
    assert remote.computed == local.computed == 60
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5, rtol=0)
    assert [(s.path, s.reason) for s in remote.skipped] == [(s.path, s.reason) for s in local.skipped]
    assert any(line.startswith(f"skipped {shapes_copy / 'circle' / 'broken.png'}: ") for line in logged())
    again = extract_dataset(shapes_copy, config, cache_dir=tmp_path / "cluster", progress=False,
                            backend="dask", address=cluster.scheduler_address)
    assert (again.computed, again.reused) == (0, 60)  # nothing sent: everything was cached


def test_extract_cli_on_a_cluster_end_to_end(cluster, shapes_dir, tmp_path, capsys):
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "local")]) == 0
    local = capsys.readouterr().out.strip()
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "cluster"),
                 "--backend", "dask", "--address", cluster.scheduler_address]) == 0
    out, err = capsys.readouterr()
    assert "60 images computed, 0 reused, 0 skipped" in err
    _assert_same_cache(tmp_path / "cluster" / os.path.basename(out.strip()), tmp_path / "local" /
                       os.path.basename(local))


def test_train_cli_extracts_on_the_cluster(cluster, shapes_dir, tmp_path, capsys):
    assert main(["train", str(shapes_dir), *TINY_ARGS, "--epochs", "1", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "run"), "--backend", "dask", "--address", cluster.scheduler_address]) == 0
    assert "60 images computed, 0 reused" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.h5").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_that_answers_nothing_is_one_line_before_any_work(shapes_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dist, "_CONNECT_SECONDS", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "cache"),
                 "--backend", "dask", "--address", address]) == 1
    assert time.perf_counter() - started < 30  # bounded: not a hang
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gearfeat: error: cannot connect to the dask scheduler at {address}: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # before any work


@pytest.mark.parametrize("args, message", [
    (["--backend", "dask"], "--backend dask needs --address"),
    (["--backend", "dask", "--address", "tcp://127.0.0.1"], "is not a dask scheduler address"),
    (["--address", "tcp://127.0.0.1:8786"], "--address is for --backend dask"),
])
def test_cluster_options_are_checked_before_any_work(shapes_dir, tmp_path, capsys, args, message):
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "cache"), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_ctrl_c_keeps_the_shards_that_finished(cluster, shapes_dir, tmp_path, small_shards, monkeypatch):
    config = tiny_config()

    class Interrupted(dist.Progress):
        def update(self, n: int = 1) -> None:
            super().update(n)
            if self.count >= 14:  # after the second shard came back
                raise KeyboardInterrupt

    monkeypatch.setattr(dist, "Progress", Interrupted)
    options = dict(cache_dir=tmp_path / "cluster", progress=False, backend="dask",
                   address=cluster.scheduler_address)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(shapes_dir, config, **options)
    with FeatureCache.open(tmp_path / "cluster", config.cache_attrs(), write=False) as cache:
        kept = len(cache)  # opened, so verified row by row
    assert 14 <= kept < 60 and kept % 7 == 0  # whole shards only
    monkeypatch.setattr(dist, "Progress", Interrupted.__mro__[1])
    resumed = extract_dataset(shapes_dir, config, **options)
    assert (resumed.computed, resumed.reused) == (60 - kept, kept)
    local = extract_dataset(shapes_dir, config, cache_dir=tmp_path / "local", progress=False)
    np.testing.assert_allclose(resumed.features, local.features, atol=1e-5, rtol=0)


def _slow_images() -> None:
    """(On a worker.) Each image takes 50 ms more to load, so that a shard is still running when its worker dies."""
    from gearfeat.features import extractor
    load = extractor.load_checked_image
    extractor.load_checked_image = lambda *args: time.sleep(0.05) or load(*args)


def test_a_worker_killed_mid_shard_has_its_shard_rerun_and_the_cache_stays_valid(cluster, shapes_dir, tmp_path,
                                                                                small_shards):
    config = tiny_config()
    local = extract_dataset(shapes_dir, config, cache_dir=tmp_path / "local", progress=False)
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        client.run(_slow_images)
        pids = client.run(os.getpid)
        result, errors = [], []

        def run() -> None:
            try:
                result.append(extract_dataset(shapes_dir, config, cache_dir=tmp_path / "cluster", progress=False,
                                              backend="dask", address=cluster.scheduler_address))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            busy = [worker for worker, keys in client.processing().items()
                    if any(str(key).startswith("gearfeat-shard") for key in keys)]
            if busy:
                victim = busy[0]
                time.sleep(0.1)  # into the shard
                os.kill(pids[victim], signal.SIGKILL)
            time.sleep(0.02)
        thread.join(90)
    assert victim is not None, "no shard was seen running"
    assert not thread.is_alive(), "the extraction did not finish after a worker was killed"
    assert not errors, errors
    _assert_same_cache(result[0].cache_path, local.cache_path)  # every row once, in order, digests intact
    assert result[0].computed == 60
