"""train.py's train_step on a tiny model: fp16 loss scaling unscales before clipping, skipped inf steps,
accumulation, and the NaN guard."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import train
from imnet.metrics import Meter
from imnet.run.config import EvalPolicy


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def batches(n: int, batch: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8, generator=g),
             torch.randint(0, 3, (batch,), generator=g), []) for _ in range(n)]


def run(model, loader, steps, scaler=None, clip=0.0, accum=1, lr=0.5):
    """`steps` optimizer steps as train.py runs them, with the NaN guard checked at the end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    cfg = SimpleNamespace(lr_at=lambda s: lr, accum_steps=accum, clip_grad=clip, channels_last=False, seed=0,
                          random_erase=0.0, loss_label_smoothing=0.0, amp_dtype=None, bce=False,
                          eval_policy=EvalPolicy(32, 32))
    parts = train.Parts(model=model, train_model=model, eval_model=model, optimizer=opt, device=torch.device("cpu"),
                        scaler=scaler)
    guard, it = train.NonFiniteGuard("cpu"), iter(loader)
    for step in range(steps):
        micro = [next(it)[:2] for _ in range(accum)]
        loss, _ = train.train_step(cfg, parts, micro, 0, step, step, Meter("cpu"))
        guard.update(loss, step)
    guard.check()
    return model, SimpleNamespace(global_step=steps)


def test_fp16_scaler_unscales_before_clipping():
    """With loss scaling, clipping must see the true gradients: the result equals the unscaled run.

    If clipping came before unscaling, the clip would act on gradients 2**10 times too large and the
    update would be 2**10 times too small, which this comparison would catch."""
    loader = batches(3)
    plain, _ = run(tiny_model(), loader, 3, clip=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled, _ = run(tiny_model(), loader, 3, scaler=scaler, clip=0.05)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = tiny_model()
    assert any(not torch.allclose(a, b) for a, b in zip(moved.parameters(), plain.parameters()))


def test_fp16_scaler_skips_steps_with_inf_gradients():
    model = tiny_model()
    with torch.no_grad():
        model[-1].weight.mul_(1e20)  # a finite loss near 1e20, which the 2**100 scale pushes past fp32's range
    before = copy.deepcopy(model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    run(model, batches(1), 1, scaler=scaler, clip=1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "an overflowing step must leave the weights alone"
    assert scaler.get_scale() < 2.0**100  # and the scale backs off


def test_accumulation_matches_one_big_batch():
    small = batches(4, batch=4)
    big = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]), [])
           for i in (0, 2)]
    a, prog = run(tiny_model(), small, 2, accum=2)
    b, _ = run(tiny_model(), big, 2)
    assert prog.global_step == 2
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_nonfinite_loss_raises_with_the_step():
    model = tiny_model()
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))
    with pytest.raises(train.NonFiniteLoss) as e:
        run(model, batches(2), 2)
    assert e.value.step == 0


def test_label_smoothing_is_applied_once_with_mixing():
    """The Config decides where label smoothing goes: into the MixUp/CutMix targets (the mixer smooths every
    batch, mixed or not) and then not into the loss. A step whose batch is not mixed (mix_prob 0) must therefore
    have the loss of smoothing applied once: F.cross_entropy(label_smoothing=0.1) of the same logits."""
    import torch.nn.functional as F

    from imnet.run import config, dist, flags
    from imnet.run.data import to_device
    from imnet.optim import param_groups
    below, given = flags.parse_args(["--data", "d", "--output", "o", "--mixup", "0.2", "--mix-prob", "0",
                                     "--label-smoothing", "0.1", "--opt", "sgd", "--lr", "0.1", "--epochs", "1",
                                     "--batch-size", "4"])
    cfg = config.resolve(below, given, 1).with_data(8, 1, 3)
    assert (cfg.mix_label_smoothing, cfg.loss_label_smoothing) == (0.1, 0.0)
    model = tiny_model()
    parts = train.build_parts(cfg, model, param_groups(model, 0.0), 3, dist.DistInfo())
    assert parts.mixer.label_smoothing == 0.1
    images, labels, _ = batches(1)[0]
    with torch.no_grad():
        logits = copy.deepcopy(model)(to_device(images, labels, "cpu")[0])
    loss, _ = train.train_step(cfg, parts, [(images, labels)], 0, 0, 0, Meter("cpu"))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1), rtol=1e-6, atol=1e-6)
    assert not torch.isclose(loss, F.cross_entropy(logits, labels, label_smoothing=0.2), rtol=1e-4)  # not twice
