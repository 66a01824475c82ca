"""Distillation losses against their closed forms, the alpha combination and DeiT's two-head split."""

import math

import pytest
import torch

from imnet.distill import distillation_loss, hard_distillation, soft_distillation
from imnet.losses import cross_entropy

N, C = 8, 11


def _logits(seed, scale=3.0):
    return scale * torch.randn(N, C, generator=torch.Generator().manual_seed(seed))


def _kl_by_hand(student, teacher, tau):
    """sum_c p_t log(p_t / p_s) per sample, float64, p = softmax(z / tau)."""
    p_t = torch.softmax(teacher.double() / tau, -1)
    p_s = torch.softmax(student.double() / tau, -1)
    return (p_t * (p_t.log() - p_s.log())).sum(-1)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_equals_closed_form(tau):
    s, t = _logits(0), _logits(1)
    expected = tau ** 2 * _kl_by_hand(s, t, tau).mean()
    torch.testing.assert_close(soft_distillation(s, t, tau).double(), expected, rtol=1e-5, atol=1e-6)
    # DeiT's normalisation: the same sum divided by N * C instead of N
    torch.testing.assert_close(soft_distillation(s, t, tau, reduction="mean").double(), expected / C,
                               rtol=1e-5, atol=1e-7)
    assert soft_distillation(s, s, tau).abs() < 1e-6  # KL(p || p) = 0
    with pytest.raises(ValueError, match="reduction must be"):
        soft_distillation(s, t, tau, reduction="sum")


def test_tau_scaling():
    """tau^2 * KL at temperature tau: scaling both logits by tau and using temperature tau gives tau^2 times
    the KL at temperature 1; and for large tau the soft loss tends to the logit-matching limit
    (Hinton Sec. 2.1): tau^2 KL -> mean_n sum_c (z_s - z_t)^2 / (2 C) for zero-mean logits."""
    s, t = _logits(0), _logits(1)
    for tau in (2.0, 4.0):
        torch.testing.assert_close(soft_distillation(tau * s, tau * t, tau), tau ** 2 * soft_distillation(s, t),
                                   rtol=1e-5, atol=1e-6)
    s0, t0 = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    limit = ((s0 - t0) ** 2).sum(-1).mean() / (2 * C)
    torch.testing.assert_close(soft_distillation(s0, t0, tau=1000.0), limit, rtol=1e-2, atol=0)


def test_hard_equals_cross_entropy_to_teacher_argmax():
    s, t = _logits(0), _logits(1)
    labels = t.argmax(-1)
    log_p = torch.log_softmax(s.double(), -1)
    expected = -log_p[torch.arange(N), labels].mean()
    torch.testing.assert_close(hard_distillation(s, t).double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_alpha_combination_and_deit_split(kind):
    cls_logits, dist_logits, teacher = _logits(0), _logits(2), _logits(1)
    y = torch.randint(C, (N,), generator=torch.Generator().manual_seed(3))
    distill = hard_distillation if kind == "hard" else (lambda a, b: soft_distillation(a, b, 2.0))
    # alpha = 0: exactly the base loss, on the class head
    for outputs in (cls_logits, (cls_logits, dist_logits)):
        loss = distillation_loss(outputs, y, teacher, cross_entropy, kind=kind, alpha=0.0, tau=2.0)
        assert torch.equal(loss, cross_entropy(cls_logits, y))
    # two heads: base on the class head, distillation on the distillation head
    loss = distillation_loss((cls_logits, dist_logits), y, teacher, cross_entropy, kind=kind, alpha=0.3, tau=2.0)
    expected = 0.7 * cross_entropy(cls_logits, y) + 0.3 * distill(dist_logits, teacher)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # one head: both on it
    loss = distillation_loss(cls_logits, y, teacher, cross_entropy, kind=kind, alpha=0.5, tau=2.0)
    expected = 0.5 * cross_entropy(cls_logits, y) + 0.5 * distill(cls_logits, teacher)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # alpha = 1: the distillation loss alone
    loss = distillation_loss((cls_logits, dist_logits), y, teacher, cross_entropy, kind=kind, alpha=1.0, tau=2.0)
    torch.testing.assert_close(loss, distill(dist_logits, teacher), rtol=0, atol=0)
    with pytest.raises(ValueError, match="kind must be"):
        distillation_loss(cls_logits, y, teacher, cross_entropy, kind="kl")
    with pytest.raises(ValueError, match="alpha must be"):
        distillation_loss(cls_logits, y, teacher, cross_entropy, alpha=1.5)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_no_gradient_into_the_teacher(kind):
    student = _logits(0).requires_grad_()
    teacher = _logits(1).requires_grad_()
    y = torch.randint(C, (N,), generator=torch.Generator().manual_seed(3))
    loss = distillation_loss((student, student * 1.5), y, teacher, cross_entropy, kind=kind, alpha=0.5, tau=3.0)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # the soft gradient is tau^2 * (p_s - p_t) / tau / N w.r.t. the student logits (Hinton eq. 2, times tau^2)
    if kind == "soft":
        s = _logits(2).requires_grad_()
        soft_distillation(s, teacher, tau=3.0).backward()
        p_s, p_t = torch.softmax(s.detach() / 3.0, -1), torch.softmax(teacher.detach() / 3.0, -1)
        torch.testing.assert_close(s.grad, 3.0 * (p_s - p_t) / N, rtol=1e-5, atol=1e-7)


def test_half_precision_logits_give_float32():
    s, t = _logits(0).bfloat16(), _logits(1).bfloat16()
    for loss in (soft_distillation(s, t, 2.0), hard_distillation(s, t)):
        assert loss.dtype == torch.float32 and math.isfinite(loss.item())
