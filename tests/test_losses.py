import pytest
import torch
import torch.nn.functional as F

from imnet.losses import cross_entropy

N, C = 16, 37


def _logits(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (4 * torch.randn(N, C, generator=g)).to(dtype)


def _labels(seed=1):
    return torch.randint(C, (N,), generator=torch.Generator().manual_seed(seed))


def _soft(seed=2):
    return torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(seed)), 1)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hard_targets_equal_torch(eps, dtype):
    logits, labels = _logits(dtype), _labels()
    loss = cross_entropy(logits, labels, label_smoothing=eps)
    expected = F.cross_entropy(logits.float(), labels, label_smoothing=eps)  # fp32 upcast reference
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_targets_equal_formula_and_torch(eps, dtype):
    logits, q = _logits(dtype), _soft()
    loss = cross_entropy(logits, q, label_smoothing=eps)
    x = logits.double()
    q_smooth = (1 - eps) * q.double() + eps / C
    formula = -(q_smooth * torch.log_softmax(x, 1)).sum(1).mean()
    torch.testing.assert_close(loss.double(), formula, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), q, label_smoothing=eps),
                               rtol=1e-6, atol=1e-6)


def test_soft_one_hot_equals_hard():
    logits, labels = _logits(), _labels()
    smoothed = F.one_hot(labels, C).float() * 0.9 + 0.1 / C
    torch.testing.assert_close(cross_entropy(logits, smoothed), cross_entropy(logits, labels, 0.1),
                               rtol=1e-6, atol=1e-6)


def test_gradient_flows_to_bf16_logits():
    logits = _logits(torch.bfloat16).requires_grad_()
    cross_entropy(logits, _labels(), 0.1).backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.abs().sum() > 0
