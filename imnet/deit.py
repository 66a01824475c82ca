"""DeiT with a distillation token (Touvron et al. 2021, "Training data-efficient image transformers &
distillation through attention", Sec. 4): torchvision's VisionTransformer plus a second learned token
that attends like the class token and feeds a second head trained on the teacher's predictions.

    tokens = [class, dist, patch_1 .. patch_N] + pos_embedding      (pos_embedding: N + 2 rows)
    train:  (head(z_class), head_dist(z_dist))                       -> imnet.distill.distillation_loss
    eval:   (head(z_class) + head_dist(z_dist)) / 2                  (the paper's late fusion, Table 3)

Widths as DeiT's Table 1 (`DEIT_DISTILLED`). Parameter names are torchvision's (``class_token``, ``conv_proj``,
``encoder.pos_embedding``, ``encoder.layers``, ``heads.head``) plus DeiT's ``dist_token`` and ``head_dist``, so
the state_dict loads strictly into a freshly built instance and torchvision-ViT tools (stochastic depth on
``encoder.layers``, the weight-decay and layer-decay rules) apply unchanged.

Initialisation as DeiT's (its models.py on timm 0.3's VisionTransformer): class token, distillation token
and position embedding ~ trunc_normal(std .02), every Linear (attention in/out projections, MLP, both
heads) trunc_normal(std .02) with zero bias, LayerNorms 1 / 0, the patch-embedding convolution PyTorch's
default. (timm's and torch's trunc_normal_ cut at +-2 in absolute value, i.e. at 100 std here: in
effect a plain normal.) torchvision's own ViT init differs (zero class token and head, Xavier MLPs).

``interpolate_pos_embedding`` resizes the position embedding for fine-tuning at another image size as DeiT's
fine-tuning code (main.py, ``--finetune``) did for its published 384 px models; torchvision's
``interpolate_embeddings`` keeps one token row only and uses align_corners=True.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["DEIT_DISTILLED", "DistilledVisionTransformer", "deit_distilled", "interpolate_pos_embedding"]

# name -> (hidden_dim, num_heads); patch 16, depth 12, MLP ratio 4 (DeiT, Table 1)
DEIT_DISTILLED = {
    "deit_tiny_distilled": (192, 3),
    "deit_small_distilled": (384, 6),
    "deit_base_distilled": (768, 12),
}


class DistilledVisionTransformer(VisionTransformer):
    """torchvision's VisionTransformer with DeiT's distillation token and head."""

    def __init__(self, image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=None,
                 num_classes=1000, dropout=0.0, attention_dropout=0.0):
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                         num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim or 4 * hidden_dim,
                         num_classes=num_classes, dropout=dropout, attention_dropout=attention_dropout)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.seq_length += 1
        self.encoder.pos_embedding = nn.Parameter(torch.zeros(1, self.seq_length, hidden_dim))
        self.head_dist = nn.Linear(hidden_dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """DeiT's initialisation (module docstring)."""
        for token in (self.class_token, self.dist_token, self.encoder.pos_embedding):
            nn.init.trunc_normal_(token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):  # its q, k, v projection is not an nn.Linear
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.conv_proj.reset_parameters()

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        x = torch.cat([self.class_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], dim=1)
        x = self.encoder(x)
        cls_logits, dist_logits = self.heads(x[:, 0]), self.head_dist(x[:, 1])
        if self.training:
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2


def deit_distilled(name, num_classes=1000, image_size=224):
    """``deit_tiny_distilled``, ``deit_small_distilled`` or ``deit_base_distilled`` at ``image_size``."""
    if name not in DEIT_DISTILLED:
        raise ValueError(f"unknown DeiT model {name!r}; expected one of {', '.join(DEIT_DISTILLED)}.")
    if image_size % 16:
        raise ValueError(f"DeiT uses 16-pixel patches: image_size must be a multiple of 16, got {image_size}.")
    hidden_dim, num_heads = DEIT_DISTILLED[name]
    return DistilledVisionTransformer(image_size=image_size, patch_size=16, num_layers=12, num_heads=num_heads,
                                      hidden_dim=hidden_dim, num_classes=num_classes)


def interpolate_pos_embedding(pos_embedding, grid_size, num_tokens=2):
    """(1, num_tokens + g*g, D) -> (1, num_tokens + grid_size**2, D), grid_size = image size // patch size:
    the token rows unchanged, the patch grid resized (bicubic, align_corners=False, in float32)."""
    tokens, patches = pos_embedding[:, :num_tokens], pos_embedding[:, num_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1] or pos_embedding.shape[0] != 1:
        raise ValueError(f"expected a position embedding of shape (1, {num_tokens} + g*g, D), got "
                         f"{tuple(pos_embedding.shape)}; pass num_tokens=1 for a ViT without a distillation token.")
    grid = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, -1).to(pos_embedding.dtype)
    return torch.cat([tokens, patches], dim=1)
