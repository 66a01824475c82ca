"""The second red team's cases at setup and in the input parsers: relations between settings, one class, a batch
BatchNorm cannot train on, checkpoint contents, nested or broken input files, a fork with nothing left, permissions.
Each one paragraph (exit 2) before any work, or a run that says what it did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import eval as imnet_eval
import train
from conftest import make_imagefolder, random_resnet
from imnet.run import checkpoint, config, flags, folders
from imnet.run.config import ConfigError
from imnet.run.errors import UsageError
from imnet.run.flags import FlagError
from imnet.tools import export, predict, prepare

TINY = ["--model", "deit_tiny", "--epochs", "1", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "1e-3", "--opt", "adamw", "--warmup-epochs", "0",
        "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("red_data"), num_classes=2, train_per_class=8, val_per_class=2)


def resolved(*argv: str) -> config.Config:
    below, given = flags.parse_args(list(argv) + ["--data", "unused", "--output", "runs/x"])
    return config.resolve(below, given, 1)


def refused(capsys, main, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err  # one paragraph
    return err


# ------------------------------------------------------------------------------------------ 2. relations of settings

def test_min_lr_and_swa_lr_above_the_peak_lr_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--min-lr 1 is above the peak LR 0\.1"):
        resolved("--lr", "0.1", "--min-lr", "1")
    # The peak is the scaled one: --lr-base 0.1 at batch 64 is 0.025.
    with pytest.raises(ConfigError, match=r"--min-lr 0\.03 is above the peak LR 0\.025"):
        resolved("--lr-base", "0.1", "--batch-size", "64", "--min-lr", "0.03")
    assert resolved("--lr", "0.1", "--min-lr", "0.001").min_lr == 0.001
    assert resolved("--lr", "0.1", "--min-lr", "1", "--sched", "step").sched == "step"  # no cosine floor: unused
    with pytest.raises(ConfigError, match=r"--swa-lr 0\.5 is above the peak LR 0\.1"):
        resolved("--lr", "0.1", "--epochs", "4", "--swa-start", "3", "--swa-lr", "0.5")
    assert resolved("--lr", "0.1", "--epochs", "4", "--swa-start", "3", "--swa-lr", "0.1").swa_lr == 0.1
    # A config file's values meet the same check (they are the settings below the command line).
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lr": 0.0016, "min_lr": 9.8}))
    with pytest.raises(ConfigError, match="--min-lr 9.8 is above the peak LR 0.0016"):
        resolved("--config", str(path))
    # The warmup start is a fraction of the peak, so a start above it is a range error of the flag.
    with pytest.raises(FlagError, match="warmup-start-factor"):
        resolved("--warmup-start-factor", "1.5")


# ------------------------------------------------------------------------------------------ 3. one class

def test_a_single_class_is_refused_naming_the_folder_and_the_layout(tmp_path):
    for split in ("train", "val"):  # the Kaggle layout: split/images/*.jpg
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "images" / "a.jpg").write_bytes(b"x")
    with pytest.raises(folders.DataError) as e:
        folders.check_data_root(tmp_path)
    message = str(e.value)
    assert "one class folder, 'images'" in message and "train/<class name>/<image file>" in message, message


# ------------------------------------------------------------------------------------------ 5. BatchNorm batch

def test_batchnorm_with_one_value_per_channel_stops_before_anything_is_written(data, tmp_path, capsys):
    args = TINY + ["--model", "resnet18", "--data", data, "--output", tmp_path / "o"]
    err = refused(capsys, train.main, args + ["--batch-size", "1"])
    assert "--batch-size 1" in err and "resnet18" in err and "32" in err, err
    assert not (tmp_path / "o" / "config.json").exists() and not (tmp_path / "o" / "log.jsonl").exists()
    # Batch 2 gives the last BatchNorm two values per channel: accepted (a dry run builds everything).
    assert train.main([str(a) for a in args + ["--batch-size", "2", "--dry-run"]]) == 0


def test_the_batchnorm_check_against_torch():
    """The setup check says no exactly where torch's training forward raises."""
    for batch, size in ((1, 32), (2, 32), (1, 64), (1, 33)):
        model = random_resnet(0).train()
        try:
            model(torch.zeros(batch, 3, size, size))
            trains = True
        except ValueError:
            trains = False
        try:
            train.check_batchnorm_batch(model, "resnet18", batch, size)
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == trains, (batch, size)
    # The check leaves the fresh model's BatchNorm statistics and the RNG as they were (the run starts the same).
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    before, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    train.check_batchnorm_batch(model, "a BatchNorm and dropout", 1, 16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


# ------------------------------------------------------------------------------------------ 6. checkpoint contents

@pytest.fixture
def bad_config_checkpoint(tmp_path) -> Path:
    state = checkpoint.make_state(model=random_resnet(0).state_dict(), optimizer={}, progress=checkpoint.Progress(),
                                  config="resnet18", classes=["a", "b", "c"])
    del state["checksum"]  # an edited file
    torch.save(state, tmp_path / "best.pt")
    return tmp_path / "best.pt"


def test_eval_predict_export_refuse_a_config_entry_that_is_not_a_dict(bad_config_checkpoint, data, tmp_path,
                                                                      capsys):
    path = bad_config_checkpoint
    for main, argv in ((imnet_eval.main, ["--checkpoint", path, "--data", data, "--workers", "0"]),
                       (predict.main, ["--checkpoint", path, data / "val", "--workers", "0"]),
                       (export.main, [path, "-o", tmp_path / "m.pth"])):
        err = refused(capsys, main, argv)
        assert "its config entry is a str" in err, err
    with pytest.raises(checkpoint.CheckpointError, match="its config entry is a str"):
        checkpoint.read_state(path)  # the one home, also train.py's


# ------------------------------------------------------------------------------------------ 7. input parsers

def test_every_input_parser_turns_a_failure_into_one_paragraph(tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    (tmp_path / "config.json").write_text(nested)
    with pytest.raises(FlagError, match="Cannot read --config"):
        flags.parse_args(["--config", str(tmp_path / "config.json")])

    weights = tmp_path / "m.pth"
    torch.save({}, weights)
    (tmp_path / "m.classes.txt").write_text("a\nb\n")
    side = {"format": export.SIDECAR_FORMAT, "sha256": export.sha256(weights), "model": "resnet18",
            "weights": "model", "classes_file": "m.classes.txt", "num_classes": 2, "eval_policy": None}
    for text in (nested, json.dumps({**side, "classes_file": 3}), json.dumps(side),  # (no image_size)
                 json.dumps({**side, "image_size": 32, "eval_policy": {"crop_size": "x"}})):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(UsageError, match="sidecar"):
            export.read_sidecar(weights)

    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001," + "n" * 200_000 + "\n")
    with pytest.raises(UsageError, match="labels file"):
        prepare.read_labels(labels)

    val = tmp_path / "val"
    val.mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_bytes(b"n01440764 tench\xff\xfe\n")
    with pytest.raises(UsageError, match="LOC_synset_mapping.txt"):
        imnet_eval.class_names(["n01440764"], str(val))


# ------------------------------------------------------------------------------------------ 8. a fork, nothing left

def test_a_fork_with_nothing_left_says_so_and_names_only_files_that_exist(data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main([str(x) for x in TINY + ["--data", data, "--output", a]]) == 0
    capsys.readouterr()
    loud = [x for x in TINY if x != "--quiet"]
    assert train.main([str(x) for x in loud + ["--data", data, "--output", b, "--resume", a / "last.pt"]]) == 0
    out = capsys.readouterr().out
    assert "nothing left to train" in out, out
    named = [w.strip(".,;:()") for w in out.split() if w.strip(".,;:()").endswith((".pt", ".jsonl", ".csv"))]
    assert named and all(Path(w).exists() for w in named), named
    assert not (b / "last.pt").exists()


# ------------------------------------------------------------------------------------------ 9. permissions

def test_a_class_folder_without_read_permission_is_named_as_such(tmp_path, monkeypatch):
    """Simulated (the tests run as root, which ignores permissions): os.scandir of one class folder raises what
    it raises for another user."""
    root = make_imagefolder(tmp_path / "d", num_classes=2, train_per_class=1, val_per_class=1)
    locked = str(root / "val" / "class_1")
    scandir = os.scandir

    def denying(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denying)
    with pytest.raises(folders.DataError) as e:
        folders.check_data_root(root)
    message = str(e.value)
    assert "permission" in message.lower() and locked in message and folders.user_name() in message, message
    assert "no image file" not in message


def test_a_whole_number_too_large_for_a_float_is_a_range_error_not_a_traceback(tmp_path):
    huge = "1" + "0" * 400
    (tmp_path / "config.json").write_text('{"seed": %s}' % huge)
    with pytest.raises(FlagError, match="seed"):
        flags.parse_args(["--config", str(tmp_path / "config.json")])
    with pytest.raises(FlagError, match="--seed"):
        flags.parse_args(["--seed", huge])
    assert flags.parse_args(["--epochs", huge])[1]["epochs"] == int(huge)  # within --epochs' range (>= 1)
