"""--workers' default from this machine (data.cap_workers), and no worker-count warning from torch with it."""

import os
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
        assert "  workers                1\n" in capsys.readouterr().out  # the dry run prints the choice
        assert imnet_eval.main(["--checkpoint", str(ckpt), "--data", str(tiny_data)]) == 0
        assert predict.main(["--checkpoint", str(ckpt), str(tiny_data / "val")]) == 0
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
