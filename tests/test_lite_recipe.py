"""EfficientNet-Lite through train.py, eval.py, export and predict: TensorFlow's RMSProp and exponential decay
from their flags, an exact resume, and the Lite normalisation ((x - 127) / 128) in training, in the checkpoint,
in the export and in what reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as imnet_eval
import train
from conftest import REPO, assert_same_state, make_imagefolder
from imnet.efficientnet_lite import LITE_MEAN, LITE_STD
from imnet.run import data as run_data
from imnet.tools import export, predict

# 3 classes x 8 train images: 6 steps of 4 in the one epoch; the LR x 0.5 every 0.5 epochs (3 steps), after 1 warmup
# step from 0.
ARGS = ["--model", "efficientnet_lite0", "--epochs", "1", "--batch-size", "4", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--opt", "rmsproptf", "--opt-eps", "1e-3", "--lr", "0.01",
        "--sched", "exp", "--lr-decay-epochs", "0.5", "--lr-gamma", "0.5", "--warmup-epochs", "0.2",
        "--warmup-start-factor", "0",
        "--drop-path", "0.2", "--label-smoothing", "0.1", "--ema", "--ema-decay", "0.9", "--ema-warmup",
        "--workers", "0", "--quiet", "--seed", "3", "--log-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("lite_data"), num_classes=3, train_per_class=8,
                            val_per_class=2)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lite_ref")
    assert train.main(ARGS + ["--data", str(data), "--output", str(out)]) == 0
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_trains_with_its_optimizer_schedule_and_normalisation_and_resumes_bitwise(reference, data, tmp_path,
                                                                                   monkeypatch):
    seen = []  # the mean/std every training batch was normalised with
    to_device = run_data.to_device
    monkeypatch.setattr(run_data, "to_device", lambda *a, **k: seen.append((k["mean"], k["std"])) or to_device(*a, **k))
    cut = tmp_path / "cut"
    assert train.main(ARGS + ["--data", str(data), "--output", str(cut), "--stop-at-step", "3"]) == 0
    assert seen and set(seen) == {(LITE_MEAN, LITE_STD)}
    monkeypatch.undo()
    assert train.main(ARGS + ["--data", str(data), "--output", str(cut), "--resume", "auto"]) == 0
    a, b = load(reference / "last.pt"), load(cut / "last.pt")
    assert a["global_step"] == 6
    assert_same_state(a, b)
    assert type(a["optimizer"]["state"][0]["square_avg"]) is torch.Tensor  # RMSpropTF's state, saved and restored

    policy = a["config"]["eval_policy"]
    assert (policy["mean"], policy["std"]) == (list(LITE_MEAN), list(LITE_STD))
    events = [json.loads(line) for line in open(reference / "log.jsonl")]
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    # step 0 warms up from 0 (1 step); then 0.01 x 0.5 ** floor(t / 3), counted from t = 0 as TensorFlow does
    assert lrs == pytest.approx([0.0] + [0.01 * 0.5 ** (t // 3) for t in range(1, 6)], rel=1e-6)


def test_eval_export_and_predict_use_the_lite_normalisation(reference, data, tmp_path, capsys):
    expected = "mean (0.498, 0.498, 0.498), std (0.502, 0.502, 0.502)"
    assert imnet_eval.main(["--checkpoint", str(reference / "last.pt"), "--data", str(data), "--workers", "0"]) == 0
    assert expected in capsys.readouterr().out

    out = tmp_path / "lite.pth"
    assert export.main([str(reference / "last.pt"), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    side = json.loads(out.with_suffix(".json").read_text())
    assert (side["eval_policy"]["mean"], side["eval_policy"]["std"]) == (list(LITE_MEAN), list(LITE_STD))
    assert predict.main(["--weights-file", str(out), str(data / "val"), "--workers", "0"]) == 0
    assert expected in capsys.readouterr().err
    # the same weights without their sidecar: the model's own normalisation, said to be a default
    out.with_suffix(".json").rename(tmp_path / "elsewhere.json")
    assert imnet_eval.main(["--model", "efficientnet_lite0", "--weights-file", str(out), "--data", str(data),
                            "--workers", "0"]) == 0
    printed = capsys.readouterr()
    assert expected in printed.out and "normalisation ((x - 127) / 128 on 0-255" in printed.err
    out.with_suffix(".json").write_text((tmp_path / "elsewhere.json").read_text())

    # the printed lines build the model with nothing of imnet but a copy of efficientnet_lite.py
    lines = stdout.splitlines()
    code = lines[lines.index("load it with:") + 1:]
    assert code[0].startswith("import torch, efficientnet_lite  # efficientnet_lite.py: imnet/efficientnet_lite.py")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "efficientnet_lite.py").write_text((REPO / "imnet" / "efficientnet_lite.py").read_text())
    script = "\n".join(code + ["torch.save(model.state_dict(), 'back.pt')"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=alone, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    back, weights = torch.load(alone / "back.pt", weights_only=True), load(out)
    assert list(back) == list(weights) and all(torch.equal(back[k], weights[k]) for k in weights)


def test_dry_run_shows_the_normalisation_and_the_decays(data, tmp_path, capsys):
    assert train.main(ARGS + ["--data", str(data), "--output", str(tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "normalisation (training and evaluation) of efficientnet_lite0: (x - 127) / 128 on 0-255" in out
    assert f"3: {0.01 * 0.5:.6g}" in out and "opt_eps                0.001" in out
