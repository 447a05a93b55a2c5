"""Caches larger than memory (issue 20): --memory-budget, the head and the baseline trained on features streamed
from the HDF5 cache, and search trials on memory-mapped arrays."""
import json

import numpy as np
import pytest

from gearfeat._internal.errors import GearfeatError
from gearfeat._internal.system import memory_budget
from gearfeat.cli import main
from gearfeat.data.dataset import SplitConfig
from gearfeat.features.cache import FeatureCache
from gearfeat.models.baseline import fit_streamed_baseline
from gearfeat.models.heads import DenseHead
from gearfeat.workflows.search import search
from gearfeat.workflows.train import train

from conftest import tiny_config

ATTRS = {"backbone": "tiny"}


def blobs(n: int, dim: int = 16, classes: int = 3, seed: int = 0):
    """Separable classes: a Gaussian blob per class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, dim)).astype(np.float32) * 3
    return (centers[y] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32), y


@pytest.fixture
def view(tmp_path):
    X, y = blobs(1500)
    hashes = [f"{i:064x}" for i in range(len(X))]
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, X, ["p"] * len(X), ["a"] * len(X))
        rows = cache.view(cache.rows(hashes))
    return rows, X, y


def test_budget_sizes_and_one_line_errors():
    assert memory_budget("2GB") == 2 * 10**9 and memory_budget("500MB") == 5 * 10**8
    assert memory_budget("1.5GiB") == 3 * 2**29 and memory_budget(4096) == 4096
    assert memory_budget(None) > 0  # a share of this machine's RAM
    for bad in ("lots", "0", "-2GB", "2XB", ""):
        with pytest.raises(GearfeatError, match=rf"^memory_budget must be a size above 0 .*got {bad!r}$"):
            memory_budget(bad)


def test_shuffled_windows_cover_each_row_once_in_a_new_order_each_pass(view):
    rows, X, _ = view
    picked = np.arange(0, 1500, 3)
    passes = []
    for seed in (0, 1):
        pairs = list(rows.shuffled(picked, seed=seed, window_bytes=40 * 16 * 4))
        assert len(pairs) == -(-len(picked) // 40)  # windows of 40 rows
        at = np.concatenate([a for a, _ in pairs])
        assert sorted(at) == list(range(len(picked)))
        for a, block in pairs:
            np.testing.assert_array_equal(block, X[picked[a]])
        passes.append(at)
    assert not np.array_equal(*passes)


def test_streamed_head_and_baseline_learn_separable_classes(view):
    rows, X, y = view
    train, val = np.arange(1000), np.arange(1000, 1500)
    head = DenseHead(hidden=(16,), epochs=8, batch_size=32).fit_streamed(
        rows, train, y[train], validation=(val, y[val]), classes=range(3), window_bytes=100 * 16 * 4)
    assert len(head.history_["val_loss"]) >= 1 and head.score(X[val], y[val]) > 0.95
    base = fit_streamed_baseline(
        lambda epoch: ((block, y[train][at]) for at, block in rows.shuffled(train, seed=epoch, window_bytes=6400)),
        range(3), n_rows=len(train), seed=0)
    assert base.score(X[val], y[val]) > 0.95


def test_train_over_budget_streams_from_the_cache(shapes_dir, tmp_path):
    lines = []
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=DenseHead(hidden=(32,), epochs=4),
                   split=SplitConfig(seed=1), cache_dir=tmp_path / "cache", memory_budget="10kB", progress=False,
                   log=lines.append)
    assert any(line.startswith("features: streamed from the cache, budget 10.0 kB (") for line in lines), lines
    record = json.loads((result.run_dir / "run.json").read_text())["features"]
    assert record["path"] == "streamed" and record["memory_budget"] == 10_000 and record["split_bytes"] > 10_000
    assert record["baseline"].startswith("SGDClassifier")
    assert type(result.baseline[-1]).__name__ == "SGDClassifier"
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 4 and all(np.isfinite(history["val_loss"]))
    assert 0 <= result.metrics["test_accuracy"] <= 1 and result.metrics["stitched_vs_head_max_abs_diff"] <= 1e-4
    again = []
    train(shapes_dir, tmp_path / "memory", config=tiny_config(), head=DenseHead(hidden=(32,), epochs=4),
          split=SplitConfig(seed=1), cache_dir=tmp_path / "cache", progress=False, log=again.append)
    assert any(line.startswith("features: in memory (") for line in again), again


def test_a_bad_budget_is_one_line_before_any_work(shapes_dir, tmp_path, capsys):
    code = main(["train", str(shapes_dir), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
                 "--backbone-size", "32", "--no-progress", "--memory-budget", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--memory-budget" in err[0] and "'lots'" in err[0], err
    assert not (tmp_path / "cache").exists()


def test_search_over_budget_gives_the_trials_memory_mapped_arrays(shapes_dir, tmp_path, monkeypatch):
    from gearfeat.workflows import search as search_module
    seen = []
    real = search_module.run_trials

    def spy(configurations, X_train, y_train, X_val, y_val, **kwargs):
        seen.append((isinstance(X_train, np.memmap), isinstance(X_val, np.memmap), X_train.shape))
        return real(configurations, X_train, y_train, X_val, y_val, **kwargs)

    monkeypatch.setattr(search_module, "run_trials", spy)
    lines = []
    search(shapes_dir, tmp_path / "run", space={"hidden": [[16]], "epochs": [2], "baseline_c": [1.0]}, n_trials=None,
           config=tiny_config(), split=SplitConfig(seed=1), cache_dir=tmp_path / "cache", memory_budget="10kB",
           progress=False, log=lines.append)
    assert seen and seen[0][:2] == (True, True), seen  # joblib hands a memmap to loky workers by reference
    assert any("memory-mapped from" in line for line in lines), lines
    assert not list((tmp_path / "cache").glob(".gearfeat-trials-*"))  # removed after the trials
