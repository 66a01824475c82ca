import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import _make_divisible

from imnet.efficientnet_lite import LITE, Conv2dSame, efficientnet_lite, round_filters

# The reference's README (tensorflow/tpu models/official/efficientnet/lite) and the exact counts of timm's
# tf_efficientnet_lite* (the same architecture).
PUBLISHED = {"efficientnet_lite0": (4.7, 4_652_008), "efficientnet_lite1": (5.4, 5_416_680),
             "efficientnet_lite2": (6.1, 6_092_072), "efficientnet_lite3": (8.2, 8_197_096),
             "efficientnet_lite4": (13.0, 13_006_568)}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(LITE))
def test_parameter_counts_are_the_references(name):
    millions, exact = PUBLISHED[name]
    with torch.device("meta"):  # shapes only
        count = _count(efficientnet_lite(name))
    assert round(count / 1e6, 1) == millions and count == exact, count


def test_round_filters_is_the_references_rule():
    """torchvision's _make_divisible is the same rule (nearest multiple of 8, at least 8, never 10% below)."""
    for channels in (4, 12, 16, 20, 24, 32, 40, 80, 112, 192, 320, 1280):
        for width in (0.25, 0.5, 0.75, 1.0, 1.1, 1.2, 1.4, 1.8, 2.0):
            assert round_filters(channels, width) == _make_divisible(channels * width, 8), (channels, width)
    assert [round_filters(c, 1.4) for c in (16, 24, 40, 80, 112, 192, 320)] == [24, 32, 56, 112, 160, 272, 448]
    assert round_filters(20, 0.5) == 16  # 10 -> 8 would lose 20%


def test_layout_is_torchvisions_efficientnet_b0_without_squeeze_excitation():
    ours = {k: v.shape for k, v in efficientnet_lite("efficientnet_lite0").state_dict().items()}
    theirs = {k: v.shape for k, v in torchvision.models.efficientnet_b0().state_dict().items()
              if ".fc1." not in k and ".fc2." not in k}
    assert ours == theirs


def _block_probs(model):
    return [(m.p, m.mode) for m in model.modules() if isinstance(m, torchvision.ops.StochasticDepth)]


def test_stochastic_depth_is_torchvisions():
    """p * i / n over all n blocks, per sample ("row"): lite0 has B0's 16 blocks, as torchvision's efficientnet_b0."""
    assert _block_probs(efficientnet_lite("efficientnet_lite0")) == \
        _block_probs(torchvision.models.efficientnet_b0(stochastic_depth_prob=0.2))
    probs = _block_probs(efficientnet_lite("efficientnet_lite4", stochastic_depth_prob=0.3))
    assert probs == [(0.3 * i / 30, "row") for i in range(30)]


def _tf_same_reference(x, weight, stride):
    """TensorFlow's documented SAME rule: pad = max(k - s, 0) if n % s == 0 else max(k - n % s, 0), the smaller
    half before; the padded tensor built by hand."""
    pads = []
    for n, k in zip(x.shape[2:], weight.shape[2:]):
        pad = max(k - stride, 0) if n % stride == 0 else max(k - n % stride, 0)
        pads.append((pad // 2, pad - pad // 2))
    (top, bottom), (left, right) = pads
    padded = torch.zeros(*x.shape[:2], x.shape[2] + top + bottom, x.shape[3] + left + right)
    padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return F.conv2d(padded, weight, stride=stride)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 2), (3, 1), (1, 2)])
@pytest.mark.parametrize("height, width", [(8, 8), (7, 10), (9, 5)])
def test_conv2d_same_is_tensorflows_padding(kernel, stride, height, width):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel, stride, bias=False)
    x = torch.randn(1, 2, height, width)
    out = conv(x)
    assert out.shape[2:] == (math.ceil(height / stride), math.ceil(width / stride))
    torch.testing.assert_close(out, _tf_same_reference(x, conv.weight, stride))


def test_paddings_share_the_state_dict_and_agree_where_same_is_symmetric():
    """SAME pads symmetrically where every stride-2 input is odd (65 -> 33 -> 17 -> 9 -> 5 px), not at 64."""
    torch.manual_seed(0)
    same = efficientnet_lite("efficientnet_lite0", padding="same", num_classes=10).eval()
    symmetric = efficientnet_lite("efficientnet_lite0", padding="symmetric", num_classes=10).eval()
    symmetric.load_state_dict(same.state_dict(), strict=True)
    same.load_state_dict(symmetric.state_dict(), strict=True)
    assert same.state_dict().keys() == symmetric.state_dict().keys()
    with torch.no_grad():
        odd, even = torch.randn(1, 3, 65, 65), torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(same(odd), symmetric(odd))
        assert not torch.allclose(same(even), symmetric(even), atol=1e-4)
    with pytest.raises(ValueError, match="padding must be"):
        efficientnet_lite("efficientnet_lite0", padding="valid")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite"):
        efficientnet_lite("efficientnet_lite5")


@pytest.mark.parametrize("name", list(LITE))
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_output_shapes_at_each_resolution(name, padding):
    resolution = LITE[name][2]
    with torch.device("meta"):  # shapes only
        model = efficientnet_lite(name, num_classes=7, padding=padding).eval()
        x = torch.empty(2, 3, resolution, resolution)
        side = math.ceil(resolution / 32)
        assert model.features(x).shape == (2, 1280, side, side) and model(x).shape == (2, 7)


def test_initialisation_is_the_references():
    """N(0, 2 / (k * k * out / groups)): a depthwise 5x5 over 672 channels has std sqrt(2 / 25), not torchvision's
    sqrt(2 / (25 * 672))."""
    torch.manual_seed(0)
    model = efficientnet_lite("efficientnet_lite0")
    depthwise = model.features[6][0].block[1][0]
    assert depthwise.groups == depthwise.out_channels == 672 and depthwise.kernel_size == (5, 5)
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    assert model.features[0][0].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.1)
    assert model.classifier[1].weight.abs().max().item() <= 1 / math.sqrt(1000)


# ------------------------------------------------------------------------------------------------ against timm

def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize("index", range(5))
def test_stages_have_timms_parameter_counts(index):
    with torch.device("meta"):  # shapes only
        ours, theirs = efficientnet_lite(f"efficientnet_lite{index}"), _timm(f"tf_efficientnet_lite{index}")
    assert [_count(s) for s in ours.features[1:8]] == [_count(s) for s in theirs.blocks]
    assert [len(s) for s in ours.features[1:8]] == [len(s) for s in theirs.blocks]
    assert _count(ours.features[0]) == _count(theirs.conv_stem) + _count(theirs.bn1)
    assert _count(ours.features[8]) == _count(theirs.conv_head) + _count(theirs.bn2)


@pytest.mark.parametrize("timm_name, padding, size", [("efficientnet_lite0", "symmetric", 64),
                                                      ("tf_efficientnet_lite0", "same", 64),
                                                      ("tf_efficientnet_lite1", "same", 57)])
def test_forward_equals_timm_with_the_same_weights(timm_name, padding, size):
    """timm's state_dict holds the same tensors in the same order: copied across by position, the outputs agree.
    timm's efficientnet_lite* use torch's default BatchNorm (eps 1e-5), its tf_* TensorFlow's (1e-3)."""
    theirs = _timm(timm_name, num_classes=10).eval()
    norm = nn.BatchNorm2d if padding == "symmetric" else None
    ours = efficientnet_lite("efficientnet_lite" + timm_name[-1], num_classes=10, padding=padding,
                             norm_layer=norm).eval()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for (key, mine), (their_key, tensor) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert mine.shape == tensor.shape, (key, their_key)
        if key.endswith(("running_var", "1.weight")) and mine.ndim == 1:  # BatchNorm: not the identity
            mine = torch.rand(mine.shape, generator=generator) + 0.5
        elif key.endswith(("running_mean", "bias")):
            mine = torch.randn(mine.shape, generator=generator) * 0.1
        state[key], state[their_key] = mine, mine
    ours.load_state_dict({k: state[k] for k in ours.state_dict()}, strict=True)
    theirs.load_state_dict({k: state[k] for k in theirs.state_dict()}, strict=True)
    x = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        out = ours(x)
        assert out.std() > 0.1  # the input matters: a shift of the padding would show
        torch.testing.assert_close(out, theirs(x), rtol=1e-4, atol=1e-5)
