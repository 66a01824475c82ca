"""One resolved Config and one EvalPolicy: flag/recipe/config-file precedence, contradictions refused before any
work, and the config.json round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import eval as imnet_eval
import train
from conftest import make_imagefolder
from imnet.run import config, flags
from imnet.run.config import ConfigError, EvalPolicy, resolve_eval_policy


def resolved(*argv: str, world_size: int = 1) -> config.Config:
    """What train.py resolves for this command line (before the data is read)."""
    below, given = flags.parse_args(list(argv) + ["--data", "unused", "--output", "runs/x"])
    return config.resolve(below, given, world_size)


def sizes(cfg: config.Config) -> tuple[int, int, str]:
    p = cfg.eval_policy
    return p.resize_size, p.crop_size, p.interpolation


# ------------------------------------------------------------------------------------------ precedence

def test_recipe_policy_and_explicit_flags_over_it():
    assert sizes(resolved("--recipe", "resnet50")) == (232, 224, "bilinear")
    # --crop-pct recomputes the resize the recipe set: floor(224 / 0.95) = 235 (it used to stay 232).
    assert sizes(resolved("--recipe", "resnet50", "--crop-pct", "0.95")) == (235, 224, "bilinear")
    # ... unless the resize is given too: an explicit resize beats an explicit crop_pct.
    assert sizes(resolved("--recipe", "resnet50", "--crop-pct", "0.95", "--val-resize-size", "240"))[:2] == (240, 224)
    # A new crop alone keeps the recipe's crop/resize ratio: floor(288 / (224 / 232)) = 298.
    assert sizes(resolved("--recipe", "resnet50", "--val-crop-size", "288"))[:2] == (298, 288)
    assert sizes(resolved("--recipe", "resnet50", "--interpolation", "bicubic"))[2] == "bicubic"
    assert sizes(resolved("--recipe", "deit_small")) == (256, 224, "bicubic")
    # No recipe: the classic 0.875.
    assert sizes(resolved("--val-crop-size", "64"))[:2] == (73, 64)
    assert sizes(resolved("--val-crop-size", "64", "--crop-pct", "1.0"))[:2] == (64, 64)


def test_resolver_rules_directly():
    base = EvalPolicy(256, 224, "bicubic")
    assert resolve_eval_policy({}, base) == base
    assert resolve_eval_policy({"crop_size": 288}, base).resize_size == 329  # floor(288 * 256 / 224)
    assert resolve_eval_policy({"crop_pct": 1.0}, base).resize_size == 224
    assert resolve_eval_policy({"resize_size": 300, "crop_pct": 0.5}, base).resize_size == 300
    assert resolve_eval_policy({"decode": "reduced"}, base).decode == "reduced"
    assert resolve_eval_policy({}, None) == EvalPolicy(256, 224)
    with pytest.raises(ConfigError, match="smaller than the crop"):
        resolve_eval_policy({"resize_size": 200}, base)
    with pytest.raises(ConfigError, match="crop_pct"):
        resolve_eval_policy({"crop_pct": 1.5}, base)


def test_derived_values_live_in_the_config():
    cfg = resolved("--recipe", "resnet50", world_size=4)
    assert cfg.global_batch_size == 4 * 128 and cfg.peak_lr == pytest.approx(0.5 * 512 / 1024)
    assert cfg.mixing and cfg.loss_label_smoothing == 0.0 and cfg.mix_label_smoothing == 0.1
    cfg = resolved("--recipe", "resnet50", "--global-batch", "256", world_size=2)
    assert cfg.batch_size == 128 and cfg.global_batch_size == 256
    cfg = cfg.with_data(train_images=1000, val_images=50, classes=10)
    assert cfg.steps_per_epoch == 1000 // 2 // 128 and cfg.total_steps == 600 * 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        cfg.with_data(train_images=100, val_images=1, classes=1)


# ------------------------------------------------------------------------------------------ refused up front

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("cfg_data"), num_classes=2, train_per_class=8, val_per_class=2)


@pytest.mark.parametrize("argv, needle", [
    (["--model", "deit_tiny", "--train-crop-size", "32", "--val-crop-size", "48", "--val-resize-size", "56"],
     "takes inputs of one size only"),
    (["--recipe", "deit_tiny", "--train-crop-size", "32", "--val-crop-size", "384", "--warmup-epochs", "0"],
     "takes inputs of one size only"),
    (["--model", "resnet18", "--val-crop-size", "64", "--val-resize-size", "48"], "smaller than the crop"),
    (["--model", "resnet18", "--crop-pct", "1.2"], "--crop-pct must be > 0 and <= 1 (got 1.2)"),
    (["--model", "resnet18", "--eval-every", "-1"], "--eval-every"),
    (["--model", "resnet18", "--progressive-res", "32", "64"], "go together"),
    (["--model", "resnet18", "--progressive-res", "40", "64", "--progressive-epochs", "0", "1"], "multiples of 16"),
    (["--model", "resnet18", "--progressive-res", "64", "32", "--progressive-epochs", "0", "1"], "START <= END"),
    (["--model", "resnet18", "--progressive-res", "32", "64", "--progressive-epochs", "0", "2"],
     "need 0 <= FROM < TO <= --epochs (1)"),
    (["--model", "resnet18", "--progressive-res", "32", "64", "--progressive-epochs", "1", "1"], "FROM < TO"),
    (["--model", "resnet18", "--progressive-res", "32", "64", "--progressive-epochs", "0", "1",
      "--train-crop-size", "48"], "contradicts --progressive-res"),
    (["--model", "deit_tiny", "--progressive-res", "32", "64", "--progressive-epochs", "0", "1"],
     "cannot change with the epoch"),
    (["--fake-data", "--model", "resnet18", "--progressive-res", "32", "64", "--progressive-epochs", "0", "1"],
     "needs real data"),
    (["--model", "resnet18", "--num-classes", "10"], "--num-classes 10 is for --fake-data"),
])
def test_contradictions_exit_2_before_any_work(data, tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    code = train.main(argv + ["--data", str(data), "--output", str(out), "--epochs", "1", "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert needle in captured.err and "Traceback" not in captured.err
    assert not out.exists()  # nothing written: the run stopped at setup, before any training step


def test_a_typed_opt_sgd_says_once_that_it_is_not_timms(data, tmp_path, capsys):
    """timm's --opt sgd is Nesterov, imnet's plain momentum: typed without --nesterov, the dry run and the run say
    so in one line; the default SGD, a recipe's and --nesterov say nothing."""
    from imnet.run.audit import notes
    timm = "timm's --opt sgd is Nesterov: add --nesterov"
    assert sum(timm in n for n in notes(resolved("--opt", "sgd"))) == 1
    for argv in ([], ["--opt", "sgd", "--nesterov"], ["--recipe", "resnet50"], ["--opt", "adamw"]):
        assert not any(timm in n for n in notes(resolved(*argv))), argv
    common = ["--opt", "sgd", "--model", "resnet18", "--data", str(data), "--epochs", "1", "--workers", "0",
              "--batch-size", "4", "--train-crop-size", "32", "--val-crop-size", "32", "--val-resize-size", "36"]
    for extra in (["--dry-run"], []):
        assert train.main(common + extra + ["--output", str(tmp_path / f"run{len(extra)}")]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert sum(timm in line for line in lines) == 1, lines


# ------------------------------------------------------------------------------------------ config.json

@pytest.mark.parametrize("argv", [
    ["--recipe", "resnet50", "--crop-pct", "0.95"],
    ["--recipe", "deit_tiny", "--global-batch", "512", "--lr", "0.001", "--epochs", "7"],
    ["--model", "resnet18", "--val-crop-size", "64", "--mixup", "0.2", "--label-smoothing", "0.1", "--val-decode",
     "reduced", "--lr-milestones", "2", "4"],
    ["--model", "resnet18", "--epochs", "12", "--progressive-res", "128", "192", "--progressive-epochs", "3", "10"],
])
def test_config_file_round_trip(argv, tmp_path):
    """A run started from a written config.json resolves to the same Config; flags given beside it win."""
    first = resolved(*argv, world_size=2)
    config.write_config_file(first, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["peak_lr"] == first.peak_lr
    again = resolved("--config", str(tmp_path / "config.json"), world_size=2)
    assert dataclasses.replace(again, config=None) == first
    changed = resolved("--config", str(tmp_path / "config.json"), "--epochs", "30", world_size=2)
    assert changed.epochs == 30 and dataclasses.replace(changed, epochs=first.epochs, config=None) == first


def test_restating_a_policy_never_loses_a_pixel():
    """Every (resize, crop) pair up to 1,024: giving the crop again keeps the resize (the ratio is kept in
    integers; through a float ratio 176 x 233 / 176 came out 232), and a new crop gets floor(crop x resize /
    base crop) exactly."""
    lost = [(resize, crop) for resize in range(1, 1025) for crop in range(1, resize + 1)
            if resolve_eval_policy({"crop_size": crop}, {"resize_size": resize, "crop_size": crop}).resize_size != resize]
    assert lost == []
    assert resolve_eval_policy({"crop_size": 176}, EvalPolicy(233, 176)).resize_size == 233
    for resize, crop, new in ((233, 176, 352), (256, 224, 288), (1000, 999, 997), (17, 17, 1024), (25, 17, 17)):
        assert resolve_eval_policy({"crop_size": new}, EvalPolicy(resize, crop)).resize_size == new * resize // crop


def test_progressive_resolution_resolves_to_a_size_per_epoch():
    cfg = resolved("--model", "resnet18", "--epochs", "10", "--progressive-res", "32", "64",
                   "--progressive-epochs", "4", "9")
    assert cfg.progressive_res == (32, 64) and cfg.progressive_epochs == (4, 9)
    assert cfg.train_crop_size == 64  # END: the size the run ends at (and builds its model for)
    assert [cfg.train_size_at(e) for e in range(10)] == [32, 32, 32, 32, 32, 48, 48, 64, 64, 64]
    assert resolved("--model", "resnet18", "--train-crop-size", "96").train_size_at(5) == 96
    # A recipe's --train-crop-size gives way to --progressive-res (only an explicit one contradicts it).
    cfg = resolved("--recipe", "resnet50", "--progressive-res", "160", "192", "--progressive-epochs", "480", "560")
    assert cfg.train_crop_size == 192 and cfg.eval_policy.crop_size == 224  # evaluation keeps its own policy


def test_config_file_errors_are_one_paragraph(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"no_such_flag": 1}')
    assert train.main(["--config", str(bad)]) == 2
    assert "unknown settings ['no_such_flag']" in capsys.readouterr().err
    bad.write_text("not json")
    assert train.main(["--config", str(bad)]) == 2
    assert "Cannot read --config" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ eval.py

def test_eval_uses_the_same_resolver_and_canonical_pixels_by_default():
    parse = lambda *a: imnet_eval.build_parser().parse_args(list(a))
    stored = EvalPolicy(232, 224, "bilinear")
    assert imnet_eval.resolve_policy(parse(), stored) == stored
    assert imnet_eval.resolve_policy(parse("--crop-pct", "0.95"), stored).resize_size == 235
    policy = imnet_eval.resolve_policy(parse(), None)
    assert policy.decode == "full" and policy.transform().draft is False
    assert imnet_eval.resolve_policy(parse("--decode", "reduced"), None).transform().draft is True
    assert "full decode" in policy.describe()


def test_train_and_val_interpolation_flags(tmp_path):
    data = make_imagefolder(tmp_path / "d", num_classes=2, train_per_class=2, val_per_class=1)
    train_of = lambda cfg: train.build_datasets(dataclasses.replace(cfg, data=str(data)))[1].transform.interpolation
    cfg = resolved("--recipe", "deit_small")  # bicubic for both
    assert (cfg.eval_policy.interpolation, train_of(cfg)) == ("bicubic", "bicubic")
    cfg = resolved("--recipe", "deit_small", "--train-interpolation", "bilinear")
    assert (cfg.eval_policy.interpolation, train_of(cfg)) == ("bicubic", "bilinear")
    cfg = resolved("--recipe", "deit_small", "--val-interpolation", "bilinear")
    assert (cfg.eval_policy.interpolation, train_of(cfg)) == ("bilinear", "bicubic")
    cfg = resolved("--interpolation", "bicubic", "--val-interpolation", "bilinear", "--train-interpolation", "bilinear")
    assert (cfg.interpolation, cfg.eval_policy.interpolation, train_of(cfg)) == ("bicubic", "bilinear", "bilinear")
    # the round trip through config.json keeps them
    path = tmp_path / "config.json"
    config.write_config_file(cfg, path)
    again = resolved("--config", str(path))
    assert (again.eval_policy.interpolation, again.train_interpolation) == ("bilinear", "bilinear")


def test_the_demo_on_two_processes_doubles_the_global_batch_unless_the_batch_is_halved():
    """README: `torchrun --nproc_per_node=2 train.py` runs the demo at a global batch of 64 (the LR scaled with
    it, half the steps per epoch); `--recipe demo --batch-size 16` keeps the 1-process global batch and LR."""
    one = resolved("--recipe", "demo").with_data(2000, 400, 10)
    two = resolved("--recipe", "demo", world_size=2).with_data(2000, 400, 10)
    halved = resolved("--recipe", "demo", "--batch-size", "16", world_size=2).with_data(2000, 400, 10)
    assert (one.global_batch_size, two.global_batch_size, halved.global_batch_size) == (32, 64, 32)
    assert (one.steps_per_epoch, two.steps_per_epoch, halved.steps_per_epoch) == (62, 31, 62)
    assert two.peak_lr == 2 * one.peak_lr and halved.peak_lr == one.peak_lr
