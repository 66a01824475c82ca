"""The golden run: a tiny seeded training run whose final weights, EMA and optimizer state are pinned by hash.

A refactor must not move behaviour: on the platform the hashes were recorded on, this run must give exactly
these bytes. WHEN THEY MAY CHANGE, and only then (update GOLDEN and say why in the commit):
- a deliberate change of what a run computes: a random stream's derivation (imnet.run.seeds), the augmentation or
  its order, the step (loss, mixing, EMA, the optimizer's arithmetic), the initialisation, the data order;
- another torch / torchvision release, or another CPU instruction set (the fingerprint below): floating-point
  kernels differ. On another platform only the platform-independent checks run: the data stream's hash (uint8
  batches and labels, integer arithmetic) and the final loss within a tolerance.

Recorded with: torch 2.14.1, torchvision 0.29.1, 2 threads, on this project's 2-core x86-64 CPU machine
(`python tests/test_golden.py` prints the current values).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (run as a script: conftest beside this file)
from conftest import make_imagefolder  # noqa: E402

ARGS = ["--model", "deit_tiny", "--epochs", "2", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "1e-3", "--warmup-epochs", "1",
        "--opt", "adamw", "--weight-decay", "0.05", "--log-every", "2", "--quiet", "--seed", "3",
        "--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1", "--ema", "--ema-decay", "0.9",
        "--random-erase", "0.25", "--drop-path", "0.1", "--workers", "2"]

GOLDEN = {  # `python tests/test_golden.py` prints the current values
    "fingerprint": "torch 2.14.1+cu130, torchvision 0.29.1+cu130, 2 threads, ['avx2', 'avx512_bf16', 'avx512f', 'fma']",
    "data": "e74d621e9b5fc4d86a15d2590d0a3b200228c6c211afcf59f811cbbe429e9ecb",
    "model": "1d7e51c5c3b04ed2ed28d9bd7a9c9a0e250c6d3101f9eef2fe7d05a0bb50cf7e",
    "ema": "7b8f0eb971e60794e341821b4ebe77ea04eb98ea718d334dbd2ea1fee0bf1f2a",
    "optimizer": "36df4ff89b3197d1f90d6e550c78af8d3a268a23d3c5d457f354159670559683",
    "final_loss": 0.7061449885368347,
}


def fingerprint() -> str:
    """What floating-point results depend on besides the code: torch and torchvision, threads, the CPU's
    vector instruction sets."""
    import torchvision
    flags = set()
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    isa = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"})
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, {isa}"


def digest(obj) -> str:
    h = hashlib.sha256()

    def feed(o):
        if torch.is_tensor(o):
            h.update(o.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                feed(v)
        else:
            h.update(repr(o).encode())
    feed(obj)
    return h.hexdigest()


def golden_run(tmp: Path) -> dict:
    import train
    from imnet.run import data as imnet_data
    root = make_imagefolder(tmp / "data", num_classes=3, train_per_class=16, val_per_class=5)
    out = tmp / "run"
    assert train.main(ARGS + ["--data", str(root), "--output", str(out)]) == 0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    # The data stream: what the loader hands the first epoch's steps, through the run's own transform and sampler.
    from imnet.run import config, flags
    below, given = flags.parse_args(ARGS + ["--data", str(root), "--output", str(tmp / "unused")])
    cfg = config.resolve(below, given, 1)
    _, train_set, _ = train.build_datasets(cfg)
    sampler = imnet_data.TrainSampler(len(train_set), 1, 0, seed=cfg.seed, drop_last=True)
    loader = imnet_data.build_loader(train_set, sampler, cfg.batch_size, 0, drop_last=True)
    batches = [(x, y) for x, y, _ in loader]
    losses = [e["loss"] for e in map(json.loads, open(out / "log.jsonl")) if e["event"] == "train"]
    return {"fingerprint": fingerprint(), "data": digest(batches), "model": digest(state["model"]),
            "ema": digest(state["state_dict_ema"]), "optimizer": digest(state["optimizer"]["state"]),
            "final_loss": losses[-1]}


def test_the_golden_run_is_unchanged(tmp_path):
    got = golden_run(tmp_path)
    assert got["data"] == GOLDEN["data"], "the data stream (augmentation, order) changed: see the module docstring"
    assert got["final_loss"] == pytest.approx(GOLDEN["final_loss"], rel=1e-3)
    if got["fingerprint"] != GOLDEN["fingerprint"]:
        pytest.skip(f"weights are pinned for {GOLDEN['fingerprint']}; this is {got['fingerprint']}")
    for key in ("model", "ema", "optimizer"):
        assert got[key] == GOLDEN[key], f"{key} changed: see the module docstring for when that is allowed"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(golden_run(Path(tmp)), indent=4))
