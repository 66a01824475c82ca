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


def test_each_micro_step_gets_its_own_seeds(monkeypatch):
    """Under accumulation every micro-step of every step draws its dropout and mixing seeds at its own place:
    no two micro-steps of neighbouring steps share one."""
    from imnet.run import seeds
    from test_step import batches, run, tiny_model
    real, drawn = seeds.derive, []
    monkeypatch.setattr(seeds, "derive", lambda *key: drawn.append(key) or real(*key))
    run(tiny_model(), batches(6), 3, accum=2)
    for purpose in (seeds.DROPOUT, seeds.MIXING):
        keys = [key for key in drawn if key[0] == purpose]
        assert len(keys) == 6 and len(set(keys)) == 6, keys


def test_the_ema_flags_reach_the_ema():
    """--ema-warmup: the decay warms up with the updates; --ema-copy-warmup: the EMA copies the weights during
    the LR warmup's steps (imnet.ema.ModelEma)."""
    info = dist.DistInfo()
    copy_warmup = ["--ema", "--ema-copy-warmup", "--warmup-epochs", "1", "--epochs", "2"]
    for flags, warmup, copies in ((["--ema"], False, False), (["--ema", "--ema-warmup"], True, False),
                                  (copy_warmup, False, True)):
        cfg = resolved(*flags)
        model = nn.Linear(3, 3)
        parts = train.build_parts(cfg, model, train.build_param_groups(cfg, model), 3, info)
        assert parts.ema.warmup is warmup, flags
        assert parts.ema.copy_steps == (cfg.warmup_steps if copies else None), flags
        assert not copies or cfg.warmup_steps > 0


class Scores:
    def __init__(self, top1):
        self.loss, self.top1, self.top5, self.count, self.unreadable = 1.0, top1, 100.0, 8, []


def test_each_row_of_the_summary_evaluates_its_own_weights(monkeypatch):
    """evaluate_epoch: the model row scores the trained weights, the EMA row the EMA's, the SWA row the average's."""
    from types import SimpleNamespace
    from imnet.run import signals
    trained, ema, swa = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    top1 = {id(trained): 10.0, id(ema): 20.0, id(swa): 30.0}
    monkeypatch.setattr(train, "evaluate_all", lambda models, *a, **kw: [Scores(top1[id(m)]) for m in models])
    parts = SimpleNamespace(eval_model=trained, ema=SimpleNamespace(module=ema), device=torch.device("cpu"),
                            swa=SimpleNamespace(module=swa, n_averaged=torch.tensor(1)))
    training = SimpleNamespace(cfg=resolved(), parts=parts, val_loader=[], classes=[0, 1, 2],
                               preemption=signals.PreemptionSignals())
    row = train.evaluate_epoch(training, 0)
    assert (row["val_top1"], row["ema_val_top1"], row["swa_val_top1"]) == (10.0, 20.0, 30.0)
