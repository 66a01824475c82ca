import math
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from imnet.run import flags, models
from imnet import optim as imoptim
from imnet.deit import DistilledVisionTransformer
from imnet.optim import build_optimizer, count_param_groups, layer_decay_groups, no_decay_names, param_groups

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


# ------------------------------------------------------------------------------- the sources' exemption rules

TORCHVISION_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                     nn.LocalResponseNorm)


def torchvision_set_weight_decay(model, weight_decay, norm_weight_decay=None, custom_keys_weight_decay=()):
    """torchvision's references/classification/utils.py ``set_weight_decay``, written out from its code: walk the
    modules depth first, each one's own parameters; a custom key matches the parameter's own name (or its dotted
    path when the key has a dot) and wins; else a parameter of a norm-class module goes to "norm" when
    norm_weight_decay is given; else "other"."""
    params = {"other": [], "norm": [], **{key: [] for key, _ in custom_keys_weight_decay}}
    decay = {"other": weight_decay, "norm": norm_weight_decay, **dict(custom_keys_weight_decay)}

    def add(module, prefix=""):
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            for key, _ in custom_keys_weight_decay:
                target = f"{prefix}.{name}" if prefix != "" and "." in key else name
                if key == target:
                    params[key].append(p)
                    break
            else:
                params["norm" if norm_weight_decay is not None and isinstance(module, TORCHVISION_NORMS)
                       else "other"].append(p)
        for child_name, child in module.named_children():
            add(child, f"{prefix}.{child_name}" if prefix != "" else child_name)

    add(model)
    return [{"params": params[k], "weight_decay": decay[k]} for k in params if params[k]]


def torchvision_exempt(model, command_flags: str) -> set:
    """The parameter names that torchvision's train.py, given these weight-decay flags (values 0), trains without
    weight decay: --norm-weight-decay, --bias-weight-decay, --transformer-embedding-decay (train.py builds the
    custom keys "bias" and class_token / position_embedding / relative_position_bias_table from the last two)."""
    words = command_flags.split()
    values = {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}
    custom = []
    if "--bias-weight-decay" in values:
        custom.append(("bias", values["--bias-weight-decay"]))
    if "--transformer-embedding-decay" in values:
        custom += [(key, values["--transformer-embedding-decay"])
                   for key in ("class_token", "position_embedding", "relative_position_bias_table")]
    groups = torchvision_set_weight_decay(model, 0.05, values.get("--norm-weight-decay"), custom)
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


# timm's VisionTransformer.no_weight_decay() (pos_embed, cls_token, dist_token) in torchvision's names
TIMM_VIT_NO_WEIGHT_DECAY = ("encoder.pos_embedding", "class_token", "dist_token")


def timm_exempt(model, no_weight_decay=TIMM_VIT_NO_WEIGHT_DECAY) -> set:
    """timm's param_groups_weight_decay (create_optimizer's filter_bias_and_bn, which DeiT uses): no decay for
    ndim <= 1, names ending in .bias, and the model's no_weight_decay() names."""
    return {n for n, p in model.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias") or n in no_weight_decay)}


def _meta(name):
    with torch.device("meta"):
        return models.build_model(name, 10)


NORM = "--norm-weight-decay 0.0"
SWIN = "--norm-weight-decay 0.0 --bias-weight-decay 0.0 --transformer-embedding-decay 0.0"


@pytest.mark.parametrize("name, command_flags, categories, exempt", [
    # counts of exempt tensors, from torchvision's rule (its BatchNorm / LayerNorm weights and biases only)
    ("resnet50", NORM, ("norm",), 106), ("resnext50_32x4d", NORM, ("norm",), 106),
    ("efficientnet_b0", NORM, ("norm",), 98), ("mobilenet_v3_large", NORM, ("norm",), 92),
    ("convnext_tiny", NORM, ("norm",), 46), ("swin_t", SWIN, ("norm", "bias", "embedding"), 120),
    ("swin_t", NORM, ("norm",), 58), ("resnet50", "", (), 0), ("vit_b_16", "", (), 0),
    ("convnext_tiny", "--norm-weight-decay 0.0 --bias-weight-decay 0.0", ("norm", "bias"), 46 + 59),
])
def test_categories_exempt_what_torchvisions_flags_exempt(name, command_flags, categories, exempt):
    model = _meta(name)
    assert no_decay_names(model, categories) == torchvision_exempt(model, command_flags)
    assert len(torchvision_exempt(model, command_flags)) == exempt
    assert len(param_groups(model, 0.05, categories)[-1]["params"]) == exempt or exempt == 0


def test_torchvisions_embedding_keys_miss_its_vits_position_embedding():
    """The one place imnet's "embedding" is not torchvision's --transformer-embedding-decay: torchvision's keys
    match own names exactly, and its ViT calls the embedding pos_embedding, not position_embedding."""
    model = _meta("vit_b_16")
    ours = no_decay_names(model, ("embedding",))
    assert ours - torchvision_exempt(model, "--transformer-embedding-decay 0.0") == {"encoder.pos_embedding"}
    assert ours == {"class_token", "encoder.pos_embedding"}


@pytest.mark.parametrize("name", ["deit_small", "deit_tiny", "vit_b_16"])
def test_1d_and_embedding_exempt_what_timm_exempts(name):
    model = _meta(name)
    assert no_decay_names(model, ("1d", "embedding")) == timm_exempt(model)
    distilled = _distilled_deit()
    assert no_decay_names(distilled, ("1d", "embedding")) == timm_exempt(distilled)
    assert "dist_token" in timm_exempt(distilled)


def test_imnet_default_and_layer_scale():
    """The default (1d, embedding, layer_scale) is timm's rule plus torchvision's (C, 1, 1) ConvNeXt layer scale;
    the categories' names are one list in flags.py (no torch there) and optim.py."""
    model = _meta("convnext_tiny")
    scales = {n for n, _ in model.named_parameters() if n.endswith("layer_scale")}
    assert len(scales) == 18
    assert no_decay_names(model) == timm_exempt(model, ()) | scales == _expected_no_decay(model)
    assert no_decay_names(model, ("layer_scale",)) == scales
    assert (flags.NO_DECAY_CATEGORIES, flags.IMNET_NO_DECAY) == (imoptim.NO_DECAY_CATEGORIES, imoptim.IMNET_NO_DECAY)
    with pytest.raises(ValueError, match="unknown weight-decay exemption"):
        no_decay_names(model, ("norms",))
    groups = layer_decay_groups(model, 0.05, 0.5, no_decay_on=("norm",))  # layer decay takes the same categories
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]} == \
        no_decay_names(model, ("norm",))


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


BATCHES = [torch.randn(4, 5, generator=torch.Generator().manual_seed(t)) for t in range(8)]


def _train(model, optimizer, batches, lrs=None):
    """One update of ``model`` per batch; ``lrs[t]``, if given, is step t's LR."""
    for t, x in enumerate(batches):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[t]
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()


def test_rmsproptf_closed_form():
    """Three steps of TensorFlow's ApplyRMSProp written out (v_0 = 1, eps inside the root, lr inside the
    momentum buffer, L2 decay in the gradient), with a different LR each step."""
    w0, grads, lrs = torch.tensor([0.5, -2.0], dtype=torch.float64), [3.0, -1.0, 0.25], [0.1, 0.05, 0.2]
    alpha, eps, mu, wd = 0.9, 1e-3, 0.9, 0.01
    w, v, m = w0.clone(), torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        v = alpha * v + (1 - alpha) * g * g
        m = mu * m + lr * g / torch.sqrt(v + eps)
        w = w - m
    p = nn.Parameter(w0.clone())
    opt = build_optimizer("rmsproptf", [p], lr=0.0, weight_decay=wd, momentum=mu, eps=eps, alpha=alpha)
    assert isinstance(opt, imoptim.RMSpropTF)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.full_like(p, g)
        opt.step()
    torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
    # by hand, the first step without momentum or decay: v = 1 + 0.1 (9 - 1) = 1.8, w = 0.5 - 0.1 * 3 / sqrt(1.8)
    q = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    q.grad = torch.tensor([3.0], dtype=torch.float64)
    imoptim.RMSpropTF([q], lr=0.1, eps=0.0).step()
    assert q.item() == pytest.approx(0.5 - 0.3 / math.sqrt(1.8), rel=1e-14)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.9, 1e-2)])
def test_rmsproptf_equals_timm(momentum, weight_decay):
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    model, reference = nn.Linear(5, 3), nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    lrs = [0.01 * 0.9 ** t for t in range(8)]  # a changing LR: TF's lr-in-momentum is visible
    ours = build_optimizer("rmsproptf", model.parameters(), lr=0.01, weight_decay=weight_decay, momentum=momentum,
                           eps=1e-3, alpha=0.9)
    ref = timm_optim.RMSpropTF(reference.parameters(), lr=0.01, alpha=0.9, eps=1e-3, momentum=momentum,
                               weight_decay=weight_decay, foreach=False)
    _train(model, ours, BATCHES, lrs=lrs)
    _train(reference, ref, BATCHES, lrs=lrs)
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)


def test_rmsprop_equals_torch_reference():
    """"rmsprop" is torch's RMSprop with the recipe's alpha and eps (torchvision's MobileNetV3: 0.9, 0.0316)."""
    torch.manual_seed(0)
    model, reference = nn.Linear(5, 3), nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    ours = build_optimizer("rmsprop", param_groups(model, 1e-5), lr=0.064, momentum=0.9, eps=0.0316, alpha=0.9)
    assert isinstance(ours, torch.optim.RMSprop) and ours.param_groups[0]["foreach"]
    ref = torch.optim.RMSprop([{"params": [reference.weight], "weight_decay": 1e-5},
                               {"params": [reference.bias], "weight_decay": 0.0}],
                              lr=0.064, alpha=0.9, eps=0.0316, momentum=0.9, foreach=False)
    _train(model, ours, BATCHES)
    _train(reference, ref, BATCHES)
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)


@pytest.mark.parametrize("name", ["rmsproptf", "rmsprop"])
def test_rmsprop_resumes_bitwise(name):
    """The state (square average, momentum buffer) travels in state_dict: 3 + 3 steps equal 6, bitwise."""
    torch.manual_seed(0)
    straight, resumed = nn.Linear(5, 3), nn.Linear(5, 3)
    resumed.load_state_dict(straight.state_dict())
    kw = dict(lr=0.01, momentum=0.9, eps=1e-3, weight_decay=1e-2)
    _train(straight, build_optimizer(name, straight.parameters(), **kw), BATCHES[:6])
    first = build_optimizer(name, resumed.parameters(), **kw)
    _train(resumed, first, BATCHES[:3])
    second = build_optimizer(name, resumed.parameters(), **kw)
    second.load_state_dict(first.state_dict())
    _train(resumed, second, BATCHES[3:6])
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)


# ------------------------------------------------------------------------------------- layer-wise LR decay
#
# The published rules, written out on the names their code uses (timm-style ViT, the official Swin and
# ConvNeXt), and a translation from torchvision's names to those.

def mae_get_layer_id_for_vit(name, num_layers):
    """MAE util/lr_decay.py (after BEiT), num_layers = blocks + 1; dist_token added to the stem as timm's
    DeiT group_matcher does."""
    if name in ["cls_token", "pos_embed", "dist_token"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


def simmim_get_swin_layer(name, num_layers, depths):
    """SimMIM optimizer.py, num_layers = sum(depths) + 2."""
    if name in ("mask_token"):
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("layers"):
        layer_id = int(name.split(".")[1])
        block_id = name.split(".")[3]
        if block_id == "reduction" or block_id == "norm":
            return sum(depths[:layer_id + 1])
        layer_id = sum(depths[:layer_id]) + int(block_id)
        return layer_id + 1
    else:
        return num_layers - 1


def convnext_get_num_layer(var_name, num_max_layer=12):
    """ConvNeXt optim_factory.py get_num_layer_for_convnext; its 12 is num_max_layer here (12 for stage-2
    depth 27; the same rule at depth 9 ends at 3 + 9 / 3 = 6)."""
    if var_name.startswith("downsample_layers"):
        stage_id = int(var_name.split(".")[1])
        if stage_id == 0:
            layer_id = 0
        elif stage_id == 1 or stage_id == 2:
            layer_id = stage_id + 1
        elif stage_id == 3:
            layer_id = num_max_layer
        return layer_id
    elif var_name.startswith("stages"):
        stage_id = int(var_name.split(".")[1])
        block_id = int(var_name.split(".")[2])
        if stage_id == 0 or stage_id == 1:
            layer_id = stage_id + 1
        elif stage_id == 2:
            layer_id = 3 + block_id // 3
        elif stage_id == 3:
            layer_id = num_max_layer
        return layer_id
    else:
        return num_max_layer + 1


def timm_vit_name(n):
    n = re.sub(r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1.", n)
    return {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed"}.get(
        n, n.replace("conv_proj.", "patch_embed.proj.").replace("encoder.ln.", "norm.").replace("heads.head.", "head."))


def swin_name(n):
    m = re.match(r"features\.(\d+)\.(.*)", n)
    if not m:
        return n  # norm.*, head.*
    index, rest = int(m[1]), m[2]
    if index == 0:
        return "patch_embed." + rest
    if index % 2:
        return f"layers.{index // 2}.blocks.{rest}"
    return f"layers.{index // 2 - 1}.downsample.{rest}"  # torchvision's merging before stage s = Swin's after s-1


def convnext_name(n):
    m = re.match(r"features\.(\d+)\.(.*)", n)
    if not m:
        return "head." + n  # classifier: the final norm and the head
    index, rest = int(m[1]), m[2]
    return f"stages.{index // 2}.{rest}" if index % 2 else f"downsample_layers.{index // 2}.{rest}"


def _distilled_deit():
    return DistilledVisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                      num_classes=10)


def _expected_ids(family, model):
    names = [n for n, _ in model.named_parameters()]
    if family == "vit":
        blocks = len(model.encoder.layers)
        return {n: mae_get_layer_id_for_vit(timm_vit_name(n), blocks + 1) for n in names}, blocks
    if family == "swin":
        depths = [2, 2, 6, 2]  # swin_t
        return {n: simmim_get_swin_layer(swin_name(n), sum(depths) + 2, depths) for n in names}, sum(depths)
    top = 12 if len(model.features[5]) == 27 else 6  # convnext_small / convnext_tiny
    return {n: convnext_get_num_layer(convnext_name(n), top) for n in names}, top


@pytest.mark.parametrize("family, build", [
    ("vit", lambda: _small_vit(num_layers=3)),
    ("vit", lambda: torchvision.models.vit_b_16(num_classes=10)),
    ("vit", _distilled_deit),
    ("swin", lambda: torchvision.models.swin_t(num_classes=10)),
    ("convnext", lambda: torchvision.models.convnext_tiny(num_classes=10)),
    ("convnext", lambda: torchvision.models.convnext_small(num_classes=10)),
], ids=["vit_tiny", "vit_b_16", "deit_distilled", "swin_t", "convnext_tiny", "convnext_small"])
def test_layer_decay_groups_follow_the_published_rules(family, build):
    with torch.device("meta"):
        model = build()
    expected, num_layers = _expected_ids(family, model)
    assert set(expected.values()) == set(range(num_layers + 2))  # no layer id unused or out of range
    decay = 0.75
    groups = layer_decay_groups(model, 0.05, decay)
    by_id = {id(p): n for n, p in model.named_parameters()}
    plain = {by_id[id(p)]: g["weight_decay"] for g in param_groups(model, 0.05) for p in g["params"]}
    seen = []
    for g in groups:
        layer, kind = re.fullmatch(r"layer (\d+) (decay|no_decay)", g["name"]).groups()
        assert g["lr_scale"] == decay ** (num_layers + 1 - int(layer))
        assert g["weight_decay"] == (0.05 if kind == "decay" else 0.0)
        for p in g["params"]:
            name = by_id[id(p)]
            seen.append(name)
            assert expected[name] == int(layer), name
            assert plain[name] == g["weight_decay"], name  # the same weight-decay exclusions
    assert sorted(seen) == sorted(by_id.values())  # every parameter exactly once
    # the head trains at the full LR, the embeddings at decay ** (L + 1)
    assert max(g["lr_scale"] for g in groups) == 1.0
    assert min(g["lr_scale"] for g in groups) == decay ** (num_layers + 1)
    counts = count_param_groups(groups)
    assert counts[groups[0]["name"]]["lr_scale"] == groups[0]["lr_scale"]


def test_layer_decay_against_timm_differs_only_in_the_final_norm():
    """docs/sources.md: timm's param_groups_layer_decay gives ViT's final norm the last block's scale; imnet (BEiT's
    and MAE's rule) the head's 1.0. Every other parameter gets the same scale."""
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_layer_decay
    ours_model = _small_vit(num_layers=3)
    theirs_model = timm.models.VisionTransformer(img_size=32, patch_size=8, depth=3, num_heads=2, embed_dim=16,
                                                 num_classes=10)
    def scales(model, groups):
        by_id = {id(p): n for n, p in model.named_parameters()}
        return {by_id[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    def unit(name):  # a block, or a top-level tensor / module: the two name the insides of a block differently
        parts = timm_vit_name(name).split(".")
        return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
    ours, theirs = {}, {}
    for n, scale in scales(ours_model, layer_decay_groups(ours_model, 0.05, 0.5)).items():
        ours.setdefault(unit(n), set()).add(scale)
    for n, scale in scales(theirs_model, param_groups_layer_decay(theirs_model, 0.05, layer_decay=0.5)).items():
        theirs.setdefault(unit(n), set()).add(scale)
    assert set(ours) == set(theirs)
    assert {u for u in ours if ours[u] != theirs[u]} == {"norm"}
    assert ours["norm"] == {1.0} and theirs["norm"] == theirs["blocks.2"] == {0.5}


def test_layer_decay_specific_ids():
    """A few ids spelled out: DeiT's tokens are embeddings, its second head is a head; Swin's merging layer
    goes with the last block before it; convnext_small's stage 2 in threes."""
    with torch.device("meta"):
        deit, swin = _distilled_deit(), torchvision.models.swin_t()
        convnext = torchvision.models.convnext_small()
    def ids(model):
        by_id = {id(p): n for n, p in model.named_parameters()}
        groups = layer_decay_groups(model, 0.05, 0.5)
        return {by_id[id(p)]: int(g["name"].split()[1]) for g in groups for p in g["params"]}
    d, s, c = ids(deit), ids(swin), ids(convnext)
    assert d["dist_token"] == d["class_token"] == d["encoder.pos_embedding"] == d["conv_proj.weight"] == 0
    assert d["encoder.layers.encoder_layer_2.mlp.0.weight"] == 3
    assert d["head_dist.weight"] == d["heads.head.weight"] == 4
    assert s["features.1.1.norm1.weight"] == s["features.2.reduction.weight"] == 2  # merging after stage 0
    assert s["features.3.0.norm1.weight"] == 3
    assert s["features.7.1.mlp.0.weight"] == 12 and s["norm.weight"] == s["head.weight"] == 13
    assert c["features.4.1.weight"] == 3 and c["features.5.26.block.0.weight"] == 11 and c["features.6.1.weight"] == 12
    assert c["classifier.2.weight"] == 13


def test_layer_decay_refusals_and_frozen_parameters():
    with torch.device("meta"):
        resnet = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="ResNet has no such blocks"):
        layer_decay_groups(resnet, 0.05, 0.75)
    vit = _small_vit(num_layers=2)
    with pytest.raises(ValueError, match="layer_decay must be"):
        layer_decay_groups(vit, 0.05, 1.5)
    vit.conv_proj.requires_grad_(False)
    groups = layer_decay_groups(vit, 0.05, 0.75)
    tensors = [p for g in groups for p in g["params"]]
    assert all(p is not vit.conv_proj.weight and p is not vit.conv_proj.bias for p in tensors)
    assert len(tensors) == sum(p.requires_grad for p in vit.parameters())
    # decay 1.0: every scale is 1 (the same training as param_groups, in more groups)
    assert {g["lr_scale"] for g in layer_decay_groups(vit, 0.05, 1.0)} == {1.0}
    assert all(v["lr_scale"] == 1.0 for v in count_param_groups(param_groups(vit, 0.05)).values())
    assert math.isclose(0.75 ** 3, [g for g in groups if g["name"] == "layer 0 no_decay"][0]["lr_scale"])
