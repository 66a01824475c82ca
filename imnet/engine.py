"""One optimizer step (`train_step`) and one evaluation pass (`evaluate`); the epoch loop is in train.py.

One optimizer step, in order (docs/design.md, "One training step"): uint8 batch -> device, float + normalize ->
RandomErasing / MixUp / CutMix -> forward under autocast -> fp32 loss on soft targets -> backward (scaled for
fp16; no gradient all-reduce on non-final accumulation micro-steps) -> unscale + clip -> optimizer step ->
EMA update. Metrics stay on the device; the host reads them only at log time.

Determinism: the randomness of a micro-step (mixing, erasing, dropout, stochastic depth) comes from
generators reseeded from (seed, epoch, micro-step, rank), and the augmentation of each sample from
(seed, epoch, index) in data.py. A run resumed at any step therefore replays exactly what the uninterrupted
run would have done, without replaying any RNG history.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imnet import dist
from imnet.data import to_device
from imnet.losses import cross_entropy
from imnet.metrics import Meter
from imnet.sam import keep_buffers
from imnet.schedule import set_lr
from imnet.transforms import normalize, random_erase
from imnet.tta import make_views


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class NonFiniteGuard:
    """Remembers the first optimizer step whose loss was NaN or infinite, on the device.

    ``update`` is a masked fill on the device (no host synchronisation per step); ``check`` reads the one
    number back and raises NonFiniteLoss naming the step. train.py checks at log time and before every save,
    so a checkpoint is never written after a NaN."""

    def __init__(self, device):
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.first_bad.masked_fill_((self.first_bad < 0) & ~torch.isfinite(loss), step)

    def check(self) -> None:
        step = int(self.first_bad)
        if step >= 0:
            raise NonFiniteLoss(step)


def step_seed(seed: int, epoch: int, micro_step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, micro_step, rank)."""
    return int(np.random.SeedSequence([seed, epoch, micro_step, rank, 1]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class Parts:
    """The objects an optimizer step acts on, built once in train.py (settings are read from the Config)."""
    model: nn.Module              # the plain module that owns the weights
    train_model: nn.Module        # what runs forward/backward: model, or DDP / torch.compile around it
    optimizer: torch.optim.Optimizer
    device: torch.device
    rank: int = 0
    mixer: object = None          # imnet.mixing.Mixer or None
    scaler: object = None         # torch.amp.GradScaler for fp16, else None
    ema: object = None            # imnet.ema.ModelEma or None
    sam: object = None            # imnet.sam.SAM around the optimizer's parameters, or None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(cfg, parts: Parts, batches: list, epoch: int, step: int, global_step: int, meter: Meter):
    """Optimizer step ``global_step`` (step ``step`` of ``epoch``) over ``cfg.accum_steps`` host micro-batches
    ``[(uint8 images, labels), ...]``. Returns (mean loss of the micro-batches as a device tensor, gradient
    norm before clipping or None). Nothing here reads a value back from the device."""
    p = parts
    set_lr(p.optimizer, cfg.lr_at(global_step))
    losses = []
    for micro, (images, labels) in enumerate(batches):
        images, labels = to_device(images, labels, p.device, channels_last=cfg.channels_last)
        s = step_seed(cfg.seed, epoch, step * cfg.accum_steps + micro, p.rank)
        torch.manual_seed(s)  # dropout / stochastic depth
        # Mixing and erasing draw their scalars from a CPU generator: no value is read back from the GPU.
        gen = torch.Generator().manual_seed(s ^ 0x5DEECE66D)
        if cfg.random_erase > 0:
            images = random_erase(images, cfg.random_erase, generator=gen)
        if p.mixer is not None and p.mixer.enabled:
            images, targets = p.mixer(images, labels, generator=gen)
            smoothing, hard = 0.0, None  # smoothing is folded into the soft targets already
        else:
            targets, smoothing, hard = labels, cfg.loss_label_smoothing, labels

        # Only the last micro-batch all-reduces the gradients: the others accumulate locally.
        last = micro == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(p.train_model, "no_sync") else p.train_model.no_sync()
        with sync:
            with autocast(p.device, cfg.amp_dtype):
                logits = p.train_model(images)
            loss = cross_entropy(logits, targets, label_smoothing=smoothing)
            scaled = loss / cfg.accum_steps
            (p.scaler.scale(scaled) if p.scaler is not None else scaled).backward()
        if p.sam is not None:  # accum_steps is 1 (config refuses more): this is the whole batch
            sam_second_pass(p, images, targets, smoothing, cfg.amp_dtype)
        meter.update(loss.detach(), logits.detach() if hard is not None else None, hard, n=labels.shape[0])
        losses.append(loss.detach())

    grad_norm = None
    if p.scaler is not None and cfg.clip_grad > 0:
        p.scaler.unscale_(p.optimizer)  # clip the true gradients, not the scaled ones
    if cfg.clip_grad > 0:
        grad_norm = nn.utils.clip_grad_norm_(p.model.parameters(), cfg.clip_grad)
    if p.scaler is not None:
        p.scaler.step(p.optimizer)  # skipped if the gradients hold inf/NaN
        p.scaler.update()
    else:
        p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)
    if p.ema is not None:
        p.ema.update(p.model, global_step + 1)
    return torch.stack(losses).mean(), grad_norm


def sam_second_pass(p: Parts, images, targets, smoothing: float, amp_dtype) -> None:
    """SAM (imnet/sam.py): from the first pass's gradient g, move to w + e, take the gradient of the same
    batch (same augmentation, same mixing) there, and come back to w with that gradient in p.grad.

    The first backward above was all-reduced (it is the last micro-step, not under no_sync), so every DDP
    rank ascends to the same w + e. Under fp16 the gradients stay scaled until the one unscale_ before the
    clip: the ascent direction does not depend on the scale. The second pass must not update BatchNorm's
    running statistics (``keep_buffers``); it draws new dropout / stochastic-depth masks from the step's
    seeded generator, so it is as reproducible as the first."""
    p.sam.ascend()
    with keep_buffers(p.model):
        with autocast(p.device, amp_dtype):
            logits = p.train_model(images)
        loss = cross_entropy(logits, targets, label_smoothing=smoothing)
        (p.scaler.scale(loss) if p.scaler is not None else loss).backward()
    p.sam.descend()


@dataclass
class EvalResult:
    """Figures summed over all ranks, plus this rank's per-image predictions (in its sampler's order)."""
    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor   # (C, C) int64 [true, predicted top-1], all ranks
    top_idx: torch.Tensor     # (n, k) this rank's top-k classes per image
    top_prob: torch.Tensor    # (n, k) their probabilities
    labels: torch.Tensor      # (n,)
    unreadable: list          # this rank's unreadable files (their slots held substitute images)
    views: int = 1

    def metrics(self) -> dict:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "count": self.count}


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, policy, num_classes: int, tta: str = "none",
             amp_dtype=None, channels_last: bool = False) -> EvalResult:
    """Loss, top-1, top-5 (percent) and count over this rank's shard, summed over all ranks.

    The eval sampler gives every image to exactly one rank with no padding, and Meter sums counts (not
    means) across ranks, so the figures equal a single-process evaluation whatever the world size. With
    test-time views (``tta``: see `imnet.tta`) the softmax probabilities of the views are averaged and the
    loss is the cross-entropy of that average. Nothing is read back to the host inside the loop.
    """
    model.eval()
    meter = Meter(device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    k = min(5, num_classes)
    top_idx, top_prob, all_labels, bad, v = [], [], [], [], 1
    for images, labels, bad_paths in loader:
        bad += bad_paths
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        views, v = make_views(images, tta)
        x = normalize(views, policy.mean, policy.std, channels_last=channels_last)
        with autocast(device, amp_dtype):
            logits = model(x).float()
        if v == 1:
            scores, probs = logits, logits.softmax(dim=1)
            loss = cross_entropy(logits, labels)
        else:  # cross-entropy of the averaged distribution; tiny floor so that p = 0 gives a large, finite loss
            scores = probs = logits.softmax(dim=1).view(images.shape[0], v, -1).mean(dim=1)
            loss = F.nll_loss(probs.clamp_min(torch.finfo(torch.float32).tiny).log(), labels)
        meter.update(loss, scores, labels, n=labels.shape[0])
        ranked = scores.topk(k, dim=1).indices
        confusion += torch.bincount(labels * num_classes + ranked[:, 0], minlength=num_classes ** 2)
        top_idx.append(ranked)
        top_prob.append(probs.gather(1, ranked))
        all_labels.append(labels)
    m = meter.compute(distributed=True)
    dist.all_reduce_sum(confusion)
    cat = lambda xs, shape: torch.cat(xs).cpu() if xs else torch.zeros(shape)
    return EvalResult(m["loss"], m["top1"], m["top5"], m["count"], confusion.view(num_classes, num_classes).cpu(),
                      cat(top_idx, (0, k)).long(), cat(top_prob, (0, k)), cat(all_labels, (0,)).long(),
                      sorted(set(bad)), v)
