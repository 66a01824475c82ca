import math
import warnings

import numpy as np
import pytest
import torch

from imnet.schedule import lr_at, progressive_size, scale_lr, set_lr


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


def _tf_efficientnet_lr(t, initial_lr, steps_per_epoch, decay_epochs, decay_factor, warmup_epochs):
    """tensorflow/tpu models/official/efficientnet/utils.py build_learning_rate('exponential'), written out."""
    lr = initial_lr * decay_factor ** math.floor(t / (steps_per_epoch * decay_epochs))
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    return initial_lr * t / warmup_steps if t < warmup_steps else lr


@pytest.mark.parametrize("steps_per_epoch, warmup_epochs", [(3, 0), (3, 5), (10, 2), (7, 1)])
def test_exp_is_tensorflows_staircase_decay(steps_per_epoch, warmup_epochs):
    """N = 2.4 epochs of steps: at 3 steps an epoch the LR drops after steps 7.2, 14.4, ... (within epochs)."""
    spe, total = steps_per_epoch, 20 * steps_per_epoch
    ours = [lr_at(t, base_lr=0.256, total_steps=total, warmup_steps=warmup_epochs * spe, sched="exp",
                  gamma=0.97, decay_steps=2.4 * spe) for t in range(total)]
    reference = [_tf_efficientnet_lr(t, 0.256, spe, 2.4, 0.97, warmup_epochs) for t in range(total)]
    assert ours == pytest.approx(reference, rel=1e-12)


def test_exp_closed_form_and_warmup_boundary():
    kw = dict(base_lr=1.0, total_steps=100, sched="exp", gamma=0.5, decay_steps=7.2)
    assert [lr_at(t, **kw) for t in (0, 7, 8, 14, 15, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.5 ** 13]
    # warmup 25 steps from 0.1: the decay counts from step 0, so step 25 is already 3 decays down
    kw.update(warmup_steps=25, warmup_start_factor=0.1)
    assert lr_at(24, **kw) == pytest.approx(0.1 + 0.9 * 24 / 25)
    assert lr_at(25, **kw) == 0.5 ** 3


@pytest.mark.parametrize("decay_steps", [1, 4])
def test_exp_equals_steplr_and_exponentiallr(decay_steps):
    """A whole N: StepLR(N, gamma) stepped per iteration (per epoch when N is an epoch of steps); N = 1 is
    ExponentialLR."""
    total = 40
    ours = [lr_at(t, base_lr=0.064, total_steps=total, sched="exp", gamma=0.973, decay_steps=decay_steps)
            for t in range(total)]
    reference = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, decay_steps, 0.973), total, 0.064)
    assert ours == pytest.approx(reference, rel=1e-12)
    if decay_steps == 1:
        exponential = _torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.973), total, 0.064)
        assert ours == pytest.approx(exponential, rel=1e-12)


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


# ------------------------------------------------------------------------------------------ progressive resolution

def _ffcv_resolution(epoch, min_res, max_res, end_ramp, start_ramp, multiple=32):
    """FFCV's ImageNet example (train_imagenet.py, get_resolution), epochs 0-based: the reference."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    return int(np.round(np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0] / multiple)) * multiple


@pytest.mark.parametrize("start, end, first, last, epochs", [
    (160, 192, 66, 77, 88),   # FFCV's rn50_88_epochs.yaml (0-based start_ramp 65, end_ramp 76)
    (160, 192, 13, 14, 16),   # rn50_16_epochs.yaml: a one-epoch ramp
    (32, 64, 4, 9, 10),       # a 32 -> 64 CPU ramp
    (64, 112, 4, 9, 10),      # the CPU time-to-accuracy benchmark's default
    (160, 224, 60, 80, 90),   # recipes.md: resnet50_classic with progressive resolution
    (128, 224, 0, 30, 40),    # ramp from the first epoch on
    (64, 64, 2, 5, 6),        # START == END: constant
])
@pytest.mark.parametrize("multiple", [16, 32])
def test_progressive_size_is_ffcvs_schedule_with_1_based_epochs(start, end, first, last, epochs, multiple):
    sizes = [progressive_size(e, start, end, first, last, multiple) for e in range(epochs)]
    assert sizes == [_ffcv_resolution(e, start, end, last - 1, first - 1, multiple) for e in range(epochs)]
    assert all(s % multiple == 0 or s in (start, end) for s in sizes)
    assert sizes == sorted(sizes)  # never shrinks


def test_progressive_size_closed_form_by_hand():
    # 32 -> 64 over epochs 4 -> 9: n <= 4 -> 32; n = 5..8 -> 16 * round((32 + 32 (n - 4) / 5) / 16)
    # = 16 * round(2.4, 2.8, 3.2, 3.6) = 32, 48, 48, 64; n >= 9 -> 64.
    assert [progressive_size(e, 32, 64, 4, 9) for e in range(10)] == [32, 32, 32, 32, 32, 48, 48, 64, 64, 64]
    # 64 -> 112 over 4 -> 9 (bench/time_to_accuracy.py): n = 5..8 -> 16 * round((64 + 48 (n - 4) / 5) / 16)
    # = 16 * round(4.6, 5.2, 5.8, 6.4) = 80, 80, 96, 96.
    assert [progressive_size(e, 64, 112, 4, 9) for e in range(10)] == [64, 64, 64, 64, 80, 80, 96, 96, 112, 112]
    # FFCV rn50_88 (m = 32): 160 through epoch 71, then 192 (epoch 72: 160 + 32 * 6/11 = 177.5 -> 192).
    sizes = [progressive_size(e, 160, 192, 66, 77, 32) for e in range(88)]
    assert sizes.count(160) == 71 and sizes.count(192) == 17 and set(sizes) == {160, 192}
    # Ties round to even: 32 -> 48 over epochs 1 -> 3 gives 40 at epoch 2, 40 / 16 = 2.5 -> 2 -> 32.
    assert progressive_size(1, 32, 48, 1, 3) == 32


# ------------------------------------------------------------------------------------------ Config.lr_at

def _config(*flags, steps_per_epoch=10, world_size=1):
    """A resolved Config (train.py's resolver) with `flags`, 10 optimizer steps per epoch."""
    from imnet.run import config
    from imnet.run.flags import parse_args
    below, given = parse_args(["--data", "d", "--output", "o", "--lr", "0.8", *flags])
    cfg = config.resolve(below, given, world_size)
    return cfg.with_data(steps_per_epoch * cfg.global_batch_size, 1, 2)


def test_config_lr_at_converts_warmup_epochs_to_steps():
    """Warmup given in epochs (2.5 epochs of 10 steps: 25 steps), the cosine over the 75 steps after it."""
    cfg = _config("--epochs", "10", "--warmup-epochs", "2.5", "--warmup-start-factor", "0.1")
    assert cfg.steps_per_epoch == 10 and cfg.total_steps == 100 and cfg.warmup_steps == 25
    assert cfg.lr_at(0) == pytest.approx(0.08)
    assert cfg.lr_at(10) == pytest.approx(0.8 * (0.1 + 0.9 * 10 / 25))  # 1 epoch into the 2.5-epoch warmup
    assert cfg.lr_at(24) < 0.8 and cfg.lr_at(25) == pytest.approx(0.8)
    assert cfg.lr_at(25 + 75 // 2) == pytest.approx(0.8 * (1 + math.cos(math.pi * 37 / 75)) / 2)
    # accumulation counts optimizer steps, not micro-steps: the same schedule
    acc = _config("--epochs", "10", "--warmup-epochs", "2.5", "--warmup-start-factor", "0.1", "--accum-steps", "4",
                  "--batch-size", "8")
    assert acc.steps_per_epoch == 10 and [acc.lr_at(t) for t in range(100)] == [cfg.lr_at(t) for t in range(100)]


def test_config_lr_at_converts_step_milestones_from_epochs():
    cfg = _config("--epochs", "9", "--sched", "step", "--lr-milestones", "3", "6", "--lr-gamma", "0.5")
    lrs = [cfg.lr_at(t) for t in range(90)]
    assert lrs == [0.8] * 30 + [0.4] * 30 + [0.2] * 30
