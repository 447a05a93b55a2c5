"""Tests for gearfeat.data.dataset: scanning a class-folder tree, and the grouped split."""

import hashlib
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

import gearfeat.data.dataset as dataset_module
from gearfeat.data.dataset import Dataset, ImageRecord, Skipped, hash_file, scan_dataset, split_dataset, write_skipped
from gearfeat._internal.errors import GearfeatError


def make(root: Path, relative: str, content: str | None = None) -> Path:
    """Create an 'image' file: the scan never decodes, so any distinct bytes will do."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((content if content is not None else relative).encode())
    return path


def reasons(dataset: Dataset, root: Path) -> dict[str, str]:
    return {os.path.relpath(item.path, root): item.reason for item in dataset.skipped}


def scan_quietly(root, **kwargs) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty-class warning expected
        return scan_dataset(root, **kwargs)


def synthetic(counts: dict[str, int], duplicates: int = 1) -> Dataset:
    """A dataset whose class ``name`` has ``counts[name]`` distinct images, each ``duplicates`` times."""
    records = [
        ImageRecord(Path(f"{name}/{i}-{copy}.jpg"), label, hashlib.sha256(f"{name}{i}".encode()).hexdigest())
        for label, name in enumerate(counts) for i in range(counts[name]) for copy in range(duplicates)
    ]
    return Dataset(Path("."), list(counts), records, [])


# ---------------------------------------------------------------- scan_dataset


@pytest.mark.parametrize("enabled", [True, False])
def test_scan_leaves_the_garbage_collector_as_it_found_it(tmp_path, enabled):
    import gc
    for i in range(40):  # more files than hashing threads: every thread gets a chunk
        make(tmp_path, f"{'ab'[i % 2]}/{i}.jpg")
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        dataset = scan_quietly(tmp_path)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    names = [f"{i}.jpg" for i in range(40)]
    assert [r.path.name for r in dataset.records] == sorted(names[0::2]) + sorted(names[1::2])
    assert all(r.sha256 == hash_file(r.path) for r in dataset.records)  # each digest stays with its file


def test_skipped_files_are_listed_in_path_order(tmp_path):
    for name in ("a", "b"):
        make(tmp_path, f"{name}/1.jpg")
        make(tmp_path, f"{name}/.hidden.jpg")  # skipped while walking
        make(tmp_path, f"{name}/2.txt")  # skipped while hashing
        make(tmp_path, f"{name}/3.jpg", "")
    listed = [os.path.relpath(item.path, tmp_path) for item in scan_quietly(tmp_path).skipped]
    assert listed == ["a/.hidden.jpg", "a/2.txt", "a/3.jpg", "b/.hidden.jpg", "b/2.txt", "b/3.jpg"]


def test_scan_labels_sorted_classes_and_recursive_files(tmp_path):
    for relative in ["dogs/b.png", "dogs/a.JPG", "cats/deep/er/x.jpeg", "cats/y.webp"]:
        make(tmp_path, relative)
    dataset = scan_quietly(tmp_path)
    assert dataset.root == tmp_path and dataset.class_names == ["cats", "dogs"]
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == [
        "cats/deep/er/x.jpeg", "cats/y.webp", "dogs/a.JPG", "dogs/b.png"]
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1, 1])
    assert dataset.labels.dtype == np.int64
    assert dataset.hashes[2] == hashlib.sha256(b"dogs/a.JPG").hexdigest()
    assert all(isinstance(record.path, Path) for record in dataset.records) and dataset.skipped == []


def test_names_with_spaces_and_non_ascii(tmp_path):
    make(tmp_path, "écureuils roux/photo 1 été.jpg")
    make(tmp_path, "猫/写真.png")
    dataset = scan_quietly(tmp_path)
    assert dataset.class_names == ["écureuils roux", "猫"]
    assert [Path(p).name for p in dataset.paths] == ["photo 1 été.jpg", "写真.png"]


def test_hidden_system_and_non_image_files_are_skipped_with_reasons(tmp_path):
    for relative in ["cats/ok.jpg", "dogs/ok.jpg", "dogs/.DS_Store", "dogs/Thumbs.db", "dogs/desktop.ini",
                     "dogs/._ok.jpg", "dogs/.ok.jfif.icloud", "dogs/.thumbnails/t.jpg", "dogs/notes.txt",
                     "dogs/README", "__MACOSX/cats/._ok.jpg", "stray.jpg"]:
        make(tmp_path, relative)
    dataset = scan_quietly(tmp_path)
    assert dataset.class_names == ["cats", "dogs"] and len(dataset.records) == 2
    assert reasons(dataset, tmp_path) == {
        "__MACOSX": "hidden or system folder",
        "stray.jpg": "not in a class folder",
        "dogs/.DS_Store": "hidden or system file",
        "dogs/._ok.jpg": "hidden or system file",
        "dogs/.ok.jfif.icloud": "hidden or system file",
        "dogs/.thumbnails": "hidden or system folder",
        "dogs/README": "not an image extension (none)",
        "dogs/Thumbs.db": "hidden or system file",
        "dogs/desktop.ini": "hidden or system file",
        "dogs/notes.txt": "not an image extension (.txt)",
    }


def test_empty_file_is_skipped(tmp_path):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "dogs/a.jpg")
    make(tmp_path, "dogs/empty.jpg", "")
    assert reasons(scan_quietly(tmp_path), tmp_path) == {"dogs/empty.jpg": "empty file (0 bytes)"}


def test_unreadable_links_and_special_files_are_skipped_with_os_reason(tmp_path):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "dogs/a.jpg")
    (tmp_path / "dogs/loop1.jpg").symlink_to(tmp_path / "dogs/loop2.jpg")
    (tmp_path / "dogs/loop2.jpg").symlink_to(tmp_path / "dogs/loop1.jpg")
    (tmp_path / "dogs/broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(tmp_path / "dogs/pipe.jpg")  # reading it would block forever
    assert reasons(scan_quietly(tmp_path), tmp_path) == {
        "dogs/broken.jpg": "cannot read file: [Errno 2] No such file or directory",
        "dogs/loop1.jpg": "cannot read file: [Errno 40] Too many levels of symbolic links",
        "dogs/loop2.jpg": "cannot read file: [Errno 40] Too many levels of symbolic links",
        "dogs/pipe.jpg": "not a regular file",
    }


def test_permission_denied_file_and_folder(tmp_path, monkeypatch):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "dogs/a.jpg")
    make(tmp_path, "dogs/secret.jpg")
    make(tmp_path, "dogs/locked/b.jpg")
    real_hash, real_scandir = dataset_module.hash_file, os.scandir

    def hash_file(path):  # tests may run as root, who may read anything: deny in code
        if Path(path).name == "secret.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_hash(path)

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(dataset_module, "hash_file", hash_file)
    monkeypatch.setattr(os, "scandir", scandir)
    dataset = scan_quietly(tmp_path)
    assert reasons(dataset, tmp_path) == {
        "dogs/locked": "cannot read folder: [Errno 13] Permission denied",
        "dogs/secret.jpg": "cannot read file: [Errno 13] Permission denied",
    }
    assert len(dataset.records) == 2


def test_folder_links_inside_the_class_are_followed_once_without_looping(tmp_path):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "cats/sub/b.jpg")
    make(tmp_path, "dogs/a.jpg")
    (tmp_path / "cats/more").symlink_to(tmp_path / "cats/sub")
    (tmp_path / "cats/sub/again").symlink_to(tmp_path / "cats")  # a loop back up to its own class folder
    dataset = scan_quietly(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == ["cats/a.jpg", "cats/more/b.jpg", "dogs/a.jpg"]
    assert reasons(dataset, tmp_path) == {
        "cats/more/again": f"folder already scanned (same as {os.path.realpath(tmp_path / 'cats')})",
        "cats/sub": f"folder already scanned (same as {os.path.realpath(tmp_path / 'cats/sub')})"}


def test_folder_links_leading_out_of_their_class_are_skipped_saying_where(tmp_path):
    data = tmp_path / "data"
    make(tmp_path, "elsewhere/linked.jpg")
    make(data, "cats/a.jpg")
    make(data, "dogs/a.jpg")
    make(data, ".hidden/c.jpg")
    targets = {"cats/up": (data, "the dataset root"), "cats/top": (tmp_path, "a folder above its class folder"),
               "cats/dogs": (data / "dogs", "class 'dogs'"), "cats/out": (tmp_path / "elsewhere", "outside the dataset"),
               "cats/hid": (data / ".hidden", "elsewhere in the dataset")}
    for link, (target, _) in targets.items():
        (data / link).symlink_to(target)
    dataset = scan_quietly(data)
    assert dataset.class_names == ["cats", "dogs"]  # the link to the root no longer lists dogs under cats
    assert [os.path.relpath(p, data) for p in dataset.paths] == ["cats/a.jpg", "dogs/a.jpg"]
    assert {k: v for k, v in reasons(dataset, data).items() if k in targets} == {
        link: f"folder link leads outside its class folder, to {where} ({os.path.realpath(target)}); not followed"
        for link, (target, where) in targets.items()}


def test_a_file_reached_through_a_link_in_its_class_is_one_image(tmp_path):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "cats/b.jpg")
    make(tmp_path, "dogs/a.jpg")
    (tmp_path / "cats/0-link.jpg").symlink_to(tmp_path / "cats/b.jpg")  # sorts before its target
    (tmp_path / "cats/sub").mkdir()
    (tmp_path / "cats/sub/c.jpg").symlink_to("../a.jpg")
    (tmp_path / "cats/sub/d.jpg").symlink_to("c.jpg")  # a link to a link: still the same file
    dataset = scan_quietly(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == ["cats/a.jpg", "cats/b.jpg", "dogs/a.jpg"]
    assert reasons(dataset, tmp_path) == {
        "cats/0-link.jpg": f"same file as {tmp_path / 'cats/b.jpg'} (reached through a link)",
        "cats/sub/c.jpg": f"same file as {tmp_path / 'cats/a.jpg'} (reached through a link)",
        "cats/sub/d.jpg": f"same file as {tmp_path / 'cats/a.jpg'} (reached through a link)"}


def test_a_file_link_to_an_image_outside_is_used_under_its_link_path(tmp_path):
    make(tmp_path, "photos/x.jpg", "outside")
    make(tmp_path, "data/cats/a.jpg")
    make(tmp_path, "data/dogs/a.jpg")
    (tmp_path / "data/dogs/x.jpg").symlink_to(tmp_path / "photos/x.jpg")
    (tmp_path / "data/dogs/y.jpg").symlink_to(tmp_path / "photos/x.jpg")  # two links, one file: one image
    dataset = scan_quietly(tmp_path / "data")
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == [
        "data/cats/a.jpg", "data/dogs/a.jpg", "data/dogs/x.jpg"]
    assert list(dataset.labels) == [0, 1, 1] and dataset.hashes[2] == hashlib.sha256(b"outside").hexdigest()
    assert reasons(dataset, tmp_path / "data") == {
        "dogs/y.jpg": f"same file as {tmp_path / 'data/dogs/x.jpg'} (reached through a link)"}


def test_a_file_link_to_another_class_is_skipped_and_never_drops_that_class(tmp_path):
    """A link says "this image has this label too"; gearfeat keeps one label per image, its own folder's."""
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "dogs/only.jpg")  # the only image of dogs: a conflict would drop the class
    (tmp_path / "cats/dog.jpg").symlink_to(tmp_path / "dogs/only.jpg")
    dataset = scan_quietly(tmp_path)
    assert dataset.class_names == ["cats", "dogs"]
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == ["cats/a.jpg", "dogs/only.jpg"]
    assert reasons(dataset, tmp_path) == {
        "cats/dog.jpg": f"link to {os.path.realpath(tmp_path / 'dogs/only.jpg')} of class 'dogs': an image has one "
                        "label, its own folder's, so the link is not used"}


def test_identical_bytes_in_two_classes_are_all_skipped(tmp_path):
    make(tmp_path, "cats/a.jpg")
    make(tmp_path, "cats/same.jpg", "shared bytes")
    make(tmp_path, "dogs/a.jpg")
    make(tmp_path, "dogs/copy.png", "shared bytes")
    dataset = scan_quietly(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == ["cats/a.jpg", "dogs/a.jpg"]
    assert reasons(dataset, tmp_path) == {
        "cats/same.jpg": f"identical bytes to {tmp_path / 'dogs/copy.png'} in class dogs: conflicting labels",
        "dogs/copy.png": f"identical bytes to {tmp_path / 'cats/same.jpg'} in class cats: conflicting labels",
    }


def test_identical_bytes_in_one_class_are_kept(tmp_path):
    make(tmp_path, "cats/a.jpg", "same")
    make(tmp_path, "cats/b.jpg", "same")
    make(tmp_path, "dogs/a.jpg")
    dataset = scan_quietly(tmp_path)
    assert dataset.hashes[0] == dataset.hashes[1] and list(dataset.labels) == [0, 0, 1]


def test_empty_class_warns_and_is_left_out(tmp_path):
    make(tmp_path, "ants/a.jpg")
    make(tmp_path, "bees/notes.txt")
    (tmp_path / "cats").mkdir()
    make(tmp_path, "dogs/a.jpg")
    with pytest.warns(UserWarning) as caught:
        dataset = scan_dataset(tmp_path)
    assert sorted(str(w.message).split()[1] for w in caught) == ["'bees'", "'cats'"]
    assert "has no usable images" in str(caught[0].message)
    assert dataset.class_names == ["ants", "dogs"] and list(dataset.labels) == [0, 1]


def test_one_class_is_an_error_unless_allowed(tmp_path):
    make(tmp_path, "cats/a.jpg")
    (tmp_path / "dogs").mkdir()
    with pytest.warns(UserWarning, match="'dogs'"), \
            pytest.raises(GearfeatError, match=r"found only 1 class with images \(cats\); need at least 2"):
        scan_dataset(tmp_path)
    with pytest.warns(UserWarning):
        assert scan_dataset(tmp_path, min_classes=1).class_names == ["cats"]


def test_bad_roots(tmp_path, monkeypatch):
    with pytest.raises(GearfeatError, match="dataset folder not found: .*missing"):
        scan_dataset(tmp_path / "missing")
    make(tmp_path, "file.jpg")
    with pytest.raises(GearfeatError, match="file.jpg is a file, not a folder"):
        scan_dataset(tmp_path / "file.jpg")
    with pytest.raises(GearfeatError, match=r"expected one sub-folder per class, e\.g\. .*/cats/\*\.jpg"):
        scan_dataset(tmp_path)
    (tmp_path / ".git").mkdir()
    with pytest.raises(GearfeatError, match="no class folders"):
        scan_dataset(tmp_path)

    def scandir(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(GearfeatError, match=r"cannot read dataset folder .*: Permission denied; check its"):
        scan_dataset(tmp_path)


def test_without_moves_failed_records_to_skipped(tmp_path):
    for relative in ["cats/a.jpg", "cats/b.jpg", "dogs/a.jpg"]:
        make(tmp_path, relative)
    dataset = scan_quietly(tmp_path)
    bad = Skipped(str(tmp_path / "cats/b.jpg"), "truncated or corrupt image data")
    kept = dataset.without([bad])
    assert kept.paths == [str(tmp_path / "cats/a.jpg"), str(tmp_path / "dogs/a.jpg")]
    assert list(kept.labels) == [0, 1] and kept.class_names == ["cats", "dogs"]
    assert kept.skipped == [bad] and len(dataset.records) == 3  # the original is untouched


def test_write_skipped_is_json_and_atomic(tmp_path):
    skipped = [Skipped("été/a.jpg", "empty file (0 bytes)"),
               Skipped("b.txt", "not an image extension (.txt)")]
    target = tmp_path / "skipped.json"
    target.write_text("old")
    write_skipped(skipped, target)
    assert json.loads(target.read_text(encoding="utf-8")) == [item.to_dict() for item in skipped]
    assert skipped[0].to_dict() == {"path": "été/a.jpg", "reason": "empty file (0 bytes)"}
    assert os.listdir(tmp_path) == ["skipped.json"]  # no temporary file left behind
    with pytest.raises(GearfeatError, match="cannot write .*no-such-folder"):
        write_skipped(skipped, tmp_path / "no-such-folder" / "skipped.json")


def test_hash_file(tmp_path):
    path = make(tmp_path, "big.bin", "x" * 3_000_000)
    assert hash_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


# ---------------------------------------------------------------- split_dataset


def check_partition(dataset: Dataset, split: dict) -> None:
    assert set(split) == {"train", "val", "test"}
    for index in split.values():
        assert index.dtype == np.int64 and list(index) == sorted(index)
    joined = np.concatenate(list(split.values()))
    assert sorted(joined) == list(range(len(dataset.records)))  # every record exactly once


def test_split_is_stratified_with_rounded_counts():
    dataset = synthetic({"a": 20, "b": 40, "c": 3})
    split = split_dataset(dataset, val_fraction=0.15, test_fraction=0.25)
    check_partition(dataset, split)
    counts = {name: np.bincount(dataset.labels[index], minlength=3).tolist() for name, index in split.items()}
    assert counts == {"test": [5, 10, 1], "val": [3, 6, 1], "train": [12, 24, 1]}


def test_split_is_seeded_and_independent_of_file_order():
    dataset = synthetic({"a": 30, "b": 30})
    first = split_dataset(dataset, seed=1)
    for bad in (-5, "abc", None, 1.0, True):  # 1.0 and True used to give other splits than 1
        with pytest.raises(GearfeatError, match="seed must be an integer from 0 to 4294967295"):
            split_dataset(dataset, seed=bad)
    assert all(np.array_equal(first[k], v) for k, v in split_dataset(dataset, seed=1).items())
    assert not np.array_equal(first["test"], split_dataset(dataset, seed=2)["test"])

    shuffled = Dataset(dataset.root, dataset.class_names, random.Random(0).sample(dataset.records, 60), [])
    again = split_dataset(shuffled, seed=1)
    assert {k: sorted(shuffled.paths[i] for i in v) for k, v in again.items()} == \
        {k: sorted(dataset.paths[i] for i in v) for k, v in first.items()}


def test_identical_images_stay_in_one_split():
    dataset = synthetic({"a": 10, "b": 10}, duplicates=3)
    split = split_dataset(dataset, seed=5)
    check_partition(dataset, split)
    where = {digest: name for name, index in split.items() for digest in (dataset.hashes[i] for i in index)}
    for name, index in split.items():
        assert all(where[dataset.hashes[i]] == name for i in index)
    assert [len(index) for index in split.values()] == [36, 12, 12]  # per class 6 / 2 / 2 groups of 3


def test_extreme_fractions_leave_one_group_to_train():
    split = split_dataset(synthetic({"a": 4, "b": 4}), val_fraction=0.49, test_fraction=0.49)
    assert [len(index) // 2 for index in (split["train"], split["val"], split["test"])] == [1, 1, 2]


def test_zero_fraction_gives_an_empty_split():
    dataset = synthetic({"a": 2, "b": 5})
    split = split_dataset(dataset, val_fraction=0, test_fraction=0.3)
    assert len(split["val"]) == 0 and np.bincount(dataset.labels[split["test"]]).tolist() == [1, 2]


def test_class_with_too_few_distinct_images_is_named():
    dataset = synthetic({"fine": 10, "rare": 2}, duplicates=4)  # 8 files, but only 2 distinct images
    with pytest.raises(GearfeatError, match=r"class 'rare' has 2 distinct images; val_fraction=0.15 and "
                                            r"test_fraction=0.15 need at least 3"):
        split_dataset(dataset)
    assert len(split_dataset(dataset, val_fraction=0)["test"]) > 0


@pytest.mark.parametrize("fractions, bad", [
    ({"val_fraction": -0.1}, "val_fraction must be a number in [0, 1), got -0.1"),
    ({"test_fraction": 1.0}, "test_fraction must be a number in [0, 1), got 1.0"),
    ({"test_fraction": float("nan")}, "test_fraction must be a number in [0, 1), got nan"),
    ({"val_fraction": "0.1"}, "val_fraction must be a number in [0, 1), got '0.1'"),
    ({"val_fraction": True}, "val_fraction must be a number in [0, 1), got True"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "below 1 to leave images for training, got 0.5 + 0.5"),
])
def test_bad_fractions_are_named(fractions, bad):
    with pytest.raises(GearfeatError) as info:
        split_dataset(synthetic({"a": 10, "b": 10}), **fractions)
    assert bad in str(info.value)


def test_same_bytes_under_two_labels_cannot_be_split():
    dataset = synthetic({"a": 5, "b": 5})
    record = dataset.records[0]
    dataset.records.append(ImageRecord(Path("b/copy.jpg"), 1, record.sha256))
    with pytest.raises(GearfeatError, match="same bytes appear under two labels"):
        split_dataset(dataset)
