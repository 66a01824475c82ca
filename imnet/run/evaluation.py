"""One evaluation pass (`evaluate`), for train.py after each epoch and for eval.py."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imnet.run import dist
from imnet.losses import cross_entropy
from imnet.metrics import Meter
from imnet.transforms import normalize
from imnet.run.tta import make_views


def autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


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


def evaluate(model: nn.Module, loader, device: torch.device, policy, num_classes: int, tta: str = "none",
             amp_dtype=None, channels_last: bool = False) -> EvalResult:
    """One model's evaluation: `evaluate_all` with one model."""
    return evaluate_all([model], loader, device, policy, num_classes, tta, amp_dtype, channels_last)[0]


@torch.inference_mode()
def evaluate_all(models: list[nn.Module], loader, device: torch.device, policy, num_classes: int,
                 tta: str = "none", amp_dtype=None, channels_last: bool = False) -> list[EvalResult]:
    """Every model on the same decoded batches (one decode per image, whatever the number of models), a result per
    model. Summed over all ranks (each reads its EvalSampler shard): equal to a single-process evaluation. Nothing
    is read back to the host inside the loop (the confusion counts by index_add_: bincount reads its range back)."""
    for model in models:
        model.eval()
    k = min(5, num_classes)
    meters = [Meter(device) for _ in models]
    confusions = [torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) for _ in models]
    top_idx, top_prob = [[] for _ in models], [[] for _ in models]
    all_labels, bad, v = [], [], 1
    for images, labels, bad_paths in loader:
        bad += bad_paths
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        views, v = make_views(images, tta)
        x = normalize(views, policy.mean, policy.std, channels_last=channels_last)
        for j, model in enumerate(models):
            with autocast(device, amp_dtype):
                logits = model(x).float()
            if v == 1:
                scores, probs = logits, logits.softmax(dim=1)
                loss = cross_entropy(logits, labels)
            else:  # cross-entropy of the averaged distribution; tiny floor so that p = 0 gives a large, finite loss
                scores = probs = logits.softmax(dim=1).view(images.shape[0], v, -1).mean(dim=1)
                loss = F.nll_loss(probs.clamp_min(torch.finfo(torch.float32).tiny).log(), labels)
            meters[j].update(loss, scores, labels, n=labels.shape[0])
            ranked = scores.topk(k, dim=1).indices
            confusions[j].index_add_(0, labels * num_classes + ranked[:, 0], torch.ones_like(labels))
            top_idx[j].append(ranked)
            top_prob[j].append(probs.gather(1, ranked))
        all_labels.append(labels)
    cat = lambda xs, shape: torch.cat(xs).cpu() if xs else torch.zeros(shape)
    results = []
    for j in range(len(models)):
        m = meters[j].compute(distributed=True)
        dist.all_reduce_sum(confusions[j])
        results.append(EvalResult(m["loss"], m["top1"], m["top5"], m["count"],
                                  confusions[j].view(num_classes, num_classes).cpu(), cat(top_idx[j], (0, k)).long(),
                                  cat(top_prob[j], (0, k)), cat(all_labels, (0,)).long(), sorted(set(bad)), v))
    return results
