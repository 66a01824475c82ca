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
"""

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy"]


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
