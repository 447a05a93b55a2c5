"""`gearfeat predict` and `gearfeat report` on hostile input: a folder of links, broken and hidden files, and a
run folder with a missing or damaged artifact. Each is refused or reported in one line, never a traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from gearfeat.cli import main

from conftest import TINY

MOBILENET = ["--backbone", TINY["backbone"], "--alpha", str(TINY["alpha"]), "--weights", "none",
             "--image-size", "32", "--backbone-size", "32", "--no-progress"]
ARTIFACTS = ["model.h5", "run.json", "metrics.json", "baseline.joblib", "manifest.json"]


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile-run")
    assert main(["train", str(shapes_dir), *MOBILENET, "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "run"),
                 "--epochs", "2"]) == 0
    return tmp / "run"


def one_line_or_success(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("gearfeat")]
        assert len(errors) == 1 and errors[0].startswith("gearfeat: error:") and errors[0] == err.splitlines()[-1], err


@pytest.mark.parametrize("artifact, damage", [(a, "missing") for a in ARTIFACTS] + [(a, "garbage") for a in ARTIFACTS]
                         + [(a, "truncated") for a in ("model.h5", "baseline.joblib")])
def test_a_damaged_run_folder_is_one_line_for_predict_and_report(run, shapes_dir, tmp_path, capsys, artifact, damage):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    path = copy / artifact
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage{not json or hdf5")
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    image = next((shapes_dir / "circle").iterdir())
    code = main(["predict", str(copy), str(image)])
    one_line_or_success(code, capsys.readouterr().err)
    if artifact == "model.h5":
        assert code == 1  # no model, no prediction
    code = main(["report", str(copy), "--out", str(tmp_path / "r.md")])
    one_line_or_success(code, capsys.readouterr().err)
    if artifact in ("run.json", "metrics.json"):  # what the report is made of
        assert code == 1 and not (tmp_path / "r.md").exists()


def test_predict_on_a_folder_of_links_broken_and_hidden_files(run, tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "elsewhere.png")
    (folder / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".hidden.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "sub").symlink_to(tmp_path)  # a folder link: predict reads the files directly in the folder
    code = main(["predict", str(run), str(folder), str(folder / "dangling.png"), str(folder / "loop.png")])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = dict(line.split("\t", 1) for line in captured.out.splitlines())
    assert code == 3, captured
    assert not lines[str(folder / "a.png")].startswith("ERROR") and not lines[str(folder / "link.png")].startswith("ERROR")
    for bad in ("broken.jpg", "empty.png", "dangling.png", "loop.png"):
        assert lines[str(folder / bad)].startswith("ERROR\t"), lines
    assert str(folder / ".hidden.png") not in lines and str(folder / "sub") not in lines
