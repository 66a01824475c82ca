"""Models: any torchvision classifier by name, plus DeiT-Ti/S, with stochastic depth where it fits.

Every model here is a plain torchvision module, so a checkpoint's ``"model"`` state_dict loads into
``torchvision.models.<name>(num_classes=K)`` with ``strict=True``. DeiT (Touvron et al. 2021, "Training
data-efficient image transformers") is torchvision's ``VisionTransformer`` at the DeiT widths, and loads
into that class the same way.
"""

from __future__ import annotations

import difflib
import types

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
from torchvision.ops import stochastic_depth

from imnet.ema import unwrap  # noqa: F401  (DDP / torch.compile -> the plain module; re-exported)

# DeiT widths (Touvron et al. 2021, Table 1): patch 16, depth 12, MLP ratio 4.
DEIT = {
    "deit_tiny": dict(num_heads=3, hidden_dim=192),
    "deit_small": dict(num_heads=6, hidden_dim=384),
}

# torchvision families whose constructors take ``stochastic_depth_prob``.
_DROP_PATH_FAMILIES = ("convnext", "efficientnet", "swin", "maxvit")


def model_names() -> list[str]:
    """All names ``build_model`` accepts."""
    return sorted(torchvision.models.list_models(module=torchvision.models)) + sorted(DEIT)


def build_model(name: str, num_classes: int, drop_path: float | None = None, image_size: int = 224) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs and random weights.

    ``drop_path``: stochastic depth rate (Huang et al. 2016, "Deep Networks with Stochastic Depth"). None
    keeps the model's own default (e.g. 0.1 for convnext_tiny); a number is passed explicitly (0 disables
    it). For ViT/DeiT, which torchvision builds without stochastic depth, it is added to the residual
    branches with the linear depth rule of DeiT (rate i/(L-1) * drop_path for block i).
    ``image_size`` only matters for ViT/DeiT, whose position embedding has a fixed size.
    """
    if name not in model_names():
        close = difflib.get_close_matches(name, model_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model '{name}'.{hint} Any torchvision classification model works "
                         f"(torchvision.models.list_models(module=torchvision.models)), plus deit_tiny and deit_small.")
    kwargs: dict = {"num_classes": num_classes}
    is_vit = name.startswith("vit_") or name in DEIT
    if is_vit:
        kwargs["image_size"] = image_size
    if drop_path is not None and name.startswith(_DROP_PATH_FAMILIES):
        kwargs["stochastic_depth_prob"] = drop_path
    elif drop_path and not is_vit:
        raise ValueError(f"--drop-path {drop_path}: model '{name}' has no stochastic depth in torchvision. "
                         f"Use --drop-path 0, or a ConvNeXt, EfficientNet, Swin, MaxViT or ViT/DeiT model.")
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)

    if name in DEIT:
        d = DEIT[name]
        model = VisionTransformer(image_size=image_size, patch_size=16, num_layers=12, mlp_dim=4 * d["hidden_dim"],
                                  num_classes=num_classes, num_heads=d["num_heads"], hidden_dim=d["hidden_dim"])
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if is_vit and drop_path:
        add_vit_drop_path(model, drop_path)
    return model


def _forward_with_drop_path(self: EncoderBlock, inp: torch.Tensor) -> torch.Tensor:
    """EncoderBlock.forward with stochastic depth on both residual branches (pre-norm ViT)."""
    x = self.ln_1(inp)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = inp + stochastic_depth(self.dropout(x), self.drop_path_rate, "row", self.training)
    y = self.mlp(self.ln_2(x))
    return x + stochastic_depth(y, self.drop_path_rate, "row", self.training)


def add_vit_drop_path(model: VisionTransformer, drop_path: float) -> None:
    """Give a torchvision ViT stochastic depth, rate growing linearly with depth (DeiT's rule).

    Only each block's ``forward`` changes, bound as a method so that ``copy.deepcopy`` (the EMA copy)
    binds it to the copied block; parameters and state_dict keys stay torchvision's.
    """
    blocks = [m for m in model.encoder.layers if isinstance(m, EncoderBlock)]
    for i, block in enumerate(blocks):
        block.drop_path_rate = drop_path * i / max(len(blocks) - 1, 1)
        block.forward = types.MethodType(_forward_with_drop_path, block)
