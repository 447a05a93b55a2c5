"""Caches larger than memory (issue 20): --memory-budget, the head and the baseline trained on features streamed
from the HDF5 cache, and search trials on memory-mapped arrays."""
import json
import tracemalloc

import numpy as np
import pytest

from gearfeat._internal.errors import GearfeatError
from gearfeat._internal.system import memory_budget
from gearfeat.cli import main
from gearfeat.data.dataset import SplitConfig
from gearfeat.features.cache import FeatureCache, FeatureRows
from gearfeat.models.baseline import fit_streamed_baseline
from gearfeat.models.heads import DenseHead
from gearfeat.models.stacked import StackedHeads
from gearfeat.tuning.trials import run_trial, run_trials
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


def test_train_over_budget_streams_from_the_cache(shapes_dir, tmp_path, logged):
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=DenseHead(hidden=(32,), epochs=4),
                   split=SplitConfig(seed=1), cache_dir=tmp_path / "cache", memory_budget="10kB", progress=False)
    assert any(line.startswith("features: streamed from the cache, budget 10.0 kB (") for line in logged()), logged()
    record = json.loads((result.run_dir / "run.json").read_text())["features"]
    assert record["path"] == "streamed" and record["memory_budget"] == 10_000 and record["split_bytes"] > 10_000
    assert record["baseline"].startswith("SGDClassifier")
    assert type(result.baseline[-1]).__name__ == "SGDClassifier"
    ran = json.loads((result.run_dir / "run.json").read_text())["baseline"]  # what ran, not the "logreg" asked for
    assert ran.startswith("StandardScaler() + SGDClassifier(alpha=") and "loss='log_loss'" in ran
    assert result.metrics["baseline"] == ran and any(f"(baseline {ran}: " in line for line in logged()), logged()
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 4 and all(np.isfinite(history["val_loss"]))
    assert 0 <= result.metrics["test_accuracy"] <= 1 and result.metrics["stitched_vs_head_max_abs_diff"] <= 1e-4
    train(shapes_dir, tmp_path / "memory", config=tiny_config(), head=DenseHead(hidden=(32,), epochs=4),
          split=SplitConfig(seed=1), cache_dir=tmp_path / "cache", progress=False)
    assert any(line.startswith("features: in memory (") for line in logged()), logged()


def test_a_bad_budget_is_one_line_before_any_work(shapes_dir, tmp_path, capsys):
    code = main(["train", str(shapes_dir), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
                 "--backbone-size", "32", "--no-progress", "--memory-budget", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--memory-budget" in err[0] and "'lots'" in err[0], err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("backend", ["local", "loky"])
def test_search_over_budget_streams_in_process_and_maps_arrays_for_workers(shapes_dir, tmp_path, monkeypatch,
                                                                          backend, logged):
    from gearfeat.workflows import search as search_module
    seen = []
    real = search_module.run_trials

    def spy(configurations, X_train, y_train, X_val, y_val, **kwargs):
        seen.append((type(X_train), type(X_val), X_train.shape))
        return real(configurations, X_train, y_train, X_val, y_val, **kwargs)

    monkeypatch.setattr(search_module, "run_trials", spy)
    result = search(shapes_dir, tmp_path / "run", space={"hidden": [[16]], "epochs": [2], "baseline_c": [1.0]},
                    n_trials=None, config=tiny_config(), split=SplitConfig(seed=1), cache_dir=tmp_path / "cache",
                    memory_budget="10kB", backend=backend, jobs=2, progress=False)
    expected = FeatureRows if backend == "local" else np.memmap  # joblib hands a memmap to loky by reference
    assert seen and seen[0][:2] == (expected, expected), seen
    said = "streamed from the cache" if backend == "local" else "memory-mapped from"
    assert any(said in line for line in logged()), logged()
    assert {t["model"] for t in result.trials} == {"dense", "logreg"}
    assert all(0 <= t["val_accuracy"] <= 1 and np.isfinite(t["val_loss"]) for t in result.trials)
    assert not list((tmp_path / "cache").glob(".gearfeat-trials-*"))  # removed after the trials


def test_in_process_trials_on_cache_rows_never_hold_a_split(tmp_path):
    X, y = blobs(8000, dim=1024, classes=3, seed=4)  # 33 MB of features
    hashes = [f"{i:064x}" for i in range(len(X))]
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, X, ["p"] * len(X), ["a"] * len(X))
        rows = cache.view(cache.rows(hashes))
    train, val = np.arange(6000), np.arange(6000, 8000)
    window = 64 * 1024 * 4
    configurations = [{"hidden": [16], "epochs": 2, "learning_rate": lr} for lr in (1e-3, 1e-2)] + \
        [{"baseline": "logreg", "baseline_c": 1.0}]
    tracemalloc.start()
    found = run_trials(configurations, rows.subset(train, window_bytes=window), y[train],
                       rows.subset(val, window_bytes=window), y[val], n_classes=3, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    split = 4 * 1024 * len(train)
    assert peak < split / 4, (peak, split)  # windows of 64 rows; the split is never read whole
    assert [t["model"] for t in found] == ["dense", "dense", "logreg"]
    assert all(t["val_accuracy"] > 0.95 for t in found), found
    assert found.best_head.score(X[val], y[val]) > 0.95
    alone = run_trial(configurations[1], rows.subset(train, window_bytes=window), y[train],
                      rows.subset(val, window_bytes=window), y[val], n_classes=3)  # a stack of one
    assert alone["model"] == "dense" and alone["val_accuracy"] == found[1]["val_accuracy"]


def test_a_streamed_stack_trains_each_head_as_fit_streamed_does(view):
    rows, X, y = view
    train, val = np.arange(1000), np.arange(1000, 1500)
    window = 100 * 16 * 4
    specs = [DenseHead(hidden=(8,), dropout=0.0, l2=l2, learning_rate=lr, batch_size=32, epochs=6, patience=1)
             for l2, lr in ((0.0, 1e-3), (1e-3, 3e-2))]
    stack = StackedHeads(specs).fit(rows.subset(train, window_bytes=window), y[train],
                                    validation_data=(rows.subset(val), y[val]), classes=range(3))
    for i, spec in enumerate(specs):
        alone = DenseHead(**spec.get_params()).fit_streamed(rows, train, y[train], validation=(val, y[val]),
                                                            classes=range(3), window_bytes=window)
        np.testing.assert_allclose(stack.histories_[i]["val_loss"], alone.history_["val_loss"], rtol=2e-4)
        assert stack.best_epochs_[i] == alone.best_epoch_
        np.testing.assert_allclose(stack.predict_proba(rows.subset(val))[i], alone.predict_proba(X[val]), atol=2e-4)
