"""Test-time views: ``flip`` (the centre crop and its mirror) and ``10crop`` (the four corners and the centre,
each with its mirror). Their softmax probabilities are averaged, as AlexNet did (Krizhevsky et al. 2012, 4.1)."""

from __future__ import annotations

import torch

from imnet.run.flags import DECODE_MODES
from imnet.transforms import eval_crops

TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10}


class TenCrop:
    """File or PIL image -> the 10 views tiled along the height, uint8 (3, 10*crop, crop) (`make_views` untiles).
    Unlike torchvision's ``TenCrop`` (one pixel off when the margin is odd), every view has its exact mirror."""

    def __init__(self, crop_size, resize_size, interpolation="bilinear", decode="full"):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        if resize_size < crop_size:
            raise ValueError(f"10-crop needs a resize >= the crop ({crop_size}), got {resize_size}")
        self.crop_size, self.resize_size = int(crop_size), int(resize_size)
        self.interpolation, self.decode = interpolation, decode

    def views(self, image):
        crops = eval_crops(image, self.resize_size, self.crop_size, self.interpolation,
                           draft=self.decode == "reduced", corners=True)
        return torch.cat([crops, crops.flip(-1)])

    def __call__(self, image):
        views = self.views(image)
        return views.transpose(0, 1).reshape(3, 10 * self.crop_size, self.crop_size).contiguous()

    def __repr__(self):
        return (f"TenCrop(crop_size={self.crop_size}, resize_size={self.resize_size}, "
                f"interpolation={self.interpolation!r}, decode={self.decode!r})")


def view_transform(policy, tta: str):
    if tta == "10crop":
        return TenCrop(policy.crop_size, policy.resize_size, policy.interpolation, policy.decode)
    return policy.transform()


def make_views(images, tta):
    """uint8 (N, 3, H, W), or TenCrop's tiles (N, 3, 10*H, W) -> (views (N*V, 3, H, W) image by image, V)."""
    if tta == "10crop":
        n, _, tall, w = images.shape
        return images.view(n, 3, 10, tall // 10, w).transpose(1, 2).flatten(0, 1), 10
    if tta == "flip":
        return torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1), 2
    return images, 1
