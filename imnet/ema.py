"""Exponential moving average (EMA) of a model's weights and buffers, in float32.

Polyak averaging (Polyak & Juditsky 1992, "Acceleration of Stochastic Approximation by Averaging")
evaluates the average of the iterates instead of the last one; the exponential form, as in
TensorFlow's ``ExponentialMovingAverage`` and timm's ``ModelEma``, is

    ema <- decay * ema + (1 - decay) * w        (= torch.lerp(ema, w, 1 - decay))

after an optimizer step.

Where the average starts, two ways:

- from a copy of the model at construction (the default), as timm's ``ModelEma`` / ``ModelEmaV2`` and
  DeiT (which builds it from the initial weights). The initial weights then keep a share decay**t of
  the average after t steps;
- ``copy_steps=N``: torchvision's reference script (references/classification/train.py) resets
  AveragedModel's ``n_averaged`` after every EMA update during its LR warmup epochs, so those updates and
  the first one after them copy the weights. Here: an update copies when it is the first, or when the
  update before it came at an optimizer step <= N (N = the LR warmup's steps; N = 0: only the first).

Decay warmup (``warmup=True``, TensorFlow ``ExponentialMovingAverage(num_updates=...)``): with n the
number of EMA updates already done (0 at the first one),

    decay_n = min(decay, (1 + n) / (10 + n)),

so that the early average is not dominated by the random initial weights. (timm's ModelEmaV3 warmup is
another formula, decay_n = 1 - (1 + n)^(-2/3); this is not it.)

Updating every k optimizer steps with decay**k keeps the same time constant (~ 1 / (1 - decay)
steps) at 1/k of the cost: k updates of decay d shrink the old average by d**k.

BatchNorm buffers: floating buffers (running_mean, running_var) are *averaged* like the weights, over the
same window, so they belong to roughly the same averaged network (timm's ModelEmaV2/V3, torchvision's
AveragedModel with use_buffers=True). Integer buffers (``num_batches_tracked``) are *copied* (AveragedModel
computes ``int(ema * d + w * (1 - d))`` for them, a meaningless truncated value).
"""

import copy

import torch
from torch import nn

__all__ = ["unwrap", "ModelEma"]


def unwrap(model):
    """Strip DistributedDataParallel / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class ModelEma:
    """EMA of ``model``: ``.module`` is the averaged float32 copy, in eval mode, without gradients. Call
    ``.update(model, step)`` after each optimizer step (``step`` = steps done); it updates when
    ``step % every == 0``."""

    def __init__(self, model, decay=0.9999, warmup=False, every=1, device=None, copy_steps=None):
        self.decay = decay
        self.warmup = warmup
        self.every = every
        self.copy_steps = copy_steps
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap(model)).float().eval().requires_grad_(False)
        if device is not None:
            self.module.to(device)

    def decay_at(self, num_updates):
        """Decay of one update after ``num_updates`` updates, before the power ``every``."""
        if self.warmup:
            return min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model, step):
        if step % self.every != 0:
            return
        copies = self.copy_steps is not None and (self.num_updates == 0 or step - self.every <= self.copy_steps)
        decay = self.decay_at(self.num_updates) ** self.every
        ema_floats, model_floats = [], []
        ema_tensors = list(self.module.parameters()) + list(self.module.buffers())
        model = unwrap(model)
        model_tensors = list(model.parameters()) + list(model.buffers())
        if len(ema_tensors) != len(model_tensors):
            raise ValueError("the model does not have the structure of the EMA copy")
        for e, w in zip(ema_tensors, model_tensors):
            if e.is_floating_point() and not copies:
                ema_floats.append(e)
                model_floats.append(w.detach().to(device=e.device, dtype=e.dtype))
            else:
                e.copy_(w)
        if ema_floats:
            torch._foreach_lerp_(ema_floats, model_floats, 1.0 - decay)
        self.num_updates += 1

    def state_dict(self):
        return {"module": self.module.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay, "warmup": self.warmup, "every": self.every, "copy_steps": self.copy_steps}

    def load_state_dict(self, state):
        """Restore the average and the update count; the settings stay the constructor's."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
