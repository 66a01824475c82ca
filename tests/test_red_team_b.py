"""What a second red team broke where faults and the run's pieces meet: a rewind that would overwrite the later
last.pt, a resume over a changed training set, a peer's death and a full disk under torchrun, a Ctrl-C during an
evaluation."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from conftest import REPO
from imnet.run import checkpoint as ckpt_io
from imnet.run import log as imnet_log
from test_distributed import env, free_port
from test_faults import LIGHT, files, light_data, light_run, load, one_paragraph  # noqa: F401 (fixtures)


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in open(folder / "log.jsonl")]


def test_a_resume_behind_last_is_refused_before_anything_is_written(light_data, light_run, tmp_path, capsys):
    """`--resume RUN/best.pt --output RUN` where last.pt is further on (and a backup of an earlier last.pt) is
    refused, the folder untouched, with the two ways on; a best.pt that is last.pt's epoch resumes."""
    run = tmp_path / "run"
    shutil.copytree(light_run, run)
    common = LIGHT + ["--data", str(light_data), "--epochs", "3", "--output", str(run)]
    backup = tmp_path / "backup.pt"
    shutil.copy(run / "last.pt", backup)
    assert train.main(common + ["--resume", "auto", "--stop-at-step", "7"]) == 0
    before = files(run)
    capsys.readouterr()
    for behind in (run / "best.pt", backup):
        assert train.main(common + ["--resume", str(behind)]) == 2
        err = one_paragraph(capsys.readouterr().err)
        assert f"{behind} is behind {run / 'last.pt'}" in err and "vs epoch 3, step 1)" in err
        assert f"--resume auto --output {run}" in err and f"--resume {behind} --output NEW" in err
        assert files(run) == before
    assert train.main(common + ["--resume", str(run / "last.pt"), "--stop-at-step", "8"]) == 0
    assert load(run / "last.pt")["global_step"] == 8


def changed(light_data: Path, dst: Path, how: str) -> Path:
    """A copy of the data with one training file swapped for another name, or four files missing."""
    shutil.copytree(light_data, dst)
    jpegs = sorted((dst / "train").rglob("*.JPEG"))
    if how == "swapped":
        jpegs[0].rename(jpegs[0].with_name("zz_other.JPEG"))
    else:
        for p in jpegs[:4]:
            p.unlink()
    return dst


def test_a_resume_on_a_changed_training_set_is_refused_mid_epoch_and_noted_at_a_boundary(light_data, light_run,
                                                                                         tmp_path, capsys):
    """Each checkpoint records the training set's size and file-list digest. Mid-epoch, a swapped file (same
    count) or four missing ones are refused before anything is written, naming the counts; at an epoch boundary
    the resume goes on with a note; a checkpoint without the record (older) resumes without one."""
    record = load(light_run / "last.pt")["train_set"]
    assert record["images"] == 24 and record["digest"].startswith("sha256:")
    run = tmp_path / "run"
    shutil.copytree(light_run, run)
    common = LIGHT + ["--epochs", "3", "--output", str(run)]
    assert train.main(common + ["--data", str(light_data), "--resume", "auto", "--stop-at-step", "7"]) == 0
    before = files(run)
    capsys.readouterr()
    for how, count in (("swapped", 24), ("missing", 20)):
        other = changed(light_data, tmp_path / how, how)
        assert train.main(common + ["--data", str(other), "--resume", "auto"]) == 2
        err = one_paragraph(capsys.readouterr().err)
        assert f"file list changed since the checkpoint (24 images then, {count} now), in the middle of epoch 3" in err
        assert f"--init-from {run / 'last.pt'}" in err
        assert files(run) == before

    old = tmp_path / "old"
    old.mkdir()
    state = load(run / "last.pt")
    del state["train_set"]
    state["checksum"] = ckpt_io.content_digest(state)
    torch.save(state, old / "last.pt")
    assert train.main(common[:-1] + [str(old), "--data", str(tmp_path / "swapped"), "--resume", "auto",
                                     "--stop-at-step", "8"]) == 0

    boundary = tmp_path / "boundary"
    shutil.copytree(light_run, boundary)
    assert train.main(common[:-1] + [str(boundary), "--data", str(tmp_path / "missing"), "--resume", "auto"]) == 0
    notes = [e["change"] for e in events(boundary) if e["event"] == "train_set_changed"]
    assert notes == ["the training set's file list changed since the checkpoint (24 images then, 20 now)"]
    assert load(boundary / "last.pt")["train_set"]["images"] == 20


def test_a_ctrl_c_during_an_evaluation_is_acknowledged_at_once(light_data, tmp_path, monkeypatch, capsys):
    """Ctrl-C as epoch 1's evaluation begins: one line at once (what the run waits for, a second Ctrl-C stops at
    once); the evaluation ends, best.pt and last.pt are written as today, and the run stops with 130."""
    real, seen = train.evaluate_all, []

    def evaluate(*args, **kwargs):
        if not seen:
            capsys.readouterr()
            os.kill(os.getpid(), signal.SIGINT)
            seen.append(capsys.readouterr().err)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "evaluate_all", evaluate)
    out = tmp_path / "run"
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out)]) == signal.SIGINT + 128
    assert seen == ["Ctrl-C: the run stops after the evaluation of epoch 1 and its checkpoint writes; a second "
                    "Ctrl-C stops at once.\n"]
    assert [e["epoch"] for e in events(out) if e["event"] == "preempted"] == [1]
    state = load(out / "last.pt")
    assert state["epoch"] == 1 and not state["pending_eval"] and (out / "best.pt").exists()


def test_a_full_disk_while_logging_is_the_no_space_paragraph(light_data, tmp_path, monkeypatch, capsys):
    """ENOSPC on the 6th append to log.jsonl: one paragraph, exit 2, naming the file and the way on."""
    real_open, appends = open, []

    def fake_open(path, mode="r", *args, **kwargs):
        if Path(path).name == "log.jsonl" and mode == "a":
            appends.append(path)
            if len(appends) >= 6:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(imnet_log, "open", fake_open, raising=False)
    out = tmp_path / "run"
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"Cannot append to {out / 'log.jsonl'}: the disk is full" in err
    assert f"--resume auto --output {out}" in err


WRAPPER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
rank, mode, folder = int(os.environ["RANK"]), sys.argv.pop(1), sys.argv.pop(1)
fd = os.open(os.path.join(folder, f"err-{{rank}}"), os.O_WRONLY | os.O_CREAT)
os.dup2(fd, 2)
import train
from imnet.run import atomic, checkpoint
if mode == "kill" and rank == 1:  # a kill -9 of rank 1 as it starts optimizer step 3
    real_step = train.train_step
    def train_step(cfg, parts, micro, epoch, step, global_step, meter):
        if global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(cfg, parts, micro, epoch, step, global_step, meter)
    train.train_step = train_step
if mode == "full" and rank == 0:  # rank 0's first checkpoint write finds the disk full
    def save_atomic(obj, path):
        raise atomic.NoSpace(f"Cannot write {{path}}: the disk is full.")
    checkpoint.save_atomic = save_atomic
rc = train.main()
open(os.path.join(folder, f"rc-{{rank}}"), "w").write(str(rc))
sys.exit(rc)
"""


@pytest.mark.parametrize("mode", ["kill", "full"])
def test_under_torchrun_a_dead_peer_or_a_full_disk_stops_every_rank_with_one_paragraph(mode, light_data, tmp_path):
    """2 processes (gloo). kill: rank 1 is killed with SIGKILL mid-run; rank 0 says which rank died, that the
    checkpoints are intact and how to continue, without a traceback, and exits 1 by itself. full: rank 0 cannot
    write its checkpoint; both ranks exit 2 by themselves (rank 1 does not wait for rank 0 at a collective)."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(repo=str(REPO)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(wrapper), mode, str(tmp_path),
           *LIGHT, "--epochs", "6", "--data", str(light_data), "--output", str(out)]
    res = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    errs = {r: (tmp_path / f"err-{r}").read_text() for r in (0, 1)}
    if mode == "kill":
        assert (tmp_path / "rc-0").read_text() == "1", errs[0][-3000:]
        err = one_paragraph(errs[0])
        assert "rank 0 stopped: rank 1 ended" in err and f"checkpoints in {out} are intact" in err
        assert f"--resume auto --output {out}" in err
    else:
        assert [(tmp_path / f"rc-{r}").read_text() for r in (0, 1)] == ["2", "2"], errs
        assert "Cannot write" in one_paragraph(errs[0]) and "Traceback" not in errs[1]


def test_the_last_epoch_is_evaluated_whatever_eval_every_is(light_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out), "--epochs", "3",
                               "--eval-every", "2"]) == 0
    assert [row.get("val_top1") is not None for row in load(out / "last.pt")["history"]] == [False, True, True]


def test_a_resume_refuses_another_seed_and_another_class_list_of_the_same_length(light_data, light_run, tmp_path,
                                                                                 capsys):
    renamed = tmp_path / "renamed"
    shutil.copytree(light_data, renamed)
    for split in ("train", "val"):
        (renamed / split / "class_2").rename(renamed / split / "class_9")
    resume = ["--resume", str(light_run / "last.pt"), "--epochs", "3"]
    for args, problem in ((["--data", str(light_data), "--seed", "2"], "seed 1 vs 2"),
                          (["--data", str(renamed)], "classes differ (3 in the checkpoint, 3 in the data)")):
        out = tmp_path / f"out{len(args)}"
        capsys.readouterr()
        assert train.main(LIGHT + args + resume + ["--output", str(out)]) == 2
        assert problem in one_paragraph(capsys.readouterr().err)
        assert not (out / "last.pt").exists()


def test_a_preemption_on_an_epochs_last_step_resumes(light_data, light_run, tmp_path):
    """Stopped right after step 3, the last of epoch 1 (last.pt at step 3 of 3): the resumed run ends bitwise as
    the uninterrupted one."""
    from test_faults import same_weights
    out = tmp_path / "run"
    args = LIGHT + ["--data", str(light_data), "--output", str(out)]
    assert train.main(args + ["--stop-at-step", "3"]) == 0
    assert (load(out / "last.pt")["epoch"], load(out / "last.pt")["step_in_epoch"]) == (0, 3)
    assert train.main(args + ["--resume", "auto"]) == 0
    assert same_weights(load(out / "last.pt"), load(light_run / "last.pt"))


def test_a_folder_that_holds_only_best_holds_a_run(light_data, light_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(light_run / "best.pt", out / "best.pt")
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out)]) == 2
    assert f"{out} already holds a run (best.pt)" in one_paragraph(capsys.readouterr().err)
    assert [p.name for p in out.iterdir() if p.name != ".lock"] == ["best.pt"]
