import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from gearfeat.cli import main
from gearfeat._internal.errors import GearfeatError
from gearfeat.workflows.finetune import backbone_layers, finetune, unfreeze_top
from gearfeat.workflows.fitting import FitConfig
from gearfeat.models.heads import DenseHead
from gearfeat.workflows.search import search
from gearfeat.data.synthetic import make_shapes_dataset
from gearfeat.models.stitch import load_model, model_info
from gearfeat.data.dataset import SplitConfig
from gearfeat.workflows.train import train

from conftest import tiny_config

UNFREEZE = 12
FIT = FitConfig(learning_rate=1e-3, epochs=2, patience=2, reduce_lr_patience=None, max_minutes=None)


@pytest.fixture(scope="module")
def transfer(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    return train(shapes_dir, out / "run", config=tiny_config(), head=DenseHead(hidden=(16,), epochs=3),
                 split=SplitConfig(seed=2), cache_dir=out / "cache", progress=False).run_dir


@pytest.fixture(scope="module")
def tuned(transfer, tmp_path_factory):
    return finetune(transfer, tmp_path_factory.mktemp("finetune") / "run", unfreeze=UNFREEZE, config=FIT,
                    progress=False)


def _top_bn(model, n):
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone_layers(model)[-n:])


def test_saved_model_has_exactly_the_top_n_non_bn_backbone_layers_trainable(tuned, transfer):
    """Counted: layers of the nested backbone (input layer excluded) with trainable=True, in the file."""
    model = load_model(tuned.run_dir / "model.h5")
    layers = backbone_layers(model)
    n_bn = _top_bn(model, UNFREEZE)
    assert 0 < n_bn < UNFREEZE  # the test means something: the top 12 of MobileNetV2 mix BN and others
    assert sum(layer.trainable for layer in layers) == UNFREEZE - n_bn
    assert all(layer.trainable == (not isinstance(layer, keras.layers.BatchNormalization))
               for layer in layers[-UNFREEZE:])
    assert not any(layer.trainable for layer in layers[:-UNFREEZE])
    assert isinstance(model.optimizer, keras.optimizers.Adam)  # saved compiled
    assert model_info(tuned.run_dir / "model.h5")["class_names"] == ["circle", "square", "triangle"]


def test_only_the_unfrozen_weights_moved(tuned, transfer):
    before = load_model(transfer / "model.h5").get_layer("backbone")
    after = load_model(tuned.run_dir / "model.h5").get_layer("backbone")
    changed = {layer.name for old, layer in zip(before.layers, after.layers)
               if any(not np.array_equal(a, b) for a, b in zip(old.get_weights(), layer.get_weights()))}
    record = json.loads((tuned.run_dir / "run.json").read_text())
    weighted = {layer.name for layer in after.layers if layer.weights}
    assert changed and changed == set(record["unfrozen_layers"]) & weighted  # BN statistics untouched too


def test_metrics_report_before_and_after_on_the_same_test_split(tuned, transfer):
    metrics = json.loads((tuned.run_dir / "metrics.json").read_text())
    source = json.loads((transfer / "metrics.json").read_text())
    assert metrics["head_only_test_accuracy"] == pytest.approx(source["test_accuracy"])
    assert metrics["head_only_val_accuracy"] == pytest.approx(source["val_accuracy"])
    assert 0 <= metrics["test_accuracy"] <= 1
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    record = json.loads((tuned.run_dir / "run.json").read_text())
    assert record["command"] == "finetune" and record["unfreeze"] == UNFREEZE
    assert record["split"] == json.loads((transfer / "run.json").read_text())["split"]
    assert record["seconds"]["total"] >= record["seconds"]["train"] > 0 and record["machine"]["cores"] >= 1
    history = json.loads((tuned.run_dir / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == record["epochs_run"] == 2
    for png in ("loss.png", "confusion.png"):
        with Image.open(tuned.run_dir / png) as image:
            assert image.format == "PNG" and image.size[0] > 200


@pytest.mark.parametrize("n", [0, -1, 10_000])
def test_unfreeze_out_of_range_is_a_clear_error(transfer, n):
    model = load_model(transfer / "model.h5")
    count = len(backbone_layers(model))
    expected = rf"^unfreeze {n}: the backbone has {count} layers; pass a number from 1 to {count}"
    with pytest.raises(GearfeatError, match=expected):
        unfreeze_top(model, n)


def test_unfreeze_everything_keeps_batch_norm_frozen(transfer):
    model = load_model(transfer / "model.h5")
    layers = backbone_layers(model)
    names = unfreeze_top(model, len(layers))
    assert len(names) == len(layers) - _top_bn(model, len(layers))


def test_cli_finetune_and_its_errors(transfer, tmp_path, capsys):
    args = ["finetune", str(transfer), "--epochs", "1", "--no-progress"]
    assert main([*args, "--unfreeze", "3", "--out", str(tmp_path / "ok")]) == 0
    err = capsys.readouterr().err
    assert "head-only test accuracy" in err and "fine-tuned test accuracy" in err
    assert main([*args, "--unfreeze", "100000", "--out", str(tmp_path / "big")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error: --unfreeze 100000: the backbone has") and "\n" not in err
    assert not (tmp_path / "big").exists()
    assert main(["finetune", str(tmp_path), "--unfreeze", "3", "--out", str(tmp_path / "x")]) == 1
    assert "not a gearfeat run folder" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in transfer.iterdir()}
    assert main([*args, "--unfreeze", "3", "--out", str(transfer / ".." / transfer.name)]) == 1
    assert capsys.readouterr().err == (f"gearfeat: error: --out {transfer / '..' / transfer.name} is the run being "
                                       "fine-tuned; write the fine-tuned run to another folder\n")
    assert {p.name: p.read_bytes() for p in transfer.iterdir()} == before


def test_finetune_refuses_a_model_without_a_backbone(shapes_dir, tmp_path):
    from gearfeat.workflows.cnn import train_cnn
    cnn = train_cnn(shapes_dir, tmp_path / "cnn", layers="conv:4,gap", augment="none", image_size=32,
                    config=FitConfig(epochs=1), progress=False)
    with pytest.raises(GearfeatError, match="is a `gearfeat cnn` run; finetune starts from a `gearfeat"):
        finetune(cnn.run_dir, tmp_path / "out", unfreeze=1, config=FIT, progress=False)
    with pytest.raises(GearfeatError, match="has no nested 'backbone' layer"):
        backbone_layers(load_model(cnn.run_dir / "model.h5"))


def _doctored_run(transfer, tmp_path, class_names):
    """A copy of the run folder ``transfer`` whose run.json records ``class_names``."""
    run = shutil.copytree(transfer, tmp_path / "source")
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "class_names": class_names}))
    return run


def _add_star_class(data, tmp_path):
    make_shapes_dataset(tmp_path / "more", per_class=20, size=32, seed=1, kinds=["circle"])
    (tmp_path / "more" / "circle").rename(data / "star")  # other bytes than data/circle: a fourth class


@pytest.mark.parametrize("change_data, recorded, found, difference", [
    (_add_star_class, None, "circle, square, star, triangle", "extra: star"),
    (lambda data, _: (data / "circle").rename(data / "ring"), None, "ring, square, triangle",
     "missing: circle; extra: ring"),
    (None, ["triangle", "square", "circle"], "circle, square, triangle", "same names in another order"),
], ids=["extra", "renamed", "reordered"])
def test_data_with_other_classes_than_the_run_is_one_clear_error(transfer, shapes_copy, tmp_path, capsys,
                                                                 monkeypatch, change_data, recorded, found,
                                                                 difference):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("images decoded before the class check")

    monkeypatch.setattr("gearfeat.workflows.finetune.load_split", must_not_decode)
    if change_data:
        change_data(shapes_copy, tmp_path)
    source = _doctored_run(transfer, tmp_path, recorded) if recorded else transfer
    trained_on = ", ".join(recorded or ["circle", "square", "triangle"])
    out = tmp_path / "out"
    assert main(["finetune", str(source), "--unfreeze", "3", "--epochs", "1", "--no-progress",
                 "--data-dir", str(shapes_copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [
        f"gearfeat: error: {shapes_copy} has classes {found} but {source} was trained on {trained_on} "
        f"({difference}); set --data-dir to the folder the run was trained on"]
    assert not out.exists()


def test_a_model_with_another_number_of_outputs_than_the_run_classes_is_refused(transfer, tmp_path):
    source = _doctored_run(transfer, tmp_path, ["circle", "square", "star", "triangle"])
    with pytest.raises(GearfeatError, match=r"model.h5 has 3 outputs but its run.json records 4 classes; "):
        finetune(source, tmp_path / "out", unfreeze=3, config=FIT, progress=False)
    assert not (tmp_path / "out").exists()


def test_finetune_starts_from_a_search_run(transfer, shapes_dir, tmp_path):
    searched = search(shapes_dir, tmp_path / "search", space={"hidden": [[8]], "epochs": [3]}, n_trials=None,
                      jobs=1, config=tiny_config(), split=SplitConfig(seed=2),
                      cache_dir=transfer.parent / "cache", progress=False).run_dir
    assert json.loads((searched / "run.json").read_text())["command"] == "search"
    tuned = finetune(searched, tmp_path / "out", unfreeze=3, config=FitConfig(epochs=1), progress=False)
    metrics = json.loads((tuned.run_dir / "metrics.json").read_text())
    assert metrics["head_only_test_accuracy"] == pytest.approx(
        json.loads((searched / "metrics.json").read_text())["test_accuracy"])
    assert json.loads((tuned.run_dir / "run.json").read_text())["source_run"] == str(searched.resolve())
