"""Image transforms for ImageNet classifiers: file or PIL image in, uint8 CHW RGB tensor out, plus the
device-side float steps.

Data workers only decode, crop, resize and flip, and hand back uint8 tensors; conversion to float,
normalization and random erasing happen on the device, on the whole batch (`normalize`, `random_erase`).
A uint8 batch is 4x smaller to move between processes and to the accelerator than a float one.

* Training: RandomResizedCrop (`rrc_params`, Szegedy et al. 2015) -> horizontal flip -> optional
  RandAugment / TrivialAugment / AutoAugment (`TrainTransform`).
* Evaluation: resize the shorter side, keep the centre square (`eval_geometry`, `EvalTransform`).

All randomness of the train transform comes from torch's global RNG, drawn in the same order as
torchvision's ``RandomResizedCrop.get_params`` and ``RandomHorizontalFlip``, so seeding torch before a call
fixes the sample, and the same seed gives torchvision's boxes and flips.

This file works on its own (standard library, torch, torchvision, PIL): images are decoded by PIL and
resized by torchvision's antialiased uint8 kernel, so the output is torchvision's tensor pipeline pixel for
pixel. When the companion module `fastjpeg` sits next to it, the same boxes are decoded and resized faster
(libjpeg-turbo straight into a tensor, then the same kernel: the same pixels, as long as PIL's and
torchvision's JPEG decoders agree, as libjpeg-turbo builds do), and with ``draft`` JPEGs may be decoded at
a reduced DCT size (on by default for training, opt-in for evaluation). The geometry and the random draws
are the same with or without it.
"""
import functools
import importlib
import math

import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TV_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def _optional_sibling(name):
    """The module ``name`` next to this file (inside its package, or top-level beside a lone copy), or None
    when there is none. Imported by name, not by an import statement, so that this file also works copied
    alone and names no other module of its package: that is what makes it copyable. A sibling that exists
    but fails to import raises, rather than silently running the slow path."""
    full = f"{__package__}.{name}" if __package__ else name
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name != full:
            raise
        return None


fastjpeg = _optional_sibling("fastjpeg")


# ----------------------------------------------------------------------------------------- device side

def normalize(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.float32, channels_last=False):
    """uint8 batch (N, 3, H, W), on any device -> float batch ``(x / 255 - mean) / std`` in ``dtype``.

    Computed in fp32 as ``x * (1 / (255 std)) - mean / std`` and cast at the end, so bf16/fp16 outputs are the
    rounded fp32 values. With ``channels_last`` the uint8 batch is reordered first (4x fewer bytes to move)
    and the result has the channels_last memory format.
    """
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)), str(batch.device))
    x = batch.to(torch.float32).mul_(scale).add_(shift)  # = (x - 255 m) / (255 s), two in-place passes
    return x if dtype == torch.float32 else x.to(dtype)


# Cached per (mean, std, device): made on the host and copied to the accelerator once, not on every batch,
# where the copy would make the host wait for the device each step.
@functools.lru_cache(maxsize=64)
def _affine(mean, std, device):
    """(1 / (255 std), -mean / std) as (1, C, 1, 1) fp32 tensors on ``device``, computed in fp64."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, -1, 1, 1).to(device)
    shift = (-m / s).to(torch.float32).view(1, -1, 1, 1).to(device)
    return scale, shift


def random_erase(x, p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), mode="pixel", generator=None):
    """Random Erasing (Zhong et al., "Random Erasing Data Augmentation", 2017), IN PLACE on a batch.

    ``x`` is a normalized float batch (N, C, H, W) on any device; it is modified in place and returned.
    Each sample, independently with probability ``p``, gets one rectangle replaced by per-pixel N(0, 1)
    noise (``mode="pixel"``; in normalized units that is noise with the data's mean and std) or by zeros
    (``mode="const"``, i.e. the dataset mean). The rectangle follows torchvision's ``RandomErasing``: up
    to 10 tries of

        area   = H W * U(scale),        aspect = exp(U(log ratio[0], log ratio[1]))
        h = round(sqrt(area * aspect)),  w = round(sqrt(area / aspect)),   accepted if h < H and w < W,
        top ~ U{0..H-h},  left ~ U{0..W-w};

    if no try fits, the sample is left as is. The coin and the box are drawn on the CPU from ``generator``
    (a CPU ``torch.Generator``; torch's global RNG if None), so no value is read back from the device.
    The noise is drawn on ``x.device``: from a generator on that device seeded from ``generator`` when one
    is given (deterministic), else from the device's global RNG.
    """
    if mode not in ("pixel", "const"):
        raise ValueError(f"random_erase mode must be 'pixel' or 'const', got {mode!r}")
    n, c, height, width = x.shape
    if p <= 0 or n == 0:
        return x
    noise_gen = None
    if generator is not None and mode == "pixel":
        if generator.device == x.device:
            noise_gen = generator
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            noise_gen = torch.Generator(device=x.device).manual_seed(seed)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    area = height * width
    apply = torch.rand(n, generator=generator) < p
    for k in torch.nonzero(apply).flatten().tolist():
        for _ in range(10):
            erase_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
            h = int(round(math.sqrt(erase_area * aspect)))
            w = int(round(math.sqrt(erase_area / aspect)))
            if not (h < height and w < width):
                continue
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            region = x[k, :, top:top + h, left:left + w]
            if mode == "pixel":
                region.copy_(torch.randn((c, h, w), generator=noise_gen, device=x.device, dtype=x.dtype))
            else:
                region.zero_()
            break
    return x


# ----------------------------------------------------------------------------------------- geometry

def resolve_eval_sizes(crop_size=224, resize_size=None, crop_pct=None):
    """-> (resize_size, crop_size). The shorter side is resized to ``resize_size``, then the centre
    ``crop_size`` square is kept. Without ``resize_size``: ``floor(crop_size / crop_pct)``, with the
    classic ``crop_pct = 0.875`` by default (224 -> 256, 384 -> 438)."""
    if resize_size is None:
        resize_size = int(math.floor(crop_size / (0.875 if crop_pct is None else crop_pct)))
    return int(resize_size), int(crop_size)


def rrc_params(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random box ``(top, left, h, w)`` of Inception-style cropping (Szegedy et al., "Going Deeper with
    Convolutions", 2015), with torchvision's ``RandomResizedCrop.get_params`` semantics:

        up to 10 tries:  A = H W * U(scale[0], scale[1])            (area fraction uniform)
                         r = exp(U(log ratio[0], log ratio[1]))      (aspect w/h log-uniform)
                         w = round(sqrt(A r)),  h = round(sqrt(A / r))
                         accept if 0 < w <= W and 0 < h <= H; top ~ U{0..H-h}, left ~ U{0..W-w}
        fallback:        the whole image, centre-cropped to the nearest aspect ratio inside ``ratio``.

    Random numbers come from torch's global RNG in the same order as torchvision, so the same seed gives
    the same box.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_geometry(width, height, resize_size, crop_size):
    """Torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` as numbers:
    -> (new_w, new_h, left, top) with the shorter side resized to ``resize_size`` and the longer one to
    ``int(resize_size * long / short)``; the crop starts at ``round((new - crop) / 2)``."""
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    return new_w, new_h, int(round((new_w - crop_size) / 2.0)), int(round((new_h - crop_size) / 2.0))


# ----------------------------------------------------------------------------------------- decoding

def load_rgb(src):
    """Path or PIL image -> RGB PIL image, as torchvision's ``pil_loader`` (open, ``convert("RGB")``)."""
    if isinstance(src, Image.Image):
        return src if src.mode == "RGB" else src.convert("RGB")
    with open(src, "rb") as f:
        return Image.open(f).convert("RGB")


def _open(src):
    """-> the image as an object with ``.size = (width, height)``: fastjpeg's `Source`, which reads only the
    header now and decodes once the box is known, or else the decoded RGB PIL image."""
    return fastjpeg.Source(src) if fastjpeg is not None else load_rgb(src)


# ----------------------------------------------------------------------------------------- transforms

def _auto_augment(name, num_ops, magnitude):
    """Wrap torchvision's implementations; applied on the uint8 tensor after crop and flip, with
    nearest-neighbour geometry like torchvision's defaults.

    * "ra": RandAugment (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced
      search space", 2020): ``num_ops`` ops drawn uniformly, all at the same ``magnitude`` (of 31 bins).
    * "ta_wide": TrivialAugment Wide (Müller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art
      Data Augmentation", 2021): one op, uniform magnitude.
    * "imagenet": AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data",
      2019), ImageNet policy.
    """
    if name in (None, "none"):
        return None
    if name == "ra":
        return T.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if name == "ta_wide":
        return T.TrivialAugmentWide()
    if name == "imagenet":
        return T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)
    raise ValueError(f"auto_augment must be one of None, 'none', 'ra', 'ta_wide', 'imagenet'; got {name!r}")


def _check_interpolation(interpolation):
    if interpolation not in _TV_INTERP:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


class TrainTransform:
    """RandomResizedCrop (`rrc_params`) -> horizontal flip with probability ``hflip`` -> optional
    auto-augment (`_auto_augment`) -> contiguous uint8 (3, crop_size, crop_size).

    The box is drawn on the full-size image and resized to the output with antialiasing: exactly
    torchvision's ``PILToTensor`` -> ``v2.RandomResizedCrop(antialias=True)`` -> ``v2.RandomHorizontalFlip``
    for the same seed. With `fastjpeg` and ``draft`` (the default), a JPEG is instead decoded at the smallest
    DCT scale at which the box still covers ``crop_size`` pixels in both directions, and the box, mapped to
    that scale with sub-pixel precision, is resampled by PIL: same box and flip, slightly different pixels,
    several times less decoding work. Without `fastjpeg`, ``draft`` has no effect.

    ``transform(src, crop_size=c)`` makes a ``c x c`` crop for that call (e.g. progressive resizing, where
    the size depends on the epoch); the random draws do not depend on the size.
    """

    def __init__(self, crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear",
                 hflip=0.5, auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
        _check_interpolation(interpolation)
        self.crop_size, self.scale, self.ratio = int(crop_size), tuple(scale), tuple(ratio)
        self.interpolation, self.hflip, self.draft = interpolation, float(hflip), bool(draft)
        self.auto_augment = auto_augment
        self._aa = _auto_augment(auto_augment, ra_num_ops, ra_magnitude)

    def __call__(self, src, crop_size=None):
        c = self.crop_size if crop_size is None else int(crop_size)
        img = _open(src)
        width, height = img.size
        top, left, h, w = rrc_params(height, width, self.scale, self.ratio)
        if fastjpeg is not None:
            x = img.resized_crop(top, left, h, w, (c, c), self.interpolation, self.draft)
        else:
            x = TF.resized_crop(TF.pil_to_tensor(img), top, left, h, w, [c, c], _TV_INTERP[self.interpolation],
                                antialias=True)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        x = x.contiguous()
        if self._aa is not None:
            x = self._aa(x).contiguous()
        return x

    def __repr__(self):
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation!r}, hflip={self.hflip}, auto_augment={self._aa}, "
                f"draft={self.draft})")


class EvalTransform:
    """Resize the shorter side to ``resize_size``, keep the centre ``crop_size`` square -> contiguous uint8
    (3, crop_size, crop_size).

    By default the output is the canonical one: torchvision's tensor pipeline ``PILToTensor`` ->
    ``v2.Resize(resize_size, antialias=True)`` -> ``v2.CenterCrop(crop_size)`` pixel for pixel (zero padding
    included when the crop is larger than the resized image), and its classic PIL pipeline ``Resize`` ->
    ``CenterCrop`` -> ``PILToTensor`` within 2 grey levels (the two resampling kernels round differently).

    ``draft=True`` (needs `fastjpeg`, ignored without it) trades those exact pixels for speed: a JPEG at
    least k = 2, 4 or 8 times larger than the resized image is decoded at 1/k, and only the kept square,
    mapped back to source coordinates, is resampled by PIL. Same geometry, PSNR above 30 dB against the
    canonical output, but not bit-identical, so accuracies measured that way are not exactly comparable.
    """

    def __init__(self, crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=False):
        _check_interpolation(interpolation)
        self.resize_size, self.crop_size = resolve_eval_sizes(crop_size, resize_size, crop_pct)
        self.interpolation, self.draft = interpolation, bool(draft)

    def __call__(self, src):
        img = _open(src)
        width, height = img.size
        c = self.crop_size
        new_w, new_h, left, top = eval_geometry(width, height, self.resize_size, c)
        if fastjpeg is not None:
            return img.resize_center_crop(new_w, new_h, left, top, c, self.interpolation, self.draft)
        x = TF.resize(TF.pil_to_tensor(img), [new_h, new_w], _TV_INTERP[self.interpolation], antialias=True)
        return TF.center_crop(x, [c, c]).contiguous()  # at (left, top), or zero-padded if it does not fit

    def __repr__(self):
        return (f"EvalTransform(resize_size={self.resize_size}, crop_size={self.crop_size}, "
                f"interpolation={self.interpolation!r}, draft={self.draft})")


def train_transform(crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear", hflip=0.5,
                    auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
    """Training transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `TrainTransform`."""
    return TrainTransform(crop_size, scale, ratio, interpolation, hflip, auto_augment, ra_num_ops, ra_magnitude,
                          draft)


def eval_transform(crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=False):
    """Evaluation transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `EvalTransform`."""
    return EvalTransform(crop_size, resize_size, crop_pct, interpolation, draft)
