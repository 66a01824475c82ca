"""The flags (imnet/run/flags.py): a valid range for every number, the same checks for --config files as for the command
line, one-paragraph errors with "did you mean", --help before torch, and eval.py reading train.py's eval flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

import eval as imnet_eval
import train
from conftest import REPO
from imnet.run import config, flags
from imnet.run.recipes import RECIPES


def actions(parser) -> dict:
    return flags.settings(parser)


# ------------------------------------------------------------------------------------------ ranges

NOT_NUMBERS = {"model", "data", "output", "resume", "config", "device", "init_from", "weights", "recipe"}


def test_every_numeric_flag_states_its_range():
    for p in (flags.build_parser(), imnet_eval.build_parser()):
        for dest, a in actions(p).items():
            if a.type in (int, float):
                raise AssertionError(f"{dest}: a bare {a.type.__name__} has no stated range")
            if isinstance(a.type, flags.Range):
                assert f"[valid: {a.type.describe()}]" in p.formatter_class(prog="x")._get_help_string(a), dest


@pytest.mark.parametrize("argv, needle", [
    (["--warmup-start-factor", "-5"], "--warmup-start-factor must be >= 0 and <= 1 (got -5)"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0 (got -1)"),
    (["--lr-gamma", "nan"], "--lr-gamma must be > 0 and <= 1 (got nan)"),
    (["--mix-prob", "1.5"], "--mix-prob must be >= 0 and <= 1"),
    (["--switch-prob", "2"], "--switch-prob must be >= 0 and <= 1"),
    (["--random-erase", "1.01"], "--random-erase must be >= 0 and <= 1"),
    (["--train-crop-size", "1"], "--train-crop-size must be >= 16 and <= 4096 (got 1)"),
    (["--save-every-minutes", "-1"], "--save-every-minutes must be >= 0"),
    (["--ra-num-ops", "-1"], "--ra-num-ops must be >= 0 and <= 16"),
    (["--ra-magnitude", "100"], "--ra-magnitude must be >= 0 and <= 30 (got 100)"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--num-classes", "0", "--fake-data"], "--num-classes must be >= 1 (got 0)"),
    (["--epochs", "2.5"], "--epochs must be a whole number >= 1 (got '2.5')"),
    (["--lr", "inf"], "--lr must be >= 0 (got inf)"),
    (["--max-bad-images", "-3"], "--max-bad-images must be a count"),
    (["--epoch", "3"], "unknown flag --epoch (did you mean --epochs?)"),
    (["--opt", "lion"], "--opt must be one of 'sgd', 'adamw', 'lars', 'lamb', 'rmsprop', 'rmsproptf' (got 'lion')"),
])
def test_bad_values_are_one_paragraph_before_any_work(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(argv + ["--data", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err and "Traceback" not in err, err
    assert not out.exists()


def test_eval_values_are_checked_too(capsys):
    for argv, needle in ((["--mean", "nan", "0", "0"], "--mean must be finite (got nan)"),
                         (["--std", "0", "1", "1"], "--std must be > 0 (got 0)"),
                         (["--show", "-5"], "--show must be >= 0"),
                         (["--crop", "224"], "unknown flag --crop (did you mean")):
        assert imnet_eval.main(["--model", "resnet18", "--bench"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------ config files

def test_config_fields_are_the_flags_and_the_derived_values():
    dests = set(actions(flags.build_parser()))
    fields = {f.name for f in dataclasses.fields(config.Config)}
    assert fields == (dests - set(config.EVAL_FLAGS)) | set(flags.DERIVED)
    assert set(config.EVAL_FLAGS) <= dests


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_values_pass_the_flag_checks(name):
    acts = actions(flags.build_parser())
    for key, value in RECIPES[name].items():
        assert flags.check_value(acts[key], list(value) if isinstance(value, tuple) else value) is not None or \
            value is None, (name, key)


def wrong_values(action) -> list:
    """A value of the wrong JSON type, and one of the right type outside the valid range or choices."""
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return ["yes", 1]
    many = action.nargs not in (None, "?")
    wrap = (lambda v: [v] * (action.nargs if isinstance(action.nargs, int) else 1)) if many else (lambda v: v)
    out = [wrap([1]) if many else [4]]   # a list where a single value belongs, or nested lists
    if isinstance(action.type, flags.Range):
        r = action.type
        out.append(wrap("x"))
        out.append(wrap(r.lo - 1 if r.lo is not None else r.hi + 1))
        if r.kind is int:
            out.append(wrap(2.5))
    elif action.choices is not None:
        out.append(wrap(5))
        out.append(wrap("nope"))
    elif action.type is not None:  # --max-bad-images
        out.append(wrap(-3))
    else:
        out.append(wrap(5))
    if action.default is not None:
        out.append(None)
    return out


def test_every_config_file_setting_is_checked_like_the_command_line(tmp_path, capsys):
    """A table over every field of config.json: a wrong type and an out-of-range value each stop the run with
    exit 2 and one paragraph naming the setting, before anything is written."""
    below, given = flags.parse_args(["--data", "d", "--output", "o"])
    cfg = config.resolve(below, given, 1)
    good = tmp_path / "config.json"
    config.write_config_file(cfg, good)
    settings = json.loads(good.read_text())
    acts, out, tried = actions(flags.build_parser()), tmp_path / "out", 0
    for key in settings:
        if key not in acts:
            continue
        for value in wrong_values(acts[key]):
            bad = tmp_path / "bad.json"
            bad.write_text(json.dumps({**settings, key: value}))
            assert train.main(["--config", str(bad), "--output", str(out)]) == 2, (key, value)
            err = capsys.readouterr().err
            assert f"setting {key!r}" in err and len(err.strip().splitlines()) == 1, (key, value, err)
            assert not out.exists(), (key, value)
            tried += 1
    assert tried > 2 * len(acts) - 10  # every flag of the file was tried, most of them in several ways
    # The good file itself replays (the table's values were the only problem).
    assert train.main(["--config", str(good), "--output", str(out), "--dry-run", "--fake-data"]) == 0


# ------------------------------------------------------------------------------------------ before torch

@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--recipe", "resnet50", "--help"], 0),
                                        (["--epoch", "3"], 2)])
def test_help_and_flag_errors_come_before_torch(argv, code):
    script = ("import runpy, sys\n"
              f"sys.argv = ['train.py', *{argv!r}]\n"
              "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
              "except SystemExit as e:\n    print('exit', e.code)\n"
              "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert f"exit {code}" in r.stdout and "no torch" in r.stdout, (r.stdout, r.stderr[-2000:])
    if "--recipe" in argv:  # --recipe NAME --help shows the recipe's values as defaults
        assert "(default: 600)" in " ".join(r.stdout.split())


# ------------------------------------------------------------------------------------------ eval.py

def test_eval_accepts_train_flag_names_and_its_own_old_spellings():
    stored = config.EvalPolicy(232, 224, "bilinear")
    parse = lambda *a: imnet_eval.build_parser().parse_args(list(a))
    pairs = [(["--val-resize-size", "260", "--val-crop-size", "240"], ["--resize-size", "260", "--crop-size", "240"]),
             (["--val-interpolation", "bicubic"], ["--interpolation", "bicubic"]),
             (["--val-decode", "reduced"], ["--decode", "reduced"]),
             (["--crop-pct", "0.9", "--val-crop-size", "288"], ["--crop-pct", "0.9", "--crop-size", "288"])]
    for new, old in pairs:
        a, b = imnet_eval.resolve_policy(parse(*new), stored), imnet_eval.resolve_policy(parse(*old), stored)
        assert a == b != stored, (new, a, b)
    # and the same flags give train.py the same policy over the same base
    below, given = flags.parse_args(["--data", "d", "--output", "o", "--val-crop-size", "288", "--crop-pct", "0.9"])
    assert config.resolve(below, given, 1).eval_policy.resize_size == \
        imnet_eval.resolve_policy(parse("--val-crop-size", "288", "--crop-pct", "0.9"), stored).resize_size == 320
    args = parse("-b", "7", "-j", "3", "--amp")
    assert (args.batch_size, args.workers, args.amp) == (7, 3, "auto")
