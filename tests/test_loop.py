"""train.py's epoch loop, watched from inside one run that is stopped mid-epoch and resumed (--accum-steps 2):
every optimizer step gets the LR of its step, every epoch reads its own permutation of the data exactly once
across the resume, and each epoch's summary row is the mean of that epoch's steps only."""

from __future__ import annotations

import json

import pytest

import train
from conftest import make_imagefolder
from imnet.run import config, data, flags

# 3 classes x 16 images, global batch 8 (4 x 2 micro-steps): 6 optimizer steps per epoch, 12 in all; a
# half-epoch warmup so that consecutive steps have different LRs.
ARGS = ["--model", "resnet18", "--epochs", "2", "--batch-size", "4", "--accum-steps", "2", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "0.05", "--warmup-epochs", "0.5",
        "--workers", "0", "--log-every", "1", "--quiet", "--seed", "4"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    root = make_imagefolder(tmp_path_factory.mktemp("loop_data"), num_classes=3, train_per_class=16, val_per_class=3)
    out = tmp_path_factory.mktemp("loop_run")
    lrs, keys = [], []
    mp = pytest.MonkeyPatch()
    set_lr = train.set_lr
    mp.setattr(train, "set_lr", lambda optimizer, lr: (lrs.append(lr), set_lr(optimizer, lr)))
    getitem = data.ImageFolder.__getitem__

    def recording(self, key):
        if str(self.root).endswith("train"):
            keys.append(key)
        return getitem(self, key)

    mp.setattr(data.ImageFolder, "__getitem__", recording)
    try:
        args = ARGS + ["--data", str(root), "--output", str(out)]
        assert train.main(args + ["--stop-at-step", "8"]) == 0  # 2 steps into epoch 2
        assert train.main(args + ["--resume", "auto"]) == 0
    finally:
        mp.undo()
    below, given = flags.parse_args(ARGS + ["--data", str(root), "--output", str(out)])
    cfg = config.resolve(below, given, 1).with_data(48, 9, 3)
    events = [json.loads(line) for line in open(out / "log.jsonl")]
    return cfg, lrs, keys, events


def test_each_optimizer_step_runs_at_the_lr_of_its_step(watched):
    cfg, lrs, _, _ = watched
    assert cfg.total_steps == 12
    assert lrs == [cfg.lr_at(step) for step in range(12)]
    assert len(set(lrs[:4])) == 4  # the warmup: a step off by one would show


def test_each_epoch_reads_its_permutation_once_across_the_resume(watched):
    _, _, keys, _ = watched
    sampler = data.TrainSampler(48, seed=4)
    assert [k[1] for k in keys] == [0] * 48 + [1] * 48  # (index, epoch) keys: epoch 1, then epoch 2
    for epoch in (0, 1):
        assert [k[0] for k in keys if k[1] == epoch] == sampler.keys(epoch)[0].tolist(), epoch
    assert sampler.keys(0)[0].tolist() != sampler.keys(1)[0].tolist()


def test_each_epoch_row_is_the_mean_of_its_own_steps(watched):
    _, _, _, events = watched
    steps = [e for e in events if e["event"] == "train"]
    rows = [e for e in events if e["event"] == "epoch"]
    assert [(e["epoch"], e["step"]) for e in steps] == [(0, s) for s in range(1, 7)] + [(1, s) for s in range(1, 7)]
    for row in rows:
        losses = [e["loss"] for e in steps if e["epoch"] == row["epoch"] - 1]
        assert row["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5), row["epoch"]
