import re
import shutil
import threading

import h5py
import keras
import numpy as np
import pytest

from gearfeat.features import extractor as extractor_module
from gearfeat.data import images as images_module
from gearfeat.features.cache import FeatureCache
from gearfeat.cli import main
from gearfeat.data.dataset import scan_dataset
from gearfeat._internal.errors import GearfeatError
from gearfeat.features.extractor import FeatureExtractor, build_extractor
from gearfeat.data.synthetic import make_shapes_dataset

from conftest import tiny_config


def test_extractor_first_layer_is_a_registered_lambda_that_upscales():
    model = build_extractor(tiny_config(backbone_size=48))
    first = model.layers[1]
    assert isinstance(first, keras.layers.Lambda) and first.name == "upscale"
    assert first.get_config()["function"]["config"] == "gearfeat>resize_images"
    assert first.get_config()["arguments"] == {"size": 48}
    assert not model.get_layer("backbone").trainable


def test_extract_once_then_reuse_then_append(shapes_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    fx = FeatureExtractor(tiny_config(), progress=False)
    first = fx.extract(scan_dataset(shapes_copy), cache_dir)
    assert (first.computed, first.reused) == (60, 0) and first.features.shape == (60, 1280)
    again = fx.extract(scan_dataset(shapes_copy), cache_dir)
    assert (again.computed, again.reused) == (0, 60)
    np.testing.assert_array_equal(again.features, first.features)
    make_shapes_dataset(tmp_path / "more", per_class=3, size=32, seed=99)
    for kind in ("circle", "square", "triangle"):
        for f in (tmp_path / "more" / kind).iterdir():
            shutil.copy(f, shapes_copy / kind / f"new_{f.name}")
    grown = fx.extract(scan_dataset(shapes_copy), cache_dir)
    assert (grown.computed, grown.reused) == (9, 60)
    assert len(list(cache_dir.glob("*.h5"))) == 1


def test_features_equal_direct_model_output(shapes_dir, tmp_path):
    from gearfeat.data.images import load_image
    fx = FeatureExtractor(tiny_config(), progress=False, batch_size=7)
    result = fx.extract(scan_dataset(shapes_dir), tmp_path)
    images = np.stack([load_image(r.path, 32) for r in result.dataset.records]).astype(np.float32)
    direct = fx.model.predict(images, verbose=0)
    np.testing.assert_allclose(result.features, direct, atol=1e-5)


def test_features_of_refuses_other_images_and_extraction_still_works(shapes_dir, tmp_path):
    fx = FeatureExtractor(tiny_config(), progress=False)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert fx.features_of(images).shape == (2, 1280) and fx.features_of(images[:0]).shape == (0, 1280)
    for bad in (np.zeros((2, 64, 64, 3), np.uint8), images[0], images[..., 0], images.astype(np.float32)):
        with pytest.raises(GearfeatError, match=r"features_of expects standardized uint8 images of shape "
                                                r"\(N, 32, 32, 3\)"):
            fx.features_of(bad)
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=fx.extract(scan_dataset(shapes_dir), tmp_path)),
                              daemon=True)
    worker.start()
    worker.join(timeout=120)  # a refused call used to leave TensorFlow's lock held: the extraction hung
    assert done["result"].computed == 60


def test_api_arguments_of_the_wrong_kind_are_named(tmp_path):
    with pytest.raises(GearfeatError, match="config must be an ExtractorConfig, got 'mobilenet_v2'"):
        FeatureExtractor("mobilenet_v2")
    with pytest.raises(GearfeatError, match="unknown backbone None"):
        tiny_config(backbone=None)
    for weights in ("", 123):
        with pytest.raises(GearfeatError, match="^weights must be 'imagenet', 'none' or the path"):
            tiny_config(weights=weights)
    images = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(GearfeatError, match=r"expected one label per image \(3\)"):
        FeatureExtractor(tiny_config(), progress=False).extract_arrays(images, ["a", "b"], tmp_path)
    with pytest.raises(GearfeatError, match="the data folder must be a path, got None"):
        scan_dataset(None)
    with pytest.raises(GearfeatError, match="min_classes must be an integer >= 1, got '2'"):
        scan_dataset(tmp_path, min_classes="2")


def test_concurrent_streams_share_one_trace(shapes_dir, tmp_path):
    fx = FeatureExtractor(tiny_config(), progress=False, batch_size=4, streams=6)
    fx.extract(scan_dataset(shapes_dir), tmp_path)  # 15 batches, the last one smaller, 6 at once
    assert fx._forward.experimental_get_tracing_count() == 1


def test_any_setting_change_gives_a_new_cache_file(shapes_dir, tmp_path):
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"some weights")
    changes = ({}, {"image_size": 40}, {"backbone_size": 40}, {"alpha": 0.5}, {"pooling": "max"},
               {"weights": str(weights)})
    paths = {FeatureCache.path_for(tmp_path, tiny_config(**change).cache_attrs()) for change in changes}
    assert len(paths) == len(changes)


@pytest.mark.parametrize("code", ["gearfeat.features.extractor.PREPROCESSING_VERSION", "gearfeat.features.extractor.STANDARDIZE_VERSION",
                                  "PIL.__version__", "keras.__version__", "tensorflow.__version__",
                                  "gearfeat.features.extractor.__version__"])
def test_the_code_that_computes_features_is_in_the_cache_key(tmp_path, monkeypatch, code):
    before = FeatureCache.path_for(tmp_path, tiny_config().cache_attrs())
    monkeypatch.setattr(code, "another")
    assert FeatureCache.path_for(tmp_path, tiny_config().cache_attrs()) != before


@pytest.mark.parametrize("setting, message", [
    ({"backbone_size": 0}, "backbone_size must be an integer from 8 to 4096, got 0"),
    ({"image_size": 7}, "image_size must be an integer from 8 to 4096, got 7"),
    ({"image_size": 32.0}, "image_size must be an integer from 8 to 4096, got 32.0"),
    ({"image_size": 100_000}, "image_size must be an integer from 8 to 4096, got 100000"),
    ({"backbone_size": 4097}, "backbone_size must be an integer from 8 to 4096, got 4097"),
    ({"alpha": 0}, "alpha must be a width multiplier above 0, got 0"),
    ({"alpha": -1.0}, "alpha must be a width multiplier above 0, got -1.0"),
    ({"alpha": float("nan")}, "alpha must be a width multiplier above 0, got nan"),
    ({"alpha": "0.5"}, "alpha must be a width multiplier above 0, got '0.5'"),
])
def test_bad_sizes_and_widths_are_named_not_replaced_by_defaults(setting, message):
    with pytest.raises(GearfeatError, match=re.escape(message)):
        tiny_config(**setting)


def test_sizes_are_checked_by_the_image_size_check_of_gearfeat_images(monkeypatch):
    config = tiny_config(image_size=np.int64(32), backbone_size=np.int64(48))  # as numpy hands them out
    assert (config.image_size, config.backbone_size) == (32, 48)
    assert type(config.image_size) is type(config.backbone_size) is int  # plain ints in the cache key
    monkeypatch.setattr(images_module, "_MIN_SIZE", 40)
    with pytest.raises(GearfeatError, match=re.escape("image_size must be an integer from 40 to 4096, got 32")):
        tiny_config()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_extraction_batch_size_is_a_usage_error(shapes_dir, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["extract", str(shapes_dir), "--weights", "none", "--image-size", "32", "--backbone-size", "32",
              "--cache-dir", str(tmp_path), "--batch-size-extract", value, "--no-progress"])
    assert info.value.code == 2
    assert f"argument --batch-size-extract: expected an integer >= 1, got '{value}'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name, kwargs", [("batch_size", {"batch_size": 0}), ("streams", {"streams": True}),
                                           ("workers", {"workers": -1}), ("prefetch", {"prefetch": 1.5})])
def test_extractor_settings_are_checked(name, kwargs):
    with pytest.raises(GearfeatError, match=f"^{name} must be an integer >= "):
        FeatureExtractor(tiny_config(), **kwargs)


def test_extraction_batch_size_is_an_option_of_extract_only(capsys):
    with pytest.raises(SystemExit):  # train used to accept it and ignore it
        main(["train", "data", "--out", "run", "--batch-size-extract", "8"])
    assert "unrecognized arguments: --batch-size-extract 8" in capsys.readouterr().err


def test_a_failed_build_is_not_retried_by_every_stream(shapes_dir, tmp_path, monkeypatch):
    builds = []

    def offline(config):
        builds.append(config)
        raise GearfeatError("cannot download ImageNet weights (offline?)")

    monkeypatch.setattr(extractor_module, "build_extractor", offline)
    with pytest.raises(GearfeatError, match="offline"):
        FeatureExtractor(tiny_config(), progress=False, streams=4).extract(scan_dataset(shapes_dir), tmp_path)
    assert len(builds) == 1


def test_duplicate_files_are_computed_once(shapes_copy, tmp_path):
    src = shapes_copy / "circle" / "circle_0000.png"
    shutil.copy(src, shapes_copy / "circle" / "copy_of_circle_0000.png")
    result = FeatureExtractor(tiny_config(), progress=False).extract(scan_dataset(shapes_copy), tmp_path)
    assert result.computed == 60 and len(result.dataset.records) == 61


def test_interrupted_extraction_resumes_and_matches(shapes_dir, tmp_path, monkeypatch):
    reference = FeatureExtractor(tiny_config(), progress=False).extract(scan_dataset(shapes_dir), tmp_path / "ref")
    monkeypatch.setattr(extractor_module, "_COMMIT_SECONDS", 0.0)
    fx = FeatureExtractor(tiny_config(), progress=False, batch_size=8, streams=1)  # one batch at a time
    calls = {"n": 0}
    real = fx.features_of

    def interrupted(images):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(images)

    monkeypatch.setattr(fx, "features_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fx.extract(scan_dataset(shapes_dir), tmp_path / "c")
    with FeatureCache.open(tmp_path / "c", tiny_config().cache_attrs()) as cache:
        assert len(cache) == 24  # three committed batches of 8, nothing half-written
    monkeypatch.setattr(fx, "features_of", real)
    resumed = fx.extract(scan_dataset(shapes_dir), tmp_path / "c")
    assert (resumed.computed, resumed.reused) == (36, 24)
    np.testing.assert_allclose(resumed.features, reference.features, atol=1e-5)


def test_undecodable_files_are_skipped_not_mislabelled(shapes_copy, tmp_path):
    (shapes_copy / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    result = FeatureExtractor(tiny_config(), progress=False).extract(scan_dataset(shapes_copy), tmp_path)
    assert [s.path.endswith("broken.png") for s in result.skipped] == [True]
    assert len(result.dataset.records) == 60 and result.features.shape[0] == 60
    assert all(not str(r.path).endswith("broken.png") for r in result.dataset.records)


@pytest.mark.parametrize("failure", ["corrupt", "changed"])
def test_identical_copies_of_a_failed_file_are_skipped_too(shapes_copy, tmp_path, failure):
    folder = shapes_copy / "square"
    if failure == "corrupt":
        first, copy = folder / "broken_a.jpg", folder / "broken_b.jpg"
        for path in (first, copy):
            path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    else:
        first, copy = folder / "square_0000.png", folder / "square_0000_copy.png"
        shutil.copy(first, copy)
    dataset = scan_dataset(shapes_copy)
    if failure == "changed":
        shutil.copy(folder / "square_0001.png", first)  # its bytes change after the scan
    result = FeatureExtractor(tiny_config(), progress=False).extract(dataset, tmp_path)
    assert [s.path for s in result.skipped] == [str(first), str(copy)]
    assert f"identical bytes to {first}: {result.skipped[0].reason}" == result.skipped[1].reason
    n = 60 if failure == "corrupt" else 59
    assert len(result.dataset.records) == n and result.features.shape == (n, 1280)
    assert {str(first), str(copy)}.isdisjoint(result.dataset.paths)


def test_extract_arrays_caches_by_content(tmp_path):
    fx = FeatureExtractor(tiny_config(), progress=False)
    images = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    feats, path = fx.extract_arrays(images, ["a"] * 10, tmp_path)
    feats2, _ = fx.extract_arrays(images[::-1], ["a"] * 10, tmp_path)
    np.testing.assert_array_equal(feats2, feats[::-1])
    with h5py.File(path) as f:
        assert f.attrs["n_rows"] == 10
    with pytest.raises(GearfeatError, match="expected uint8 images of shape"):
        fx.extract_arrays(images[:, :16], ["a"] * 10, tmp_path)
