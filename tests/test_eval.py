"""eval.py: exact (and distributed) evaluation, crop policies, TTA, predictions, bad input, benchmarking.

Checkpoints are made by hand from a torchvision model and the documented metadata keys, so these tests do
not depend on train.py, except the one that checks eval.py against the figure train.py recorded.
"""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO, make_imagefolder, random_resnet
from PIL import Image
from torchvision.transforms import v2

import eval as imnet_eval
from imnet.run import benchmark, checkpoint, data, evaluation, tta
from imnet import transforms
from imnet.run.config import EvalPolicy

CLASSES = ["class_0", "class_1", "class_2"]
POLICY = {"resize_size": 36, "crop_size": 32, "interpolation": "bilinear",
          "mean": list(transforms.IMAGENET_MEAN), "std": list(transforms.IMAGENET_STD)}
PYTHON = sys.executable  # the interpreter running the tests, whatever venv it lives in
TORCHRUN_ARGS = [sys.executable, "-m", "torch.distributed.run"]


def make_checkpoint(path, classes=CLASSES, policy=POLICY, ema=True, model_seed=0):
    """A checkpoint in train.py's schema (imnet.run.checkpoint.make_state) around a random resnet18."""
    ckpt = checkpoint.make_state(
        model=random_resnet(model_seed).state_dict(), optimizer={},
        ema={"module": random_resnet(model_seed + 1).state_dict(), "num_updates": 10, "decay": 0.99} if ema else None,
        progress=checkpoint.Progress(epoch=1, global_step=10, history=[
            {"epoch": 0, "val_top1": 50.0, "val_top5": 100.0, "val_loss": 1.0, "ema_val_top1": None}]),
        config={"model": "resnet18", "train_crop_size": 32, "eval_policy": dict(policy)}, classes=classes)
    torch.save(ckpt, path)
    return Path(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def three_images(tmp_path_factory):
    """One image per class: enough to run the policy checks at large resolutions quickly."""
    root = make_imagefolder(tmp_path_factory.mktemp("three"), train_per_class=1, val_per_class=1)
    return root


def run_eval(capsys, *argv):
    """eval.main in this process -> (exit code, stdout, stderr)."""
    code = imnet_eval.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manual_probabilities(model, views, policy=POLICY):
    """Softmax probabilities averaged over the views: views is uint8 (N, V, 3, H, W)."""
    n, v = views.shape[:2]
    x = transforms.normalize(views.flatten(0, 1), policy["mean"], policy["std"])
    with torch.no_grad():
        return model(x).softmax(dim=1).view(n, v, -1).mean(dim=1)


def val_files(root):
    """(path, label) in ImageFolder order (sorted class folders, sorted files)."""
    return [(p, label) for label, c in enumerate(CLASSES) for p in sorted((root / "val" / c).iterdir())]


def probs_from_csv(rows, classes=CLASSES):
    """The (N, C) probabilities a predictions CSV lists (all classes are listed when C <= 5)."""
    out = torch.zeros(len(rows), len(classes), dtype=torch.float64)
    for i, row in enumerate(rows):
        for k in range(1, len(classes) + 1):
            out[i, classes.index(row[f"class{k}"])] = float(row[f"prob{k}"])
    return out


# ----------------------------------------------------------------------------------- single crop, outputs
def test_single_crop_matches_manual_computation(tiny_data, ckpt, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "p.csv"
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", tiny_data, "--batch-size", 4, "--workers", 0,
                              "--json", out_json, "--predictions", out_csv)
    assert code == 0, err
    assert "warning" not in err  # the checkpoint's own policy: no mismatch
    r = json.loads(out_json.read_text())

    # Manual: the same eval transform, normalize, model, softmax, one image at a time.
    model = random_resnet(0)
    transform = transforms.eval_transform(crop_size=32, resize_size=36)
    files = val_files(tiny_data)
    views = torch.stack([transform(p) for p, _ in files]).unsqueeze(1)
    probs = manual_probabilities(model, views)
    labels = torch.tensor([label for _, label in files])
    top1 = 100.0 * (probs.argmax(1) == labels).sum().item() / len(files)
    loss = torch.nn.functional.cross_entropy(probs.log(), labels).item()
    assert 0 < top1 < 100  # the model is neither hopeless nor perfect, so the comparison is informative
    assert r["count"] == 21 and r["top1"] == pytest.approx(top1) and r["top5"] == 100.0
    assert r["loss"] == pytest.approx(loss, rel=1e-5)
    assert r["views_per_image"] == 1 and r["tta"] == "none" and r["weights"] == "model"
    assert f"top-1 {top1:.3f}%" in out and "images 21" in out

    # Predictions: one row per file, in dataset order, with the manual probabilities.
    rows = read_csv(out_csv)
    assert [row["file"] for row in rows] == [os.path.relpath(p, tiny_data / "val") for p, _ in files]
    assert [row["true_class"] for row in rows] == [CLASSES[label] for _, label in files]
    assert torch.allclose(probs_from_csv(rows), probs.double(), atol=2e-6)

    # Per-class accuracy and confused pairs agree with the predictions.
    for c in CLASSES:
        mine = [row for row in rows if row["true_class"] == c]
        hits = sum(row["class1"] == c for row in mine)
        assert r["per_class"][c] == {"top1": pytest.approx(100.0 * hits / len(mine)), "count": len(mine)}
    for pair in r["confused_pairs"]:
        n = sum(row["true_class"] == pair["true"] and row["class1"] == pair["predicted"] for row in rows)
        assert pair["count"] == n > 0 and pair["true"] != pair["predicted"]
    wrong = sum(row["class1"] != row["true_class"] for row in rows)
    assert sum(p["count"] for p in r["confused_pairs"]) == wrong  # 3 classes: at most 6 pairs, all shown
    assert "per-class top-1" in out and "most confused" in out


def test_use_ema_evaluates_the_ema_weights(three_images, ckpt, tmp_path, capsys):
    """--use-ema must give what the EMA weights give when stored as the plain model (and not the model's)."""
    swapped = torch.load(ckpt, weights_only=True)
    swapped["model"] = swapped["state_dict_ema"]
    del swapped["checksum"]  # edited on purpose
    torch.save(swapped, tmp_path / "swapped.pt")
    results = {}
    for name, argv in {"ema": [ckpt, "--use-ema"], "swapped": [tmp_path / "swapped.pt"], "model": [ckpt]}.items():
        code, _, err = run_eval(capsys, "--checkpoint", *argv, "--data", three_images, "--workers", 0,
                                "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["ema"]["weights"] == "ema"
    assert results["ema"]["loss"] == results["swapped"]["loss"] != results["model"]["loss"]


def test_weights_file_of_a_plain_state_dict(three_images, ckpt, tmp_path, capsys):
    """--model NAME --weights-file FILE evaluates a bare torchvision state_dict like the same weights in a checkpoint."""
    torch.save(random_resnet(0).state_dict(), tmp_path / "resnet18.pth")
    code, _, err = run_eval(capsys, "--model", "resnet18", "--weights-file", tmp_path / "resnet18.pth",
                            "--data", three_images / "val", "--resize-size", 36, "--crop-size", 32, "--workers", 0,
                            "--json", tmp_path / "file.json")
    assert code == 0, err
    code, _, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", 0,
                            "--json", tmp_path / "ckpt.json")
    assert code == 0, err
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("file", "ckpt"))
    assert (a["top1"], a["loss"], a["count"]) == (b["top1"], b["loss"], b["count"])


def test_channels_last_and_bf16_agree_with_fp32(three_images, ckpt, tmp_path, capsys):
    results = {}
    for name, flags in {"fp32": [], "cl": ["--channels-last"], "bf16": ["--amp", "bf16"]}.items():
        code, _, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", 0, *flags,
                                "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["cl"]["loss"] == pytest.approx(results["fp32"]["loss"], rel=1e-5)
    assert results["bf16"]["loss"] == pytest.approx(results["fp32"]["loss"], rel=5e-2)
    assert results["bf16"]["amp"] == "bf16" and results["bf16"]["count"] == 3


def test_reproduces_the_top1_train_py_recorded(tiny_data, tmp_path, capsys):
    """eval.py on best.pt of a tiny training run gives exactly the val top-1 train.py recorded in it."""
    run = tmp_path / "run"
    result = subprocess.run([PYTHON, str(REPO / "train.py"), "--data", str(tiny_data), "--model", "resnet18",
                             "--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--train-crop-size", "32",
                             "--val-crop-size", "32", "--val-resize-size", "36", "--workers", "0",
                             "--output", str(run)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = torch.load(run / "best.pt", weights_only=True)["metrics"]
    code, out, err = run_eval(capsys, "--checkpoint", run / "best.pt", "--data", tiny_data, "--batch-size", 5,
                              "--workers", 0, "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["top1"] == recorded["val_top1"] and r["top5"] == recorded["val_top5"]  # exactly: same counts
    assert r["count"] == 21 == recorded.get("val_count", 21)
    assert r["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5)  # sums of floats in other batch sizes
    assert f"training recorded val_top1 {recorded['val_top1']:.3f}%" in out


# ------------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize("crop, crop_pct, resize", [(224, 0.875, 256), (384, 1.0, 384)])
def test_crop_pct_arithmetic_and_printed_policy(three_images, ckpt, tmp_path, capsys, crop, crop_pct, resize):
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--crop-size", crop,
                              "--crop-pct", crop_pct, "--workers", 0, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert f"policy: resize {resize} (shorter side, bilinear) -> centre crop {crop} (crop_pct {crop_pct:.4f})" in out
    policy = json.loads((tmp_path / "r.json").read_text())["policy"]
    assert (policy["resize_size"], policy["crop_size"]) == (resize, crop)
    assert "resize policy mismatch" in err and f"resize {resize} / crop {crop}" in err
    assert "normalization mismatch" not in err


def test_policy_resolution():
    """Flags override the stored policy; --crop-size alone keeps the stored crop/resize ratio."""
    parse = lambda *a: imnet_eval.build_parser().parse_args([str(x) for x in a])
    stored = dict(POLICY, resize_size=256, crop_size=224)
    resolve = lambda *a: imnet_eval.resolve_policy(parse(*a), EvalPolicy.from_dict(stored))
    assert (resolve().resize_size, resolve().crop_size) == (256, 224)  # the checkpoint's
    assert resolve("--crop-size", 288).resize_size == 329  # floor(288 * 256 / 224)
    assert resolve("--crop-size", 224, "--crop-pct", 0.95).resize_size == 235  # floor(224 / 0.95)
    assert resolve("--resize-size", 300, "--crop-size", 288).resize_size == 300
    assert resolve("--interpolation", "bicubic").interpolation == "bicubic"
    no_ckpt = imnet_eval.resolve_policy(parse(), None)  # a bare weights file: the classic 224 / 256
    assert (no_ckpt.resize_size, no_ckpt.crop_size, list(no_ckpt.mean)) == (256, 224, POLICY["mean"])


def test_normalization_mismatch_is_warned(three_images, ckpt, capsys):
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", 0,
                              "--mean", 0.5, 0.5, 0.5, "--std", 0.5, 0.5, 0.5)
    assert code == 0, err
    assert "normalization mismatch" in err and "resize policy mismatch" not in err
    assert "mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in out


# ---------------------------------------------------------------------------------------------- TTA
def ten_crop_reference(image, resize, crop, interpolation=v2.InterpolationMode.BILINEAR):
    """torchvision's Resize + FiveCrop on the tensor (the canonical evaluation pixels), each crop followed by its
    mirror: uint8 (10, 3, crop, crop)."""
    x = v2.Resize(resize, interpolation=interpolation, antialias=True)(v2.functional.pil_to_tensor(image))
    five = torch.stack(v2.FiveCrop(crop)(x))
    return torch.cat([five, five.flip(-1)])


def test_ten_crop_views_equal_torchvision():
    """Our uint8 10-crop equals torchvision's FiveCrop plus mirrors, and the tiles round-trip through make_views."""
    image = Image.fromarray(torch.randint(0, 256, (45, 60, 3), dtype=torch.uint8).numpy())  # odd margins
    ours = tta.TenCrop(32, 40, "bicubic")
    mine = ours.views(image)
    assert mine.dtype == torch.uint8
    assert torch.equal(mine, ten_crop_reference(image, 40, 32, v2.InterpolationMode.BICUBIC))
    tiles = ours(image)
    assert tiles.shape == (3, 320, 32)
    views, v = tta.make_views(tiles.unsqueeze(0).repeat(2, 1, 1, 1), "10crop")
    assert v == 10 and torch.equal(views, torch.cat([mine, mine]))


def test_flip_views():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    views, v = tta.make_views(images, "flip")
    assert v == 2 and views.shape == (6, 3, 8, 8)
    assert torch.equal(views[0::2], images) and torch.equal(views[1::2], images.flip(-1))


@pytest.mark.parametrize("tta", ["flip", "10crop"])
def test_tta_averages_probabilities(three_images, ckpt, tmp_path, capsys, tta):
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--tta", tta, "--batch-size", 2,
                              "--workers", 0, "--json", tmp_path / "r.json", "--predictions", tmp_path / "p.csv")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["views_per_image"] == {"flip": 2, "10crop": 10}[tta] and r["count"] == 3
    assert f"tta {tta} ({r['views_per_image']} views per image)" in out

    # Manual: build each image's views independently and average the softmax over them.
    files = val_files(three_images)
    if tta == "flip":
        crop = transforms.eval_transform(crop_size=32, resize_size=36)
        views = torch.stack([torch.stack([crop(p), crop(p).flip(-1)]) for p, _ in files])
    else:
        views = torch.stack([ten_crop_reference(Image.open(p).convert("RGB"), 36, 32) for p, _ in files])
    assert views.shape[:2] == (3, r["views_per_image"])
    probs = manual_probabilities(random_resnet(0), views)
    labels = torch.tensor([label for _, label in files])
    assert torch.allclose(probs_from_csv(read_csv(tmp_path / "p.csv")), probs.double(), atol=2e-6)
    assert r["top1"] == pytest.approx(100.0 * (probs.argmax(1) == labels).sum().item() / 3)
    assert r["loss"] == pytest.approx(torch.nn.functional.nll_loss(probs.log(), labels).item(), rel=1e-5)


# -------------------------------------------------------------------------------------- distributed
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_counts_each_image_once(tiny_data, ckpt, tmp_path, capsys):
    """21 images over 2 ranks (10 + 11, last batches partial): same count, top-1 and predictions as 1 process."""
    common = ["--checkpoint", ckpt, "--data", tiny_data, "--batch-size", 4, "--workers", 0]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([*TORCHRUN_ARGS, "--nproc_per_node=2", "--master_addr", "127.0.0.1", "--master_port",
                             str(free_port()), str(REPO / "eval.py"), *map(str, common), "--json",
                             str(tmp_path / "two.json"), "--predictions", str(tmp_path / "two.csv")],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("top-1 ") == 1  # printed by rank 0 only
    code, _, err = run_eval(capsys, *common, "--json", tmp_path / "one.json", "--predictions", tmp_path / "one.csv")
    assert code == 0, err
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["world_size"] == 2 and two["count"] == one["count"] == 21
    assert two["top1"] == one["top1"] and two["top5"] == one["top5"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["per_class"] == one["per_class"]
    rows2, rows1 = read_csv(tmp_path / "two.csv"), read_csv(tmp_path / "one.csv")
    assert [r["file"] for r in rows2] == [r["file"] for r in rows1]  # every file once, in order
    assert len({r["file"] for r in rows2}) == 21
    assert torch.allclose(probs_from_csv(rows2), probs_from_csv(rows1), atol=2e-6)


# -------------------------------------------------------------------------------------------- bad input
def test_different_classes_are_refused_with_the_difference(tiny_data, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other.pt", classes=["class_0", "class_1", "zebra"])
    code, out, err = run_eval(capsys, "--checkpoint", other, "--data", tiny_data, "--workers", 0)
    assert code == 2 and "top-1" not in out
    assert "1 classes of the checkpoint are not in the data: 'zebra'" in err
    assert "1 class folders are not classes of the checkpoint: 'class_2'" in err


class NotATensor:
    """Any pickled object that is not a tensor or a plain type: weights_only=True must refuse to load it."""


def test_missing_and_corrupt_checkpoints(tiny_data, ckpt, tmp_path, capsys):
    code, _, err = run_eval(capsys, "--checkpoint", tmp_path / "nope.pt", "--data", tiny_data)
    assert code == 2 and "does not exist" in err

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    code, _, err = run_eval(capsys, "--checkpoint", truncated, "--data", tiny_data)
    assert code == 2 and "Cannot read checkpoint" in err and "corrupt" in err

    torch.save({"model": NotATensor()}, tmp_path / "code.pt")
    code, _, err = run_eval(capsys, "--checkpoint", tmp_path / "code.pt", "--data", tiny_data)
    assert code == 2 and "is not a plain checkpoint" in err and "can run code" in err
    assert "weights_only" not in err and "likely succeed" not in err  # torch's advice to turn the protection off

    torch.save(random_resnet(0).state_dict(), tmp_path / "plain.pth")
    code, _, err = run_eval(capsys, "--checkpoint", tmp_path / "plain.pth", "--data", tiny_data)
    assert code == 2 and "--model NAME --weights-file FILE" in err

    no_ema = make_checkpoint(tmp_path / "no_ema.pt", ema=False)
    code, _, err = run_eval(capsys, "--checkpoint", no_ema, "--data", tiny_data, "--use-ema")
    assert code == 2 and "no EMA weights" in err

    code, _, err = run_eval(capsys, "--model", "resnet34", "--weights-file", tmp_path / "plain.pth",
                            "--data", tiny_data)
    assert code == 2 and "do not fit resnet34" in err


def test_flat_folder_is_refused_with_how_to_arrange_it(tmp_path, ckpt, capsys):
    flat = tmp_path / "ILSVRC2012_img_val"
    flat.mkdir()
    for i in range(1, 4):
        Image.new("RGB", (40, 40)).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    code, _, err = run_eval(capsys, "--checkpoint", ckpt, "--data", flat)
    assert code == 2 and "no class subfolders" in err and "python -m imnet.tools.prepare val --flat" in err


def test_command_line_exit_code_without_traceback(tmp_path):
    """The real command: exit status 2 and a one-line error, no traceback."""
    result = subprocess.run([PYTHON, str(REPO / "eval.py"), "--checkpoint", str(tmp_path / "nope.pt"), "--data",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("eval.py: error: ") and "Traceback" not in result.stderr


# -------------------------------------------------------------------------------------------- benchmark
def test_bench_reports_sane_fields(ckpt, tmp_path, capsys):
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--bench", "--batch-sizes", 1, 3, "--bench-warmup", 1,
                              "--bench-iters", 3, "--json", tmp_path / "bench.json")
    assert code == 0, err
    r = json.loads((tmp_path / "bench.json").read_text())
    assert r["params"] == sum(p.numel() for p in random_resnet(0).parameters())
    assert r["crop_size"] == 32 and r["device"].startswith("cpu")
    assert [row["batch_size"] for row in r["results"]] == [1, 3]
    for row in r["results"]:
        assert row["img_per_s"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] and row["iters"] == 3
    assert r["gmacs"] == pytest.approx(r["gflops"] / 2) and r["gflops"] > 0
    assert "img/s" in out and "p95 ms" in out


def test_flop_count_matches_published_resnet18_figure():
    """torchvision lists ResNet-18 at 1.81 GFLOPS per 224px image, counting multiply-accumulates (our gmacs)."""
    gflops = benchmark.forward_flops(torchvision.models.resnet18().eval(), 224, torch.device("cpu"))
    assert gflops / 2 == pytest.approx(1.81, abs=0.01)


def test_unwritable_outputs_are_refused_before_evaluating(three_images, ckpt, tmp_path, capsys, monkeypatch):
    """--json / --predictions that cannot be written: exit 2 with the reason before any evaluation (not after the
    whole validation set); a path that did not exist is not left behind by the check."""
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated although the output cannot be written")
    monkeypatch.setattr(imnet_eval.evaluation, "evaluate", no_evaluation)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for flag, path, needle in (("--json", a_file / "r.json", "cannot write --json"),
                               ("--predictions", tmp_path / "no" / "such" / "p.csv", "cannot write --predictions"),
                               ("--json", tmp_path, "is a folder")):
        code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", "0", flag, path)
        assert code == 2 and needle in err, err
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", "-1")
    assert code == 2 and "--workers" in err
    monkeypatch.undo()
    fresh = tmp_path / "fresh.json"
    code, out, err = run_eval(capsys, "--checkpoint", ckpt, "--data", three_images, "--workers", "0", "--json", fresh)
    assert code == 0 and json.loads(fresh.read_text())["count"] == 3


@pytest.mark.parametrize("view", ["none", "flip"])
def test_several_models_share_one_decode_and_keep_their_own_figures(tiny_data, monkeypatch, view):
    policy = EvalPolicy(36, 32)
    val = data.ImageFolder(tiny_data / "val", CLASSES, policy.transform())
    loader = data.build_loader(val, data.EvalSampler(len(val)), batch_size=8, workers=0)
    models = [random_resnet(seed) for seed in (0, 1, 2)]
    alone = [evaluation.evaluate(m, loader, torch.device("cpu"), policy, 3, tta=view) for m in models]
    batches = iter(list(loader))  # one pass only: a second decode of the set would find it empty
    with monkeypatch.context() as m:  # the loop reads nothing back to the host
        m.setattr(torch, "bincount", None)
        m.setattr(torch.Tensor, "item", None)
        together = evaluation.evaluate_all(models, batches, torch.device("cpu"), policy, 3, tta=view)
    for a, b in zip(alone, together, strict=True):
        assert (a.loss, a.top1, a.top5, a.count, a.views) == (b.loss, b.top1, b.top5, b.count, b.views)
        for name in ("confusion", "top_idx", "top_prob", "labels"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        expected = torch.bincount(b.labels * 3 + b.top_idx[:, 0], minlength=9).view(3, 3)
        assert torch.equal(b.confusion, expected)
    assert not torch.equal(together[0].top_prob, together[1].top_prob)  # the models differ
