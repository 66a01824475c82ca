"""Parameter groups with weight-decay exclusions and layer-wise LR decay, and the optimizer builder.

Weight decay pulls weights towards 0. That regularises the *direction* of a weight matrix, but on scale-like
parameters it only fights the network: normalisation weights and biases, other 1-D parameters (per-channel
scales), and transformer tokens / position embeddings are trained without it (Goyal et al. 2017, Sec. 5.1: no
decay on the BN coefficients; He et al. 2019, "Bag of Tricks", Sec. 3.1: "no bias decay"; DeiT, Touvron et al.
2021, and timm exclude pos_embed and cls_token). The exempt parameters are a set of categories
(``no_decay_on``), because the recipes' sources draw the line differently:

- ``"norm"``: the weights and biases of normalization layers, by module class (`NORM_LAYERS`, subclasses such
  as ConvNeXt's LayerNorm2d included): torchvision's ``--norm-weight-decay`` (references/classification/utils.py).
- ``"bias"``: parameters named exactly ``bias`` (torchvision's ``--bias-weight-decay``; MultiheadAttention's
  ``in_proj_bias`` is not one, as there).
- ``"embedding"``: tokens, position embeddings and relative-position bias tables, by name (`EMBEDDING_NAMES`):
  torchvision's ``--transformer-embedding-decay`` (whose key list misses its own ViT ``pos_embedding``, included
  here) and DeiT's ``no_weight_decay()`` (pos_embed, cls_token, dist_token).
- ``"1d"``: every parameter with at most one dimension, timm's and DeiT's rule (``filter_bias_and_bn``: norm
  weights and biases, all biases, per-channel scales).
- ``"layer_scale"``: ConvNeXt's layer scale, which torchvision stores as (C, 1, 1) where the original ConvNeXt
  code (timm) has (C,) and so exempts it as 1-D.

torchvision's ``--norm-weight-decay 0`` is ``("norm",)``; its Swin command (norm, bias and embedding decay 0)
``("norm", "bias", "embedding")``; DeiT / timm ``("1d", "embedding")``; ``()`` decays everything (the classic
recipes, torchvision's ViT command). The default, `IMNET_NO_DECAY` = ``("1d", "embedding", "layer_scale")``,
is timm's rule carried over to torchvision's ConvNeXt. Parameters with ``requires_grad=False`` are left out.

Optimizers: SGD with (Nesterov) momentum and L2 weight decay added to the gradient, the classic ResNet recipe;
AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), whose decay is decoupled from the
adaptive step: w <- w - lr * wd * w. Both use torch's fused kernels on CUDA, the foreach path elsewhere.

RMSProp (Tieleman & Hinton 2012), the optimizer of the mobile recipes, in two variants that differ in more
than their epsilon. torch's ``RMSprop`` (torchvision's MobileNetV3 recipe: alpha 0.9, eps 0.0316):

    v_0 = 0;   v <- alpha v + (1 - alpha) g^2;   b <- mu b + g / (sqrt(v) + eps);   w <- w - lr b

TensorFlow's (``tf.compat.v1.train.RMSPropOptimizer``, the ApplyRMSProp kernel), `RMSpropTF`; the EfficientNet
and EfficientNet-Lite references train with it (tensorflow/tpu efficientnet/utils.py build_optimizer: alpha
("decay") 0.9, mu 0.9, eps 1e-3):

    v_0 = 1;   v <- v + (1 - alpha) (g^2 - v);   m <- mu m + lr g / sqrt(v + eps);   w <- w - m

eps sits inside the square root (sqrt(1e-3) = 0.0316, the eps torchvision's recipe gives torch's RMSprop), the
average starts at 1 (a small gradient's first step is about lr * g, where torch's is lr * sign(g) / sqrt(1 -
alpha)), and the LR enters the momentum buffer (a change of LR takes effect gradually). This is timm's
``RMSpropTF`` with its defaults (``lr_in_momentum=True``, not centered). Weight decay is L2 in the gradient,
g <- g + wd * w, as the reference's loss term wd * sum ||w||^2 / 2.

Layer-wise LR decay for fine-tuning (ELECTRA, Clark et al. 2020; BEiT, Bao et al. 2022; MAE, He et al.
2022): the layers near the input, which hold the most general features, move least. Each parameter gets a
layer id in 0..L+1 and its group an ``"lr_scale"`` (schedule.set_lr multiplies a group's LR by it):

    lr_scale = decay ** (L + 1 - layer_id)

so the head (id L + 1) trains at the full LR and the embeddings (id 0) at decay ** (L + 1). The ids:

- ViT / DeiT (torchvision's VisionTransformer and subclasses), BEiT's and MAE's ``get_layer_id_for_vit``:
  patch embedding, class (and distillation) token and position embedding 0, block i -> i + 1, the final
  norm and the heads L + 1, with L the number of blocks. (MAE's list of embeddings names only cls_token
  and pos_embed; the distillation token is an input token like them, and timm's DeiT puts it in the stem.)
- Swin (torchvision's SwinTransformer), SimMIM's ``get_swin_layer`` (Xie et al. 2022, the published Swin
  fine-tuning code): patch embedding 0, block j of stage s -> (blocks before stage s) + j + 1, a patch
  merging layer -> the id of the last block before it, the final norm and head L + 1, L = sum(depths).
  (timm instead puts the merging layer with the next stage and the final norm with the last block.)
- ConvNeXt (torchvision's ConvNeXt), ConvNeXt's ``get_num_layer_for_convnext`` (Liu et al. 2022): 12
  layers for depths (3, 3, 27, 3): the stem 0, stage 0 -> 1, stage 1 and the downsampling before it -> 2,
  stage 2 in groups of three blocks -> 3 + block // 3 (its downsampling with the first group), stage 3 and
  its downsampling -> L = 12, the head L + 1. The official code refuses other depths (convnext_tiny's
  stage 2 has 9 blocks); here the same rule gives L = 3 + ceil(depth_2 / 3), i.e. 6 for convnext_tiny,
  and exactly the official ids for small / base / large.
"""

import math

import torch
from torchvision.models.convnext import ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["NO_DECAY_CATEGORIES", "IMNET_NO_DECAY", "EMBEDDING_NAMES", "NORM_LAYERS", "no_decay_names",
           "param_groups", "count_param_groups", "RMSpropTF", "build_optimizer", "layer_ids", "layer_decay_groups"]

NO_DECAY_CATEGORIES = ("norm", "bias", "embedding", "1d", "layer_scale")
IMNET_NO_DECAY = ("1d", "embedding", "layer_scale")

EMBEDDING_NAMES = (
    # torchvision
    "class_token", "pos_embedding", "relative_position_bias_table",
    # timm / DeiT / Swin naming
    "cls_token", "dist_token", "pos_embed", "absolute_pos_embed", "position_embedding", "position_embeddings",
)

# torchvision's reference set_weight_decay's norm_classes (references/classification/utils.py)
NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm,
               torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)


def _check_categories(no_decay_on):
    unknown = set(no_decay_on) - set(NO_DECAY_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown weight-decay exemption {sorted(unknown)}; the categories are "
                         f"{', '.join(NO_DECAY_CATEGORIES)} (see imnet/optim.py)")


def no_decay_names(model, no_decay_on=IMNET_NO_DECAY):
    """The names (as ``model.named_parameters()`` gives them) of the trainable parameters ``no_decay_on`` exempts."""
    _check_categories(no_decay_on)
    out = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if (("norm" in no_decay_on and isinstance(module, NORM_LAYERS))
                    or ("bias" in no_decay_on and leaf == "bias")
                    or ("embedding" in no_decay_on and leaf in EMBEDDING_NAMES)
                    or ("1d" in no_decay_on and param.ndim <= 1)
                    or ("layer_scale" in no_decay_on and leaf == "layer_scale")):
                out.add(f"{module_name}.{leaf}" if module_name else leaf)
    return out


def param_groups(model, weight_decay, no_decay_on=IMNET_NO_DECAY):
    """Two param groups, ``{"name": "decay", "params": [...], "weight_decay": weight_decay}`` and
    ``{"name": "no_decay", ..., "weight_decay": 0.0}`` (the parameters ``no_decay_on`` exempts), in model
    order; empty groups are dropped. Shared parameters appear once (``named_parameters`` deduplicates)."""
    exempt = no_decay_names(model, no_decay_on)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in exempt else decay).append(param)
    groups = [dict(name="decay", params=decay, weight_decay=weight_decay),
              dict(name="no_decay", params=no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def count_param_groups(groups):
    """{group name: {"tensors": n, "elements": n, "weight_decay": wd, "lr_scale": s}} for printing what a
    recipe does (``lr_scale`` 1.0 for groups without one)."""
    return {g.get("name", str(i)): dict(tensors=len(g["params"]),
                                        elements=sum(p.numel() for p in g["params"]),
                                        weight_decay=g.get("weight_decay"),
                                        lr_scale=g.get("lr_scale", 1.0))
            for i, g in enumerate(groups)}


def _vit_layer(name, num_blocks):
    if name in ("class_token", "dist_token", "encoder.pos_embedding") or name.startswith("conv_proj."):
        return 0
    if name.startswith("encoder.layers.encoder_layer_"):
        return int(name.split(".")[2].rsplit("_", 1)[1]) + 1
    return num_blocks + 1


def _swin_layer(stage, block, depths):
    """SimMIM's ids (module docstring); ``block`` None: the merging layer before ``stage``."""
    before = sum(depths[:stage])
    return before if block is None else before + block + 1


def _convnext_layer(stage, block, depths):
    """get_num_layer_for_convnext's ids (module docstring); ``block`` None: the downsampling before ``stage``."""
    block = 0 if block is None else block
    return (1, 2, 3 + block // 3, 3 + math.ceil(depths[2] / 3))[stage]


def layer_ids(model):
    """({parameter name: layer id in 0..L+1}, L) for a torchvision ViT/DeiT, Swin or ConvNeXt; ValueError else."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(model, VisionTransformer):
        num_blocks = len(model.encoder.layers)
        return {n: _vit_layer(n, num_blocks) for n in names}, num_blocks
    if isinstance(model, (SwinTransformer, ConvNeXt)) and len(model.features) == 8:
        # torchvision's features: [stem, stage 0, down, stage 1, down, stage 2, down, stage 3]
        depths = [len(model.features[i]) for i in (1, 3, 5, 7)]
        if isinstance(model, SwinTransformer):
            rule, num_layers = _swin_layer, sum(depths)
        else:
            rule, num_layers = _convnext_layer, 3 + math.ceil(depths[2] / 3)
        ids = {}
        for n in names:
            parts = n.split(".")
            if parts[0] != "features":
                ids[n] = num_layers + 1
            elif parts[1] == "0":
                ids[n] = 0
            else:  # features.(2s+1).j: block j of stage s; features.(2s): the downsampling before stage s
                index = int(parts[1])
                ids[n] = rule(index // 2, int(parts[2]) if index % 2 else None, depths)
        return ids, num_layers
    raise ValueError(f"Layer-wise LR decay needs the blocks of a VisionTransformer (vit_*, deit_*), SwinTransformer "
                     f"(swin_*) or ConvNeXt (convnext_*); {type(model).__name__} has no such blocks. Leave layer "
                     f"decay off (1.0) for this model.")


def layer_decay_groups(model, weight_decay, layer_decay, no_decay_on=IMNET_NO_DECAY):
    """Param groups per (layer, decay / no decay), named "layer 3 decay", "layer 3 no_decay", ..., each with
    ``"lr_scale": layer_decay ** (L + 1 - layer_id)`` and ``param_groups``'s weight decay rule, in layer order
    (embeddings first); empty groups are dropped, frozen parameters left out."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}; the published fine-tuning recipes "
                         f"use 0.65-0.9.")
    ids, num_layers = layer_ids(model)
    exempt = no_decay_names(model, no_decay_on)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, skip = ids[name], name in exempt
        key = (layer, "no_decay" if skip else "decay")
        if key not in groups:
            groups[key] = dict(name=f"layer {layer} {key[1]}", params=[],
                               weight_decay=0.0 if skip else weight_decay,
                               lr_scale=layer_decay ** (num_layers + 1 - layer))
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1] != "decay"))]


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow's RMSProp (module docstring); its defaults are TensorFlow's (the references pass eps 1e-3,
    momentum 0.9)."""

    def __init__(self, params, lr, alpha=0.9, eps=1e-10, momentum=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                square_avg, buf = state["square_avg"], state["momentum_buffer"]
                square_avg.add_(grad.square() - square_avg, alpha=1 - group["alpha"])  # TF's order of operations
                buf.mul_(group["momentum"]).addcdiv_(grad, square_avg.add(group["eps"]).sqrt_(), value=group["lr"])
                p.sub_(buf)
        return loss


def build_optimizer(name, params, lr, weight_decay=0.0, momentum=0.9, nesterov=False, betas=(0.9, 0.999),
                    eps=1e-8, alpha=0.9, fused=None):
    """torch.optim.SGD, AdamW, RMSprop or `RMSpropTF` ("sgd", "adamw", "rmsprop", "rmsproptf") over ``params``
    (tensors or param groups; a group's own "weight_decay" wins); ``alpha`` is RMSProp's smoothing constant (0.9
    in both sources, not torch's default 0.99). ``fused=None`` picks fused kernels when every parameter is on
    CUDA, foreach otherwise (torch's RMSprop has no fused kernel: foreach)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of param-group dicts")
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if fused is None:
        fused = bool(tensors) and all(p.is_cuda for p in tensors)
    impl = dict(fused=True) if fused else dict(foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, **impl)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **impl)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                   weight_decay=weight_decay, foreach=True)
    if name == "rmsproptf":
        return RMSpropTF(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'adamw', 'rmsprop' or 'rmsproptf'")
