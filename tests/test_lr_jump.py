"""A resume under another schedule says what the LR does next (imnet.run.log.resume_lr_note): extending a finished
cosine run (--epochs 3 after 1) jumps from the old schedule's last LR back up to the new schedule's; a resume with
the same settings says nothing."""

from __future__ import annotations

import json
import math

import train

# 72 training images / batch 16 = 4 optimizer steps per epoch; cosine from LR 0.1 to 0, no warmup
TINY = ["--model", "resnet18", "--batch-size", "16", "--train-crop-size", "32", "--val-crop-size", "32",
        "--val-resize-size", "36", "--lr", "0.1", "--workers", "0", "--log-every", "1"]


def cosine(step, total, peak=0.1):
    return 0.5 * peak * (1 + math.cos(math.pi * step / total))


def events(out, kind):
    return [e for e in map(json.loads, open(out / "log.jsonl")) if e["event"] == kind]


def test_extending_a_finished_run_says_the_lr_jumps_up(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = TINY + ["--data", str(tiny_data), "--output", str(out)]
    assert train.main(args + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert train.main(args + ["--epochs", "3", "--resume", "auto", "--stop-at-step", "5"]) == 0
    stdout = capsys.readouterr().out
    last, nxt = cosine(3, 4), cosine(4, 12)  # step 3 (0-based) of the 4-step run; step 4 of the 12-step one
    line = [x for x in stdout.splitlines() if "the LR jumps" in x]
    assert line == [f"note: the LR jumps up from {last:.4g} (the checkpoint's last step, 4) to {nxt:.4g} (step 5 "
                    f"of 12) under this command's schedule (3 epochs, cosine); to go on at a low LR instead, start a "
                    f"new run with --init-from."], stdout
    (jump,) = events(out, "lr_jump")
    assert math.isclose(jump["last_lr"], last, rel_tol=1e-9) and math.isclose(jump["next_lr"], nxt, rel_tol=1e-9)
    assert math.isclose(events(out, "train")[-1]["lr"], nxt, rel_tol=1e-9)  # what the next step really used


def test_a_resume_with_the_same_schedule_says_nothing(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = TINY + ["--data", str(tiny_data), "--output", str(out), "--epochs", "2"]
    assert train.main(args + ["--stop-at-step", "3"]) == 0
    assert train.main(args + ["--resume", "auto", "--stop-at-step", "5"]) == 0
    assert "LR jumps" not in capsys.readouterr().out and not events(out, "lr_jump")
