"""Learning-rate schedule as a pure function of the optimizer step, plus the batch-size scaling rule.

``step`` counts optimizer steps from 0 (the LR used by the first update is ``lr_at(0, ...)``);
W = warmup_steps, T = total_steps, s = warmup_start_factor, eta = base_lr.

Linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"):

    lr(t) = eta * (s + (1 - s) * t / W)                                      for t < W

then one of

    cosine   lr(t) = min_lr + (eta - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2
             (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts",
             without restarts; reaches min_lr at t = T and stays there after)
    step     lr(t) = eta * gamma ** (number of milestones <= t)     (He et al. 2016: /10 every 30 epochs)
    exp      lr(t) = eta * gamma ** floor(t / N)                    (N = decay_steps, may be fractional)
    constant lr(t) = eta

"exp" is TensorFlow's ``exponential_decay(..., staircase=True)`` as the EfficientNet reference uses it
(tensorflow/tpu models/official/efficientnet/utils.py, build_learning_rate: N = 2.4 epochs of steps, gamma 0.97,
so the LR drops within an epoch) and, with N a whole number of epochs, torchvision's per-epoch
``StepLR(step_size, gamma)`` (its MobileNetV3 recipe: 2 epochs, 0.973); N = 1 is ``ExponentialLR`` stepped per
iteration. Like "step", it counts t from 0, not from the end of the warmup, as TensorFlow does (warmup replaces
the first decays; torch's ``SequentialLR`` would start the decay at W instead).

Per step, this equals torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W),
CosineAnnealingLR(T_max=T - W, eta_min=min_lr)], milestones=[W])`` stepped once per iteration
(torch's LinearLR needs s > 0; here s = 0 is allowed), and ``MultiStepLR(milestones, gamma)`` for
"step" without warmup, and ``StepLR(N, gamma)`` for "exp" with a whole N and no warmup.

Linear scaling rule (Goyal et al. 2017): lr = base_lr * global_batch / base_batch, where the global
batch is per-GPU batch x GPUs x gradient-accumulation steps (the samples behind one optimizer step).
The square-root rule, base_lr * sqrt(global_batch / base_batch), is the usual choice for
Adam-type optimizers at very large batch (Krizhevsky 2014; You et al. 2020, LAMB).

Progressive resolution (`progressive_size`): the training crop grows with the epoch, a pure function of the
epoch number n (1-based, as train.py prints it), START, END, FROM, TO and the rounding multiple m = 16:

    size(n) = START                                                         for n <= FROM
    size(n) = m * round((START + (END - START) * (n - FROM) / (TO - FROM)) / m)   for FROM < n < TO
    size(n) = END                                                           for n >= TO

(round: to the nearest integer, ties to even). This is FFCV's ImageNet schedule (``get_resolution``:
``np.interp`` between ``start_ramp`` and ``end_ramp``, rounded to a multiple of 32) with 1-based epochs: FFCV's
rn50_88_epochs.yaml (160 -> 192, 0-based start_ramp 65, end_ramp 76) is START, END, FROM, TO = 160, 192, 66, 77.
Early epochs cost ~ (size / END)^2 of the convolution FLOPs. Evaluating above the last training size is the
point: RandomResizedCrop zooms in, so the test resolution matching the training object size is ~1.15x the
training one (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"); FFCV trains at <= 192 and
evaluates at 256.
"""

import bisect
import math

__all__ = ["scale_lr", "lr_at", "set_lr", "progressive_size", "PROGRESSIVE_MULTIPLE"]

# The rounding of progressive sizes: 16, not FFCV's 32, so a ViT/16 grid stays whole at every size and a
# small-resolution ramp has intermediate sizes (32 -> 64 goes 32, 48, 64; with 32 it would jump). A ResNet
# (total stride 32) just gets one odd-sized last feature map at sizes that are odd multiples of 16.
PROGRESSIVE_MULTIPLE = 16


def scale_lr(base_lr, global_batch, base_batch=256, rule="linear"):
    """The LR for ``global_batch`` given ``base_lr`` tuned at ``base_batch``; rule "linear", "sqrt" or "none"."""
    if rule == "linear":
        return base_lr * global_batch / base_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / base_batch)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown LR scaling rule {rule!r}; expected 'linear', 'sqrt' or 'none'")


def lr_at(step, *, base_lr, total_steps, warmup_steps=0, warmup_start_factor=0.0, sched="cosine",
          min_lr=0.0, milestones=(), gamma=0.1, decay_steps=1.0):
    """LR for optimizer step ``step`` (0-based)."""
    if sched not in ("cosine", "step", "exp", "constant"):
        raise ValueError(f"unknown schedule {sched!r}; expected 'cosine', 'step', 'exp' or 'constant'")
    if step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    if sched == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if sched == "step":
        return base_lr * gamma ** bisect.bisect_right(sorted(milestones), step)
    if sched == "exp":
        return base_lr * gamma ** math.floor(step / decay_steps)
    return base_lr


def set_lr(optimizer, lr):
    """Write ``lr`` into every param group, times the group's optional ``"lr_scale"`` (e.g. layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def progressive_size(epoch, start, end, first, last, multiple=PROGRESSIVE_MULTIPLE):
    """The training crop size of ``epoch`` (0-based; n = epoch + 1) under the ramp from ``start`` at epoch number
    ``first`` to ``end`` at ``last``. A function of the epoch alone, so a resumed run and every data-loading
    worker and rank agree on it without any shared state."""
    n = epoch + 1
    if n <= first:
        return int(start)
    if n >= last:
        return int(end)
    size = start + (end - start) * (n - first) / (last - first)
    return int(round(size / multiple)) * multiple
