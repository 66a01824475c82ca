"""Stochastic Weight Averaging in train.py (--swa-start, --swa-lr): the average is the mean of the epoch-end
snapshots, each saved average carries BatchNorm statistics recomputed for its own weights (torch's update_bn),
also when its epoch is not evaluated or the run dies between the save and the evaluation; resume mid-SWA is
bitwise exact, the learning rate switches to --swa-lr at the first step of epoch --swa-start, eval.py --use-swa
evaluates it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import update_bn

import eval as evaluate
import train
from conftest import REPO, make_imagefolder, signal_at
from imnet.run import config, data, evaluation, flags, models

# 3 classes x 16 train images at batch 8: 6 steps per epoch; averaging at the end of epochs 2 and 3.
from imnet import schedule

# 3 classes x 16 train images at batch 8: 6 steps per epoch; averaging at the end of epochs 2 and 3.
ARGS = ["--model", "resnet18", "--epochs", "3", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "0.05", "--seed", "3", "--workers", "2",
        "--quiet", "--swa-start", "2", "--swa-lr", "0.02"]
# Averaging from epoch 1, evaluating every 2nd epoch (and the last): epoch 1's average is saved, never evaluated.
EVERY_2 = ARGS[:ARGS.index("--swa-start")] + ["--swa-start", "1", "--swa-lr", "0.02", "--eval-every", "2"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("swa_data"), num_classes=3, train_per_class=16, val_per_class=5)


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory):
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


def recomputed(root: Path, args: list[str], weights: dict, epoch: int) -> torch.nn.Module:
    """The average's weights with BatchNorm statistics from torch's update_bn over (0-based) ``epoch``'s training
    data (its augmentation, one process, batch 8), computed here independently of train.py."""
    below, given = flags.parse_args(args + ["--data", str(root), "--output", "unused"])
    cfg = config.resolve(below, given, 1)
    _, train_set, _ = train.build_datasets(cfg)
    sampler = data.TrainSampler(len(train_set), 1, 0, seed=3, drop_last=True)
    sampler.set_epoch(epoch)
    loader = data.build_loader(train_set, sampler, 8, 0, drop_last=True)
    model = models.build_model("resnet18", 3)
    model.load_state_dict(weights)
    for m in model.modules():  # start from other statistics: update_bn must replace them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(7.0)
    update_bn((data.to_device(x, y, "cpu")[0] for x, y, _ in loader), model)
    return model.eval()


def assert_own_statistics(state: dict, model: torch.nn.Module) -> None:
    saved = swa_weights(state)
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(saved[k], v, rtol=1e-5, atol=1e-6, msg=k)


def top1(root: Path, model: torch.nn.Module) -> float:
    policy = config.EvalPolicy(36, 32)
    val = data.ImageFolder(root / "val", [f"class_{c}" for c in range(3)], policy.transform())
    loader = data.build_loader(val, data.EvalSampler(len(val)), batch_size=8, workers=0)
    return evaluation.evaluate(model, loader, torch.device("cpu"), policy, 3).top1


def eval_py_top1(root: Path, checkpoint: Path, tmp_path: Path) -> float:
    out = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--use-swa", "--data", str(root), "--workers", "0",
                          "--json", str(out)]) == 0
    return json.loads(out.read_text())["top1"]


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
    assert_own_statistics(ref, recomputed(root, args, avg, epoch=2))


def test_resume_mid_swa_is_bitwise_exact(runs):
    _, _, ref, _, _, cut, _ = runs
    for key in ("model", "swa"):
        assert ref[key].keys() == cut[key].keys()
        for k in ref[key]:
            assert torch.equal(ref[key][k], cut[key][k]), (key, k)
    for i, s in ref["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], cut["optimizer"]["state"][i]["momentum_buffer"])
    assert [r.get("swa_val_top1") for r in ref["history"]] == [r.get("swa_val_top1") for r in cut["history"]]


def test_swa_learning_rate_starts_at_the_first_step_of_epoch_swa_start(runs):
    """Before epoch --swa-start the run follows its own schedule (cosine over all 18 steps, no warmup: torch's
    swa_utils recipe switches schedulers rather than bending the first one); from its first step (6 = 1 epoch x
    6 steps) to the end, the constant --swa-lr (SWALR with anneal_epochs=0)."""
    _, _, ref, _, _, _, out = runs
    rows = ref["history"]
    assert rows[0].get("swa_val_top1") is None and rows[1]["swa_val_top1"] is not None
    below, given = flags.parse_args(ARGS + ["--data", "unused", "--output", "unused"])
    cfg = config.resolve(below, given, 1).with_data(48, 15, 3)
    cosine = [schedule.lr_at(t, base_lr=0.05, total_steps=18) for t in range(18)]
    assert [cfg.lr_at(t) for t in range(18)] == cosine[:6] + [0.02] * 12
    assert all(lr > 0.03 for lr in cosine[:6])  # distinguishable from --swa-lr: the switch is at step 6, not 5 or 7
    assert [r["lr"] for r in rows[1:]] == [0.02, 0.02]
    assert "swa_val_top1" in (out / "summary.csv").read_text().splitlines()[0]


def test_eval_use_swa_reproduces_the_logged_figure(runs, tmp_path):
    root, _, ref, _, _, _, out = runs
    assert eval_py_top1(root, out / "last.pt", tmp_path) == pytest.approx(ref["history"][-1]["swa_val_top1"])


@pytest.fixture(scope="module")
def every_2(root, tmp_path_factory):
    """--eval-every 2: the uninterrupted run, and one stopped a step into epoch 2 (its last.pt holds epoch 1's
    average, which no evaluation saw)."""
    ref, cut = tmp_path_factory.mktemp("every2_ref"), tmp_path_factory.mktemp("every2_cut")
    args = EVERY_2 + ["--data", str(root)]
    assert train.main(args + ["--output", str(ref)]) == 0
    assert train.main(args + ["--output", str(cut), "--stop-at-step", "7"]) == 0
    return args, ref, cut


def test_an_average_saved_without_evaluation_has_its_own_statistics(root, every_2, tmp_path):
    """eval.py --use-swa on last.pt written after an epoch that was not evaluated scores the average with the
    statistics update_bn gives its weights, the same top-1 as the average recomputed here."""
    _, _, cut = every_2
    state = load(cut / "last.pt")
    assert (state["global_step"], int(state["swa"]["n_averaged"])) == (7, 1)
    assert "swa_val_top1" not in state["history"][0]  # epoch 1 was not evaluated
    model = recomputed(root, EVERY_2, swa_weights(state), epoch=0)
    assert_own_statistics(state, model)
    assert eval_py_top1(root, cut / "last.pt", tmp_path) == pytest.approx(top1(root, model))


def test_a_kill_between_the_save_and_its_evaluation_leaves_a_consistent_average(root, every_2, tmp_path):
    """SIGKILL to the process group at the start of epoch 2's evaluation, right after last.pt was written with the
    evaluation pending (tests/signal_at.py's 'eval' moment), as a lost node would. The average in that last.pt is
    consistent (its own statistics; eval.py --use-swa scores it as the recomputed average), and --resume auto
    evaluates it and ends bitwise equal to the uninterrupted run."""
    args, ref, _ = every_2
    out = tmp_path / "run"
    proc = subprocess.Popen([*signal_at("eval:2:SIGKILL"), *args, "--output", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=600)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # any data worker it left behind (its own process group)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    state = load(out / "last.pt")
    assert state["pending_eval"] and (state["global_step"], int(state["swa"]["n_averaged"])) == (12, 2)
    model = recomputed(root, EVERY_2, swa_weights(state), epoch=1)
    assert_own_statistics(state, model)
    assert eval_py_top1(root, out / "last.pt", tmp_path) == pytest.approx(top1(root, model))

    assert train.main(args + ["--output", str(out), "--resume", "auto"]) == 0
    a, b = load(ref / "last.pt"), load(out / "last.pt")
    for key in ("model", "swa"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert [r.get("swa_val_top1") for r in a["history"]] == [r.get("swa_val_top1") for r in b["history"]]
    assert a["history"][1]["swa_val_top1"] is not None


def test_bad_swa_flags_are_refused(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "d", num_classes=2, train_per_class=4, val_per_class=1)
    base = ARGS[:-4] + ["--data", str(root), "--output", str(tmp_path / "o")]
    for extra, words in ((["--swa-start", "2"], "needs --swa-lr"), (["--swa-start", "4", "--swa-lr", "0.01"], "1 to"),
                         (["--swa-lr", "0.01"], "give --swa-start")):
        assert train.main(base + extra) == 2
        assert words in capsys.readouterr().err
