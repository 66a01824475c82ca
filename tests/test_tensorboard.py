"""train.py --tensorboard: the event files hold exactly the scalars of log.jsonl (read back with TensorBoard's own
reader), at the optimizer step (train events) and the epoch (epoch rows); without the package, one paragraph and
exit 2 before any work."""

from __future__ import annotations

import json
import sys

import pytest

import train

TINY = ["--model", "resnet18", "--epochs", "2", "--batch-size", "16", "--train-crop-size", "32", "--val-crop-size",
        "32", "--val-resize-size", "36", "--lr", "0.01", "--workers", "0", "--log-every", "1", "--quiet", "--ema",
        "--ema-decay", "0.5"]


def test_event_files_hold_the_scalars_of_log_jsonl(tiny_data, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    assert train.main(TINY + ["--data", str(tiny_data), "--output", str(out), "--tensorboard"]) == 0
    events = [json.loads(line) for line in open(out / "log.jsonl")]
    acc = event_accumulator.EventAccumulator(str(out), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    read = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}

    expected = {}
    for e in events:
        if e["event"] in ("train", "epoch"):
            step = e["global_step"] if e["event"] == "train" else e["epoch"]
            for k, v in e.items():
                if k not in ("time", "event", "epoch", "step", "global_step") and isinstance(v, (int, float)) \
                        and not isinstance(v, bool):
                    expected.setdefault(f"{e['event']}/{k}", {})[step] = v
    assert set(read) == set(expected)
    for tag, values in expected.items():
        assert set(read[tag]) == set(values), tag
        for step, v in values.items():
            assert read[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-12), (tag, step)  # stored as float32
    # what a user looks for is there: every optimizer step's loss and LR, each epoch's validation of both weights
    assert set(read["train/loss"]) == {1, 2, 3, 4, 5, 6, 7, 8} and "train/lr" in read
    assert set(read["epoch/val_top1"]) == set(read["epoch/ema_val_top1"]) == {1, 2}


def test_without_the_package_it_says_how_to_install_it(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as when not installed
    out = tmp_path / "run"
    assert train.main(TINY + ["--data", str(tiny_data), "--output", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install tensorboard" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
