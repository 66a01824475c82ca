"""The checkpoint as others read it and as disks damage it: torchvision's and timm's way of loading the EMA get the
EMA; flipped bytes are found on every load (resume, eval.py, --init-from, export); format 2 still reads."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from torch.optim.swa_utils import AveragedModel

import eval as imnet_eval
import train
from conftest import make_imagefolder
from imnet.run import checkpoint

TINY = ["--model", "resnet18", "--epochs", "2", "--batch-size", "8", "--train-crop-size", "32", "--val-crop-size",
        "32", "--val-resize-size", "36", "--lr", "0.01", "--opt", "sgd", "--log-every", "3", "--quiet", "--seed", "1",
        "--workers", "0", "--ema", "--ema-decay", "0.9"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("ckpt_data"), num_classes=3, train_per_class=8, val_per_class=3)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt_run")
    assert train.main(TINY + ["--data", str(data), "--output", str(out)]) == 0
    return out


def raw(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_torchvision_reads_the_ema_as_its_reference_scripts_do(run):
    """references/classification/train.py: model_ema = ExponentialMovingAverage(model) (an AveragedModel) and,
    on --resume, model_ema.load_state_dict(checkpoint["model_ema"]); --test-only --model-ema then evaluates
    model_ema.module."""
    ckpt = raw(run / "last.pt")
    model = torchvision.models.resnet18(num_classes=3)
    model_ema = AveragedModel(model, use_buffers=True)
    model_ema.load_state_dict(ckpt["model_ema"])  # strict
    ours = checkpoint.weights_of(checkpoint.read_state(run / "last.pt"), "ema")
    for k, v in model_ema.module.state_dict().items():
        assert torch.equal(v, ours[k]), k
    assert not all(torch.equal(ckpt["model"][k], ours[k]) for k in ours)  # the EMA, not the trained weights
    assert int(model_ema.n_averaged) == 2 * (24 // 8)  # one update per optimizer step


def timm_state_dict(ckpt: dict, use_ema: bool) -> dict:
    """timm's timm/models/_helpers.py load_state_dict (read, not imported): the first of state_dict_ema,
    model_ema (with use_ema), state_dict, model; 'module.' then '_orig_mod.' prefixes stripped."""
    key = ""
    if use_ema and ckpt.get("state_dict_ema") is not None:
        key = "state_dict_ema"
    elif use_ema and ckpt.get("model_ema") is not None:
        key = "model_ema"
    elif "state_dict" in ckpt:
        key = "state_dict"
    elif "model" in ckpt:
        key = "model"
    state = ckpt[key] if key else ckpt
    strip = lambda k: k[7:] if k.startswith("module.") else k
    return {strip(k).replace("_orig_mod.", ""): v for k, v in state.items()}


def test_timm_validate_use_ema_gets_the_ema(run):
    ckpt = raw(run / "best.pt")
    for use_ema, which in ((True, "ema"), (False, "model")):
        model = torchvision.models.resnet18(num_classes=3)
        model.load_state_dict(timm_state_dict(ckpt, use_ema), strict=True)
        expected = checkpoint.weights_of(checkpoint.read_state(run / "best.pt"), which)
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()), which
    # The file holds the EMA tensors once: both layouts share them.
    a, b = ckpt["state_dict_ema"], ckpt["model_ema"]
    assert all(a[k].untyped_storage().data_ptr() == b["module." + k].untyped_storage().data_ptr() for k in a)


def flip_bytes_in_a_tensor(path: Path, n: int = 64) -> None:
    """Flip n bytes in the middle of the largest tensor record of a torch zip file (what a bad disk or copy
    does), leaving the zip structure intact."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data = bytearray(path.read_bytes())
    data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_found_on_every_load(run, data, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    flip_bytes_in_a_tensor(bad / "last.pt")
    assert torch.load(bad / "last.pt", weights_only=True)  # torch itself loads it without a word
    needle = "is corrupt: its content does not match the checksum"
    capsys.readouterr()
    assert train.main(TINY + ["--data", str(data), "--output", str(bad), "--resume", "auto", "--epochs", "3"]) == 2
    assert needle in capsys.readouterr().err
    assert imnet_eval.main(["--checkpoint", str(bad / "last.pt"), "--data", str(data), "--workers", "0"]) == 2
    assert needle in capsys.readouterr().err
    assert train.main(TINY + ["--data", str(data), "--output", str(tmp_path / "new"), "--init-from",
                              str(bad / "last.pt")]) == 2
    assert needle in capsys.readouterr().err
    from imnet.tools.export import main as export
    assert export([str(bad / "last.pt"), "-o", str(tmp_path / "m.pth")]) == 2
    assert needle in capsys.readouterr().err
    # The intact copy next to it still loads.
    assert checkpoint.read_state(run / "last.pt")["global_step"] == 6


def test_the_checksum_covers_every_entry():
    state = checkpoint.make_state(model={"w": torch.arange(4.0)}, optimizer={}, progress=checkpoint.Progress(2),
                                  config={"model": "x"}, classes=["a", "b"])
    assert state["checksum"] == checkpoint.content_digest(state)
    for change in (lambda s: s["model"]["w"].add_(1e-7), lambda s: s.update(epoch=3),
                   lambda s: s["classes"].reverse(), lambda s: s["config"].update(model="y"),
                   lambda s: s.update(model={"w": torch.arange(4.0).double()}),
                   lambda s: s.update(model={"w": s["model"]["w"].view(torch.int32)})):  # same bytes, other dtype
        edited = {**state, "model": {"w": state["model"]["w"].clone()}, "classes": list(state["classes"]),
                  "config": dict(state["config"])}
        change(edited)
        assert checkpoint.content_digest(edited) != state["checksum"]


def test_format_2_checkpoints_still_resume(run, data, tmp_path):
    """A checkpoint of the previous format (EMA under "ema" as ModelEma's state_dict, no checksum) resumes."""
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for name in ("last.pt", "best.pt"):
        s = raw(old / name)
        s["ema"] = {"module": s.pop("state_dict_ema"), "num_updates": int(s.pop("model_ema")["n_averaged"]),
                    "decay": 0.9, "warmup": False, "every": 1}
        s["version"] = 2
        del s["checksum"]
        torch.save(s, old / name)
    state = checkpoint.read_state(old / "last.pt")
    assert state["version"] == checkpoint.VERSION and checkpoint.has_weights(state, "ema")
    assert train.main(TINY + ["--data", str(data), "--output", str(old), "--resume", "auto", "--epochs", "3"]) == 0
    assert raw(old / "last.pt")["global_step"] == 9


def test_the_ema_update_count_survives_a_resume(data, tmp_path):
    """With --ema-warmup the decay depends on the number of EMA updates done (n_averaged in the checkpoint):
    stopped mid-epoch and resumed, the EMA ends bitwise equal to the uninterrupted run's."""
    args = TINY + ["--ema-warmup", "--data", str(data)]
    assert train.main(args + ["--output", str(tmp_path / "ref")]) == 0
    assert train.main(args + ["--output", str(tmp_path / "cut"), "--stop-at-step", "4"]) == 0
    assert int(raw(tmp_path / "cut" / "last.pt")["model_ema"]["n_averaged"]) == 4
    assert train.main(args + ["--output", str(tmp_path / "cut"), "--resume", "auto"]) == 0
    a, b = raw(tmp_path / "ref" / "last.pt"), raw(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["state_dict_ema"][k], b["state_dict_ema"][k]) for k in a["state_dict_ema"])
    assert int(b["model_ema"]["n_averaged"]) == 6
