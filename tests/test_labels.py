"""Datasets listed by a CSV label file (gearfeat.data.labels): bad rows skipped with their reason, bad files one
error line, and a train run that gives the same split and features as class folders."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gearfeat.cli import main
from gearfeat.data.dataset import scan_dataset, split_dataset
from gearfeat.data.labels import LabelFile

from conftest import TINY

ARGS = ["--backbone", TINY["backbone"], "--alpha", str(TINY["alpha"]), "--weights", "none", "--image-size", "32",
        "--backbone-size", "32", "--no-progress"]


@pytest.fixture
def flat(shapes_dir, tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    """The shapes images in one folder (no class folders) and their ``(file, class)`` rows, in sub-folders of
    four images each."""
    root = tmp_path / "flat"
    rows = []
    for klass in sorted(p.name for p in shapes_dir.iterdir()):
        for i, image in enumerate(sorted((shapes_dir / klass).iterdir())):
            name = f"batch{i % 4}/{klass[:2]}_{image.name}"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / name)
            rows.append((name, klass))
    return root, rows


def write_csv(path: Path, rows, header=("file", "class")) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_label_file_lists_the_same_dataset_as_class_folders(shapes_dir, flat, tmp_path):
    root, rows = flat
    folders = scan_dataset(shapes_dir)
    listed = scan_dataset(root, labels=write_csv(tmp_path / "labels.csv", rows))
    assert listed.class_names == folders.class_names and listed.skipped == []
    assert sorted(listed.hashes) == sorted(folders.hashes)
    by_hash = {r.sha256: r.label for r in folders.records}
    assert all(by_hash[r.sha256] == r.label for r in listed.records)  # never a wrong label
    split_of = lambda d: {name: sorted(d.records[i].sha256 for i in idx)  # noqa: E731
                          for name, idx in split_dataset(d, seed=3).items()}
    assert split_of(listed) == split_of(folders)  # the split depends on bytes and labels only


def test_columns_are_picked_by_name(flat, tmp_path):
    root, rows = flat
    csv = write_csv(tmp_path / "l.csv", [("x", klass, file) for file, klass in rows], header=("id", "kind", "img"))
    dataset = scan_dataset(root, labels=LabelFile(csv, path_column="img", label_column="kind"))
    assert len(dataset.records) == len(rows) and dataset.skipped == []


def test_every_bad_row_is_skipped_with_its_reason(flat, tmp_path):
    root, rows = flat
    outside = tmp_path / "outside.png"
    shutil.copy(root / rows[0][0], outside)
    os.symlink(outside, root / "link_out.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "sub").mkdir()
    bad = [
        ("missing.png", "circle"),
        ("notes.txt", "circle"),
        ("../outside.png", "circle"),
        (str(outside), "circle"),
        ("link_out.png", "circle"),
        ("sub", "circle"),
        (rows[1][0], ""),  # empty label
        ("", "circle"),  # empty file name
        (rows[2][0], "circle"), (rows[2][0], "square"),  # one file, two labels: both rows out
        (rows[3][0], rows[3][1]), ("./" + rows[3][0], rows[3][1]),  # repeated with one label: counted once
        ("only-one-cell",),
    ]
    good = [row for row in rows if row[0] not in {rows[1][0], rows[2][0], rows[3][0]}]
    csv = write_csv(tmp_path / "l.csv", [*good, *bad])
    dataset = scan_dataset(root, labels=csv)
    reasons = {Path(item.path).name if "/" in item.path else item.path: item.reason for item in dataset.skipped}
    text = "\n".join(f"{item.path}: {item.reason}" for item in dataset.skipped)
    for expected in ("missing.png: l.csv row", "file not found", "notes.txt: not an image extension (.txt)",
                     "outside.png: l.csv row", "leads out of the data folder (..)", "absolute path",
                     "link_out.png: l.csv row", "a link leading out of the data folder", "a folder, not an image",
                     "empty label", "empty file name", "listed with different labels (conflicting)",
                     "repeats row", "counted once", "1 cells, the columns need 2"):
        assert expected in text, (expected, text)
    assert len(dataset.skipped) == 11, text
    paths = dataset.paths
    assert str(root / rows[2][0]) not in paths and str(root / rows[1][0]) not in paths
    assert paths.count(str(root / rows[3][0])) == 1
    assert len(dataset.records) == len(good) + 1
    assert not reasons.get("link_out.png", "").startswith("file")  # the link is refused, not followed


def test_a_file_that_does_not_decode_is_skipped_at_extraction(flat, tmp_path, capsys):
    root, rows = flat
    (root / "broken.png").write_bytes(b"not a png")
    csv = write_csv(tmp_path / "l.csv", [*rows, ("broken.png", "circle")])
    code = main(["extract", str(root), "--labels", str(csv), *ARGS, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 3 and f"skipped {root / 'broken.png'}:" in err
    assert [item["path"] for item in json.loads((tmp_path / "c" / "skipped.json").read_text())] == \
        [str(root / "broken.png")]


@pytest.mark.parametrize("content, expected", [
    (b"a.png,circle\nb.png,square\n", "has no header: its first row (a.png, circle) names an image"),
    (b"file\nx.png\n", "has 1 column (file); it needs one for the image file and one for its class"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "is a binary file, not a CSV"),
    (b"file,class\n\xe9t\xe9.png,circle\n", "is not UTF-8 text (byte 11"),  # Latin-1
    ("file,class\na.png,circle\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (b"", "is empty; it needs a header row"),
    (b'file,class\n"a.png,circle\n', None),  # an unclosed quote swallows the rest: no usable row
])
def test_a_bad_label_file_is_one_error_line(flat, tmp_path, capsys, content, expected):
    root, _ = flat
    (tmp_path / "bad.csv").write_bytes(content)
    code = main(["train", str(root), "--labels", str(tmp_path / "bad.csv"), *ARGS, "--out", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("gearfeat: error: ") and "Traceback" not in "\n".join(err), err
    assert expected is None or expected in err[-1], err
    assert not (tmp_path / "r" / "model.h5").exists()


@pytest.mark.parametrize("option, message", [
    (["--path-column", "image"], "--path-column 'image' is not a column of"),
    (["--label-column", "kind"], "--label-column 'kind' is not a column of"),
])
def test_a_missing_column_is_one_error_line(flat, tmp_path, capsys, option, message):
    root, rows = flat
    csv = write_csv(tmp_path / "l.csv", rows)
    code = main(["extract", str(root), "--labels", str(csv), *option, *ARGS, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("gearfeat: error: ") and "\n" not in err and message in err, err
    assert "'file', 'class'" in err


@pytest.mark.parametrize("argv, message", [
    (["--labels", "nowhere.csv"], "label file not found: nowhere.csv"),
    (["--path-column", "file"], "--path-column and --label-column name columns of the --labels file"),
])
def test_a_missing_label_file_or_a_column_without_one_is_one_error_line(flat, tmp_path, capsys, argv, message):
    code = main(["extract", str(flat[0]), *argv, *ARGS, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == f"gearfeat: error: {err.removeprefix('gearfeat: error: ')}" and message in err, err


def test_a_label_file_with_one_usable_class_is_one_error_line(flat, tmp_path, capsys):
    root, rows = flat
    csv = write_csv(tmp_path / "l.csv", [row for row in rows if row[1] == "circle"] + [("gone.png", "square")])
    code = main(["extract", str(root), "--labels", str(csv), *ARGS, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"gearfeat: error: {csv}: found only 1 class with images (circle)")


def test_train_from_a_label_file_end_to_end(flat, tmp_path, capsys):
    root, rows = flat
    (root / "extra.txt").write_text("a file the label file does not name is not part of the dataset")
    csv = write_csv(tmp_path / "labels.csv", [*rows, ("missing.png", "circle")])
    code = main(["train", str(root), "--labels", str(csv), *ARGS, "--hidden", "8", "--epochs", "3",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert code == 3, captured.err  # trained, with a skipped row
    assert f"skipped {root / 'missing.png'}: labels.csv row {len(rows) + 2}: file not found" in captured.err
    run = tmp_path / "run"
    assert (run / "model.h5").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["class_names"] == ["circle", "square", "triangle"] and info["n_images"] == len(rows)
    assert info["labels"] == {"path": str(csv.resolve()), "path_column": None, "label_column": None}
    assert [item["path"] for item in json.loads((run / "skipped.json").read_text())] == [str(root / "missing.png")]


@pytest.mark.parametrize("command", [
    ["cnn", "--image-size", "32", "--layers", "conv:4,pool,gap", "--epochs", "1", "--no-progress"],
    ["search", *ARGS, "--param", "hidden=[8]", "--param", "epochs=2", "--param", "baseline=logreg",
     "--trials", "all", "--backend", "threading", "--jobs", "1"],
])
def test_cnn_and_search_take_a_label_file(flat, tmp_path, capsys, command):
    root, rows = flat
    csv = write_csv(tmp_path / "l.csv", [(file, f"k{klass}") for file, klass in rows])
    code = main([command[0], str(root), "--labels", str(csv), *command[1:], "--out", str(tmp_path / "run"),
                 *(["--cache-dir", str(tmp_path / "c")] if command[0] == "search" else [])])
    assert code == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["class_names"] == ["kcircle", "ksquare", "ktriangle"] and info["labels"]["path"] == str(csv.resolve())


def test_finetune_reads_the_label_file_of_its_run(flat, tmp_path, capsys):
    root, rows = flat
    csv = write_csv(tmp_path / "l.csv", [(file, f"k{klass}") for file, klass in rows])
    assert main(["train", str(root), "--labels", str(csv), *ARGS, "--hidden", "8", "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert main(["finetune", str(tmp_path / "run"), "--unfreeze", "2", "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "tuned")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "tuned" / "run.json").read_text())["labels"]["path"] == str(csv.resolve())
