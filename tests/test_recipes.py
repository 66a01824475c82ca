"""recipes.md agrees with imnet.run.recipes, every recipe and every documented command dry-runs, and the audit
warns exactly when it should."""

from __future__ import annotations


import math
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

import train
from imnet.run import config as imconfig
from imnet.run import audit as audit_module
from imnet.run.audit import audit, notes, recipe_policy
from imnet.run.flags import parse_args
from imnet.run.recipes import (DEMO_MIN_TOP1, IMAGENET_TRAIN_IMAGES, META, RECIPES, gpu_hours, reference_global_batch,
                           reference_lr, torchvision_ema_decay)
from imnet.transforms import resolve_eval_sizes

from conftest import make_imagefolder, parse_table

REPO = Path(__file__).resolve().parents[1]
MD = (REPO / "recipes.md").read_text()
PLACEHOLDER = "/path/to/imagenet"
# Files some commands need, stood in for by small real ones of the tiny data's classes (`placeholder_files`).
TEACHER = "/path/to/teacher.pt"        # a train.py checkpoint of a distillation teacher
PRETRAINED = "/path/to/pretrained.pt"  # a train.py checkpoint to fine-tune from


# ------------------------------------------------------------------------------------------ parsing recipes.md

def parse_commands(md: str) -> list[list[str]]:
    """Every `torchrun ...` / `python train.py ...` line inside a ```sh block, as argv lists."""
    commands, in_sh = [], False
    for line in md.splitlines():
        if line.startswith("```"):
            in_sh = line.strip() == "```sh" and not in_sh
            continue
        if in_sh and (line.startswith("torchrun ") or line.startswith("python train.py")):
            commands.append(shlex.split(line))
    return commands


def train_args(cmd: list[str]) -> list[str]:
    """The arguments that train.py receives from a documented command line."""
    return cmd[cmd.index("train.py") + 1:]


def nproc(cmd: list[str]) -> int:
    for a in cmd:
        if a.startswith("--nproc_per_node="):
            return int(a.split("=")[1])
    return 1


def recipe_of(args: list[str]) -> str:
    return args[args.index("--recipe") + 1] if "--recipe" in args else "demo"  # no arguments: the demo


def flag(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def section(md: str, start: str, end: str) -> str:
    return md[md.index(start):md.index(end)]


TABLE = parse_table(MD)
COMMANDS = parse_commands(MD)  # every command in the file: each one dry-runs
RECIPE_COMMANDS = parse_commands(section(MD, "## The recipes", "## Beyond the table"))  # each recipe's own two


def test_table_matches_code():
    assert set(TABLE) == set(RECIPES), "every recipe in code has a row in recipes.md and vice versa"
    for name, row in TABLE.items():
        r, m = RECIPES[name], META[name]
        assert row["model"] == r["model"]
        assert int(row["epochs"]) == r["epochs"]
        assert int(row["GPUs"]) == m["gpus"]
        assert int(row["batch/GPU"]) == r["batch_size"]
        assert int(row["accum"]) == r.get("accum_steps", 1)
        assert int(row["global batch"]) == reference_global_batch(name)
        assert row["optimizer"] == r["opt"]
        assert math.isclose(float(row["lr_base"]), r["lr_base"], rel_tol=1e-5)
        assert math.isclose(float(row["LR"]), reference_lr(name), rel_tol=1e-5)
        assert math.isclose(float(row["weight decay"]), r["weight_decay"], rel_tol=1e-5)
        assert int(row["train crop"]) == r["train_crop_size"]
        p = recipe_policy(r)
        assert (int(row["eval resize"]), int(row["eval crop"]), row["interpolation"]) == \
            (p.resize_size, p.crop_size, p.interpolation)
        assert float(row["expected top-1"]) == m["expected_top1"]
        assert row["approx."] == ("lower bound" if name == "demo" else "yes" if m["approximate"] else "no")
        hours = gpu_hours(name)
        assert row["GPU-hours"] == ("-" if hours is None else str(round(hours)))


def test_every_architecture_of_the_brief_has_a_recipe():
    """AlexNet, VGG, ResNet-50/101, ResNeXt, RegNet, EfficientNet, ConvNeXt, ViT, DeiT, Swin, MobileNetV2/V3,
    ShuffleNetV2 and EfficientNet-Lite: the baselines imnet's brief names, each trainable by a sourced recipe."""
    brief = ("alexnet", "vgg", "resnet50", "resnet101", "resnext", "regnet", "efficientnet_b", "convnext", "vit_",
             "deit_", "swin_", "mobilenet_v2", "mobilenet_v3", "shufflenet_v2", "efficientnet_lite")
    models_with_recipes = {RECIPES[name]["model"] for name in META if name != "demo"}
    assert all(any(m.startswith(family) for m in models_with_recipes) for family in brief)


def test_sources_are_in_the_doc():
    flat = " ".join(MD.split())
    for name, m in META.items():
        assert f"### {name}" in MD
        if name != "demo":
            assert " ".join(m["source"].split()) in flat, name
    assert META["demo"]["expected_top1"] == DEMO_MIN_TOP1


def test_recipe_numbers_are_the_sources_numbers():
    """Closed-form checks against the published commands (see the comments in imnet/run/recipes.py)."""
    expected = {  # name: (global batch, LR at that batch) as in the sources
        "resnet50": (1024, 0.5), "resnet101": (1024, 0.5), "resnext50_32x4d": (1024, 0.5),
        "shufflenet_v2_x2_0": (1024, 0.5), "mobilenet_v3_large": (1024, 0.064), "mobilenet_v2": (256, 0.045),
        "alexnet": (256, 0.01), "vgg16": (256, 0.01), "efficientnet_b0": (768, 0.048),
        "efficientnet_lite0": (2048, 0.016 * 2048 / 256), "resnet50_classic": (256, 0.1),
        "regnet_y_8gf": (512, 0.4), "convnext_tiny": (1024, 1e-3), "vit_b_16": (4096, 3e-3),
        "swin_t": (1024, 1e-3), "deit_small": (1024, 5e-4 * 1024 / 512), "deit_tiny": (1024, 5e-4 * 1024 / 512)}
    for name, (batch, lr) in expected.items():
        assert reference_global_batch(name) == batch, name
        assert math.isclose(reference_lr(name), lr, rel_tol=1e-12), name
    # torchvision's EMA: per update of every 32 steps, decay 1 - (1 - 0.99998) * batch * 32 / epochs
    for batch, epochs in [(1024, 600), (4096, 300), (1024, 300)]:
        per_step = torchvision_ema_decay(batch, epochs)
        assert math.isclose(per_step ** 32, 1 - 2e-5 * batch * 32 / epochs, rel_tol=1e-12)
    assert RECIPES["resnet50"]["ema_every"] == 32
    assert math.isclose(RECIPES["resnet50"]["ema_decay"] ** 32, 1 - 2e-5 * 1024 * 32 / 600, rel_tol=1e-12)
    assert torchvision_ema_decay(10 ** 9, 1) == 0.0  # alpha is capped at 1
    assert math.isclose(gpu_hours("resnet50"), 600 * IMAGENET_TRAIN_IMAGES / META["resnet50"]["img_per_s"] / 3600)


def test_per_epoch_decays_are_torchvisions_steplr():
    """The classic and mobile recipes' LR, every step of every epoch, is torch's StepLR stepped per epoch as
    torchvision's train.py steps it (--lr-step-size, --lr-gamma of their commands), at ImageNet's size."""
    import torch
    for name, step_size, gamma in [("alexnet", 30, 0.1), ("vgg16", 30, 0.1), ("mobilenet_v2", 1, 0.98),
                                   ("mobilenet_v3_large", 2, 0.973)]:
        cfg = config(name).with_data(IMAGENET_TRAIN_IMAGES, 50_000, 1000)
        spe = cfg.steps_per_epoch
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=reference_lr(name))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma)
        for epoch in range(cfg.epochs):
            lr = optimizer.param_groups[0]["lr"]
            assert math.isclose(cfg.lr_at(epoch * spe), lr, rel_tol=1e-9), (name, epoch)
            assert math.isclose(cfg.lr_at((epoch + 1) * spe - 1), lr, rel_tol=1e-9), (name, epoch)
            optimizer.step()  # no gradient: only the order torch expects
            scheduler.step()


def test_torchvision_figures_are_torchvision_s():
    """Each number sourced from torchvision's weights table is that table's, at the eval policy of those weights."""
    import torchvision
    for name, m in META.items():
        match = re.search(r"torchvision\.models\.(\w+\.\w+)\.meta", m["source"])
        if match is None:
            continue
        weights = torchvision.models.get_weight(match.group(1))
        assert m["expected_top1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], name
        t, p = weights.transforms(), recipe_policy(RECIPES[name])
        assert (p.resize_size, p.crop_size, p.interpolation) == (t.resize_size[0], t.crop_size[0],
                                                                 t.interpolation.value), name


def test_eval_policy_resolution_matches_transforms():
    for resize, crop, pct in [(None, 224, None), (232, 224, None), (None, 224, 0.875), (None, 224, 0.95),
                              (None, 56, None), (64, 56, 0.5)]:
        p = recipe_policy({"val_resize_size": resize, "val_crop_size": crop, "crop_pct": pct})
        assert (p.resize_size, p.crop_size) == tuple(resolve_eval_sizes(crop, resize, pct))


def test_commands_cover_every_recipe_on_8_and_1_gpus():
    by_recipe: dict[str, list[list[str]]] = {}
    for cmd in RECIPE_COMMANDS:
        by_recipe.setdefault(recipe_of(train_args(cmd)), []).append(cmd)
    assert set(by_recipe) == set(RECIPES)
    for name, cmds in by_recipe.items():
        if name == "demo":
            assert [train_args(c) for c in cmds] == [[], []], "the demo runs with no arguments"
            continue
        assert sorted(nproc(c) for c in cmds) == [1, 8], name
        for cmd in cmds:
            args = train_args(cmd)
            assert flag(args, "--data") == PLACEHOLDER
            batch = int(flag(args, "--batch-size", RECIPES[name]["batch_size"]))
            accum = int(flag(args, "--accum-steps", RECIPES[name].get("accum_steps", 1)))
            assert nproc(cmd) * batch * accum == reference_global_batch(name), cmd
            assert "--lr" not in args, "commands rely on --lr-base scaling"


# ------------------------------------------------------------------------------------------------- dry runs

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A few real tiny JPEGs, hard-linked until train/ holds one global batch of the largest recipe
    (vit_b_16 on one GPU: 4096 images). Dry runs list files but decode none."""
    root = make_imagefolder(tmp_path_factory.mktemp("tiny"), num_classes=3, train_per_class=4, val_per_class=3,
                            size=32)
    need = max(reference_global_batch(n) for n in RECIPES)
    for d in sorted((root / "train").iterdir()):
        files = sorted(d.iterdir())
        for k in range(need // 3 + 1 - len(files)):
            os.link(files[k % len(files)], d / f"link_{k}.JPEG")
    return root


@pytest.fixture(scope="module")
def placeholder_files(tiny_root, tmp_path_factory) -> dict:
    """TEACHER: a resnet18 teacher trained at 224 px; PRETRAINED: a deit_small to fine-tune (random weights: dry
    runs load and check files, they do not train)."""
    import torch
    from imnet.run import models
    from imnet.run.checkpoint import Progress, make_state
    classes = sorted(d.name for d in (tiny_root / "train").iterdir())
    folder, files = tmp_path_factory.mktemp("placeholders"), {}
    for placeholder, name in ((TEACHER, "resnet18"), (PRETRAINED, "deit_small")):
        files[placeholder] = folder / Path(placeholder).name
        cfg = {"model": name, "train_crop_size": 224, "eval_policy": imconfig.EvalPolicy(256, 224).to_dict()}
        torch.save(make_state(model=models.build_model(name, len(classes)).state_dict(), optimizer={},
                              progress=Progress(), config=cfg, classes=classes), files[placeholder])
    return files


def dry_run(args: list[str], root: Path, capsys) -> str:
    args = [str(root) if a == PLACEHOLDER else a for a in args]
    if not args:  # `python train.py`: the demo; point it at the tiny data instead of generating the demo set
        args = ["--recipe", "demo"]
    if "--data" not in args:
        args += ["--data", str(root)]
    capsys.readouterr()
    rc = train.main(args + ["--dry-run"])
    out = capsys.readouterr()
    assert rc == 0, out.out[-2000:] + out.err[-2000:]
    return out.out


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(train_args(c)[:2] + [f"x{nproc(c)}"]) for c in COMMANDS])
def test_every_documented_command_dry_runs(cmd, tiny_root, placeholder_files, capsys):
    """Each command of recipes.md, in-process with --dry-run on tiny data (one process: the 1-GPU commands
    run exactly as documented; the 8-GPU ones with an eighth of the global batch)."""
    args = [str(placeholder_files.get(a, a)) for a in train_args(cmd)]
    name = recipe_of(args)
    out = dry_run(args, tiny_root, capsys)
    assert "WARNING" not in out, out
    world = 1
    batch = int(flag(args, "--batch-size", RECIPES[name]["batch_size"]))
    accum = int(flag(args, "--accum-steps", RECIPES[name].get("accum_steps", 1)))
    global_batch = world * batch * accum
    assert f"= global batch {global_batch}" in out
    lr = float(flag(args, "--lr-base", RECIPES[name]["lr_base"])) * global_batch / 256
    assert f"learning rate {lr:.6g}" in out
    if nproc(cmd) == 1 and name != "demo":
        assert global_batch == reference_global_batch(name)
        assert math.isclose(lr, reference_lr(name), rel_tol=1e-12)
    r = RECIPES[name]
    assert (f"eval policy: resize {r['val_resize_size']} (shorter side, {r['interpolation']}) -> centre crop "
            f"{r['val_crop_size']}") in out


def test_audit_warnings_reach_the_dry_run_output(tiny_root, capsys):
    out = dry_run(["--recipe", "resnet50", "--data", PLACEHOLDER, "--lr", "0.5", "--val-resize-size", "256"],
                  tiny_root, capsys)
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, out
    assert any("--lr 0.5" in w and "0.0625" in w for w in warnings)  # 0.5 x 128 / 1024 on one process
    assert any("Eval policy" in w for w in warnings)


# ---------------------------------------------------------------------------------------------------- audit

def config(name: str, world_size: int | None = None, lr: float | None = None, **flags) -> imconfig.Config:
    """The Config train.py gives audit(): recipe `name` on its reference world size (or `world_size`), with
    `flags` as if given on the command line (None: given as "unset"), resolved by the real resolver."""
    below, given = parse_args(["--recipe", name, "--data", "x", "--output", "runs/x"]
                                    + (["--lr", str(lr)] if lr is not None else []))
    return imconfig.resolve(below, {**given, **flags}, META[name]["gpus"] if world_size is None else world_size)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_audit_silent_on_shipped_recipes(name):
    assert audit(config(name)) == []
    assert audit(config(name), RECIPES[name]) == []
    # the source's LR given explicitly at the reference batch is fine too
    assert audit(config(name, lr=reference_lr(name))) == []


def one(warnings: list[str], needle: str) -> str:
    assert len(warnings) == 1 and needle in warnings[0], warnings
    assert "Fix:" in warnings[0], "every warning says how to fix it"
    return warnings[0]


def test_audit_adamw_decay_on_norms():
    one(audit(config("convnext_tiny", no_decay_on=["none"])), "norm weights and biases")
    one(audit(config("convnext_tiny", no_decay_on=["bias", "embedding"])), "norm weights and biases")
    assert audit(config("convnext_tiny", no_decay_on=["none"], weight_decay=0.0)) == []
    assert audit(config("convnext_tiny", no_decay_on=["1d"])) == []
    assert audit(config("vit_b_16")) == []  # decaying everything is torchvision's ViT command, not a mistake
    assert audit(config("regnet_y_8gf")) == []  # SGD decaying everything is the classic recipe, not a mistake


def test_audit_no_warmup_with_large_batch():
    one(audit(config("resnet50", warmup_epochs=0)), "No LR warmup with a global batch of 1024")
    assert audit(config("resnet50", world_size=4, warmup_epochs=0)) == []  # 512
    one(audit(config("resnet50_classic", batch_size=128)), "No LR warmup with a global batch of 1024")
    assert audit(config("mobilenet_v3_large")) == []  # its source's batch of 1024 without warmup: as published
    one(audit(config("mobilenet_v3_large", batch_size=256)), "No LR warmup with a global batch of 2048")
    # against a recipe that names no batch or LR (audit's recipe argument), nothing to compare: the warning stands
    one(audit(config("mobilenet_v3_large"), {"model": "mobilenet_v3_large"}), "No LR warmup with a global batch")


def test_audit_eval_policy_differs():
    one(audit(config("resnet50", val_resize_size=256)), "differs from recipe 'resnet50'")
    one(audit(config("resnet50", interpolation="bicubic")), "bicubic")
    one(audit(config("resnet50", val_resize_size=None, crop_pct=0.875)), "resize 256")
    # the same policy spelled differently is not a difference: 224 / 0.875 = 256
    assert audit(config("deit_small", val_resize_size=None, crop_pct=0.875)) == []
    assert audit(config("deit_small", val_resize_size=None)) == []


def test_audit_lr_not_rescaled():
    w = one(audit(config("resnet50", world_size=4, lr=0.5)), "--lr 0.5")
    assert "global batch of 1024" in w and "512" in w and "0.25" in w
    one(audit(config("resnet50", world_size=1, accum_steps=4, lr=0.5)), "--lr 0.5")  # 512 via accumulation
    assert audit(config("resnet50", world_size=4, lr=0.25)) == []  # rescaled by hand
    assert audit(config("resnet50", world_size=4)) == []  # scaled from --lr-base
    assert audit(config("resnet50", world_size=1, accum_steps=8, lr=0.5)) == []  # 1 GPU x 8 = 1024


def test_audit_global_batch_not_divisible():
    one(audit(config("resnet50", world_size=8, global_batch=1020, lr=None)), "not divisible")
    one(audit(config("resnet50", world_size=6, global_batch=1024)), "not divisible by world size")
    assert audit(config("resnet50", world_size=8, global_batch=1024)) == []
    assert audit(config("resnet50", world_size=4, accum_steps=2, global_batch=1024)) == []


def test_batch_note_says_how_the_lr_was_rescaled():
    """A recipe at a global batch other than its reference: one note, with the reference batch, this batch and
    the LR before and after linear rescaling; none at the reference batch (every recipe: see the test above)."""
    (note,) = notes(config("resnet50", world_size=4))
    ref_lr = reference_lr("resnet50")
    assert "1024" in note and "512" in note and f"from {ref_lr:g} to {ref_lr / 2:g}" in note, note
    (note,) = notes(config("deit_small", world_size=1))
    assert f"to {reference_lr('deit_small') / 8:g}" in note
    assert notes(config("resnet50", world_size=4, lr=0.25)) == []  # an explicit --lr: audit's LR check covers it
    for name in sorted(RECIPES):
        assert notes(config(name)) == [], name


def test_audit_bf16_on_a_cpu_without_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(audit_module, "cpu_has_native_bf16", lambda: False)
    one(audit(config("resnet50", amp="bf16"), device="cpu"), "without native bf16")
    assert audit(config("resnet50", amp="bf16"), device="cuda") == []
    assert audit(config("resnet50", amp="none"), device="cpu") == []
    monkeypatch.setattr(audit_module, "cpu_has_native_bf16", lambda: True)
    assert audit(config("resnet50", amp="bf16"), device="cpu") == []
    monkeypatch.undo()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert audit_module.cpu_has_native_bf16(str(info)) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert audit_module.cpu_has_native_bf16(str(info)) is True
    monkeypatch.setattr(sys, "platform", "darwin")
    assert audit_module.cpu_has_native_bf16(str(info)) is None  # unknown: no warning on a guess
