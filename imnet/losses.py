"""Cross-entropy for hard (integer) or soft (probability) targets, with label smoothing.

For logits z (N, C), log-probabilities log p = log_softmax(z) and a target distribution q,

    loss = mean_n  - sum_c q[n, c] * log p[n, c].

Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision",
Sec. 7) replaces q by (1 - eps) * q + eps / C, i.e. mixes in the uniform distribution. For a hard
label y this is

    loss_n = (1 - eps) * (-log p[n, y]) + eps * mean_c(-log p[n, c]),

which is what ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)`` computes, for hard and
for probability targets alike. Targets from ``mixing.Mixer`` already carry the smoothing: use eps=0.

The loss is always computed in float32 from log_softmax, even for bf16/fp16 logits (autocast): a
half-precision softmax over 1000 classes loses the small probabilities the gradient needs.

Binary cross-entropy ("ResNet strikes back", Wightman, Touvron & Jegou 2021, its A1-A3 loss): each class is its
own yes/no question, sigma = sigmoid,

    loss = mean_{n,c}  -( q[n,c] * log sigma(z[n,c]) + (1 - q[n,c]) * log(1 - sigma(z[n,c])) ),

averaged over all N * C terms (timm's BinaryCrossEntropy, reduction "mean"; ``reduction="sum_classes"``
sums over the classes and averages over the samples, timm's ``sum_classes=True``). With MixUp/CutMix both
mixed classes are targets of their own. Label smoothing is the same q * (1 - eps) + eps / C (timm's applies
to hard labels only; here soft targets are smoothed too, like ``cross_entropy``: eps=0 for ``mixing.Mixer``'s).
``target_threshold`` t then binarises: q <- 1 where q > t, else 0 (timm's ``--bce-target-thresh``): a class
that makes up enough of a mixed image is simply "present". Also in float32.
"""

import torch.nn.functional as F

__all__ = ["cross_entropy", "binary_cross_entropy"]


def cross_entropy(logits, target, label_smoothing=0.0):
    """Mean cross-entropy, float32 scalar. ``target``: int64 labels (N,) or float probabilities (N, C)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    eps = label_smoothing
    if target.dtype.is_floating_point:
        q = target.float()
        if eps > 0:
            q = q * (1.0 - eps) + eps / logits.shape[-1]
        return -(q * log_probs).sum(dim=-1).mean()
    nll = -log_probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    if eps == 0:
        return nll.mean()
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - eps) * nll + eps * uniform).mean()


def binary_cross_entropy(logits, target, label_smoothing=0.0, target_threshold=None, reduction="mean"):
    """Binary cross-entropy on one-vs-all targets, float32 scalar. ``target``: int64 labels (N,) or float
    (mixed) targets (N, C); smoothing, then the optional threshold, then ``reduction``."""
    if reduction not in ("mean", "sum_classes"):
        raise ValueError(f"reduction must be 'mean' (over all N * C terms) or 'sum_classes', got {reduction!r}.")
    logits = logits.float()
    q = target.float() if target.dtype.is_floating_point else F.one_hot(target.long(), logits.shape[-1]).float()
    if label_smoothing > 0:
        q = q * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
    if target_threshold is not None:
        q = (q > target_threshold).float()
    loss = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    return loss.mean() if reduction == "mean" else loss.sum(dim=-1).mean()
