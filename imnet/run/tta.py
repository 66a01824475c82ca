"""Test-time views: the flip and 10-crop views of an evaluation image.

Test-time augmentation averages the softmax *probabilities* of the views, as AlexNet did (Krizhevsky et al.
2012, Sec. 4.1: "averaging the predictions made by the network's softmax layer on the ten patches"). Averaged
probabilities are again a probability distribution - the prediction of the ensemble of views - so the
reported loss stays an honest cross-entropy, and a view that is confidently wrong cannot outvote the others by
the size of its logits, which averaging logits (a geometric mean of probabilities) allows.

``flip`` adds the horizontal mirror of the centre crop (2 views); ``10crop`` takes the four corners and the
centre of the resized image, each with its mirror (10 views). Views are made on the device from the uint8
batch (`make_views`); only 10crop needs a worker-side transform (`TenCrop`), since its corners lie outside
the centre crop.
"""

from __future__ import annotations

import torch

from imnet.transforms import eval_crops

TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10}
DECODES = ("full", "reduced")


class TenCrop:
    """File or PIL image -> the 10-crop views of one image, stacked along the height: uint8 (3, 10*crop, crop).

    The views are those of the single-crop evaluation, made the same way (`imnet.transforms.eval_crops`,
    the code `EvalTransform` runs): the shorter side resized to ``resize_size`` with the canonical
    antialiased kernel (``decode="full"``; ``"reduced"`` allows the reduced-size JPEG decode, as for the
    single crop), then the four corner crops and the centre crop of ``crop_size`` from the whole resized
    image (torchvision's ``FiveCrop``), each followed by its own horizontal mirror. So the centre view is the
    single-crop input exactly. torchvision's ``TenCrop`` instead takes the five crops of the mirrored image:
    when the margin (width - crop) is odd, its mirrored centre view is one pixel off the mirror of the
    centre view; here every view has its exact mirror. Images of extreme aspect ratio have each view's
    region resampled alone, as the single crop does, so memory stays bounded by the crops.

    ``views(image)`` returns them as (10, 3, crop, crop). ``__call__`` tiles them into one tall CHW image
    because ImageFolder and collate carry one uint8 CHW image per sample; `make_views` undoes the tiling on
    the device.
    """

    def __init__(self, crop_size, resize_size, interpolation="bilinear", decode="full"):
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
        if resize_size < crop_size:
            raise ValueError(f"10-crop needs a resize >= the crop ({crop_size}): the corners would lie outside "
                             f"an image resized to {resize_size}")
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
    """The worker-side transform for ``tta`` under an `imnet.run.config.EvalPolicy` (its resize_size, crop_size,
    interpolation and decode)."""
    if tta == "10crop":
        return TenCrop(policy.crop_size, policy.resize_size, policy.interpolation, policy.decode)
    return policy.transform()


def make_views(images, tta):
    """uint8 batch -> (views (N*V, 3, H, W) grouped image by image, V).

    ``images`` is (N, 3, H, W), or for 10crop the tiles of `TenCrop`, (N, 3, 10*H, W).
    """
    if tta == "10crop":
        n, _, tall, w = images.shape
        return images.view(n, 3, 10, tall // 10, w).transpose(1, 2).flatten(0, 1), 10
    if tta == "flip":
        return torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1), 2
    return images, 1
