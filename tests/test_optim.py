import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from imnet.optim import build_optimizer, count_param_groups, param_groups

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _expected_no_decay(model):
    """Independent rule, from module types: norm layers' parameters, anything named *bias, the
    ViT class token / position embedding and ConvNeXt's layer scale are not decayed."""
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if (isinstance(module, NORMS) or name.endswith("bias")
                    or (isinstance(module, VisionTransformer) and name == "class_token")
                    or (isinstance(module, Encoder) and name == "pos_embedding")
                    or (isinstance(module, CNBlock) and name == "layer_scale")):
                names.add(full)
    return names


def _split(model, wd=0.05):
    groups = param_groups(model, wd)
    by_id = {id(p): n for n, p in model.named_parameters()}
    split = {g["name"]: [by_id[id(p)] for p in g["params"]] for g in groups}
    return groups, split


def _small_vit(num_layers=2):
    return VisionTransformer(image_size=32, patch_size=8, num_layers=num_layers, num_heads=2, hidden_dim=16,
                             mlp_dim=32, num_classes=10)


@pytest.mark.parametrize("name, decay_tensors, no_decay_tensors", [
    # 20 convs (17 + 3 downsample) + fc.weight | 20 BNs x (weight, bias) + fc.bias
    ("resnet18", 21, 41),
    # stem conv + 18 blocks x (dwconv, 2 linears) + 3 downsample convs + head linear = 59 |
    # stem conv/LN (3), per block dwconv.b, LN w/b, 2 linear b, layer_scale (6 x 18), 3 x (LN w/b, conv b),
    # head LN w/b + bias (3) = 123
    ("convnext_tiny", 59, 123),
    # conv_proj.w, per layer (in_proj_w, out_proj.w, 2 mlp w), heads.head.w | class_token, pos_embedding,
    # conv_proj.b, per layer (2 LN x 2, in_proj_b, out_proj.b, 2 mlp b), encoder.ln w/b, heads.head.b
    ("vit_small", 2 + 4 * 2, 6 + 8 * 2),
])
def test_expected_split(name, decay_tensors, no_decay_tensors):
    with torch.device("meta"):  # shapes and names only: skip the slow weight initialisation
        model = _small_vit() if name == "vit_small" else getattr(torchvision.models, name)(num_classes=10)
    groups, split = _split(model)
    all_names = [n for n, _ in model.named_parameters()]
    # no parameter missing or duplicated
    assert sorted(split["decay"] + split["no_decay"]) == sorted(all_names)
    assert len(set(split["decay"] + split["no_decay"])) == len(all_names)
    assert set(split["no_decay"]) == _expected_no_decay(model)
    counts = count_param_groups(groups)
    assert counts["decay"]["tensors"] == decay_tensors
    assert counts["no_decay"]["tensors"] == no_decay_tensors
    assert counts["decay"]["elements"] + counts["no_decay"]["elements"] == sum(p.numel() for p in model.parameters())
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_frozen_shared_and_empty_groups():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(4))
    model[3].requires_grad_(False)
    groups, split = _split(model)
    assert split == {"decay": ["0.weight"], "no_decay": ["0.bias"]}
    only_norm = param_groups(nn.LayerNorm(3), 0.1)
    assert [g["name"] for g in only_norm] == ["no_decay"]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_build_optimizer_weight_decay(name):
    # with zero gradients only weight decay acts on the first step. AdamW (decoupled): w <- w - lr*wd*w.
    # SGD (L2 in the gradient g = wd*w, momentum buffer b = g, Nesterov step g + mu*b): w <- w - lr*(1+mu)*wd*w
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, param_groups(model, 0.1), lr=0.5, weight_decay=0.3, nesterov=(name == "sgd"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # the group's own value wins
    assert opt.param_groups[0]["foreach"] and not opt.param_groups[0]["fused"]  # CPU: foreach
    assert isinstance(opt, torch.optim.SGD if name == "sgd" else torch.optim.AdamW)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    weight, bias, ln_w, ln_b = model.parameters()
    shrink = 0.5 * 0.1 * (1 + 0.9 if name == "sgd" else 1)
    torch.testing.assert_close(weight, before[0] * (1 - shrink))
    for p, b in zip((bias, ln_w, ln_b), before[1:]):
        assert torch.equal(p, b)
    with pytest.raises(ValueError):
        build_optimizer("lamb", model.parameters(), lr=0.1)


def test_adamw_equals_torch_reference():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    reference = nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    ours = build_optimizer("adamw", param_groups(model, 0.05), lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    ref = torch.optim.AdamW([{"params": [reference.weight], "weight_decay": 0.05},
                             {"params": [reference.bias], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.8, 0.99), eps=1e-6, foreach=False)
    for step in range(5):
        x = torch.randn(4, 5)
        for m, o in ((model, ours), (reference, ref)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)
