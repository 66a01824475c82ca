"""train.py end to end on a tiny generated ImageFolder: learning, artifacts, exact resume, preemption,
NaN guard, bad setups, mixed precision. (Distributed runs are in test_distributed.py.)"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer

import train
from conftest import REPO, assert_same_state, make_imagefolder, signal_at

# Everything the exact-resume claim covers: MixUp/CutMix, label smoothing, EMA, RandomErasing, stochastic
# depth, RandomResizedCrop + flip in data-loading workers.
# deit_tiny (a torchvision VisionTransformer) because it learns this tiny task reliably in a few steps of
# batch 8; BatchNorm nets at 32 px with batch 8 have eval statistics too noisy for a firm accuracy bar.
BASE = ["--model", "deit_tiny", "--epochs", "3", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "1e-3", "--warmup-epochs", "1",
        "--opt", "adamw", "--weight-decay", "0.05", "--log-every", "2", "--quiet", "--seed", "3"]
FULL = BASE + ["--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1", "--ema", "--ema-decay", "0.9",
               "--random-erase", "0.25", "--drop-path", "0.1", "--workers", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 classes x 16 train images -> 6 steps/epoch at batch 8; 15 val images.
    return make_imagefolder(tmp_path_factory.mktemp("train_data"), num_classes=3, train_per_class=16,
                            val_per_class=5)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted run every resume test compares against."""
    out = tmp_path_factory.mktemp("reference")
    assert train.main(FULL + ["--data", str(data), "--output", str(out)]) == 0
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_learns_and_writes_what_is_specified(reference, data):
    rows = read_summary(reference)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for col in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "epoch_time",
                "ema_val_top1", "ema_val_top5"):
        assert col in rows[0], col
    # Under MixUp/CutMix, train accuracy is not reported (it would be accuracy against mixed labels).
    assert all(r["train_top1"] == "" for r in rows)
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    assert float(rows[-1]["val_top1"]) >= 80.0  # chance is 33%

    last = load(reference / "last.pt")
    assert last["classes"] == ["class_0", "class_1", "class_2"]
    assert last["epoch"] == 3 and last["step_in_epoch"] == 0 and last["global_step"] == 18
    for key in ("version", "model", "model_ema", "state_dict_ema", "checksum", "optimizer", "scaler", "rng", "config", "metrics", "imnet_version",
                "meter", "history", "bad_images"):
        assert key in last, key
    policy = last["config"]["eval_policy"]
    assert policy["resize_size"] == 36 and policy["crop_size"] == 32 and policy["decode"] == "full"
    assert last["config"]["seed"] == 3 and last["config"]["model"] == "deit_tiny"
    # The run folder's config.json is the checkpoint's Config.
    assert json.loads((reference / "config.json").read_text())["global_batch_size"] == last["config"]["global_batch_size"] == 8
    # The "model" entry is a plain torchvision state_dict: no module. / _orig_mod. prefixes.
    # deit_tiny is torchvision's VisionTransformer class (torchvision has no deit_tiny builder).
    net = VisionTransformer(image_size=32, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                            num_classes=3)
    net.load_state_dict(last["model"], strict=True)
    net.load_state_dict(last["state_dict_ema"], strict=True)

    best = load(reference / "best.pt")
    best_top1 = max(float(r["val_top1"]) for r in rows)
    assert best["metrics"]["val_top1"] == pytest.approx(best_top1)

    events = [json.loads(line) for line in open(reference / "log.jsonl")]
    kinds = {e["event"] for e in events}
    assert {"start", "train", "epoch", "done"} <= kinds
    train_events = [e for e in events if e["event"] == "train"]
    assert all(e["loss"] == e["loss"] and e["lr"] > 0 for e in train_events[:-1])
    assert (reference / "curves.svg").is_file()


def test_resume_mid_epoch_is_bitwise_exact(reference, data, tmp_path):
    out = tmp_path / "run"
    args = FULL + ["--data", str(data), "--output", str(out)]
    assert train.main(args + ["--stop-at-step", "8"]) == 0  # 2 steps into epoch 2
    mid = load(out / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (1, 2, 8)
    # One more step and stopped again: what the checkpoint carries besides the weights (the best top-1 so far,
    # the epoch rows, the run) comes back from the file, not from a fresh start.
    assert train.main(args + ["--resume", "auto", "--stop-at-step", "9"]) == 0
    again = load(out / "last.pt")
    assert again["global_step"] == 9 and again["best_top1"] == mid["best_top1"] > 0
    assert again["history"] == mid["history"] and again["run_id"] == mid["run_id"]
    assert train.main(args + ["--resume", "auto"]) == 0
    assert_same_state(load(reference / "last.pt"), load(out / "last.pt"))
    # The record matches too: the same per-epoch rows.
    ref_rows, rows = read_summary(reference), read_summary(out)
    for a, b in zip(ref_rows, rows):
        for col in ("train_loss", "val_loss", "val_top1", "ema_val_top1", "lr"):
            assert a[col] == b[col], (col, a[col], b[col])


def test_resume_mid_epoch_under_accumulation_is_bitwise_exact(data, tmp_path):
    """--accum-steps 2: a resumed epoch skips steps x accumulation x batch samples (not steps x batch), and
    continues to the uninterrupted run's weights, EMA and optimizer state, bitwise."""
    args = FULL + ["--data", str(data), "--epochs", "2", "--batch-size", "4", "--accum-steps", "2"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert train.main(args + ["--output", str(ref)]) == 0
    assert train.main(args + ["--output", str(cut), "--stop-at-step", "8"]) == 0  # 2 steps into epoch 2
    assert load(cut / "last.pt")["step_in_epoch"] == 2
    assert train.main(args + ["--output", str(cut), "--resume", "auto"]) == 0
    a, b = load(ref / "last.pt"), load(cut / "last.pt")
    assert a["global_step"] == 12 and a["config"]["global_batch_size"] == 8
    assert_same_state(a, b)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(reference, data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes((reference / "last.pt").read_bytes())
    before = sha(out / "last.pt")
    # Resume the finished 3-epoch run for a 4th epoch with an absurd learning rate: the loss blows up.
    code = train.main(BASE + ["--data", str(data), "--output", str(out), "--resume", "auto", "--epochs", "4",
                              "--lr", "1e12", "--save-every-minutes", "0", "--mixup", "0.2", "--cutmix", "1.0",
                              "--label-smoothing", "0.1", "--ema", "--ema-decay", "0.9", "--random-erase", "0.25",
                              "--log-every", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "NaN or infinite at optimizer step" in err and "last.pt" in err
    assert sha(out / "last.pt") == before
    assert not (out / "best.pt").exists()


def bad_setup(capsys, args) -> str:
    code = train.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_bad_setups_are_refused_with_a_message(data, tmp_path, capsys):
    tiny = ["--model", "mobilenet_v3_small", "--train-crop-size", "32", "--val-crop-size", "32", "--workers", "0",
            "--output", str(tmp_path / "o")]
    assert "No data" in bad_setup(capsys, tiny + ["--recipe", "resnet50_classic"])
    assert "does not exist" in bad_setup(capsys, tiny + ["--data", str(tmp_path / "nowhere")])

    no_val = tmp_path / "no_val"
    (no_val / "train" / "a").mkdir(parents=True)
    (no_val / "train" / "a" / "x.JPEG").write_bytes((next((data / "train" / "class_0").iterdir())).read_bytes())
    assert "val" in bad_setup(capsys, tiny + ["--data", str(no_val)])

    empty = make_imagefolder(tmp_path / "empty", num_classes=2, train_per_class=2, val_per_class=1)
    (empty / "train" / "class_9").mkdir()
    assert "class_9" in bad_setup(capsys, tiny + ["--data", str(empty)])

    differ = make_imagefolder(tmp_path / "differ", num_classes=2, train_per_class=2, val_per_class=1)
    os.rename(differ / "val" / "class_1", differ / "val" / "class_x")
    err = bad_setup(capsys, tiny + ["--data", str(differ)])
    assert "class_1" in err and "class_x" in err

    err = bad_setup(capsys, ["--data", str(data), "--model", "resnet5", "--workers", "0"])
    assert "Unknown model 'resnet5'" in err and "resnet50" in err
    err = bad_setup(capsys, tiny + ["--data", str(data), "--epochs", "2", "--warmup-epochs", "2"])
    assert "warmup" in err
    err = bad_setup(capsys, tiny + ["--data", str(data), "--model", "resnet18", "--drop-path", "0.1"])
    assert "stochastic depth" in err
    err = bad_setup(capsys, tiny + ["--data", str(data), "--batch-size", "64"])
    assert "fewer than one global batch" in err


def test_resume_with_other_settings_is_refused(reference, data, tmp_path, capsys):
    args = BASE + ["--data", str(data), "--output", str(reference), "--resume", str(reference / "last.pt")]
    err = bad_setup(capsys, [a if a != "deit_tiny" else "resnet18" for a in args])
    assert "Cannot resume" in err and "model" in err
    err = bad_setup(capsys, args + ["--accum-steps", "2"])
    assert "global batch 8 (1 process x batch 8 x accum 1) vs 16 (1 process x batch 8 x accum 2)" in err


def test_bf16_autocast_trains_on_cpu_and_resnet_checkpoint_loads_into_torchvision(data, tmp_path):
    out = tmp_path / "bf16"
    assert train.main(["--model", "resnet18", "--epochs", "1", "--batch-size", "8", "--train-crop-size", "32",
                       "--val-crop-size", "32", "--lr", "0.01", "--quiet", "--data", str(data), "--output", str(out),
                       "--amp", "bf16", "--workers", "0"]) == 0
    row = read_summary(out)[0]
    assert float(row["train_loss"]) == float(row["train_loss"])  # finite, not NaN
    assert float(row["train_top1"]) >= 0  # reported when there is no mixing
    state = load(out / "last.pt")
    assert any(v.dtype == torch.float32 for v in state["model"].values())  # weights stay fp32 under autocast
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(state["model"], strict=True)


def test_dry_run_prints_the_plan_and_trains_nothing(data, tmp_path, capsys):
    out = tmp_path / "dry"
    assert train.main(["--data", str(data), "--model", "resnet18", "--batch-size", "4", "--accum-steps", "2",
                       "--lr-base", "0.1", "--epochs", "4", "--warmup-epochs", "1", "--opt", "adamw",
                       "--no-decay-on", "none", "--weight-decay", "0.05", "--workers", "0", "--output", str(out),
                       "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "global batch 8" in text
    assert f"learning rate {0.1 * 8 / 256:.6g}" in text
    assert "parameter groups" in text and "train transform" in text and "eval policy: resize 256" in text
    assert "LR at steps: 0: " in text
    assert "WARNING" in text and "weight decay" in text.lower()  # AdamW decaying norms and biases
    assert not out.exists() or not (out / "last.pt").exists()


def test_fake_data_throughput_run(tmp_path):
    out = tmp_path / "fake"
    assert train.main(["--fake-data", "--num-classes", "5", "--model", "resnet18", "--epochs", "1",
                       "--batch-size", "4", "--train-crop-size", "32", "--val-crop-size", "32", "--workers", "0",
                       "--output", str(out), "--quiet"]) == 0
    row = read_summary(out)[0]
    assert int(row["epoch"]) == 1 and float(row["train_loss"]) > 0 and int(float(row["bad_images"])) == 0
    assert load(out / "last.pt")["global_step"] == 100


def test_repeated_augmentation_resumes_bitwise(data, tmp_path):
    plain_args = BASE + ["--data", str(data), "--epochs", "2", "--workers", "2"]
    args = plain_args + ["--ra-reps", "3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert train.main(args + ["--output", str(ref)]) == 0
    assert train.main(args + ["--output", str(cut), "--stop-at-step", "8"]) == 0  # 2 steps into epoch 2
    assert train.main(args + ["--output", str(cut), "--resume", "auto"]) == 0
    a, b = load(ref / "last.pt"), load(cut / "last.pt")
    assert a["global_step"] == b["global_step"] == 12  # the epoch keeps its length: 48 images / batch 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    plain = tmp_path / "plain"  # and the sampler is in use: without repeats the weights differ
    assert train.main(plain_args + ["--output", str(plain)]) == 0
    assert not torch.equal(load(plain / "last.pt")["model"]["conv_proj.weight"], a["model"]["conv_proj.weight"])


@pytest.mark.parametrize("moment, steps_saved", [("startup:1", None), ("step:3", 3), ("step:8", 8), ("eval:2", 12),
                                                  ("save:1", 6), ("exit:1", 18)])
def test_process_group_sigterm_with_workers_is_a_clean_preemption(moment, steps_saved, reference, data, tmp_path):
    """SIGTERM to the whole process group, DataLoader workers included (what SLURM and Kubernetes do), at a
    named moment: while torch is still importing (before main() runs), 3 steps into epoch 1 (before any
    checkpoint exists, data workers running), 2 steps into epoch 2, at the start of epoch 2's evaluation (the
    workers of both loaders alive), during epoch 1's first save, after the finished run (teardown: the run stays
    done, exit 0 rather than -15). tests/signal_at.py runs train.py and signals its own group, started with setsid,
    at exactly that moment. Each ends with exit 0 and no traceback; the checkpoint it leaves (none at startup:
    nothing was trained) resumes to the uninterrupted run's weights, bitwise."""
    out = tmp_path / "run"
    args = FULL + ["--data", str(data), "--output", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run([*signal_at(moment), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600, start_new_session=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "killed by signal" not in res.stderr, res.stderr
    events = [json.loads(line) for line in open(out / "log.jsonl")]
    assert events[-1]["event"] == ("done" if moment == "exit:1" else "preempted"), events[-1]
    if steps_saved is None:
        assert not (out / "last.pt").exists() and "train" not in {e["event"] for e in events}
        assert (events[-1]["epoch"], events[-1]["step_in_epoch"]) == (0, 0)
    else:
        assert load(out / "last.pt")["global_step"] == steps_saved
    assert train.main(args + ["--resume", "auto"]) == 0
    assert_same_state(load(reference / "last.pt"), load(out / "last.pt"))
