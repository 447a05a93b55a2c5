import re

import keras
import numpy as np
import pytest

import gearfeat
from conftest import tiny_config
from gearfeat.cli import main
from gearfeat.features import backbones

from gearfeat.features.backbones import create_backbone, get_spec, list_backbones, parse_weights, weights_identity
from gearfeat._internal.errors import GearfeatError


def test_registry_covers_every_family():
    names = set(list_backbones())
    expected = {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "vgg16", "vgg19",
                "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2",
                "densenet121", "densenet169", "densenet201", "inception_v3", "inception_resnet_v2", "xception",
                "nasnet_mobile", "nasnet_large", "convnext_tiny", "convnext_small", "convnext_base",
                "convnext_large", "convnext_xlarge", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"}
    expected |= {f"efficientnet_b{i}" for i in range(8)} | {f"efficientnet_v2_b{i}" for i in range(4)}
    assert expected <= names


def test_lookup_is_forgiving_and_unknown_names_are_listed():
    assert get_spec("MobileNet-V2").name == "mobilenet_v2"
    with pytest.raises(GearfeatError, match="unknown backbone 'resnet9'.*mobilenet_v2"):
        get_spec("resnet9")


@pytest.mark.parametrize("name,size", [("mobilenet_v2", 32), ("efficientnet_b0", 32), ("densenet121", 32),
                                       ("resnet50", 32), ("mobilenet_v3_small", 32)])
def test_feature_width_matches_registry(name, size):
    model = create_backbone(name, weights=None, input_size=size)
    assert model.output_shape == (None, get_spec(name).features)
    assert not model.trainable


def test_alpha_scales_mobilenet_and_is_refused_elsewhere():
    assert create_backbone("mobilenet", weights=None, input_size=32, alpha=0.25).output_shape == (None, 256)
    with pytest.raises(GearfeatError, match="no width multiplier"):
        create_backbone("resnet50", weights=None, alpha=0.5)


def test_offline_imagenet_download_fails_with_one_clear_line(monkeypatch, capsys):
    import keras

    def offline(*args, **kwargs):
        print("Downloading data from https://example.invalid/weights.h5")  # as Keras's get_file does
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- [Errno -3]")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(GearfeatError) as info:
        create_backbone("mobilenet_v2", weights="imagenet", input_size=96, alpha=0.35)
    message = str(info.value)
    assert "\n" not in message and "set weights to the path of a local" in message and "mobilenet_v2" in message
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # Keras's "Downloading data from" line is dropped: the error says it all


def test_keras_download_messages_reach_stderr_as_the_download_goes(capsys):
    from gearfeat._internal.progress import keras_downloads
    with keras_downloads():  # a download that works: its line and progress bar, on stderr as they come
        print("Downloading data from https://example.invalid/w.h5")
        assert capsys.readouterr().err == ""  # held: the download may still fail at once
        print("\r 1/10 [==>....]", end="")
        assert capsys.readouterr().err == "Downloading data from https://example.invalid/w.h5\n\r 1/10 [==>....]"
    with keras_downloads():  # a file Keras had already: its line comes when the block ends well
        print("Downloading data from https://example.invalid/x.h5")
    assert capsys.readouterr() == ("", "Downloading data from https://example.invalid/x.h5\n")
    with pytest.raises(OSError), keras_downloads():  # failing midway: what was shown stays shown
        print("Downloading data from https://example.invalid/y.h5")
        print("\r 5/10", end="")
        raise OSError("connection reset")
    assert capsys.readouterr() == ("", "Downloading data from https://example.invalid/y.h5\n\r 5/10")


def test_bad_input_size_is_one_line_error():
    with pytest.raises(GearfeatError, match="cannot build inception_v3"):
        create_backbone("inception_v3", weights=None, input_size=40)


def test_weights_identity(tmp_path):
    assert weights_identity(None) == "random"
    assert weights_identity("imagenet") == "imagenet"
    f = tmp_path / "w.h5"
    f.write_bytes(b"abc")
    ident = weights_identity(f)
    assert ident.startswith("sha256:ba7816bf")
    f.write_bytes(b"abd")
    assert weights_identity(f) != ident
    with pytest.raises(GearfeatError, match="weights file not found"):
        weights_identity(tmp_path / "missing.h5")
    with pytest.raises(GearfeatError, match="is a folder; pass the path of the weights .h5 file in it"):
        weights_identity(tmp_path)


def test_parse_weights():
    assert parse_weights("none") is None and parse_weights("ImageNet") == "imagenet"
    assert parse_weights("x.h5") == "x.h5"


def test_a_local_weights_file_that_is_not_hdf5_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not weights")
    with pytest.raises(GearfeatError, match=r"notes.h5: cannot load mobilenet weights from this file \(") as info:
        create_backbone("mobilenet", weights=str(path), input_size=32, alpha=0.25)
    assert "\n" not in str(info.value) and "Keras Applications weights .h5 of mobilenet" in str(info.value)


def test_local_weights_file_is_loaded(tmp_path):
    source = create_backbone("mobilenet", weights=None, input_size=32, alpha=0.25)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = create_backbone("mobilenet", weights=str(path), input_size=32, alpha=0.25)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, file_name, file_alpha", [
    ("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5", "0.35"),
    ("mobilenet", "mobilenet_2_5_96_tf_no_top.h5", "0.25"),  # MobileNet's files write alpha 0.25 as 2_5
])
def test_weights_for_another_alpha_say_which_alpha_they_are_for(tmp_path, name, file_name, file_alpha):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # the layout of Keras Applications' own files
    weights = tmp_path / file_name
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(
            f, create_backbone(name, weights=None, input_size=96, alpha=float(file_alpha)))
    hint = f"pass alpha={file_alpha} (the file's name says alpha {file_alpha}, size 96); with input 96 and alpha 0.5"
    with pytest.raises(GearfeatError, match=f"^cannot build {name} from .*: {re.escape(hint)}: .*Shape mismatch"):
        create_backbone(name, weights=weights, input_size=96, alpha=0.5)


def _tiny_net(*, include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"):
    """A custom backbone: one convolution, globally pooled to 8 features."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny_net")


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry, so that what a test registers is gone after it."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))


def test_a_registered_backbone_is_listed_and_trains_end_to_end(registry, shapes_dir, tmp_path, capsys):
    gearfeat.register_backbone("tiny_net", _tiny_net, native_size=32, features=8, preprocess="tf")
    assert "tiny_net" in gearfeat.list_backbones()
    assert main(["backbones"]) == 0 and "tiny_net" in capsys.readouterr().out
    result = gearfeat.train(shapes_dir, tmp_path / "run", config=tiny_config(backbone="tiny_net", alpha=None),
                            head=gearfeat.DenseHead(hidden=(8,), epochs=2), cache_dir=tmp_path / "cache",
                            progress=False)
    assert result.extraction.features.shape[1] == 8
    assert (tmp_path / "run" / "model.h5").is_file()


@pytest.mark.parametrize("name,kwargs,message", [
    ("mobilenet_v2", {}, "already registered"),
    ("Tiny-Net", {}, "not valid"),
    ("", {}, "not valid"),
    ("tiny_net", {"preprocess": "bgr"}, "preprocess 'bgr' is not one of"),
    ("tiny_net", {"features": 0}, "features must be a positive integer"),
])
def test_bad_registrations_are_one_line(registry, name, kwargs, message):
    with pytest.raises(GearfeatError, match=message):
        gearfeat.register_backbone(name, _tiny_net, **{"native_size": 32, "features": 8, **kwargs})
    assert "tiny_net" not in gearfeat.list_backbones()
