"""``run.json`` is one format: :class:`RunRecord` writes it for every command, reads it back field for field,
reads the two shapes written before ``format_version``, and refuses a damaged file or an unknown version in
one line that names the file."""
import json
from dataclasses import asdict

import numpy as np
import pytest

import gearfeat
from gearfeat._internal.errors import GearfeatError
from gearfeat.cli import main
from gearfeat.outputs.report import KINDS
from gearfeat.outputs.runs import COMMANDS, FORMAT_VERSION, RUN_FILE, RunDir, RunRecord

from conftest import TINY, cnn_record

TRANSFER_V1 = {  # a `gearfeat train` run.json before format_version: the image size only inside "extractor"
    "command": "train", "data_dir": "/data", "labels": None, "extractor": {**TINY, "pooling": "avg"},
    "cache": "/cache/features.h5", "head": {"hidden": [16], "dropout": 0.2}, "baseline_c": 1.0, "best_epoch": 2,
    "epochs_run": 3, "split": {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 2, "train": 42, "val": 9,
                               "test": 9},
    "class_names": ["circle", "square", "triangle"], "n_images": 60, "n_skipped": 0, "images_computed": 60,
    "images_reused": 0, "seconds": {"extract": 3.0, "head": 1.0, "baseline": 0.1, "total": 4.5},
    "machine": {"cpu": "x", "cores": 2}}
FINETUNE_V1 = {  # a `gearfeat finetune` run.json before format_version: the image size at the top
    **{k: v for k, v in TRANSFER_V1.items() if k not in ("cache", "head", "baseline_c", "images_computed",
                                                           "images_reused")},
    "command": "finetune", "source_run": "/runs/transfer", "unfreeze": 10, "unfrozen_layers": ["a", "b"],
    "trainable_parameters": 4321, "fit": {"epochs": 5}, "image_size": 32, "stopped_by": "early stopping",
    "seconds": {"load": 1.0, "train": 4.0, "evaluate": 0.5, "total": 5.5}}


def folder_with(tmp_path, payload, name="run"):
    """A run folder whose run.json holds ``payload`` (bytes are written as they are)."""
    run = RunDir(tmp_path / name, create=True)
    if isinstance(payload, bytes):
        (run / RUN_FILE).write_bytes(payload)
        run.record(RUN_FILE)
    else:
        run.write_json(RUN_FILE, payload)
    return run.path


def test_a_record_reads_back_field_for_field_with_only_its_commands_fields(tmp_path):
    record = cnn_record(labels={"path": "/l.csv", "path_column": None, "label_column": None})
    record.save(RunDir(tmp_path / "run", create=True))
    assert RunRecord.load(tmp_path / "run") == record
    written = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert written["format_version"] == FORMAT_VERSION == 2 and written["layers"] == "conv:8,gap"
    assert not {"extractor", "cache", "head", "search", "source_run"} & set(written)  # not a cnn's fields
    transfer = RunRecord.from_json(TRANSFER_V1)
    transfer.save(RunDir(tmp_path / "transfer", create=True))
    written = json.loads((tmp_path / "transfer" / RUN_FILE).read_text())
    assert written["image_size"] == 32 and written["labels"] is None and "layers" not in written
    assert RunRecord.load(tmp_path / "transfer") == transfer
    assert transfer.baseline is None  # a run from before baseline estimators: no name recorded, still read
    named = RunRecord.from_json({**TRANSFER_V1, "baseline": "KNeighborsClassifier(n_neighbors=3)"})
    named.save(RunDir(tmp_path / "named", create=True))
    assert RunRecord.load(tmp_path / "named").baseline == "KNeighborsClassifier(n_neighbors=3)"
    with pytest.raises(GearfeatError, match=r"run.json is damaged: baseline is 3, not a str; run the command again$"):
        RunRecord.from_json({**TRANSFER_V1, "baseline": 3})


def test_both_shapes_written_before_format_version_are_read(tmp_path):
    transfer = RunRecord.load(folder_with(tmp_path, TRANSFER_V1, "transfer"))
    assert transfer.image_size == 32 and transfer.extractor["backbone"] == TINY["backbone"]
    assert transfer.head == {"hidden": [16], "dropout": 0.2} and transfer.layers is None
    tuned = RunRecord.load(folder_with(tmp_path, FINETUNE_V1, "tuned"))
    assert (tuned.command, tuned.image_size, tuned.unfreeze, tuned.stopped_by) == ("finetune", 32, 10, "early stopping")
    assert tuned.cache is None and tuned.extractor == TRANSFER_V1["extractor"]


def test_image_features_reads_a_transfer_run_written_before_format_version(shapes_dir, tmp_path):
    run = folder_with(tmp_path, TRANSFER_V1)
    image = next((shapes_dir / "circle").iterdir())
    features = gearfeat.image_features(run, [image])
    assert features.shape[0] == 1 and np.isfinite(features).all()


@pytest.mark.parametrize("payload, message", [
    (b"{\"command\": \"cnn\", trunc", r"cannot read .*run\.json: Expecting"),
    ([1, 2], r"run\.json is damaged \(a JSON list, not an object\); run the command again$"),
    ({**TRANSFER_V1, "format_version": 99}, r"run\.json has run format_version 99, which gearfeat \S+ does not read "
                                            r"\(it reads 1 to 2\); use the gearfeat that wrote it, or run the command"),
    ({**TRANSFER_V1, "format_version": "2"}, r"run\.json has run format_version '2'"),
    ({**TRANSFER_V1, "command": "extract"}, r"is not a run of gearfeat train, search, finetune, cnn \(run\.json "
                                            r"command 'extract'\); pass a folder that one of those wrote$"),
    ({k: v for k, v in TRANSFER_V1.items() if k != "class_names"},
     r"run\.json has no class_names \(the file was edited, or written by an unfinished run\); run the command"),
    ({**TRANSFER_V1, "extractor": {"backbone": "x"}}, r"run\.json has no image_size"),  # nowhere to migrate it from
    ({**TRANSFER_V1, "cache": None}, r"run\.json has no cache"),  # a train run's own field
    ({**asdict(cnn_record()), "format_version": 2, "image_size": "big"},
     r"run\.json is damaged: image_size is 'big', not an int; run the command again$"),
    ({**TRANSFER_V1, "seconds": {"total": "long"}}, r"is damaged: seconds is .*, not a dict\[str, float\]"),
    ({**TRANSFER_V1, "split": {"seed": 2}}, r"is damaged: its split has no val_fraction, test_fraction; run the"),
])
def test_a_damaged_or_unknown_run_json_is_one_line_naming_it(tmp_path, payload, message):
    run = folder_with(tmp_path, payload)
    with pytest.raises(GearfeatError, match=message) as caught:
        RunRecord.load(run)
    assert "\n" not in str(caught.value) and (str(run / RUN_FILE) in str(caught.value) or "extract" in str(caught.value))


@pytest.mark.parametrize("command", [["report", "--out", "r.md"], ["finetune", "--unfreeze", "1", "--out", "t"]])
def test_the_commands_refuse_an_unknown_format_version_in_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    run = folder_with(tmp_path, {**cnn_record().to_json(), "format_version": 3})
    assert main([command[0], str(run), *command[1:]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error: ") and "\n" not in err and f"{run / RUN_FILE} has run format_version 3" in err
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "t").exists()


def test_the_report_presents_every_command_that_writes_a_run():
    assert set(KINDS) == set(COMMANDS)
