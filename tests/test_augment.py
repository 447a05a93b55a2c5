"""The cached augmented views (``--augment-views K``): views of training images only, kept in their image's
split, made the same whatever the batch, and computed once: a re-run reuses them, more views compute only the
new indexes, another spec or seed is another file."""
import json

import h5py
import numpy as np
import pytest

from gearfeat._internal.errors import GearfeatError
from gearfeat.cli import main
from gearfeat.data.dataset import SplitConfig, split_dataset
from gearfeat.features import extractor as extractor_module
from gearfeat.features.augment import DEFAULT_AUGMENT, AugmentConfig, Augmenter, list_layers, view_key
from gearfeat.features.extractor import FeatureExtractor, extract_dataset
from gearfeat.models import architecture
from gearfeat.models.heads import DenseHead
from gearfeat.outputs.runs import RunRecord
from gearfeat.workflows import search as search_module
from gearfeat.workflows.search import search
from gearfeat.workflows.train import train
from gearfeat.workflows.transfer import training_rows

from conftest import tiny_config

from test_run_record import TRANSFER_V1

TINY_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
             "--backbone-size", "32", "--no-progress"]
QUIET = dict(progress=False)
HEAD = DenseHead(hidden=(16,), epochs=2)


@pytest.fixture
def backbone_images(monkeypatch):
    """Counts the images run through the backbone (every extractor's ``features_of``)."""
    seen = {"images": 0}
    original = FeatureExtractor.features_of

    def counting(self, images):
        seen["images"] += len(images)
        return original(self, images)

    monkeypatch.setattr(FeatureExtractor, "features_of", counting)
    return seen


def view_files(cache_dir):
    return sorted(p for p in cache_dir.glob("*-views-*.h5"))


def test_the_views_share_the_cnn_registry_and_parser():
    assert architecture.list_layers is list_layers and architecture.DEFAULT_AUGMENT == DEFAULT_AUGMENT
    assert {t.name for t in list_layers(augment=True)} >= {"flip", "rotation", "zoom", "translation", "brightness",
                                                          "contrast"}
    assert AugmentConfig(2, " Flip , zoom:0.1").spec == "flip:horizontal,zoom:0.1"  # one spelling, one file


@pytest.mark.parametrize("kwargs, message", [
    ({"views": -1}, "^AugmentConfig views must be an integer >= 0, got -1$"),
    ({"views": 1.5}, "^AugmentConfig views must be an integer >= 0, got 1.5$"),
    ({"views": True}, "^AugmentConfig views must be an integer >= 0, got True$"),
    ({"seed": -3}, "^AugmentConfig seed must be an integer from 0 to 4294967295, got -3$"),
    ({"views": 2, "spec": "conv:8"}, "unknown augmentation entry 'conv:8'"),
    ({"views": 2, "spec": "zoom:2"}, r"augmentation entry 'zoom:2': bad factor '2'"),
    ({"views": 2, "spec": "none"}, "^AugmentConfig views 2 needs augmentation layers; AugmentConfig spec is 'none'$"),
    ({"views": 2, "spec": None}, "the augmentation spec must be text"),
])
def test_a_bad_augment_setting_names_the_value(kwargs, message):
    with pytest.raises(GearfeatError, match=message):
        AugmentConfig(**kwargs)


def test_a_view_depends_on_seed_image_and_index_only():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    first, again = Augmenter(AugmentConfig(2, seed=5)), Augmenter(AugmentConfig(2, seed=5))
    view = first.view(image, "a" * 64, 1)
    assert view.dtype == np.uint8 and view.shape == image.shape and not np.array_equal(view, image)
    first.view(image, "b" * 64, 0)  # other images in between change nothing
    assert np.array_equal(again.view(image, "a" * 64, 1), view)
    assert not np.array_equal(first.view(image, "a" * 64, 0), view)
    assert not np.array_equal(Augmenter(AugmentConfig(2, seed=6)).view(image, "a" * 64, 1), view)
    assert view_key("a" * 64, 1) != view_key("a" * 64, 0) and len(view_key("a" * 64, 1)) == 64


def test_views_are_of_training_images_only_and_do_not_depend_on_the_batch(shapes_dir, tmp_path):
    split = SplitConfig(seed=3)
    extraction = extract_dataset(shapes_dir, tiny_config(), cache_dir=tmp_path / "a", augment=AugmentConfig(2),
                                 split=split, **QUIET)
    parts = split_dataset(extraction.dataset, seed=3)
    views = extraction.views
    assert sorted(views.owners.tolist()) == sorted(np.repeat(parts["train"], 2).tolist())
    assert set(views.owners.tolist()).isdisjoint(parts["val"].tolist() + parts["test"].tolist())
    assert views.views.tolist() == [0, 1] * len(parts["train"])
    with h5py.File(views.cache_path) as f:  # the file's own rows: the training images' views, nothing else
        stored = {p.decode().rsplit("#view", 1)[0] for p in f["path"][:]}
    assert stored == {str(extraction.dataset.records[i].path) for i in parts["train"]}
    one_by_one = FeatureExtractor(tiny_config(), batch_size=1, streams=1, progress=False)
    again = one_by_one.extract_views(extraction.dataset, parts["train"][::-1], AugmentConfig(2), tmp_path / "b")
    by_view = {(o, v): row for o, v, row in zip(again.owners.tolist(), again.views.tolist(), again.rows.read())}
    expected = views.rows.read()
    scale = np.abs(expected).max()  # random weights: tiny features
    for o, v, row in zip(views.owners.tolist(), views.views.tolist(), expected):
        np.testing.assert_allclose(by_view[(o, v)], row, rtol=1e-3, atol=1e-4 * scale)
    assert np.abs(expected[0] - expected[1]).max() > 0.05 * scale  # two views of one image differ


def test_the_head_trains_on_plain_and_view_rows_of_train_and_validates_on_plain(shapes_dir, tmp_path, monkeypatch):
    seen = []
    fit = DenseHead.fit

    def recording(self, X, y, *, validation_data=None, classes=None):
        seen.append((len(X), len(validation_data[0])))
        return fit(self, X, y, validation_data=validation_data, classes=classes)

    monkeypatch.setattr(DenseHead, "fit", recording)
    result = train(shapes_dir, tmp_path / "run", config=tiny_config(), head=HEAD, split=SplitConfig(seed=1),
                   cache_dir=tmp_path / "c", augment=AugmentConfig(3), **QUIET)
    record = RunRecord.load(tmp_path / "run")
    n_train, n_val = record.split["train"], record.split["val"]
    assert seen == [(4 * n_train, n_val)]
    assert record.views["rows"] == 3 * n_train and record.views["images"] == n_train
    assert record.views["computed"] == 3 * n_train and record.views["reused"] == 0
    assert record.views["spec"] == AugmentConfig().spec == "flip:horizontal," + DEFAULT_AUGMENT.split(",", 1)[1]
    assert record.views["seed"] == 0
    assert result.metrics["n_test"] == record.split["test"]  # test: plain images only
    with pytest.raises(GearfeatError, match="views belong to images outside the training split"):
        parts = split_dataset(result.extraction.dataset, seed=2)  # another split: its train holds other images
        training_rows(result.extraction, parts["train"], result.extraction.rows.read(parts["train"]))


def test_a_rerun_reuses_the_views_more_views_add_only_new_ones(shapes_dir, tmp_path, backbone_images):
    cache = tmp_path / "cache"

    def run(name, augment):
        backbone_images["images"] = 0
        train(shapes_dir, tmp_path / name, config=tiny_config(), head=HEAD, cache_dir=cache, augment=augment,
              **QUIET)
        return RunRecord.load(tmp_path / name), backbone_images["images"]

    first, computed = run("first", AugmentConfig(2))
    n_train, n_images = first.split["train"], first.n_images
    assert computed == n_images + 2 * n_train and first.views["computed"] == 2 * n_train
    again, computed = run("again", AugmentConfig(2))
    assert computed == 0 and again.views["computed"] == 0 and again.views["reused"] == 2 * n_train
    more, computed = run("more", AugmentConfig(3))
    assert computed == n_train and more.views["computed"] == n_train and more.views["reused"] == 2 * n_train
    assert len(view_files(cache)) == 1  # the same file, grown
    other, computed = run("other", AugmentConfig(2, spec="flip,brightness:0.2"))
    assert computed == 2 * n_train and len(view_files(cache)) == 2
    reseeded, computed = run("reseeded", AugmentConfig(2, seed=1))
    assert computed == 2 * n_train and len(view_files(cache)) == 3
    plain, computed = run("plain", None)
    assert computed == 0 and plain.views is None


def test_search_trials_train_on_the_views_too(shapes_dir, tmp_path, monkeypatch):
    seen = []
    run_trials = search_module.run_trials

    def recording(configurations, X_train, y_train, X_val, y_val, **kwargs):
        seen.append((len(X_train), len(y_train), len(X_val)))
        return run_trials(configurations, X_train, y_train, X_val, y_val, **kwargs)

    monkeypatch.setattr(search_module, "run_trials", recording)
    search(shapes_dir, tmp_path / "run", space={"hidden": [[8]], "epochs": [2]}, jobs=1, config=tiny_config(),
           cache_dir=tmp_path / "c", augment=AugmentConfig(2), **QUIET)
    record = RunRecord.load(tmp_path / "run")
    assert seen == [(3 * record.split["train"], 3 * record.split["train"], record.split["val"])]
    assert record.views["rows"] == 2 * record.split["train"]


def test_views_over_the_memory_budget_name_the_parameters_from_python(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(extractor_module.FeatureExtractor, "extract_views", lambda *args, **kwargs: pytest.fail())
    with pytest.raises(GearfeatError, match=r"^AugmentConfig views 2 needs the split's features and their views in "
                                            r"memory \(.*\), more than the memory budget: raise memory_budget above "
                                            r"1\.0 kB or take no views \(streamed runs take none\)$"):
        train(shapes_dir, tmp_path / "run", config=tiny_config(), head=HEAD, cache_dir=tmp_path / "c",
              augment=AugmentConfig(2), memory_budget="1kB", **QUIET)


def test_cli_views_over_the_memory_budget_or_bad_are_one_line_before_any_view(shapes_dir, tmp_path, capsys,
                                                                              monkeypatch):
    views_made = []
    monkeypatch.setattr(extractor_module.FeatureExtractor, "extract_views",
                        lambda *args, **kwargs: views_made.append(1))
    base = ["train", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert main([*base, "--augment-views", "2", "--memory-budget", "1KB"]) == 1
    *_, err = capsys.readouterr().err.strip().splitlines()  # after the plain cache's line: the split's size
    assert err.startswith("gearfeat: error: --augment-views 2 needs the split's features and their views in memory")
    assert "--memory-budget" in err and not views_made
    assert main([*base, "--augment-views", "-2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "gearfeat: error: --augment-views must be an integer >= 0, got -2"
    assert main([*base, "--augment-views", "2", "--augment", "flip,pool"]) == 1
    assert "unknown augmentation entry 'pool'" in capsys.readouterr().err
    # the library names AugmentConfig's fields; the command line, its flags
    assert main([*base, "--augment-views", "2", "--augment", "none"]) == 1
    assert capsys.readouterr().err.strip() == ("gearfeat: error: --augment-views 2 needs augmentation layers; "
                                               "--augment is 'none'")
    assert main([*base, "--augment-seed", "-1"]) == 1
    assert capsys.readouterr().err.strip() == ("gearfeat: error: --augment-seed must be an integer from 0 to "
                                               "4294967295, got -1")


def test_cli_extract_fills_the_views_train_then_reuses(shapes_dir, tmp_path, capsys, backbone_images):
    cache = tmp_path / "c"
    views = ["--augment-views", "2", "--augment", "flip,contrast:0.2", "--augment-seed", "4", "--seed", "2"]
    assert main(["extract", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(cache), *views]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[1] == str(view_files(cache)[0])
    backbone_images["images"] = 0
    assert main(["train", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(cache), "--out", str(tmp_path / "run"),
                 "--epochs", "2", *views]) == 0
    assert backbone_images["images"] == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["views"]
    assert record["reused"] == record["rows"] > 0 and record["seed"] == 4


def test_a_run_without_views_and_one_from_before_them_read_as_none(tmp_path):
    assert RunRecord.from_json(TRANSFER_V1).views is None
    with_views = RunRecord.from_json({**TRANSFER_V1, "views": {"views": 2, "rows": 84}})
    assert with_views.views == {"views": 2, "rows": 84} and with_views.to_json()["views"]["rows"] == 84
    with pytest.raises(GearfeatError, match="views is 3, not a dict"):
        RunRecord.from_json({**TRANSFER_V1, "views": 3})
