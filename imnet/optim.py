"""Parameter groups with weight-decay exclusions, and the SGD / AdamW builders.

Weight decay pulls weights towards 0. That regularises the *direction* of a weight matrix, but on
scale-like parameters it only fights the network: normalisation weights and biases, other 1-D
parameters (e.g. per-channel scales), and transformer tokens / position embeddings are therefore
trained without it (Goyal et al. 2017, Sec. 5.1: no decay on the BN coefficients; He et al. 2019,
"Bag of Tricks", Sec. 3.1: "no bias decay"; DeiT, Touvron et al. 2021, and timm exclude pos_embed and
cls_token).

A trainable parameter goes to the no-decay group when ``p.ndim <= 1`` or when the last component of
its dotted name is in ``no_decay_names``. ``layer_scale`` is in the default list because torchvision
stores ConvNeXt's per-channel layer scale as (C, 1, 1), where the original ConvNeXt code (timm,
which excludes 1-D parameters) has (C,). Parameters with ``requires_grad=False`` are left out.

Optimizers: SGD with (Nesterov) momentum and L2 weight decay added to the gradient, the classic
ResNet recipe; AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), whose
decay is decoupled from the adaptive step: w <- w - lr * wd * w, separately from the Adam update.
Both use torch's fused kernels on CUDA and the multi-tensor (foreach) path elsewhere.
"""

import torch

__all__ = ["NO_DECAY_NAMES", "param_groups", "count_param_groups", "build_optimizer"]

NO_DECAY_NAMES = (
    # torchvision
    "class_token", "pos_embedding", "relative_position_bias_table", "layer_scale",
    # timm / DeiT / Swin naming
    "cls_token", "dist_token", "pos_embed", "absolute_pos_embed", "position_embedding",
    "position_embeddings",
)


def _no_decay(name, param, no_decay_names):
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in no_decay_names


def param_groups(model, weight_decay, no_decay_names=NO_DECAY_NAMES):
    """Two param groups, ``{"name": "decay", "params": [...], "weight_decay": weight_decay}`` and
    ``{"name": "no_decay", ..., "weight_decay": 0.0}``, in model order; empty groups are dropped.
    Shared parameters appear once (``named_parameters`` deduplicates)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param, no_decay_names) else decay).append(param)
    groups = [dict(name="decay", params=decay, weight_decay=weight_decay),
              dict(name="no_decay", params=no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def count_param_groups(groups):
    """{group name: {"tensors": n, "elements": n, "weight_decay": wd}} for printing what a recipe does."""
    return {g.get("name", str(i)): dict(tensors=len(g["params"]),
                                        elements=sum(p.numel() for p in g["params"]),
                                        weight_decay=g.get("weight_decay"))
            for i, g in enumerate(groups)}


def build_optimizer(name, params, lr, weight_decay=0.0, momentum=0.9, nesterov=False, betas=(0.9, 0.999),
                    eps=1e-8, fused=None):
    """torch.optim.SGD or AdamW over ``params`` (tensors or param groups; a group's own
    "weight_decay" wins over ``weight_decay``). ``fused=None`` picks fused kernels when every
    parameter is on CUDA and the foreach implementation otherwise."""
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
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adamw'")
