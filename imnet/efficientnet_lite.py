"""EfficientNet-Lite0 to Lite4: EfficientNet (Tan & Le 2019) made for mobile accelerators, as the TensorFlow
reference defines it (tensorflow/tpu, models/official/efficientnet/lite/efficientnet_lite_builder.py on
efficientnet_model.py; the blog post "Higher accuracy on vision models with EfficientNet-Lite", 2020).

Against EfficientNet-B0..B7 it changes three things: no squeeze-and-excitation, ReLU6 instead of swish (both for
integer quantization), and the stem (32 channels), the head (1280) and the repeats of the first and last stages
are not scaled. The rest is B0's: 7 stages of MBConv blocks (expand 1x1, depthwise k x k, project 1x1 without
activation; a residual when the stride is 1 and the widths agree), `STAGES`. A model is B0 scaled by

    name                width  depth  resolution  dropout   params (reference's README)
    efficientnet_lite0  1.0    1.0    224         0.2        4.7M
    efficientnet_lite1  1.0    1.1    240         0.2        5.4M
    efficientnet_lite2  1.1    1.2    260         0.3        6.1M
    efficientnet_lite3  1.2    1.4    280         0.3        8.2M
    efficientnet_lite4  1.4    1.8    300         0.3       13.0M

    channels  c' = max(8, 8 * floor(c * width / 8 + 1/2)), plus 8 if that lost more than 10%   (round_filters)
    repeats   r' = ceil(r * depth)                                                              (round_repeats)

Pixels are normalised as the reference's Lite models expect, (x - 127) / 128 on 0-255 (inception style, for
quantization; `LITE_MEAN`, `LITE_STD` in [0, 1] units), not with ImageNet's mean and std; the reference evaluates
the central 0.875 of the shorter side, resized bicubic to the resolution (preprocessing.py).

Stochastic depth as torchvision's EfficientNet (and the reference's drop connect): block i of n (over all stages)
drops its residual branch per sample with probability p * i / n, p = 0.2 (the reference's survival_prob 0.8).
BatchNorm is the reference's (momentum 0.99 in TensorFlow's convention, i.e. torch's 0.01; eps 1e-3).
Initialisation is the reference's: convolutions ~ N(0, 2 / fan_out) with fan_out = k * k * out / groups (so a
depthwise kernel gets 2 / (k * k); torchvision's kaiming_normal_ does not divide by the groups), the classifier
~ U(+-1 / sqrt(num_classes)), zero biases.

Padding: TensorFlow's "SAME" pads a stride-2 convolution asymmetrically, by what the input needs (`Conv2dSame`;
more at the bottom and right), PyTorch's symmetric padding k // 2 does not; on an even input size the two
differ by a one-pixel shift (on an odd one SAME is symmetric too). ``padding="same"`` evaluates weights
converted from the reference exactly (timm's tf_efficientnet_lite*), ``"symmetric"`` is PyTorch's (timm's
efficientnet_lite*, torchvision's EfficientNet). Both have the same parameters: one state_dict loads into either.

State-dict layout: torchvision's EfficientNet (``features.0`` stem, ``features.1-7`` the stages of ``block``s,
``features.8`` head, ``classifier.1``), with an empty ``nn.Identity`` where torchvision has squeeze-and-excitation,
so that lite0's keys are torchvision's efficientnet_b0's without the ``fc1`` / ``fc2`` of SE.
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

__all__ = ["LITE", "STAGES", "LITE_MEAN", "LITE_STD", "round_filters", "round_repeats", "Conv2dSame", "MBConv",
           "EfficientNetLite", "efficientnet_lite"]

# name -> (width, depth, resolution, dropout): efficientnet_lite_builder.efficientnet_lite_params
LITE = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

# B0's stages (efficientnet_builder's _DEFAULT_BLOCKS_ARGS, SE left out):
# (expand ratio, kernel, stride of the first block, input channels, output channels, repeats)
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# MEAN_RGB = 127, STDDEV_RGB = 128 on 0-255 (efficientnet_lite_builder.py), in [0, 1] units
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def round_filters(channels, width, divisor=8):
    """The reference's round_filters: ``channels * width`` to the nearest multiple of ``divisor``, at least
    ``divisor``, and never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats, depth):
    """The reference's round_repeats: ceil(repeats * depth)."""
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding, computed from the input (dilation 1): per dimension of size n,

        out = ceil(n / s),  total = max((out - 1) * s + k - n, 0),  before = total // 2,  after = total - before

    so a stride-2 3x3 convolution pads (0, 1) on an even size and (1, 1) on an odd one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x):
        pads = []
        for n, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):  # F.pad: last dim first
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_bn_act(in_channels, out_channels, kernel_size, stride, padding, norm_layer, groups=1, act=True):
    """Conv (no bias), norm, ReLU6 as an nn.Sequential, indexed as torchvision's Conv2dNormActivation. A stride-1
    convolution with an odd kernel pads k // 2 on each side under either padding (SAME gives the same)."""
    if padding == "same" and stride > 1:
        conv = Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
    layers = [conv, norm_layer(out_channels)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """The inverted residual block without SE: [expand 1x1 (if expand > 1)], depthwise k x k, (no SE), project 1x1
    without activation; a residual (with stochastic depth) when the stride is 1 and the widths agree."""

    def __init__(self, in_channels, out_channels, expand, kernel_size, stride, stochastic_depth_prob, padding,
                 norm_layer):
        super().__init__()
        mid = in_channels * expand
        layers = [conv_bn_act(in_channels, mid, 1, 1, padding, norm_layer)] if expand != 1 else []
        layers += [conv_bn_act(mid, mid, kernel_size, stride, padding, norm_layer, groups=mid),
                   nn.Identity(),  # torchvision's squeeze-and-excitation sits here: keeps its indices
                   conv_bn_act(mid, out_channels, 1, 1, padding, norm_layer, act=False)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite at ``width`` and ``depth`` (module docstring); ``padding`` "symmetric" or "same";
    ``norm_layer`` defaults to the reference's BatchNorm (momentum 0.01 in torch's convention, eps 1e-3)."""

    def __init__(self, width=1.0, depth=1.0, dropout=0.2, stochastic_depth_prob=0.2, num_classes=1000,
                 padding="symmetric", norm_layer=None):
        super().__init__()
        if padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' (PyTorch's) or 'same' (TensorFlow's), got {padding!r}.")
        norm_layer = norm_layer or partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        repeats = [r if i in (0, len(STAGES) - 1) else round_repeats(r, depth) for i, (*_, r) in enumerate(STAGES)]
        layers = [conv_bn_act(3, 32, 3, 2, padding, norm_layer)]  # the stem is not scaled
        channels, block_id = 32, 0
        for (expand, kernel, stride, _, out, _), n in zip(STAGES, repeats):
            stage = []
            for j in range(n):
                prob = stochastic_depth_prob * block_id / sum(repeats)
                stage.append(MBConv(channels, round_filters(out, width), expand, kernel, stride if j == 0 else 1,
                                    prob, padding, norm_layer))
                channels, block_id = round_filters(out, width), block_id + 1
            layers.append(nn.Sequential(*stage))
        layers.append(conv_bn_act(channels, 1280, 1, 1, padding, norm_layer))  # the head is not scaled
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_lite(name, num_classes=1000, padding="symmetric", stochastic_depth_prob=0.2, norm_layer=None):
    """``efficientnet_lite0`` .. ``efficientnet_lite4`` (`LITE`) with the table's dropout; its resolution is
    ``LITE[name][2]``."""
    if name not in LITE:
        raise ValueError(f"unknown EfficientNet-Lite model {name!r}; expected one of {', '.join(LITE)}.")
    width, depth, _, dropout = LITE[name]
    return EfficientNetLite(width, depth, dropout, stochastic_depth_prob, num_classes, padding, norm_layer)
