"""python -m imnet.tools.predict: the top-1 class of every image is eval.py's (its --predictions CSV, same checkpoint,
same files), from a checkpoint, its EMA weights or an export; unreadable files are reported and skipped (exit 0);
bad input is one paragraph with exit 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as imnet_eval
from conftest import REPO, random_resnet
from imnet.run import checkpoint
from imnet.tools import predict

CLASSES = ["class_0", "class_1", "class_2"]
POLICY = {"resize_size": 40, "crop_size": 32, "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
          "std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    state = checkpoint.make_state(model=random_resnet(0).state_dict(),
                                  ema={"module": random_resnet(2).state_dict(), "num_updates": 3}, optimizer={}, progress=checkpoint.Progress(1), classes=CLASSES,
                                  config={"model": "resnet18", "train_crop_size": 32, "eval_policy": POLICY})
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(state, path)
    return path


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def eval_top1(capsys, ckpt, data, tmp_path, *flags) -> dict:
    """{file relative to the val folder: eval.py's top-1 class}."""
    out = tmp_path / "eval.csv"
    assert imnet_eval.main(["--checkpoint", str(ckpt), "--data", str(data), "--workers", "0", "--predictions",
                            str(out), *flags]) == 0
    capsys.readouterr()
    return {r["file"]: r["class1"] for r in rows(out)}


def predict_rows(capsys, *argv) -> tuple[list[dict], str, str]:
    out = Path(argv[argv.index("--csv") + 1])
    code = predict.main([str(a) for a in argv])
    stdout, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    return rows(out), stdout, err


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_predict_gives_the_top1_of_eval(ckpt, tiny_data, tmp_path, capsys, ema):
    flags = ["--use-ema"] if ema else []
    expected = eval_top1(capsys, ckpt, tiny_data, tmp_path, *flags)
    assert len(set(expected.values())) > 1  # predictions that vary: the comparison means something
    val = tiny_data / "val"
    got, stdout, _ = predict_rows(capsys, "--checkpoint", ckpt, *flags, val, "--csv", tmp_path / "p.csv",
                                  "--workers", "2", "--batch-size", "4", "--topk", "2")
    assert {os.path.relpath(r["file"], val): r["class1"] for r in got} == expected
    assert list(got[0]) == ["file", "class1", "prob1", "class2", "prob2"]
    assert all(float(r["prob1"]) >= float(r["prob2"]) for r in got)
    assert len(stdout.strip().splitlines()) == len(expected) == 21


def test_an_export_predicts_like_its_checkpoint(ckpt, tiny_data, tmp_path, capsys):
    from imnet.tools.export import main as export
    assert export([str(ckpt), "-o", str(tmp_path / "model.pth")]) == 0
    capsys.readouterr()
    expected = eval_top1(capsys, ckpt, tiny_data, tmp_path)
    got, _, _ = predict_rows(capsys, "--weights-file", tmp_path / "model.pth", tiny_data / "val", "--csv",
                             tmp_path / "p.csv", "--workers", "0")
    assert {os.path.relpath(r["file"], tiny_data / "val"): r["class1"] for r in got} == expected


def test_unreadable_files_are_reported_and_skipped(ckpt, tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 4)
    (tmp_path / "empty.png").write_bytes(b"")
    good = sorted((tiny_data / "val" / "class_1").iterdir())[:3]
    got, _, err = predict_rows(capsys, "--checkpoint", ckpt, *good, broken, str(tmp_path / "*.png"), "--csv",
                               tmp_path / "p.csv", "--workers", "0", "--batch-size", "2")
    assert [r["file"] for r in got] == [str(p) for p in good]  # the rest, in the order given
    assert f"skipped unreadable file {broken}" in err and f"skipped unreadable file {tmp_path / 'empty.png'}" in err
    assert "3 images predicted, 2 unreadable files skipped" in err


def test_bad_input_is_one_paragraph(ckpt, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    for argv, needle in (([tmp_path / "nope.jpg"], "does not exist"),
                         ([str(tmp_path / "*.webp")], "matches no file"),
                         ([tmp_path / "bad.jpg"], "none of the 1 files could be read"),
                         ([tmp_path / "bad.jpg", "--csv", tmp_path / "no" / "p.csv"], "cannot write --csv")):
        assert predict.main(["--checkpoint", str(ckpt), *map(str, argv), "--workers", "0"]) == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (after the lines naming each unreadable file)
        assert needle in last and last.startswith("imnet.tools.predict: error: ") and "Traceback" not in err, err
    assert predict.main([str(tmp_path / "bad.jpg")]) == 2
    assert "give the weights" in capsys.readouterr().err


def test_command_line():
    r = subprocess.run([sys.executable, "-m", "imnet.tools.predict", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--topk" in r.stdout and "--use-ema" in r.stdout, r.stderr
