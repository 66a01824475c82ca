import pytest
import torch
import torch.nn.functional as F

from imnet.losses import binary_cross_entropy, cross_entropy

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


# ------------------------------------------------------------------------------------ binary cross-entropy

def _bce_closed_form(logits, q):
    """-(q log sigmoid(z) + (1 - q) log(1 - sigmoid(z))), float64, per term."""
    z = logits.double()
    q = q.double()
    return -(q * torch.sigmoid(z).log() + (1 - q) * (1 - torch.sigmoid(z)).log())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bce_equals_torch_on_the_same_targets(dtype):
    logits, labels, q = _logits(dtype), _labels(), _soft()
    # hard labels are one-hot targets; soft (mixed) targets are used as they are
    loss = binary_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32 and loss.shape == ()
    expected = F.binary_cross_entropy_with_logits(logits.float(), F.one_hot(labels, C).float())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(binary_cross_entropy(logits, q),
                               F.binary_cross_entropy_with_logits(logits.float(), q), rtol=1e-6, atol=1e-6)
    # sum over classes, mean over samples = C x the mean over all terms
    torch.testing.assert_close(binary_cross_entropy(logits, q, reduction="sum_classes"),
                               C * F.binary_cross_entropy_with_logits(logits.float(), q), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="reduction must be"):
        binary_cross_entropy(logits, q, reduction="sum")


def test_bce_smoothing_and_threshold_closed_form():
    logits, labels = _logits(), _labels()
    eps = 0.1
    # timm's smoothing of a hard label: on = 1 - eps + eps / C, off = eps / C
    q = torch.full((N, C), eps / C, dtype=torch.float64)
    q[torch.arange(N), labels] = 1 - eps + eps / C
    torch.testing.assert_close(binary_cross_entropy(logits, labels, label_smoothing=eps).double(),
                               _bce_closed_form(logits, q).mean(), rtol=1e-6, atol=1e-6)
    # a mixed target (MixUp lam = 0.7 between label a and label b, smoothed), then the threshold 0.2:
    # both classes (0.7 and 0.3 of the mass, > 0.2) become 1, everything else 0
    a, b = labels, torch.roll(labels, 1)
    mixed = 0.7 * F.one_hot(a, C).float() + 0.3 * F.one_hot(b, C).float()
    mixed = mixed * (1 - eps) + eps / C
    binary = torch.zeros(N, C, dtype=torch.float64)
    binary[torch.arange(N), a] = 1
    binary[torch.arange(N), b] = 1
    torch.testing.assert_close(binary_cross_entropy(logits, mixed, target_threshold=0.2).double(),
                               _bce_closed_form(logits, binary).mean(), rtol=1e-6, atol=1e-6)
    # threshold 0.5 keeps only the larger share (0.7 * 0.9 + 0.1 / C)
    binary = F.one_hot(a, C).double()
    torch.testing.assert_close(binary_cross_entropy(logits, mixed, target_threshold=0.5).double(),
                               _bce_closed_form(logits, binary).mean(), rtol=1e-6, atol=1e-6)
    # smoothing of soft targets is the same formula, before the threshold (eps / C = 0.0027 stays below it)
    plain = 0.7 * F.one_hot(a, C).float() + 0.3 * F.one_hot(b, C).float()
    torch.testing.assert_close(binary_cross_entropy(logits, plain, label_smoothing=eps),
                               binary_cross_entropy(logits, mixed), rtol=1e-6, atol=1e-6)
    # an integer label with a threshold: the one-hot is already binary, and smoothing comes before the
    # threshold, so a smoothed label thresholded is the plain one-hot again
    for smoothing in (0.0, eps):
        torch.testing.assert_close(binary_cross_entropy(logits, labels, smoothing, target_threshold=0.2),
                                   binary_cross_entropy(logits, labels), rtol=0, atol=0)


def test_bce_matches_timm():
    timm_loss = pytest.importorskip("timm.loss")
    logits, labels, q = _logits(), _labels(), _soft()
    for eps, thresh in [(0.0, None), (0.1, None), (0.1, 0.2)]:
        ref = timm_loss.BinaryCrossEntropy(smoothing=eps, target_threshold=thresh)
        torch.testing.assert_close(binary_cross_entropy(logits, labels, eps, thresh), ref(logits, labels),
                                   rtol=1e-6, atol=1e-6)
        # timm takes dense targets as already smoothed: compare with eps 0 there
        torch.testing.assert_close(binary_cross_entropy(logits, q, 0.0, thresh), ref(logits, q),
                                   rtol=1e-6, atol=1e-6)
    ref = timm_loss.BinaryCrossEntropy(smoothing=0.0, sum_classes=True)
    torch.testing.assert_close(binary_cross_entropy(logits, q, reduction="sum_classes"), ref(logits, q),
                               rtol=1e-6, atol=1e-5)
