"""python -m imnet.tools.export: plain state_dict out of a train.py checkpoint (regular or EMA weights), smaller than
the checkpoint, sha256 printed, the printed torchvision line works, class file next to it; bad input exits 2
with a message and no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import REPO, random_resnet
from imnet.run.checkpoint import Progress, make_state

CLASSES = ["cat", "dog", "fish"]


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imnet.tools.export", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def state_of(model_fn, seed, **kwargs):
    torch.manual_seed(seed)
    return model_fn(**kwargs).state_dict()


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    """What train.py writes, in miniature: model, EMA, classes, config, and a large optimizer state."""
    model = state_of(torchvision.models.resnet18, 0, num_classes=3)
    ema = state_of(torchvision.models.resnet18, 1, num_classes=3)
    n = sum(v.numel() for v in model.values() if v.is_floating_point())
    ckpt = make_state(model=model, ema={"module": ema, "num_updates": 10, "decay": 0.999},
                      optimizer={"state": {0: {"momentum_buffer": torch.zeros(n)}}, "param_groups": []},
                      classes=CLASSES, config={"model": "resnet18", "train_crop_size": 176}, progress=Progress(3))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(ckpt, path)
    return path


def printed_sha(stdout: str) -> str:
    m = re.search(r"^sha256: ([0-9a-f]{64})$", stdout, re.M)
    assert m, stdout
    return m.group(1)


def run_printed_line(stdout: str):
    """Execute the two printed lines (import + constructor/load) and return the model they build."""
    lines = stdout.splitlines()
    code = "\n".join(lines[lines.index("load it with:") + 1:])
    assert code.startswith("import torch, torchvision\nmodel = torchvision.models."), code
    namespace: dict = {}
    exec(code, namespace)
    return namespace["model"]


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_export_writes_the_plain_state_dict(resnet_ckpt, tmp_path, ema):
    out = tmp_path / "model.pth"
    r = run_export(resnet_ckpt, *(["--ema"] if ema else []), "-o", out)
    assert r.returncode == 0, r.stderr

    ckpt = torch.load(resnet_ckpt, map_location="cpu", weights_only=True)
    expected = ckpt["state_dict_ema"] if ema else ckpt["model"]
    other = ckpt["model"] if ema else ckpt["state_dict_ema"]
    exported = torch.load(out, map_location="cpu", weights_only=True)
    torchvision.models.resnet18(num_classes=3).load_state_dict(exported, strict=True)
    assert list(exported) == list(expected)
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    assert not all(torch.equal(exported[k], other[k]) for k in expected)  # the right one of the two

    assert out.stat().st_size < 0.6 * resnet_ckpt.stat().st_size  # the optimizer state is gone
    assert printed_sha(r.stdout) == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "model.classes.txt").read_text() == "cat\ndog\nfish\n"
    assert f'torchvision.models.resnet18(num_classes=3); model.load_state_dict(torch.load("{out}", ' \
           f'weights_only=True))' in r.stdout
    model = run_printed_line(r.stdout)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_deit_line_names_vision_transformer_with_the_training_crop(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer
    kwargs = dict(image_size=32, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                  num_classes=3)
    src = tmp_path / "last.pt"
    torch.save(make_state(model=state_of(VisionTransformer, 0, **kwargs), optimizer={}, classes=CLASSES,
                          config={"model": "deit_tiny", "train_crop_size": 32}, progress=Progress()), src)
    out = tmp_path / "deit.pth"
    r = run_export(src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert ("model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=12, "
            "num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=3)") in r.stdout
    model = run_printed_line(r.stdout)
    assert isinstance(model, VisionTransformer) and model.image_size == 32
    assert printed_sha(r.stdout) == hashlib.sha256(out.read_bytes()).hexdigest()


def test_distilled_deit_line_builds_imnets_deit_py_copied_alone(tmp_path):
    """deit_*_distilled is not a torchvision class: the printed line builds deit.DistilledVisionTransformer, and
    works in a folder holding nothing of imnet but a copy of imnet/deit.py."""
    from imnet.deit import DistilledVisionTransformer
    kwargs = dict(image_size=32, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                  num_classes=3)
    weights = state_of(DistilledVisionTransformer, 0, **kwargs)
    src = tmp_path / "last.pt"
    torch.save(make_state(model=weights, optimizer={}, classes=CLASSES,
                          config={"model": "deit_tiny_distilled", "train_crop_size": 32}, progress=Progress()), src)
    out = tmp_path / "deit.pth"
    r = run_export(src, "-o", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    code = lines[lines.index("load it with:") + 1:]
    assert code[0].startswith("import torch, deit  # deit.py: imnet/deit.py"), code
    assert code[1].startswith("model = deit.DistilledVisionTransformer(image_size=32, patch_size=16, num_layers=12, "
                              "num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=3); model.load_state_dict(")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "deit.py").write_text((REPO / "imnet" / "deit.py").read_text())
    script = "\n".join(code + ['torch.save(model.state_dict(), "back.pt")'])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=alone, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    back = torch.load(alone / "back.pt", weights_only=True)
    assert list(back) == list(weights) and all(torch.equal(back[k], weights[k]) for k in weights)


def bad_cases(tmp: Path, good: Path) -> dict:
    """name -> (argv, a word the message must contain)."""
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "garbage.pt").write_bytes(b"this is not a torch file\n" * 10)
    torch.save({"weight": torch.zeros(2)}, tmp / "plain.pt")
    torch.save({"epoch": 3, "note": "hello"}, tmp / "foreign.pt")
    no_ema = torch.load(good, map_location="cpu", weights_only=True)
    no_ema["model_ema"] = no_ema["state_dict_ema"] = None
    del no_ema["checksum"]  # edited on purpose
    no_ema["optimizer"] = {}  # keeps the files small
    torch.save(no_ema, tmp / "no_ema.pt")
    wrong = dict(no_ema, classes=["a", "b", "c", "d"])  # 4 names, a 3-way classifier
    torch.save(wrong, tmp / "mismatch.pt")
    (tmp / "a_file").write_text("x")
    (tmp / "a_dir.pth").mkdir()
    out = tmp / "out.pth"
    return {
        "missing": ([tmp / "nope.pt", "-o", out], "does not exist"),
        "empty": ([tmp / "empty.pt", "-o", out], "empty"),
        "garbage": ([tmp / "garbage.pt", "-o", out], "Cannot read checkpoint"),
        "plain_state_dict": ([tmp / "plain.pt", "-o", out], "plain state_dict"),
        "foreign_dict": ([tmp / "foreign.pt", "-o", out], "not a train.py checkpoint"),
        "ema_without_ema": ([tmp / "no_ema.pt", "--ema", "-o", out], "no EMA"),
        "weights_do_not_fit": ([tmp / "mismatch.pt", "-o", out], "does not fit its own settings"),
        "missing_output_folder": ([good, "-o", tmp / "no" / "such" / "dir" / "m.pth"], "Cannot write"),
        "output_under_a_file": ([good, "-o", tmp / "a_file" / "m.pth"], "Cannot write"),
        "output_is_a_folder": ([good, "-o", tmp / "a_dir.pth"], "folder"),
        "output_is_the_input": ([good, "-o", good], "checkpoint itself"),
        "no_output": ([good], "-o"),
    }


CASES = ["missing", "empty", "garbage", "plain_state_dict", "foreign_dict", "ema_without_ema", "weights_do_not_fit",
         "missing_output_folder", "output_under_a_file", "output_is_a_folder", "output_is_the_input", "no_output"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, resnet_ckpt):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, bad_cases(tmp, resnet_ckpt)


def call_main(argv) -> int:
    """In-process: any exception other than SystemExit propagates and fails the test, which is exactly the
    condition for a traceback when run as ``python -m imnet.tools.export`` (whose last line is sys.exit(main()))."""
    from imnet.tools.export import main
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_a_message(bad, resnet_ckpt, case, capsys):
    tmp, cases = bad
    argv, word = cases[case]
    size_before = resnet_ckpt.stat().st_size
    assert call_main(argv) == 2
    captured = capsys.readouterr()
    assert word in captured.err and captured.out == "", captured
    assert len(captured.err.strip().splitlines()) <= 3, captured.err  # one paragraph (argparse: usage + error)
    assert not (tmp / "out.pth").exists() and not (tmp / "out.classes.txt").exists()
    assert not [p for p in tmp.iterdir() if ".tmp" in p.name]
    assert resnet_ckpt.stat().st_size == size_before


@pytest.mark.parametrize("case", ["garbage", "ema_without_ema"])
def test_bad_input_from_the_command_line_has_no_traceback(bad, case):
    argv, word = bad[1][case]
    r = run_export(*argv)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and word in r.stderr, r.stderr
    assert r.stderr.startswith("imnet.tools.export: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------------------------------ the sidecar

POLICY = {"resize_size": 40, "crop_size": 32, "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
          "std": [0.2, 0.25, 0.3], "decode": "full"}


@pytest.fixture(scope="module")
def policy_ckpt(tmp_path_factory) -> Path:
    """A train.py checkpoint validated with a policy far from the defaults (40 -> 32, bicubic, own mean/std)."""
    row = {"epoch": 2, "val_top1": 40.0, "ema_val_top1": 30.0}
    ckpt = make_state(model=random_resnet(0).state_dict(),
                      ema={"module": random_resnet(1).state_dict(), "num_updates": 5}, optimizer={},
                      classes=["class_0", "class_1", "class_2"], progress=Progress(2, history=[row]),
                      config={"model": "resnet18", "train_crop_size": 32, "eval_policy": POLICY})
    path = tmp_path_factory.mktemp("policy") / "best.pt"
    torch.save(ckpt, path)
    return path


def evaluate(capsys, *argv) -> tuple[dict, str]:
    import json

    import eval as imnet_eval
    out = Path(argv[argv.index("--json") + 1])
    code = imnet_eval.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    return json.loads(out.read_text()), err


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_an_export_is_evaluated_with_its_recorded_policy(policy_ckpt, tiny_data, tmp_path, capsys, ema):
    """eval.py --weights-file on an export (no --model, no policy flags) gives the checkpoint's own figures: same
    policy, same classes, same top-1 and loss; without the sidecar, a loud warning and the defaults."""
    out = tmp_path / "model.pth"
    assert call_main([policy_ckpt, "-o", out, *(["--ema"] if ema else [])]) == 0
    printed = capsys.readouterr().out
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["eval_policy"]["resize_size"] == 40 and side["eval_policy"]["mean"] == POLICY["mean"]
    assert side["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and side["model"] == "resnet18"
    assert side["kwargs"] == {"num_classes": 3} and side["classes_file"] == "model.classes.txt"
    assert "model.json" in printed and "resize 40 (shorter side, bicubic) -> centre crop 32" in printed

    common = ["--data", tiny_data, "--workers", "0", "--batch-size", "8"]
    a, _ = evaluate(capsys, "--checkpoint", policy_ckpt, *(["--use-ema"] if ema else []), *common,
                    "--json", tmp_path / "ckpt.json")
    b, err = evaluate(capsys, "--weights-file", out, *common, "--json", tmp_path / "file.json")
    assert "warning" not in err, err
    assert b["policy"] == a["policy"] and b["policy"]["interpolation"] == "bicubic"
    assert (b["top1"], b["top5"], b["count"]) == (a["top1"], a["top5"], a["count"]) == (b["top1"], b["top5"], 21)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["weights"] == ("ema" if ema else "model") and b["recorded"]["val_top1"] == 40.0

    if ema:
        return
    # the same .pth without its sidecar: the default policy, said loudly; the figures are not the checkpoint's
    (tmp_path / "model.json").rename(tmp_path / "elsewhere.json")
    c, err = evaluate(capsys, "--model", "resnet18", "--weights-file", out, *common, "--json", tmp_path / "bare.json")
    assert "warning: " in err and "has no sidecar" in err and "resize 256 (crop_pct 0.875)" in err, err
    assert "ImageNet's mean and std" in err and "bilinear interpolation" in err, err
    assert (c["policy"]["resize_size"], c["policy"]["crop_size"]) == (256, 224) and c["loss"] != a["loss"]
    # every part given by the flags: nothing is a default, nothing to warn about
    _, err = evaluate(capsys, "--model", "resnet18", "--weights-file", out, *common, "--val-resize-size", "40",
                      "--val-crop-size", "32", "--val-interpolation", "bicubic", "--mean", "0.5", "0.4", "0.3",
                      "--std", "0.2", "0.25", "0.3", "--json", tmp_path / "flags.json")
    assert "warning" not in err, err


def test_a_sidecar_that_does_not_match_its_weights_is_refused(policy_ckpt, tiny_data, tmp_path, capsys):
    import eval as imnet_eval
    out = tmp_path / "model.pth"
    assert call_main([policy_ckpt, "-o", out]) == 0
    torch.save(random_resnet(7).state_dict(), out)  # other weights under the exported name
    capsys.readouterr()
    assert imnet_eval.main(["--weights-file", str(out), "--data", str(tiny_data), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "does not match its sidecar" in err and hashlib.sha256(out.read_bytes()).hexdigest() in err, err
    assert len(err.strip().splitlines()) == 1, err
    # a --model that contradicts the sidecar
    assert call_main([policy_ckpt, "-o", out]) == 0
    capsys.readouterr()
    assert imnet_eval.main(["--model", "resnet50", "--weights-file", str(out), "--data", str(tiny_data)]) == 2
    assert "contradicts" in capsys.readouterr().err
