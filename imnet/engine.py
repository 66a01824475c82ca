"""train_one_epoch and evaluate.

One optimizer step, in order (DESIGN.md, "Data flow"): uint8 batch -> device, float + normalize ->
RandomErasing / MixUp / CutMix -> forward under autocast -> fp32 loss on soft targets -> backward (scaled for
fp16; no gradient all-reduce on non-final accumulation micro-steps) -> unscale + clip -> optimizer step ->
LR for the next step -> EMA update. Metrics stay on the device; the host reads them only at log time.

Determinism: the randomness of a micro-step (mixing, erasing, dropout, stochastic depth) comes from
generators reseeded from (seed, epoch, micro-step, rank), and the augmentation of each sample from
(seed, epoch, index) in data.py. A run resumed at any step therefore replays exactly what the uninterrupted
run would have done, without replaying any RNG history.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from imnet.data import to_device
from imnet.losses import cross_entropy
from imnet.metrics import Meter
from imnet.schedule import set_lr
from imnet.transforms import random_erase


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def step_seed(seed: int, epoch: int, micro_step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, micro_step, rank)."""
    return int(np.random.SeedSequence([seed, epoch, micro_step, rank, 1]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class Parts:
    """What a training step needs, built once in train.py."""
    model: nn.Module              # the plain module that owns the weights
    train_model: nn.Module        # what runs forward/backward: model, or DDP / torch.compile around it
    eval_model: nn.Module         # model, or a compiled view of it (never DDP: ranks see uneven eval shards)
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]
    device: torch.device
    num_classes: int
    mixer: object = None          # imnet.mixing.Mixer or None
    scaler: object = None         # torch.amp.GradScaler for fp16, else None
    ema: object = None            # imnet.ema.ModelEma or None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    accum_steps: int = 1
    clip_grad: float = 0.0
    label_smoothing: float = 0.0  # applied in the loss only when the mixer does not fold it into targets
    random_erase: float = 0.0
    seed: int = 0
    rank: int = 0
    world_size: int = 1


@dataclass
class Progress:
    epoch: int = 0          # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0    # optimizer steps done in the run
    history: list = field(default_factory=list)
    best_top1: float = -1.0


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_loss(p: Parts, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator):
    """Augment on the device, forward, loss. Returns (loss, logits, hard labels or None)."""
    if p.random_erase > 0:
        images = random_erase(images, p.random_erase, generator=gen)
    if p.mixer is not None and p.mixer.enabled:
        images, targets = p.mixer(images, labels, generator=gen)
        smoothing, hard = 0.0, None  # smoothing is folded into the soft targets already
    else:
        targets, smoothing, hard = labels, p.label_smoothing, labels
    with autocast(p.device, p.amp_dtype):
        logits = p.train_model(images)
    loss = cross_entropy(logits, targets, label_smoothing=smoothing)
    return loss, logits, hard


def train_one_epoch(p: Parts, loader, prog: Progress, steps_per_epoch: int, meter: Meter,
                    after_step: Callable[[Progress, list], bool], log_step: Callable[[Progress, dict], None],
                    log_every: int) -> bool:
    """Run optimizer steps ``prog.step_in_epoch .. steps_per_epoch-1`` of ``prog.epoch``.

    ``loader`` yields uint8 batches already positioned at the resume point. ``after_step(prog, bad_paths,
    first_bad)`` runs on the host after every optimizer step (preemption, timed checkpoints, bad-image
    budget) and returns True to stop. Returns True if stopped early; raises NonFiniteLoss on a NaN/inf loss.
    """
    p.train_model.train()
    window = {"loss": torch.zeros((), device=p.device), "n": 0, "data_time": 0.0, "t0": time.perf_counter()}
    first_bad = torch.full((), -1, dtype=torch.int64, device=p.device)
    it = iter(loader)
    set_lr(p.optimizer, p.lr_at(prog.global_step))
    grad_norm = None
    while prog.step_in_epoch < steps_per_epoch:
        bad_paths = []
        for micro in range(p.accum_steps):
            t_data = time.perf_counter()
            images, labels, bad = next(it)
            window["data_time"] += time.perf_counter() - t_data
            bad_paths.extend(bad)
            images, labels = to_device(images, labels, p.device, channels_last=p.channels_last)

            micro_step = prog.step_in_epoch * p.accum_steps + micro
            s = step_seed(p.seed, prog.epoch, micro_step, p.rank)
            torch.manual_seed(s)  # dropout / stochastic depth
            # Mixing and erasing draw their scalars from a CPU generator: no value is read back from the GPU.
            gen = torch.Generator().manual_seed(s ^ 0x5DEECE66D)

            last_micro = micro == p.accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(p.train_model, "no_sync") \
                else p.train_model.no_sync()
            with sync:
                loss, logits, hard = forward_loss(p, images, labels, gen)
                scaled = loss / p.accum_steps
                (p.scaler.scale(scaled) if p.scaler is not None else scaled).backward()

            # Bookkeeping on the device only: no host synchronisation here.
            loss_d = loss.detach()
            first_bad.masked_fill_((first_bad < 0) & ~torch.isfinite(loss_d), prog.global_step)
            meter.update(loss_d, logits.detach() if hard is not None else None, hard, n=labels.shape[0])
            window["loss"] += loss_d
            window["n"] += 1

        if p.scaler is not None:
            if p.clip_grad > 0:
                p.scaler.unscale_(p.optimizer)  # clip the true gradients, not the scaled ones
                grad_norm = nn.utils.clip_grad_norm_(p.model.parameters(), p.clip_grad)
            p.scaler.step(p.optimizer)  # skipped if the gradients hold inf/NaN
            p.scaler.update()
        else:
            if p.clip_grad > 0:
                grad_norm = nn.utils.clip_grad_norm_(p.model.parameters(), p.clip_grad)
            p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        prog.global_step += 1
        prog.step_in_epoch += 1
        set_lr(p.optimizer, p.lr_at(prog.global_step))
        if p.ema is not None:
            p.ema.update(p.model, prog.global_step)

        last = prog.step_in_epoch == steps_per_epoch
        if log_every and (prog.step_in_epoch % log_every == 0 or last):
            check_finite(first_bad)
            n = max(window["n"], 1)
            elapsed = time.perf_counter() - window["t0"]
            log_step(prog, {"loss": (window["loss"] / n).item(),
                            "grad_norm": float(grad_norm) if grad_norm is not None else None,
                            "micro_batches": window["n"], "elapsed": elapsed,
                            "data_share": window["data_time"] / max(elapsed, 1e-9)})
            window = {"loss": torch.zeros((), device=p.device), "n": 0, "data_time": 0.0, "t0": time.perf_counter()}
        if after_step(prog, bad_paths, first_bad):
            return True
    check_finite(first_bad)
    return False


def check_finite(first_bad: torch.Tensor) -> None:
    """Raise NonFiniteLoss if a NaN/inf loss was seen (one host read; called at log and save time)."""
    step = int(first_bad)
    if step >= 0:
        raise NonFiniteLoss(step)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype=None, channels_last=False) -> dict:
    """Loss, top-1, top-5 (percent) and count over this rank's shard, summed over all ranks.

    The eval sampler gives every image to exactly one rank with no padding, and Meter sums counts (not
    means) across ranks, so the figures equal a single-process evaluation whatever the world size.
    """
    model.eval()
    meter = Meter(device)
    bad = []
    for images, labels, bad_paths in loader:
        bad.extend(bad_paths)
        images, labels = to_device(images, labels, device, channels_last=channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        meter.update(cross_entropy(logits, labels), logits, labels, n=labels.shape[0])
    result = meter.compute(distributed=True)
    result["unreadable"] = sorted(set(bad))  # this rank's; their slots held substitute images
    return result


def is_finite_number(x) -> bool:
    return x is not None and math.isfinite(x)
