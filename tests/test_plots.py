"""Tests for gearfeat.outputs.plots: PNGs are written, readable and warning-free."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gearfeat.outputs import plots
from gearfeat._internal.errors import GearfeatError

LONG_NAMES = [
    "hardshell_jackets", "insulated_jackets", "rope", "tents", "axes", "boots",
    "carabiners", "crampons", "gloves", "harnesses", "helmets", "pulleys",
]


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("n_epochs", [1, 6])
def test_history_loss_only(tmp_path, n_epochs):
    rng = np.random.default_rng(0)
    history = {"loss": rng.random(n_epochs).tolist(), "val_loss": rng.random(n_epochs).tolist()}
    path = plots.plot_history(history, tmp_path / "sub" / "history.png")
    assert path == tmp_path / "sub" / "history.png"
    width, height = _png_size(path)
    assert 500 <= width <= 1000 and 300 <= height <= 700


def test_history_with_accuracy_is_wider(tmp_path):
    history = {
        "loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.8],
        "accuracy": [0.5, 0.7, 0.9], "val_accuracy": [0.4, 0.6, 0.6],
        "learning_rate": [1e-3, 1e-3, 1e-4],
    }
    loss_only = plots.plot_history({k: history[k] for k in ("loss", "val_loss")}, tmp_path / "a.png")
    both = plots.plot_history(history, tmp_path / "b.png")
    assert _png_size(both)[0] > 1.5 * _png_size(loss_only)[0]


def test_history_errors(tmp_path):
    with pytest.raises(GearfeatError, match="'loss'"):
        plots.plot_history({"val_loss": [1.0]}, tmp_path / "h.png")
    with pytest.raises(GearfeatError, match="val_loss"):
        plots.plot_history({"loss": [1.0, 0.5], "val_loss": [1.0]}, tmp_path / "h.png")
    with pytest.raises(GearfeatError, match="h.jpg"):
        plots.plot_history({"loss": [1.0]}, tmp_path / "h.jpg")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GearfeatError, match="cannot write .*file/new/h.png: .*file is not a writable folder"):
        plots.plot_history({"loss": [1.0]}, tmp_path / "file" / "new" / "h.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(GearfeatError, match="dir.png is a folder; pass the path of the .png file"):
        plots.plot_history({"loss": [1.0]}, tmp_path / "dir.png")


def test_a_figure_that_cannot_be_written_is_one_error_line(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots.Figure, "savefig", full_disk)
    with pytest.raises(GearfeatError, match=r"^cannot write .*h.png: No space left on device; free space on that disk or write to another folder$"):
        plots.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.png")


def test_a_figure_path_is_checked_without_creating_folders(tmp_path):
    with pytest.raises(GearfeatError, match="outside the 2 classes"):
        plots.plot_confusion([0, 5], [0, 1], ["a", "b"], tmp_path / "new" / "c.png")
    assert not (tmp_path / "new").exists()
    assert plots.plot_history({"loss": [1.0, 0.5]}, tmp_path / "new" / "deeper" / "h.png").is_file()


def test_confusion_long_names_and_missing_class_without_warnings(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 11, 200)  # the last class never occurs in y_true
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 12, 200))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            path = plots.plot_confusion(y_true, y_pred, LONG_NAMES, tmp_path / "confusion.png")
    width, height = _png_size(path)
    assert width >= 900 and height >= 800


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "match"),
    [
        ([0, 1], [0], ["a", "b"], "y_pred has 1"),
        ([0, 2], [0, 1], ["a", "b"], "contains 2"),
        ([0, 1], [0, 1], ["a"], "at least 2"),
        ([0.5, 1], [0, 1], ["a", "b"], "class indices"),
        ([], [], ["a", "b"], "empty"),
    ],
)
def test_confusion_errors(tmp_path, y_true, y_pred, names, match):
    with pytest.raises(GearfeatError, match=match):
        plots.plot_confusion(y_true, y_pred, names, tmp_path / "c.png")


@pytest.mark.parametrize("n_images", [1, 5, 13])
def test_predictions_grid(tmp_path, n_images):
    rng = np.random.default_rng(n_images)
    images = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(n_images)]
    titles = [f"{LONG_NAMES[i % 12]} {rng.random():.2f}" for i in range(n_images)]
    titles[0] = "a_really_long_class_name_that_must_be_wrapped_to_fit_its_panel 0.97"
    width, height = _png_size(plots.plot_predictions(images, titles, tmp_path / "grid.png"))
    assert width >= 250 * min(n_images, 5) and height >= 250 * -(-n_images // 5)


def test_predictions_grid_with_file_name_captions(tmp_path):
    images = [np.full((32, 32, 3), 255, np.uint8)] * 3
    captions = ["a.png", "b" * 80 + ".jpeg", "c.webp"]
    cut = plots._middle_ellipsis(captions[1], 34)
    assert len(cut) == 34 and cut.startswith("bbb") and cut.endswith("b.jpeg") and "…" in cut
    width, _ = _png_size(plots.plot_predictions(images, ["x 0.50"] * 3, tmp_path / "grid.png", captions=captions))
    assert width >= 750
    with pytest.raises(GearfeatError, match="3 images but 2 captions"):
        plots.plot_predictions(images, ["x"] * 3, tmp_path / "grid.png", captions=captions[:2])


def test_predictions_errors(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(GearfeatError, match="2 images but 1 titles"):
        plots.plot_predictions([image, image], ["x"], tmp_path / "p.png")
    with pytest.raises(GearfeatError, match="at least one"):
        plots.plot_predictions([], [], tmp_path / "p.png")
    with pytest.raises(GearfeatError, match=r"images\[0\] has shape \(8, 8\)"):
        plots.plot_predictions([image[..., 0]], ["x"], tmp_path / "p.png")
    with pytest.raises(GearfeatError, match="ncols=0"):
        plots.plot_predictions([image], ["x"], tmp_path / "p.png", ncols=0)


def test_does_not_import_pyplot():
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {
        f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not {name for name in imported if "pyplot" in name}, "pyplot keeps global state; build Figures directly"
