import json
import multiprocessing
import time
import tracemalloc

import h5py
import numpy as np
import pytest

from gearfeat._internal.errors import GearfeatError
from gearfeat.features.cache import CacheCorrupt, FeatureCache, fingerprint

ATTRS = {"backbone": "tiny", "image_size": 32, "weights": "random", "preprocessing": "tf/v1"}


def _rows(n, dim=4, offset=0):
    hashes = [f"{i + offset:064x}" for i in range(n)]
    return hashes, np.arange(n * dim, dtype=np.float32).reshape(n, dim) + offset


def test_fingerprint_changes_with_every_attribute():
    base = fingerprint(ATTRS)
    assert fingerprint(dict(reversed(list(ATTRS.items())))) == base  # order does not matter
    for key in ATTRS:
        assert fingerprint({**ATTRS, key: "other"}) != base, key


def test_append_read_and_reopen(tmp_path):
    hashes, feats = _rows(10)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes[:6], feats[:6], [f"p{i}" for i in range(6)], ["a"] * 6)
        cache.append(hashes[6:], feats[6:], [f"p{i}" for i in range(6, 10)], ["b"] * 4)
    with FeatureCache.open(tmp_path, ATTRS, write=False) as cache:
        assert len(cache) == 10 and hashes[3] in cache and "f" * 64 not in cache
        order = [hashes[7], hashes[1], hashes[7]]
        np.testing.assert_array_equal(cache.read(order), feats[[7, 1, 7]])
    with h5py.File(FeatureCache.path_for(tmp_path, ATTRS)) as f:
        assert f["path"][9].decode() == "p9" and f["label"][0].decode() == "a"
        assert f.attrs["backbone"] == "tiny" and json.loads(f.attrs["settings"])["image_size"] == 32


def test_reads_after_reopening_mix_verified_and_new_rows(tmp_path):
    hashes, feats = _rows(10)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes[:6], feats[:6], ["p"] * 6, ["a"] * 6)
    with FeatureCache.open(tmp_path, ATTRS) as cache:  # rows 0-5 verified at open, 6-9 appended now
        np.testing.assert_array_equal(cache.read(hashes[:6]), feats[:6])
        np.testing.assert_array_equal(cache.read([hashes[5], hashes[0]]), feats[[5, 0]])
        cache.append(hashes[6:], feats[6:], ["p"] * 4, ["b"] * 4)
        np.testing.assert_array_equal(cache.read(hashes[::-1]), feats[::-1])
        assert cache.read([]).shape == (0, 4)


def test_rows_past_the_committed_count_are_ignored(tmp_path):
    hashes, feats = _rows(5)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 5, ["a"] * 5)
    path = FeatureCache.path_for(tmp_path, ATTRS)
    with h5py.File(path, "a") as f:  # as if killed after writing data but before the counter
        f.attrs["n_rows"] = 3
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        assert len(cache) == 3 and hashes[4] not in cache
        cache.append(hashes[3:], feats[3:], ["p"] * 2, ["a"] * 2)
        np.testing.assert_array_equal(cache.read(hashes), feats)


def test_a_cache_killed_before_its_first_commit_is_empty_not_damaged(tmp_path, logged):
    hashes, feats = _rows(4)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 4, ["a"] * 4)
    path = FeatureCache.path_for(tmp_path, ATTRS)
    with h5py.File(path, "a") as f:  # rows written, the counter not yet
        f.attrs["n_rows"] = 0
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        assert len(cache) == 0 and hashes[0] not in cache
        cache.append(hashes, feats, ["p"] * 4, ["a"] * 4)
        np.testing.assert_array_equal(cache.read(hashes), feats)
    assert logged() == [] and not list(tmp_path.glob("*.corrupt"))  # no false "failed verification"


@pytest.mark.parametrize("damage", ["flip_feature", "truncate", "garbage"])
def test_corrupt_file_is_detected_and_rebuilt(tmp_path, damage, capsys, logged):
    hashes, feats = _rows(300, dim=8)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 300, ["a"] * 300)
    path = FeatureCache.path_for(tmp_path, ATTRS)
    if damage == "flip_feature":
        with h5py.File(path, "a") as f:
            f["features"][17, 3] = 1e9  # silently changed on disk: the row digest no longer matches
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"not an hdf5 file at all")
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        if damage == "flip_feature":  # opening reads no feature: the row is found when read, before it is returned
            assert len(cache) == 300 and logged() == []
            with pytest.raises(CacheCorrupt, match="checksum mismatch at row 17"):
                cache.read(hashes[10:20])
            assert not cache.verify()  # what extract runs over its rows: moves the file aside
        elif len(cache):  # a truncated file can keep its keys readable: its features are not
            assert not cache.verify()
        assert len(cache) == 0
    assert len(logged()) == 1 and "failed verification" in logged()[0] and "rebuilding" in logged()[0]
    assert path.with_suffix(".corrupt").exists()


def test_opening_reads_no_features_and_a_view_reads_only_its_rows(tmp_path, monkeypatch):
    n, dim = 6000, 256  # 6 MB of features
    hashes = [f"{i:064x}" for i in range(n)]
    feats = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * n, ["a"] * n)
    tracemalloc.start()
    with FeatureCache.open(tmp_path, ATTRS, write=False) as cache:
        opened = tracemalloc.get_traced_memory()[1]
        view = cache.view(cache.rows(hashes))
    tracemalloc.stop()
    assert opened < feats.nbytes / 4, opened  # keys and digests only
    picked = np.array([5999, 3, 4000, 3, 17])
    np.testing.assert_array_equal(view.read(picked), feats[picked])
    windows = list(view.windows(np.arange(0, n, 2), window_bytes=100 * dim * 4))
    assert all(len(at) <= 50 for at, _ in windows)  # a window holds at most window_bytes of rows
    got = np.empty((n // 2, dim), np.float32)
    for at, block in windows:
        got[at] = block
    np.testing.assert_array_equal(got, feats[::2])
    np.testing.assert_array_equal(np.asarray(view)[:3], feats[:3])


def test_a_view_refuses_a_damaged_row_and_a_file_rebuilt_under_it(tmp_path):
    hashes, feats = _rows(300, dim=8)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 300, ["a"] * 300)
        view = cache.view(cache.rows(hashes))
    np.testing.assert_array_equal(view.read([1, 2]), feats[[1, 2]])
    path = FeatureCache.path_for(tmp_path, ATTRS)
    with h5py.File(path, "a") as f:
        f["features"][250, 0] = -1.0
    with pytest.raises(GearfeatError, match=r"^cache .* changed or was damaged since this run checked it \(feature "
                                            r"checksum mismatch at row 250\); run again"):
        view.read(np.arange(200, 300))
    np.testing.assert_array_equal(view.read([1, 2]), feats[[1, 2]])  # the rows it checked before
    path.unlink()
    with FeatureCache.open(tmp_path, ATTRS) as cache:  # another run rebuilt the file, rows in another order
        cache.append(hashes[::-1], feats[::-1], ["p"] * 300, ["a"] * 300)
    with pytest.raises(GearfeatError, match="checksum mismatch"):
        view.read([5])


def test_settings_mismatch_inside_file_is_never_reused(tmp_path):
    hashes, feats = _rows(3)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 3, ["a"] * 3)
    path = FeatureCache.path_for(tmp_path, ATTRS)
    with h5py.File(path, "a") as f:  # e.g. a file written by an older preprocessing version, renamed
        f.attrs["settings"] = json.dumps({**ATTRS, "preprocessing": "tf/v0"}, sort_keys=True)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        assert len(cache) == 0


def _hold_lock(cache_dir, seconds, started):
    with FeatureCache.open(cache_dir, ATTRS):
        started.set()
        time.sleep(seconds)


def test_writers_are_serialized_across_processes(tmp_path, logged):
    started = multiprocessing.get_context("spawn").Event()
    holder = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(tmp_path, 1.5, started))
    holder.start()
    assert started.wait(60)
    t0 = time.perf_counter()
    with FeatureCache.open(tmp_path, ATTRS):
        waited = time.perf_counter() - t0
    holder.join()
    assert waited > 0.5 and logged() and "waiting for another gearfeat process" in logged()[0]


def test_a_rewrite_copies_the_committed_rows_a_window_at_a_time(tmp_path, monkeypatch):
    from gearfeat.features import cache as cache_module
    n, dim = 6000, 256  # 6 MB of features, copied in windows of 100 rows
    hashes = [f"{i:064x}" for i in range(n)]
    feats = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, [f"p{i}" for i in range(n)], ["a"] * n)
        monkeypatch.setattr(cache_module, "_READ_BYTES", 100 * dim * 4)
        tracemalloc.start()
        assert cache._rewrite()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < feats.nbytes / 10, peak
        cache.append(["f" * 64], feats[:1], ["new"], ["b"])  # the fresh file takes appends
    with FeatureCache.open(tmp_path, ATTRS, write=False) as cache:
        assert len(cache) == n + 1
        np.testing.assert_array_equal(cache.read(hashes[::7] + ["f" * 64]), np.concatenate([feats[::7], feats[:1]]))
    with h5py.File(FeatureCache.path_for(tmp_path, ATTRS)) as f:
        assert f["path"][n - 1].decode() == f"p{n - 1}" and f["label"][n].decode() == "b"


def test_a_rewrite_refuses_a_damaged_row_and_keeps_the_file(tmp_path):
    hashes, feats = _rows(300, dim=8)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes, feats, ["p"] * 300, ["a"] * 300)
        with h5py.File(cache.path, "a") as f:
            f["features"][200, 1] = 7.5
        assert not cache._rewrite()
    with h5py.File(FeatureCache.path_for(tmp_path, ATTRS)) as f:
        assert f["features"][200, 1] == 7.5  # not replaced
    assert not list(tmp_path.glob(".*.tmp*"))


def test_appended_rows_are_indexed_in_sorted_runs_not_a_dict_per_row(tmp_path):
    from gearfeat.features.cache import KeyIndex
    rng = np.random.default_rng(2)
    n = 100_000
    keys = np.array([f"{k:064x}" for k in rng.permutation(10 * n)[:n]], "S64")
    tracemalloc.start()
    index = KeyIndex()
    at = 0
    while at < n:  # commits of 1 to 512 rows, as extraction's are
        size = int(rng.integers(1, 513))
        index.add(keys[at:at + size], np.arange(at, min(at + size, n)))
        at += size
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held < 100 * n, held  # 72 bytes a row; a dict of str keys takes about 200
    assert len(index._runs) <= int(np.log2(n)) + 1 and len(index) == n
    probe = rng.permutation(n)[:5000]
    np.testing.assert_array_equal(index.find(keys[probe]), probe)
    assert (index.find(np.array(["e" * 64, "0" * 64], "S64")) == -1).all()
    index.add(keys[:1], [n])  # a key added again: its last row
    assert index.find(keys[:1])[0] == n


def test_rows_appended_in_a_session_are_found_with_the_committed_ones(tmp_path):
    hashes, feats = _rows(2000, dim=4)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        cache.append(hashes[:1000], feats[:1000], ["p"] * 1000, ["a"] * 1000)
    with FeatureCache.open(tmp_path, ATTRS) as cache:
        for start in range(1000, 2000, 100):
            cache.append(hashes[start:start + 100], feats[start:start + 100], ["p"] * 100, ["a"] * 100)
            assert hashes[start + 99] in cache and (start == 1900 or hashes[start + 100] not in cache)
        np.testing.assert_array_equal(cache.find(hashes[::-3]), np.arange(2000)[::-3])
        assert hashes[1999] in cache and "e" * 64 not in cache
        np.testing.assert_array_equal(cache.read(hashes[995:1005]), feats[995:1005])
