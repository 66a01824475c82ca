"""--workers' default from this machine (data.cap_workers), no worker-count warning from torch with it, and what the
dry run says of the loader: the count and where it came from; with --dry-run loader, the measured decode rate."""

import os
import re
import warnings

import pytest
import torch
from conftest import random_resnet

import eval as imnet_eval
import train
from imnet.run import checkpoint, data
from imnet.tools import predict


@pytest.mark.parametrize("cores, processes, expected",
                         [(1, 1, 1), (2, 1, 1), (2, 2, 1), (4, 1, 3), (64, 8, 7), (64, 1, 16), (96, 4, 16)])
def test_the_default_is_the_cpus_shared_by_the_node_less_one(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert data.cap_workers(None) == (expected, None)
    assert data.cap_workers(expected) == (expected, None)  # a given count within 4 per core stays


def test_no_worker_count_warning_on_two_cores(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # torch reads it too
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    ckpt = tmp_path / "best.pt"
    torch.save(checkpoint.make_state(model=random_resnet(0).state_dict(), optimizer={}, progress=checkpoint.Progress(1),
                                     classes=[f"class_{c}" for c in range(3)],
                                     config={"model": "resnet18", "train_crop_size": 32,
                                             "eval_policy": {"resize_size": 36, "crop_size": 32}}), ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(["--fake-data", "--dry-run", "--model", "resnet18", "--num-classes", "3",
                           "--train-crop-size", "32", "--output", str(tmp_path / "run")]) == 0
        out = capsys.readouterr().out  # the dry run prints the choice and where it came from
        assert "  workers                1\n" in out
        assert "workers: 1 per process (2 CPUs this process may use, 1 local process, 1 left for the main process)\n" \
            in out
        assert imnet_eval.main(["--checkpoint", str(ckpt), "--data", str(tiny_data)]) == 0
        assert predict.main(["--checkpoint", str(ckpt), str(tiny_data / "val")]) == 0
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("given, cores, processes, says", [
    (None, 64, 8, "workers: 7 per process (64 CPUs this process may use, 8 local processes, 1 left for the main "
                  "process)"),
    (None, 96, 1, "workers: 16 per process (96 CPUs this process may use, 1 local process, 1 left for the main "
                  "process, at most 16)"),
    (None, 1, 1, "workers: 1 per process (1 CPU this process may use, 1 local process, 1 left for the main process, "
                 "at least 1)"),
    (8, 4, 1, "workers: 8 per process (--workers 8 as given)"),
    (100, 2, 1, "workers: 8 per process (--workers 100 lowered to 4 per CPU: 2 CPUs this process may use, 1 local "
                "process)")])
def test_the_worker_line_says_where_the_count_came_from(monkeypatch, given, cores, processes, says):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert data.describe_workers(given, data.cap_workers(given)[0]) == says


def dry_run(tiny_data, out, monkeypatch, *extra):
    """train.py's dry run on tiny_data -> (exit code, the keys of the ImageFolder items read)."""
    reads = []
    item = data.ImageFolder.__getitem__
    monkeypatch.setattr(data.ImageFolder, "__getitem__", lambda self, key: reads.append(key) or item(self, key))
    code = train.main(["--data", str(tiny_data), "--model", "resnet18", "--train-crop-size", "32", "--batch-size",
                       "8", "--output", str(out), "--workers", "2", *extra])
    return code, reads


def test_dry_run_loader_prints_the_rate_per_core_and_per_process(tiny_data, tmp_path, monkeypatch, capsys):
    """64 training images, timed after one warm-up; the rate per process is the rate per core x the workers. Nothing
    is written (no checkpoint, no run folder)."""
    code, reads = dry_run(tiny_data, tmp_path / "run", monkeypatch, "--dry-run", "loader")
    out = capsys.readouterr().out
    assert code == 0 and len(reads) == 1 + 64, (code, len(reads))
    assert "workers: 2 per process (--workers 2 as given)\n" in out
    found = re.search(r"^loader: ([0-9.]+) images/s per core \(64 training images decoded and transformed at 32 px "
                      r"on this process\); x 2 workers = ([0-9]+) images/s per process", out, re.M)
    assert found, out
    rate, per_process = float(found[1]), int(found[2])
    assert rate > 0 and per_process == round(rate * 2), found[0]
    assert not (tmp_path / "run").exists()


def test_a_bare_dry_run_decodes_no_training_image(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "decode_rate", lambda *a, **k: pytest.fail("a bare --dry-run timed the loader"))
    code, reads = dry_run(tiny_data, tmp_path / "run", monkeypatch, "--dry-run")
    assert code == 0 and reads == [] and "loader:" not in capsys.readouterr().out
    # --fake-data has nothing to decode: refused before any work
    assert train.main(["--fake-data", "--dry-run", "loader", "--output", str(tmp_path / "fake")]) == 2
    assert "--fake-data has none to decode" in capsys.readouterr().err
