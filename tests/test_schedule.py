import math
import warnings

import pytest
import torch

from imnet.schedule import lr_at, scale_lr, set_lr


def _torch_lrs(make_scheduler, steps, base_lr):
    """LR used by each of ``steps`` optimizer steps under a torch scheduler stepped per iteration."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's internal step(0) deprecation warning
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs


def test_closed_form_values():
    kw = dict(base_lr=0.8, total_steps=1100, warmup_steps=100, warmup_start_factor=0.1, min_lr=0.01)
    assert lr_at(0, **kw) == pytest.approx(0.08)                       # warmup start: s * eta
    assert lr_at(50, **kw) == pytest.approx(0.8 * (0.1 + 0.9 * 0.5))   # half-way through warmup
    assert lr_at(100, **kw) == pytest.approx(0.8)                      # warmup end: eta
    assert lr_at(600, **kw) == pytest.approx((0.8 + 0.01) / 2)         # cosine midpoint
    last = 0.01 + 0.79 * 0.5 * (1 + math.cos(math.pi * 999 / 1000))
    assert lr_at(1099, **kw) == pytest.approx(last)                    # last step: just above min_lr
    assert lr_at(1100, **kw) == pytest.approx(0.01)
    assert lr_at(5000, **kw) == pytest.approx(0.01)                    # stays at min_lr
    assert lr_at(0, base_lr=1.0, total_steps=10, warmup_steps=5) == 0.0  # start factor 0 allowed


@pytest.mark.parametrize("warmup, start, min_lr", [(0, 1.0, 0.0), (7, 0.01, 0.0), (25, 0.25, 1e-3)])
def test_cosine_equals_sequential_linear_cosine(warmup, start, min_lr):
    base_lr, total = 0.5, 120
    ours = [lr_at(t, base_lr=base_lr, total_steps=total, warmup_steps=warmup, warmup_start_factor=start,
                  min_lr=min_lr) for t in range(total)]

    def make(opt):
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
        if warmup == 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0,
                                                   total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])

    reference = _torch_lrs(make, total, base_lr)
    for t, (a, b) in enumerate(zip(ours, reference)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), t


def test_step_equals_multistep():
    milestones, total = [30, 60, 80], 100
    ours = [lr_at(t, base_lr=0.1, total_steps=total, sched="step", milestones=milestones, gamma=0.1)
            for t in range(total)]
    reference = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, 0.1), total, 0.1)
    assert ours == pytest.approx(reference, rel=1e-12)


def test_step_and_constant_with_warmup():
    kw = dict(base_lr=1.0, total_steps=100, warmup_steps=10, warmup_start_factor=0.5)
    assert lr_at(5, sched="constant", **kw) == pytest.approx(0.75)
    assert lr_at(10, sched="constant", **kw) == lr_at(99, sched="constant", **kw) == 1.0
    assert lr_at(39, sched="step", milestones=(40, 70), gamma=0.5, **kw) == 1.0
    assert lr_at(40, sched="step", milestones=(40, 70), gamma=0.5, **kw) == 0.5
    assert lr_at(70, sched="step", milestones=(40, 70), gamma=0.5, **kw) == 0.25
    with pytest.raises(ValueError):
        lr_at(0, sched="linear", **kw)


def test_scale_lr():
    assert scale_lr(0.1, 1024) == pytest.approx(0.4)
    assert scale_lr(0.1, 64, base_batch=256) == pytest.approx(0.025)
    assert scale_lr(1e-3, 1024, base_batch=256, rule="sqrt") == pytest.approx(2e-3)
    # global batch = per-GPU batch x GPUs x accumulation steps
    assert scale_lr(0.1, 32 * 4 * 2) == scale_lr(0.1, 256) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        scale_lr(0.1, 256, rule="cube")


def test_set_lr_respects_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0)
    set_lr(opt, 0.3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.03)
