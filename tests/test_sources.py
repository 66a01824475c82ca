"""docs/sources.md's "Against the sources" table is what the recipes resolve to and what their sources do: the
RandomErasing fill, the auto-augment interpolation of the transform train.py builds, the parameters without
weight decay (by the source's own rule on the model), and where the EMA starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from conftest import parse_table
from imnet.run import config, dist, models
from imnet.run.flags import parse_args
from imnet.optim import no_decay_names, param_groups
from imnet.run.recipes import META, RECIPES
from test_optim import timm_exempt, torchvision_exempt

MD = (Path(__file__).resolve().parents[1] / "docs" / "sources.md").read_text()


ROWS = parse_table(MD, after="## Against the sources")


def resolved(name: str) -> config.Config:
    """The recipe on its reference world size and ImageNet's size, as train.py resolves it."""
    below, given = parse_args(["--recipe", name, "--data", "x", "--output", "runs/x"])
    return config.resolve(below, given, META[name]["gpus"]).with_data(1_281_167, 50_000, 1000)


def test_every_recipe_has_a_row():
    assert set(ROWS) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_row_is_the_resolved_recipe_and_its_sources_rule(name, tiny_data):
    row, cfg = ROWS[name], resolved(name)
    source = row["source"]

    # RandomErasing: torchvision's preset fills with 0 after Normalize (const), timm / DeiT with noise (pixel)
    erasing = "off" if cfg.random_erase == 0 else f"{cfg.random_erase_mode} {cfg.random_erase:g}"
    assert row["random erasing"] == erasing
    if cfg.random_erase > 0:
        assert cfg.random_erase_mode == {"torchvision": "const", "DeiT": "pixel", "timm": "pixel"}.get(source, cfg.random_erase_mode)

    # auto-augment, at the interpolation of the transform train.py builds; both sources pass the training one
    _, train_set, _ = train.build_datasets(config.resolve(*parse_args(
        ["--recipe", name, "--data", str(tiny_data), "--output", "x", "--train-crop-size", "32",
         "--val-crop-size", "32", "--val-resize-size", "36"]), 1))
    op = train_set.transform._aa
    if cfg.auto_augment == "none":
        assert op is None and row["auto-augment"] == "none"
    else:
        assert row["auto-augment"] == f"{cfg.auto_augment} {op.interpolation.value}"
        assert op.interpolation.value == (cfg.train_interpolation or cfg.interpolation)

    # weight decay: the categories, and the exempt parameters by the source's own rule
    assert row["no weight decay on"] == (", ".join(cfg.no_decay_on) or "none")
    try:
        with torch.device("meta"):  # names and shapes only: no weight initialisation
            model = models.build_model(cfg.model, 1000)
    except NotImplementedError:  # regnet's builder reads a value back while building
        model = models.build_model(cfg.model, 1000)
    ours = no_decay_names(model, cfg.no_decay_on)
    if source == "torchvision":
        exemption = row["source's exemption"]
        assert ours == torchvision_exempt(model, "" if exemption == "(none)" else exemption)
    elif source == "DeiT":
        assert row["source's exemption"] == "timm filter_bias_and_bn + no_weight_decay()"
        assert ours == timm_exempt(model)
    elif source == "timm":  # create_optimizer's default filter; timm's EfficientNet has no no_weight_decay()
        assert row["source's exemption"] == "timm filter_bias_and_bn"
        assert ours == timm_exempt(model, no_weight_decay=())
    elif source == "TensorFlow":  # main.py: weight_decay x l2_loss of the variables outside batch_normalization
        assert row["source's exemption"] == "'batch_normalization' not in the name"
        bn = [name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert ours == {f"{name}.{p}" for name in bn for p in ("weight", "bias")}
    else:
        assert source == "imnet" and name == "demo"

    # EMA start: torchvision copies through its LR warmup (the first update after it too); DeiT's timm ModelEma
    # starts from the initial weights
    start = "off" if not cfg.ema else "copy during warmup" if cfg.ema_copy_warmup else "initial weights"
    assert row["EMA start"] == start
    if cfg.ema:
        assert start == {"torchvision": "copy during warmup", "DeiT": "initial weights", "timm": "initial weights",
                         "TensorFlow": "initial weights"}[source]
        tiny = torch.nn.Linear(2, 2)
        ema = train.build_parts(cfg, tiny, param_groups(tiny, 0.0), 3, dist.DistInfo()).ema
        if cfg.ema_copy_warmup:  # the copy phase is the LR warmup, counted in optimizer steps
            assert ema.copy_steps > 0
            assert cfg.lr_at(ema.copy_steps - 1) < cfg.peak_lr == cfg.lr_at(ema.copy_steps)
        else:
            assert ema.copy_steps is None
