"""Tests for gearfeat.data.synthetic: deterministic, well-formed shape images and folders."""

import numpy as np
import pytest
from PIL import Image

from gearfeat.data import synthetic as shapes
from gearfeat._internal.errors import GearfeatError


@pytest.mark.parametrize("kind", shapes.SHAPES)
def test_draw_shape_has_visible_shape(kind):
    for seed in range(5):
        image = shapes.draw_shape(kind, np.random.default_rng(seed), size=64)
        assert image.mode == "RGB" and image.size == (64, 64)
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        background = colours[counts.argmax()]
        assert background.min() >= 200
        differs = np.abs(pixels - background).sum(axis=1) > 60
        assert 0.01 < differs.mean() < 0.6


def test_draw_shape_is_deterministic():
    a = shapes.draw_shape("triangle", np.random.default_rng(3), size=32)
    b = shapes.draw_shape("triangle", np.random.default_rng(3), size=32)
    c = shapes.draw_shape("triangle", np.random.default_rng(4), size=32)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_draw_shape_errors():
    with pytest.raises(GearfeatError, match="'star'.*circle, square, triangle"):
        shapes.draw_shape("star", np.random.default_rng(0))
    with pytest.raises(GearfeatError, match="size=4"):
        shapes.draw_shape("circle", np.random.default_rng(0), size=4)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_layout_and_determinism(tmp_path):
    root = shapes.make_shapes_dataset(tmp_path / "a", per_class=3, size=32, seed=7)
    assert root == tmp_path / "a"
    files = _files(root)
    assert sorted(files) == [f"{k}/{k}_{i:04d}.png" for k in shapes.SHAPES for i in range(3)]
    assert files == _files(shapes.make_shapes_dataset(tmp_path / "b", per_class=3, size=32, seed=7))
    other = _files(shapes.make_shapes_dataset(tmp_path / "c", per_class=3, size=32, seed=8))
    assert all(files[name] != other[name] for name in files)
    with Image.open(root / "circle" / "circle_0000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_dataset_per_kind_streams_and_jpg(tmp_path):
    small = _files(shapes.make_shapes_dataset(tmp_path / "a", per_class=2, size=16, kinds=["square"]))
    large = _files(shapes.make_shapes_dataset(tmp_path / "b", per_class=3, size=16, kinds=["circle", "square"]))
    assert all(large[name] == data for name, data in small.items())
    root = shapes.make_shapes_dataset(tmp_path / "j", per_class=1, size=16, kinds=["circle"], fmt="jpg")
    with Image.open(root / "circle" / "circle_0000.jpg") as image:
        assert image.format == "JPEG"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_class": 0}, "per_class=0"),
        ({"size": 4}, "size=4"),
        ({"kinds": ["circle", "hexagon"]}, "'hexagon'"),
        ({"kinds": "circle"}, "one string"),
        ({"kinds": []}, "empty"),
        ({"kinds": ["circle", "circle"]}, "repeats"),
        ({"fmt": "gif"}, "'gif'"),
    ],
)
def test_dataset_errors(tmp_path, kwargs, match):
    with pytest.raises(GearfeatError, match=match):
        shapes.make_shapes_dataset(tmp_path, **{"per_class": 1, "size": 8, **kwargs})


def test_new_images_cycle_kinds_and_are_not_in_dataset(tmp_path):
    paths = shapes.make_shape_images(tmp_path / "new", 4, size=32)
    assert [p.name for p in paths] == ["new_00_circle.png", "new_01_square.png", "new_02_triangle.png",
                                       "new_03_circle.png"]
    dataset = _files(shapes.make_shapes_dataset(tmp_path / "data", per_class=4, size=32, seed=1))
    assert not {p.read_bytes() for p in paths} & set(dataset.values())
    with pytest.raises(GearfeatError, match="n=0"):
        shapes.make_shape_images(tmp_path / "new", 0)
