"""models.build_model: torchvision names, DeiT, stochastic depth, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer

from imnet.run import models


def test_torchvision_names_build_and_load_into_torchvision():
    m = models.build_model("resnet18", 7)
    torchvision.models.resnet18(num_classes=7).load_state_dict(m.state_dict(), strict=True)


def test_drop_path_is_passed_to_models_that_have_it():
    assert models.build_model("convnext_tiny", 3, drop_path=0.0).features[1][0].stochastic_depth.p == 0.0
    assert models.build_model("convnext_tiny", 3).features[-1][-1].stochastic_depth.p > 0  # its own default
    with pytest.raises(ValueError, match="no stochastic depth"):
        models.build_model("resnet18", 3, drop_path=0.1)
    with pytest.raises(ValueError, match="did you mean resnet50"):
        models.build_model("resnet5", 3)


def test_deit_is_torchvisions_vit_and_its_drop_path_follows_deepcopy():
    torch.manual_seed(0)
    m = models.build_model("deit_tiny", 3, drop_path=0.2, image_size=32)
    ref = VisionTransformer(image_size=32, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                            num_classes=3)
    ref.load_state_dict(m.state_dict(), strict=True)
    torch.nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises the head
    rates = [b.drop_path_rate for b in m.encoder.layers]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)

    x = torch.randn(64, 3, 32, 32)
    m.eval()
    ref.load_state_dict(m.state_dict())
    ref.eval()
    torch.testing.assert_close(m(x), ref(x))  # no dropping in eval mode: the same network
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x))  # random depth in train mode

    # The EMA keeps a deepcopy: its blocks must run on the copy's weights, not the original's.
    twin = copy.deepcopy(m).eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    m.eval()
    assert not torch.allclose(twin(x), m(x))
    ref.load_state_dict(twin.state_dict())
    torch.testing.assert_close(twin(x), ref(x))


def test_unwrap_strips_compile():
    m = models.build_model("resnet18", 3)
    assert models.unwrap(torch.compile(m)) is m


def test_drop_path_on_swin_and_maxvit_builds_the_requested_rate():
    # Their builders set stochastic_depth_prob themselves (passing it again was a TypeError): the built
    # rates must be those of torchvision's rules at the requested rate.
    from torchvision.ops import StochasticDepth
    rates = lambda m: [x.p for x in m.modules() if isinstance(x, StochasticDepth)]
    swin = rates(models.build_model("swin_t", 3, drop_path=0.3))
    assert swin == pytest.approx([0.3 * i / 11 for i in range(12)])  # p_i = rate * i / (blocks - 1)
    maxvit = rates(models.build_model("maxvit_t", 3, drop_path=0.3))
    # linspace(0, rate, 11 layers), each layer's MBConv and two attention blocks sharing it
    assert sorted(set(round(p, 12) for p in maxvit)) == pytest.approx([0.3 * i / 10 for i in range(11)])
    assert rates(models.build_model("swin_t", 3, drop_path=0.0)) == [0.0] * 12
    assert max(rates(models.build_model("swin_t", 3))) == pytest.approx(0.2)  # None keeps the model's own


def test_head_keys_are_the_tensors_shaped_by_the_number_of_classes():
    assert models.head_keys("resnet18") == {"fc.weight", "fc.bias"}
    assert models.head_keys("convnext_tiny") == {"classifier.2.weight", "classifier.2.bias"}
    assert models.head_keys("deit_tiny", 32) == {"heads.head.weight", "heads.head.bias"}
    assert models.head_keys("maxvit_t") == {"classifier.5.weight"}  # no bias
    assert models.head_keys("regnet_y_400mf") == {"fc.weight", "fc.bias"}  # built on the CPU (not on meta)


def test_efficientnet_lite_by_name_with_its_padding_drop_path_and_normalisation():
    """timm's names: efficientnet_lite* pads symmetrically, tf_efficientnet_lite* as TensorFlow's SAME; the same
    keys either way; --drop-path is the last block's rate's p in p * i / n; the pixels are (x - 127) / 128."""
    from imnet.efficientnet_lite import LITE_MEAN, LITE_STD, Conv2dSame, efficientnet_lite
    sym, same = (models.build_model(name, 3, drop_path=0.4) for name in ("efficientnet_lite2", "tf_efficientnet_lite2"))
    assert not any(isinstance(m, Conv2dSame) for m in sym.modules())
    assert sum(isinstance(m, Conv2dSame) for m in same.modules()) == 5  # the stem and the 4 stride-2 stages
    reference = efficientnet_lite("efficientnet_lite2").state_dict()
    assert sym.state_dict().keys() == same.state_dict().keys() == reference.keys()
    rates = [m.p for m in sym.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.4 * (len(rates) - 1) / len(rates))
    assert models.normalization("tf_efficientnet_lite0")[:2] == models.normalization("efficientnet_lite4")[:2] \
        == (LITE_MEAN, LITE_STD)
    assert models.normalization("resnet50")[:2] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert models.head_keys("efficientnet_lite0") == {"classifier.1.weight", "classifier.1.bias"}
