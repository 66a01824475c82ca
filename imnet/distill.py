"""Knowledge distillation losses (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"; DeiT, Touvron et al. 2021, Sec. 4).

With student logits z_s, teacher logits z_t, temperature tau and psi = softmax:

    soft:  tau^2 * KL( psi(z_t / tau) || psi(z_s / tau) )                 (Hinton; DeiT's soft distillation)
    hard:  CE( z_s, argmax_c z_t[c] )                                      (DeiT's hard-label distillation)

    loss = (1 - alpha) * base + alpha * distill

The tau^2 keeps the soft term's gradients the same size whatever tau (they scale as 1/tau^2; Hinton Sec. 2).
``reduction="batchmean"`` (the default) is the KL per sample averaged over the batch, Hinton's KL. DeiT's code
(losses.py) divides the sum by N * C, torch's legacy ``reduction="mean"`` (reproduced by "mean"): 1000x smaller
on ImageNet, which changes what a given alpha means; its authors report batchmean "slightly lower/similar"
(facebookresearch/deit issue 61).

A two-head student (DeiT's distillation token, imnet.deit) returns (cls_logits, dist_logits) in training: the
base loss goes on the class head, the distillation loss on the distillation head (DeiT's hard distillation:
alpha = 0.5, 1/2 CE(y) + 1/2 CE(y_teacher)); a one-head student gets both on its logits (Hinton's setting).

What the teacher sees, in DeiT (engine.py, train_one_epoch): the batch *after* MixUp/CutMix, the very images
the student gets (``samples, targets = mixup_fn(samples, targets)``, then ``teacher_model(samples)`` under
torch.no_grad(), in the same autocast), the teacher in eval mode; the base loss uses the mixed (soft) targets.
The teacher's logits are detached here in any case. Computed in float32 like imnet.losses.
"""

import torch.nn.functional as F

__all__ = ["soft_distillation", "hard_distillation", "distillation_loss"]


def soft_distillation(student_logits, teacher_logits, tau=1.0, reduction="batchmean"):
    """tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)), float32 scalar."""
    if reduction not in ("batchmean", "mean"):
        raise ValueError(f"reduction must be 'batchmean' (the KL per sample) or 'mean' (DeiT's), got {reduction!r}.")
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    count = student_logits.shape[0] if reduction == "batchmean" else student_logits.numel()
    return kl * (tau * tau) / count


def hard_distillation(student_logits, teacher_logits):
    """Mean cross-entropy of the student against the teacher's top-1 class, float32 scalar."""
    return F.cross_entropy(student_logits.float(), teacher_logits.detach().argmax(dim=-1))


def distillation_loss(outputs, target, teacher_logits, base_loss, kind="hard", alpha=0.5, tau=1.0,
                      reduction="batchmean"):
    """(1 - alpha) * base_loss(class logits, target) + alpha * distillation(distillation logits, teacher).

    ``outputs``: the student's logits, or its (cls_logits, dist_logits) pair; ``base_loss(logits, target)``:
    e.g. imnet.losses.cross_entropy; ``tau`` and ``reduction`` apply to ``kind="soft"``."""
    if kind not in ("hard", "soft"):
        raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the distillation loss), got {alpha}.")
    cls_logits, dist_logits = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
    base = base_loss(cls_logits, target)
    if kind == "hard":
        distill = hard_distillation(dist_logits, teacher_logits)
    else:
        distill = soft_distillation(dist_logits, teacher_logits, tau, reduction)
    return (1.0 - alpha) * base + alpha * distill
