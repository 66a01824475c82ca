"""train.py's glue between the Config and the pieces: the settings reach the step (the erasing fill) and the
optimizer (the weight-decay exemptions) as resolved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import train
from imnet.run import config, dist
from imnet.run.flags import parse_args
from imnet.metrics import Meter
from imnet.optim import no_decay_names


def resolved(*flags: str) -> config.Config:
    below, given = parse_args(["--data", "d", "--output", "o", "--lr", "0.1", "--epochs", "1",
                                     "--batch-size", "4", *flags])
    return config.resolve(below, given, 1).with_data(8, 1, 3)


class Recorder(nn.Module):
    """A model that keeps the last batch it was given."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.head(x)


@pytest.mark.parametrize("mode", ["const", "pixel"])
def test_the_step_erases_with_the_configured_fill(mode):
    """--random-erase 1: every image gets a box; const fills it with 0 (the mean after normalisation), pixel
    with noise. Random uint8 pixels normalise to exact zeros essentially never."""
    cfg = resolved("--random-erase", "1.0", "--random-erase-mode", mode)
    model = Recorder()
    parts = train.build_parts(cfg, model, train.build_param_groups(cfg, model), 3, dist.DistInfo())
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train.train_step(cfg, parts, [(images, torch.tensor([0, 1, 2, 0]))], 0, 0, 0, Meter("cpu"))
    zeros = (model.seen == 0).all(dim=1).flatten(1).sum(dim=1)  # pixels zero in every channel, per image
    if mode == "const":
        assert (zeros >= 0.02 * 32 * 32 * 0.5).all(), zeros  # a box of at least ~2% of the image
    else:
        assert (zeros == 0).all(), zeros


@pytest.mark.parametrize("flags, fc_bias_exempt", [([], True), (["--no-decay-on", "norm"], False),
                                                   (["--no-decay-on", "none"], False),
                                                   (["--no-decay-on", "norm", "bias"], True)])
def test_parameter_groups_exempt_the_configured_categories(flags, fc_bias_exempt):
    import torchvision
    cfg = resolved("--weight-decay", "0.05", *flags)
    model = torchvision.models.resnet18(num_classes=3)
    groups = train.build_param_groups(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert exempt == no_decay_names(model, cfg.no_decay_on)
    assert ("fc.bias" in exempt) == fc_bias_exempt
    assert sum(len(g["params"]) for g in groups) == len(names)
