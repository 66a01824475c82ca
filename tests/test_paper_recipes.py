"""The papers' recipes wired into train.py: knowledge distillation (--teacher, DeiT's distilled students),
LARS / LAMB (--opt), layer-wise LR decay (--layer-decay) and binary cross-entropy (--bce).

Each loss is checked on one real train.py step against its closed form; distillation at alpha 0 against training
without a teacher, bitwise; resume mid-epoch bitwise with all of them on; bad teachers and contradictory flags are
refused at setup. (2 processes = 1 is in test_distributed.py; the optimizers' update rules in test_lars.py.)"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import eval as evaluate_script
import train
from conftest import assert_same_state, make_imagefolder
from imnet.run import checkpoint, config, dist, flags, models, seeds
from imnet.run.config import EvalPolicy
from imnet.run.data import to_device
from imnet.deit import interpolate_pos_embedding
from imnet.metrics import Meter

CLASSES = ["class_0", "class_1", "class_2"]
TINY = ["--epochs", "2", "--batch-size", "8", "--train-crop-size", "32", "--val-crop-size", "32",
        "--val-resize-size", "36", "--lr", "1e-3", "--warmup-epochs", "1", "--opt", "adamw", "--weight-decay",
        "0.05", "--log-every", "2", "--quiet", "--seed", "3", "--workers", "0"]
# every random piece of the recipe on: mixing, smoothing, EMA, erasing, stochastic depth
RANDOM = ["--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1", "--ema", "--ema-decay", "0.9",
          "--random-erase", "0.25", "--drop-path", "0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 classes x 16 train images -> 6 steps/epoch at batch 8; 15 val images.
    return make_imagefolder(tmp_path_factory.mktemp("recipes_data"), num_classes=3, train_per_class=16,
                            val_per_class=5)


def write_teacher(path: Path, name: str = "resnet18", classes=CLASSES, size: int = 32, seed: int = 7) -> Path:
    """A train.py checkpoint of a (random) teacher: the mechanics do not need a trained one."""
    torch.manual_seed(seed)
    weights = models.build_model(name, len(classes), image_size=size).state_dict()
    torch.save(checkpoint.make_state(model=weights, optimizer={}, progress=checkpoint.Progress(), classes=classes,
                                     config={"model": name, "train_crop_size": size,
                                             "eval_policy": EvalPolicy(36, 32).to_dict()}), path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def refused(capsys, args) -> str:
    code = train.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------------------- one step, closed forms

def batch():
    """16 uint8 images and labels, always the same."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 3, (16,), generator=g)


def one_step(args: list[str], model, teacher_path=None, meter=None, labels=None):
    """One train_step of ``model`` on `batch` (``labels`` instead of its own if given) under the Config of ``args``
    (no data read), with the teacher of ``teacher_path`` built as train.py builds it. -> (loss, cfg, parts, images,
    labels)."""
    below, given = flags.parse_args(["--data", "d", "--output", "o", "--epochs", "1", "--batch-size", "16",
                                     "--opt", "sgd", "--lr", "0.1", "--train-crop-size", "32", "--val-crop-size",
                                     "32", *(["--teacher", str(teacher_path)] if teacher_path else []), *args])
    cfg = config.resolve(below, given, 1).with_data(32, 1, 3)
    teacher = None
    if teacher_path:
        teacher, cfg = train.build_teacher(cfg, CLASSES, dist.DistInfo())
    parts = train.build_parts(cfg, model, train.build_param_groups(cfg, model), 3, dist.DistInfo(), teacher)
    images, own = batch()
    labels = own if labels is None else labels
    loss, _ = train.train_step(cfg, parts, [(images, labels)], 0, 0, 0, meter or Meter("cpu"))
    return loss, cfg, parts, images, labels


def student(name="deit_tiny_distilled"):
    torch.manual_seed(0)
    return models.build_model(name, 3, image_size=32)


@pytest.mark.parametrize("kind, mixed", [("hard", False), ("soft", True)])
def test_the_step_loss_is_the_distillation_closed_form(kind, mixed, teacher):
    """DeiT's loss on one real step: (1 - a) CE(class head, targets) + a x [CE(distillation head, argmax teacher)
    or tau^2 KL(softmax(t / tau) || softmax(s / tau)) per sample], written out here in float64, the teacher fed the
    batch AFTER MixUp (the step's own draw) as in DeiT. Without mixing the meter scores what evaluation scores:
    the mean of the two heads."""
    model, meter = student(), Meter("cpu")
    before = copy.deepcopy(model).train()
    with torch.no_grad():  # labels the two heads' mean gets right, so that the class head alone scores less
        labels = sum(before(to_device(batch()[0], batch()[1], "cpu")[0])).argmax(1)
    args = ["--distill", kind, "--distill-alpha", "0.3", "--distill-tau", "2"]
    if mixed:
        args += ["--mixup", "1.0", "--mix-prob", "1", "--label-smoothing", "0.1"]
    loss, cfg, parts, images, labels = one_step(args, model, teacher, meter, labels)
    assert parts.teacher is not None and not parts.teacher.training
    assert all(not p.requires_grad for p in parts.teacher.parameters())
    x, q = to_device(images, labels, "cpu")[0], F.one_hot(labels, 3).float()
    if mixed:  # the step's own draw: seeds.MIXING at (seed, epoch 0, micro-step 0, rank 0)
        gen = torch.Generator().manual_seed(seeds.derive(seeds.MIXING, cfg.seed, 0, 0, 0))
        x, q = parts.mixer(x, labels, generator=gen)
    with torch.no_grad():
        cls, dst = (z.double() for z in before(x))
        t = parts.teacher(x).double()
    label = -(q.double() * torch.log_softmax(cls, 1)).sum(1).mean()
    if kind == "hard":
        distill = -torch.log_softmax(dst, 1)[torch.arange(16), t.argmax(1)].mean()
    else:
        p_t, log_p_s = torch.softmax(t / 2, 1), torch.log_softmax(dst / 2, 1)
        distill = 4 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    torch.testing.assert_close(loss.double(), 0.7 * label + 0.3 * distill, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss.double(), label, rtol=1e-3)  # the teacher's term is in it
    if not mixed:
        assert meter.compute(distributed=False)["top1"] == 100.0
        assert (cls.argmax(1) != labels).any(), "the class head alone would score less"


@pytest.mark.parametrize("case", ["mixed", "mixed+threshold", "hard+smoothing"])
def test_the_step_loss_is_bce_on_the_same_targets(case):
    """--bce: F.binary_cross_entropy_with_logits of the step's logits on the step's targets: the mixer's smoothed
    soft targets when mixing (the Config put the smoothing there), binarised above --bce-target-thresh; the
    smoothed one-hot labels without mixing (the smoothing then in the loss)."""
    args = ["--bce", "--label-smoothing", "0.1"]
    if case.startswith("mixed"):
        args += ["--mixup", "1.0", "--mix-prob", "1"]
    if case.endswith("threshold"):
        args += ["--bce-target-thresh", "0.2"]
    model = student("resnet18").eval()  # eval: BatchNorm's statistics, so the forward below is the step's
    before = copy.deepcopy(model)
    loss, cfg, parts, images, labels = one_step(args, model)
    x = to_device(images, labels, "cpu")[0]
    if parts.mixer is not None:  # the step's own draw: seeds.MIXING at (seed, epoch 0, micro-step 0, rank 0)
        assert (cfg.mix_label_smoothing, cfg.loss_label_smoothing) == (0.1, 0.0)
        gen = torch.Generator().manual_seed(seeds.derive(seeds.MIXING, cfg.seed, 0, 0, 0))
        x, q = parts.mixer(x, labels, generator=gen)
        assert not torch.allclose(q, F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3)  # really mixed
    else:
        assert (cfg.mix_label_smoothing, cfg.loss_label_smoothing) == (0.0, 0.1)
        q = F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    if cfg.bce_target_thresh is not None:
        q = (q > 0.2).float()
    with torch.no_grad():
        logits = before(x)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, q), rtol=1e-6, atol=1e-6)


def test_alpha_zero_trains_exactly_as_without_a_teacher(data, teacher, tmp_path):
    """--distill-alpha 0 with a teacher: the same weights, EMA, optimizer state and record as no teacher, bitwise
    (the teacher runs, so this also shows that it draws no random numbers and changes nothing else)."""
    args = ["--model", "deit_tiny", *TINY, "--epochs", "1", "--warmup-epochs", "0.5", *RANDOM, "--data", str(data)]
    plain, taught = tmp_path / "plain", tmp_path / "taught"
    assert train.main(args + ["--output", str(plain)]) == 0
    assert train.main(args + ["--output", str(taught), "--teacher", str(teacher), "--distill", "soft",
                              "--distill-alpha", "0"]) == 0
    a, b = load(plain / "last.pt"), load(taught / "last.pt")
    assert_same_state(a, b)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["history"][-1]["val_top1"] == b["history"][-1]["val_top1"]
    other = tmp_path / "alpha"  # and alpha matters: the same run at alpha 0.5 ends elsewhere
    assert train.main(args + ["--output", str(other), "--teacher", str(teacher), "--distill", "soft"]) == 0
    assert not torch.equal(load(other / "last.pt")["model"]["conv_proj.weight"], a["model"]["conv_proj.weight"])


# ----------------------------------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def distilled_args(data, teacher):
    """A distilled DeiT with every ingredient of this file: hard distillation, LAMB, layer decay, BCE."""
    return ["--model", "deit_tiny_distilled", *TINY, *RANDOM, "--data", str(data), "--teacher", str(teacher),
            "--opt", "lamb", "--layer-decay", "0.75", "--bce", "--bce-target-thresh", "0.2"]


@pytest.fixture(scope="module")
def distilled_run(distilled_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distilled")
    assert train.main(distilled_args + ["--output", str(out)]) == 0
    return out


def test_distilled_run_records_the_teacher_and_never_saves_it(distilled_run, teacher):
    state = load(distilled_run / "last.pt")
    record = state["config"]["teacher_info"]
    assert record["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert record["file"] == str(teacher.resolve()) and record["model"] == "resnet18"
    assert record["source"] == "checkpoint" and record["classes"] == 3 and record["image_size"] == 32
    assert json.loads((distilled_run / "config.json").read_text())["teacher_info"] == record
    teacher_keys = set(load(teacher)["model"])
    for key in ("model", "state_dict_ema", "model_ema"):  # the weights and both spellings of the EMA
        assert state[key] and not teacher_keys & {k.removeprefix("module.") for k in state[key]}, key
    # the student is a DistilledVisionTransformer: both heads trained, loadable strictly
    net = models.build_model("deit_tiny_distilled", 3, image_size=32)
    net.load_state_dict(state["model"], strict=True)
    init = models.build_model("deit_tiny_distilled", 3, image_size=32).state_dict()
    assert not torch.equal(init["head_dist.weight"], state["model"]["head_dist.weight"])
    # optimizer: LAMB over the layer-decay groups, each with its scale
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 28 and {g["lr_scale"] for g in groups} == {0.75 ** k for k in range(14)}


def test_distilled_run_resumes_bitwise(distilled_run, distilled_args, tmp_path):
    """Stopped 2 steps into epoch 2 and resumed: the uninterrupted run's weights, EMA, LAMB state, bitwise."""
    out = tmp_path / "cut"
    assert train.main(distilled_args + ["--output", str(out), "--stop-at-step", "8"]) == 0
    assert load(out / "last.pt")["global_step"] == 8
    assert train.main(distilled_args + ["--output", str(out), "--resume", "auto"]) == 0
    assert_same_state(load(distilled_run / "last.pt"), load(out / "last.pt"))


def test_eval_py_evaluates_the_distilled_student_as_training_did(distilled_run, data, tmp_path, capsys):
    """eval.py builds the distilled DeiT by name; its eval mode averages the two heads, as train.py's
    evaluation did: the same top-1 and loss as the log."""
    out = tmp_path / "eval.json"
    assert evaluate_script.main(["--checkpoint", str(distilled_run / "last.pt"), "--data", str(data),
                                 "--workers", "0", "--json", str(out)]) == 0
    result, recorded = json.loads(out.read_text()), load(distilled_run / "last.pt")["metrics"]
    assert result["model"] == "deit_tiny_distilled" and result["count"] == 15
    assert result["top1"] == recorded["val_top1"]
    assert result["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5)


def test_init_from_a_distilled_deit_at_another_size_keeps_both_tokens():
    """--init-from at 48 px of a 32 px distilled DeiT: models.load_init resizes the position embedding with
    imnet.deit.interpolate_pos_embedding (class and distillation rows kept, DeiT's bicubic), not torchvision's
    one-token interpolate_embeddings."""
    small = student().state_dict()
    big = models.build_model("deit_tiny_distilled", 3, image_size=48)
    done = models.load_init(big, "deit_tiny_distilled", small, 48, CLASSES, CLASSES)
    assert done["interpolated"] == ["encoder.pos_embedding"] and not done["reinitialised"]
    pos = big.state_dict()["encoder.pos_embedding"]
    assert torch.equal(pos, interpolate_pos_embedding(small["encoder.pos_embedding"], 3, num_tokens=2))
    assert torch.equal(big.state_dict()["dist_token"], small["dist_token"])


# ----------------------------------------------------------------------------------------- dry run, refusals

def test_dry_run_lists_the_layer_decay_groups_with_their_scales(data, tmp_path, capsys):
    assert train.main(["--model", "deit_tiny", *TINY, "--data", str(data), "--output", str(tmp_path / "o"),
                       "--layer-decay", "0.65", "--opt", "lars", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameter groups: 28, layer-wise LR decay 0.65" in out
    lines = [line for line in out.splitlines() if line.startswith("  layer ")]
    assert len(lines) == 28
    # BEiT/MAE: embeddings (layer 0) at 0.65^13, block i at 0.65^(13 - i), head (layer 13) at the full LR
    assert lines[0].startswith("  layer 0 decay: 1 tensors") and f"LR x {0.65 ** 13:.6g}" in lines[0]
    assert "layer 5 no_decay" in lines[11] and f"LR x {0.65 ** 8:.6g}" in lines[11]
    assert lines[-1].startswith("  layer 13 no_decay") and lines[-1].endswith("LR x 1")
    assert all(" no_decay: " not in line or "weight decay 0," in line for line in lines)
    assert "WARNING" not in out


def test_refused_at_setup(data, teacher, tmp_path, capsys):
    common = [*TINY, "--data", str(data), "--output", str(tmp_path / "o")]
    # a teacher with other classes: its output c would mean another class
    other = write_teacher(tmp_path / "other.pt", classes=["class_0", "class_1", "class_9"])
    err = refused(capsys, ["--model", "deit_tiny", *common, "--teacher", str(other)])
    assert "other classes" in err and "class_9" in err and "class_2" in err
    reordered = write_teacher(tmp_path / "reordered.pt", classes=["class_1", "class_0", "class_2"])
    assert "another order" in refused(capsys, ["--model", "deit_tiny", *common, "--teacher", str(reordered)])
    # published weights for 1000 classes (refused before any download)
    err = refused(capsys, ["--model", "deit_tiny", *common, "--teacher", "ResNet18_Weights.IMAGENET1K_V1"])
    assert "predicts 1000 classes" in err and "3 class folders" in err
    # a ViT teacher built for another input size
    vit = write_teacher(tmp_path / "vit48.pt", name="deit_tiny", size=48)
    err = refused(capsys, ["--model", "resnet18", *common, "--teacher", str(vit)])
    assert "another input size" in err and "48 px" in err and "32 px" in err
    # a plain state_dict needs its network; and must fit it
    plain = tmp_path / "plain.pth"
    torch.save(load(teacher)["model"], plain)
    assert "--teacher-model" in refused(capsys, ["--model", "deit_tiny", *common, "--teacher", str(plain)])
    err = refused(capsys, ["--model", "deit_tiny", *common, "--teacher", str(plain), "--teacher-model", "resnet34"])
    assert "do not fit resnet34" in err
    assert "no such file" in refused(capsys, ["--model", "deit_tiny", *common, "--teacher", str(tmp_path / "x.pt")])
    # DeiT's distilled student needs a teacher (its evaluation averages the distillation head), and alpha > 0
    assert "untrained head" in refused(capsys, ["--model", "deit_tiny_distilled", *common])
    err = refused(capsys, ["--model", "deit_tiny_distilled", *common, "--teacher", str(teacher), "--distill-alpha",
                           "0"])
    assert "no loss at all" in err
    # flags that mean nothing alone
    assert "no --teacher" in refused(capsys, ["--model", "deit_tiny", *common, "--distill", "soft"])
    assert "add --bce" in refused(capsys, ["--model", "deit_tiny", *common, "--bce-target-thresh", "0.2"])
    # layer decay needs numbered blocks, and contradicts decaying the norms
    err = refused(capsys, ["--model", "resnet18", *common, "--layer-decay", "0.7"])
    assert "--layer-decay 0.7 with resnet18" in err and "no such blocks" in err
    assert "--no-decay-on none" in refused(capsys, ["--model", "deit_tiny", *common, "--layer-decay", "0.7",
                                                    "--no-decay-on", "none"])
    assert not (tmp_path / "o" / "last.pt").exists()


def test_a_plain_state_dict_teacher_with_its_network(teacher, tmp_path):
    """--teacher FILE --teacher-model NAME: a bare state_dict (or one under "model", as DeiT's teacher file) loads
    strictly into NAME; what it cannot say (training size, normalisation) is left unknown and noted."""
    from imnet.run.audit import notes
    from imnet.run.teacher import load_teacher
    weights = load(teacher)["model"]
    for i, content in enumerate((weights, {"model": weights})):
        path = tmp_path / f"plain{i}.pth"
        torch.save(content, path)
        net, record = load_teacher(str(path), "resnet18", CLASSES, 32)
        assert not net.training and all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
        assert record["source"] == "state_dict" and record["image_size"] is None and record["eval_policy"] is None
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    below, given = flags.parse_args(["--data", "x", "--output", "o", "--teacher", str(path)])
    (note,) = notes(config.resolve(below, given, 1).with_teacher(record))
    assert "plain state_dict" in note and "unknown" in note


def audit_of(teacher_record=None, **settings):
    from imnet.run.audit import audit
    below, given = flags.parse_args(["--data", "x", "--output", "o", "--model", "resnet50"])
    cfg = config.resolve(below, {**given, **settings}, 1)
    return audit(cfg.with_teacher(teacher_record) if teacher_record else cfg)


def test_audit_warns_for_the_classic_mistakes():
    # LARS / LAMB with weight decay (and so a trust ratio) on norms and biases
    for opt in ("lars", "lamb"):
        for exempt in ((), ("norm",), ("bias", "embedding")):
            (w,) = audit_of(opt=opt, no_decay_on=exempt)
            assert f"--opt {opt} with --no-decay-on {' '.join(exempt) or 'none'}" in w
            assert "Fix: --no-decay-on norm bias" in w
        for exempt in (("norm", "bias"), ("1d",), ("1d", "embedding", "layer_scale")):
            assert audit_of(opt=opt, no_decay_on=exempt) == []
        assert audit_of(opt=opt, no_decay_on=(), weight_decay=0.0) == []
    # a teacher trained at another resolution, or normalised otherwise, than the batches it sees
    record = {"spec": "t.pt", "model": "resnet18", "image_size": 224,
              "eval_policy": EvalPolicy(256, 224).to_dict()}
    assert audit_of(record) == []
    (w,) = audit_of({**record, "image_size": 160})
    assert "trained at 160 px" in w and "224 px" in w and "Fix:" in w
    (w,) = audit_of({**record, "eval_policy": EvalPolicy(256, 224, mean=(0.5,) * 3, std=(0.5,) * 3).to_dict()})
    assert w.startswith("Teacher normalization mismatch") and "Fix:" in w
    # its evaluation resize and interpolation are not the student's business: it never sees evaluation images
    assert audit_of({**record, "eval_policy": EvalPolicy(232, 224, "bicubic").to_dict()}) == []
