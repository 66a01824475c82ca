"""Stochastic Weight Averaging in train.py (--swa-start, --swa-lr): the average is the mean of the epoch-end
snapshots, BatchNorm statistics are recomputed for it (torch's update_bn), resume mid-SWA is bitwise exact,
the learning rate is SWALR's, eval.py --use-swa evaluates it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import SWALR, update_bn

import eval as evaluate
import train
from conftest import make_imagefolder
from imnet import config, data, models

# 3 classes x 16 train images at batch 8: 6 steps per epoch; averaging at the end of epochs 2 and 3.
ARGS = ["--model", "resnet18", "--epochs", "3", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "0.05", "--seed", "3", "--workers", "2",
        "--quiet", "--swa-start", "2", "--swa-lr", "0.02"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = make_imagefolder(tmp_path_factory.mktemp("swa_data"), num_classes=3, train_per_class=16, val_per_class=5)
    ref, cut = tmp_path_factory.mktemp("ref"), tmp_path_factory.mktemp("cut")
    args = ARGS + ["--data", str(root)]
    assert train.main(args + ["--output", str(ref)]) == 0
    # the cut run: stopped after epoch 2's last step (before its average), then 2 steps into epoch 3 (one
    # snapshot averaged), then to the end
    assert train.main(args + ["--output", str(cut), "--stop-at-step", "12"]) == 0
    before = load(cut / "last.pt")
    assert train.main(args + ["--output", str(cut), "--resume", "auto", "--stop-at-step", "14"]) == 0
    mid = load(cut / "last.pt")
    assert train.main(args + ["--output", str(cut), "--resume", "auto"]) == 0
    return root, args, load(ref / "last.pt"), before, mid, load(cut / "last.pt"), ref


def swa_weights(state: dict) -> dict:
    return {k[len("module."):]: v for k, v in state["swa"].items() if k.startswith("module.")}


def test_average_is_the_mean_of_the_epoch_end_snapshots(runs):
    _, _, ref, before, mid, _, _ = runs
    snap1 = before["model"]  # the weights at the end of epoch 2
    assert (before["global_step"], int(before["swa"]["n_averaged"])) == (12, 0)
    assert int(mid["swa"]["n_averaged"]) == 1 and int(ref["swa"]["n_averaged"]) == 2
    params = dict(models.build_model("resnet18", 3).named_parameters())
    for k in params:
        assert torch.equal(swa_weights(mid)[k], snap1[k]), k  # one snapshot: itself
        torch.testing.assert_close(swa_weights(ref)[k], (snap1[k] + ref["model"][k]) / 2, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(snap1["conv1.weight"], ref["model"]["conv1.weight"])  # two different snapshots


def test_batchnorm_statistics_are_recomputed_for_the_average(runs):
    root, args, ref, before, _, _, _ = runs
    avg = swa_weights(ref)
    # They are not the snapshots' statistics ...
    for snap in (before["model"], ref["model"]):
        assert not torch.allclose(avg["bn1.running_mean"], snap["bn1.running_mean"])
    # ... but torch's update_bn over the last epoch's training data (its augmentation), run here independently.
    below, given = train.parse_args(args + ["--output", "unused"])
    cfg = config.resolve(below, given, 1)
    _, train_set, _ = train.build_datasets(cfg)
    sampler = data.TrainSampler(len(train_set), 1, 0, seed=3, drop_last=True)
    sampler.set_epoch(2)
    loader = data.build_loader(train_set, sampler, 8, 0, drop_last=True)
    model = models.build_model("resnet18", 3)
    model.load_state_dict(avg)
    for m in model.modules():  # start from other statistics: update_bn must replace them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(7.0)
    update_bn((data.to_device(x, y, "cpu")[0] for x, y, _ in loader), model)
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, avg[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_mid_swa_is_bitwise_exact(runs):
    _, _, ref, _, _, cut, _ = runs
    for key in ("model", "swa"):
        assert ref[key].keys() == cut[key].keys()
        for k in ref[key]:
            assert torch.equal(ref[key][k], cut[key][k]), (key, k)
    for i, s in ref["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], cut["optimizer"]["state"][i]["momentum_buffer"])
    assert [r.get("swa_val_top1") for r in ref["history"]] == [r.get("swa_val_top1") for r in cut["history"]]


def test_swa_learning_rate_is_swalrs_and_rows_report_the_average(runs):
    _, _, ref, _, _, _, out = runs
    rows = ref["history"]
    assert rows[0].get("swa_val_top1") is None and rows[1]["swa_val_top1"] is not None
    assert [r["lr"] for r in rows[1:]] == [0.02, 0.02]
    below, given = train.parse_args(ARGS + ["--data", "unused", "--output", "unused"])
    cfg = config.resolve(below, given, 1).with_data(48, 15, 3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr_at(5))
    swalr = SWALR(opt, swa_lr=0.02, anneal_epochs=0)  # torch's SWA schedule, stepped once per optimizer step
    for step in range(6, 18):
        assert opt.param_groups[0]["lr"] == cfg.lr_at(step), step
        opt.step()
        swalr.step()
    assert "swa_val_top1" in (out / "summary.csv").read_text().splitlines()[0]


def test_eval_use_swa_reproduces_the_logged_figure(runs, tmp_path):
    root, _, ref, _, _, _, out = runs
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--use-swa", "--data", str(root), "--workers", "0",
                          "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == pytest.approx(ref["history"][-1]["swa_val_top1"])


def test_bad_swa_flags_are_refused(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "d", num_classes=2, train_per_class=4, val_per_class=1)
    base = ARGS[:-4] + ["--data", str(root), "--output", str(tmp_path / "o")]
    for extra, words in ((["--swa-start", "2"], "needs --swa-lr"), (["--swa-start", "4", "--swa-lr", "0.1"], "1 to"),
                         (["--swa-lr", "0.1"], "give --swa-start")):
        assert train.main(base + extra) == 2
        assert words in capsys.readouterr().err
