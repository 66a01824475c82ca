"""Image transforms for ImageNet classifiers: file or PIL image in, uint8 CHW RGB tensor out, plus the
device-side float steps.

Data workers only decode, crop, resize and flip, and hand back uint8 tensors (4x smaller to move than float);
conversion to float, normalization and random erasing happen on the device, on the whole batch (`normalize`,
`random_erase`).

* Training: RandomResizedCrop (`rrc_params`, Szegedy et al. 2015) -> horizontal flip -> optional
  RandAugment / TrivialAugment / AutoAugment (`TrainTransform`).
* Evaluation: resize the shorter side, keep the centre square (`eval_geometry`, `EvalTransform`), or the
  centre and the four corners (`eval_crops`, what 10-crop testing uses).

All randomness of the train transform comes from torch's global RNG, drawn in the same order as
torchvision's ``RandomResizedCrop.get_params`` and ``RandomHorizontalFlip``: the same seed gives torchvision's
boxes and flips.

Alone (standard library, numpy, torch, torchvision, PIL), this file decodes with PIL (`to_rgb`) and resizes
with torchvision's antialiased uint8 kernel: torchvision's tensor pipeline pixel for pixel (extreme aspect
ratios in evaluation excepted: `eval_crops`). With the companion `fastjpeg` beside it, the same boxes are
decoded and resized faster (libjpeg-turbo into a tensor, then the same kernel: the same pixels as long as PIL's
and torchvision's JPEG decoders agree, as libjpeg-turbo builds do), and with ``draft`` JPEGs may be decoded at
a reduced DCT size (on by default for training, opt-in for evaluation). Geometry and random draws stay the same.
"""
import functools
import importlib
import math

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TV_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
_PIL_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

DEFAULT_CROP_PCT = 0.875  # crop / resize of the classic evaluation: 224 -> 256 (AlexNet, ResNet)

# Evaluation resizes the whole image (the canonical pixels) as long as the resized image has at most this many
# times the pixels of the crop: every aspect ratio up to 16 crop_pct^2 : 1, i.e. 12:1 at 224/256 and 16:1 at
# crop_pct 1. Beyond, only the region a crop keeps is resampled (`eval_crops`), so that a 1 x 20000 strip does
# not become a 256 x 5,120,000 image (4 GB) to keep 224 x 224 of it.
WHOLE_RESIZE_MAX = 16


def _optional_sibling(name):
    """The module ``name`` next to this file (in its package, or beside a lone copy), or None. Imported by name
    so that this file names no other module of its package (copyable); a sibling that fails to import raises
    rather than silently running the slow path."""
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

    Computed in fp32 as ``x * (1 / (255 std)) - mean / std`` and cast at the end (bf16/fp16 outputs are the
    rounded fp32 values). ``channels_last`` reorders the uint8 batch first (4x fewer bytes to move).
    """
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)), str(batch.device))
    x = batch.to(torch.float32).mul_(scale).add_(shift)  # two in-place passes
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
    """Random Erasing (Zhong et al., "Random Erasing Data Augmentation", 2017), IN PLACE on a normalized float
    batch (N, C, H, W) on any device, which is returned. Each sample, independently with probability ``p``,
    gets one rectangle replaced by per-pixel N(0, 1) noise (``mode="pixel"``; in normalized units, noise with
    the data's mean and std) or by zeros (``mode="const"``, the dataset mean). The rectangle follows
    torchvision's ``RandomErasing``: up to 10 tries of

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

def resize_for_crop(crop_size, crop_pct=DEFAULT_CROP_PCT):
    """The resize (shorter side) whose centre ``crop_size`` square is the fraction ``crop_pct`` of it:

        resize = floor(crop_size / crop_pct)        (224 / 0.875 -> 256, 384 / 0.875 -> 438, 224 / 0.95 -> 235)

    on the float quotient, as timm's ``transforms_imagenet_eval``, so a model's published ``crop_pct`` gives
    timm's resize. The usual pairs are exact (288 / 0.9 = 320.0), but where the true quotient is whole the float
    one can fall just below and lose a pixel, like timm: 535 / 0.535 = 999.9999999999999 -> 999, 17 / (17 / 25)
    -> 24. A ``fractions.Fraction`` (e.g. ``Fraction(crop, resize)``) gives the exact floor. ``crop_pct`` > 1
    gives a resize smaller than the crop, which `EvalTransform` pads with zeros.
    """
    if not crop_pct > 0:
        raise ValueError(f"crop_pct must be positive (0.875 gives the classic 224 -> 256), got {crop_pct!r}")
    return int(math.floor(crop_size / crop_pct))


def resolve_eval_sizes(crop_size=224, resize_size=None, crop_pct=None):
    """-> (resize_size, crop_size); without ``resize_size``: `resize_for_crop` (``crop_pct`` defaults to
    `DEFAULT_CROP_PCT`)."""
    if resize_size is None:
        resize_size = resize_for_crop(crop_size, DEFAULT_CROP_PCT if crop_pct is None else crop_pct)
    return int(resize_size), int(crop_size)


def rrc_params(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random box ``(top, left, h, w)`` of Inception-style cropping (Szegedy et al., "Going Deeper with
    Convolutions", 2015), with torchvision's ``RandomResizedCrop.get_params`` semantics:

        up to 10 tries:  A = H W * U(scale[0], scale[1])            (area fraction uniform)
                         r = exp(U(log ratio[0], log ratio[1]))      (aspect w/h log-uniform)
                         w = round(sqrt(A r)),  h = round(sqrt(A / r))
                         accept if 0 < w <= W and 0 < h <= H; top ~ U{0..H-h}, left ~ U{0..W-w}
        fallback:        the whole image, centre-cropped to the nearest aspect ratio inside ``ratio``.
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
    return new_w, new_h, _centre(new_w, crop_size), _centre(new_h, crop_size)


def _centre(new, crop):
    return int(round((new - crop) / 2.0))


def five_crop_origins(new_w, new_h, crop_size):
    """Torchvision's ``FiveCrop(crop_size)`` of a ``new_w x new_h`` image as the (left, top) of each square, in
    its order: top-left, top-right, bottom-left, bottom-right, centre (the centre is `eval_geometry`'s)."""
    c = crop_size
    return [(0, 0), (new_w - c, 0), (0, new_h - c), (new_w - c, new_h - c), (_centre(new_w, c), _centre(new_h, c))]


# ----------------------------------------------------------------------------------------- decoding, resampling

def to_rgb(image, name=None):
    """PIL image of any mode -> 8-bit RGB PIL image; ``name`` (the file) is for error messages.

    8-bit modes (greyscale, palette, CMYK, alpha, ...) go through PIL's ``convert("RGB")``, as torchvision's
    ``pil_loader`` (alpha dropped). Wider samples are scaled where ``convert`` would clip them to 0..255:

    * integer modes ("I;16", "I;16B", "I;16L"; "I", which older Pillow uses for 16-bit PNGs) with every value
      in 0..65535: ``v -> round(v * 255 / 65535)`` (an "I" image of 8-bit values reads as a dark 16-bit one);
    * float "F" with every value in [0, 1]: ``v -> round(255 v)``.

    Other values have no known range: ValueError, naming the file. 16-bit RGB(A) PNGs come out of PIL's decoder
    as 8-bit already (the high byte, ``floor(v / 256)``, within one level of the rule above) and are kept so.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F" or image.mode.startswith("I"):
        v = np.asarray(image)
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if image.mode == "F":
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
                raise ValueError(f"{name or 'the image'}: a floating-point image with values from {lo:g} to "
                                 f"{hi:g}, not in [0, 1], cannot be scaled to 8 bits. Save it as an 8- or "
                                 f"16-bit image (PNG) with the intended range.")
            v8 = np.rint(v * np.float32(255))
        else:
            if not (0 <= lo and hi <= 65535):
                raise ValueError(f"{name or 'the image'}: an integer image (PIL mode {image.mode}) with values "
                                 f"from {lo:.0f} to {hi:.0f}, beyond 16 bits, cannot be scaled to 8 bits. Save "
                                 f"it as an 8- or 16-bit image (PNG).")
            v8 = (v.astype(np.int32) + 128) // 257  # = round(v / 257) = round(v * 255 / 65535), no ties
        return Image.fromarray(v8.astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def load_rgb(src):
    """Path or PIL image -> 8-bit RGB PIL image: torchvision's ``pil_loader`` with `to_rgb`'s conversion."""
    if isinstance(src, Image.Image):
        return to_rgb(src)
    with open(src, "rb") as f:
        image = Image.open(f)
        image.load()  # while the file is open
        return to_rgb(image, name=src)


def _open(src):
    """-> fastjpeg's `Source` (reads the header now, decodes once the box is known), else the RGB PIL image."""
    return fastjpeg.Source(src, to_rgb) if fastjpeg is not None else load_rgb(src)


def _resize_whole(img, new_w, new_h, interpolation):
    """The whole image -> uint8 (3, new_h, new_w) by ``v2.Resize(antialias=True)``'s kernel (canonical pixels)."""
    if fastjpeg is not None:
        return img.resized(new_w, new_h, interpolation)
    return TF.resize(TF.pil_to_tensor(img), [new_h, new_w], _TV_INTERP[interpolation], antialias=True)


# Radius of the resampling filters in input pixels at scale 1 (PIL's and torch's antialiased kernels); it
# grows with the scale when shrinking.
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _resample_box(image, box, size, interpolation):
    """PIL image -> its region ``box = (left, top, right, bottom)`` (sub-pixel) resampled to ``size = (w, h)``
    by PIL's antialiased resize: that part of the whole resized image, since PIL derives each output pixel's
    filter from the box as for the whole image (clipped at the image's edges, not the box's).

    Two explicit passes, horizontal then vertical, torch's order: PIL alone picks the cheaper order, and as
    bicubic overshoot is clipped to 0..255 between passes, the order shows (up to 20 levels on noise). Pass 1
    covers the rows the vertical filters reach (one pixel beyond their support); the work is the output's.
    """
    left, top, right, bottom = box
    out_w, out_h = size
    resample = _PIL_RESAMPLE[interpolation]
    reach = _SUPPORT[interpolation] * max((bottom - top) / out_h, 1.0) + 1
    r0, r1 = max(0, math.floor(top - reach)), min(image.size[1], math.ceil(bottom + reach))
    rows = image.crop((0, r0, image.size[0], r1))
    rows = rows.resize((out_w, r1 - r0), resample, box=(left, 0, right, r1 - r0))
    return rows.resize((out_w, out_h), resample, box=(0, top - r0, out_w, bottom - r0))


# ----------------------------------------------------------------------------------------- transforms

def _auto_augment(name, num_ops, magnitude, interpolation):
    """Wrap torchvision's implementations as torchvision's reference recipes build them
    (``references/classification/presets.py``, ``ClassificationPresetTrain``): with the training
    ``interpolation`` for their geometric ops (torchvision's classes default to nearest), applied to the crop
    after the flip as a PIL image (the presets' default "pil" backend; torchvision's tensor ops have no
    bicubic).

    * "ra": RandAugment (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced
      search space", 2020): ``num_ops`` ops drawn uniformly, all at the same ``magnitude`` (of 31 bins).
    * "ta_wide": TrivialAugment Wide (Müller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art
      Data Augmentation", 2021): one op, uniform magnitude.
    * "imagenet": AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data",
      2019), ImageNet policy.
    """
    if name in (None, "none"):
        return None
    mode = _TV_INTERP[interpolation]
    if name == "ra":
        bins = 31  # torchvision's num_magnitude_bins; magnitude indexes them
        whole = lambda n: isinstance(n, (int, np.integer))
        if not (whole(magnitude) and 0 <= magnitude < bins and whole(num_ops) and num_ops >= 0):
            raise ValueError(f"RandAugment needs a whole magnitude in 0..{bins - 1} (9 is the usual choice) and a "
                             f"non-negative number of ops; got magnitude {magnitude!r}, num_ops {num_ops!r}.")
        return T.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=bins, interpolation=mode)
    if name == "ta_wide":
        return T.TrivialAugmentWide(interpolation=mode)
    if name == "imagenet":
        return T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=mode)
    raise ValueError(f"auto_augment must be one of None, 'none', 'ra', 'ta_wide', 'imagenet'; got {name!r}")


def _check_interpolation(interpolation):
    if interpolation not in _TV_INTERP:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


class TrainTransform:
    """RandomResizedCrop (`rrc_params`) -> horizontal flip with probability ``hflip`` -> optional
    auto-augment (`_auto_augment`, with the same ``interpolation``) -> contiguous uint8 (3, crop_size, crop_size).

    Exactly torchvision's ``PILToTensor`` -> ``v2.RandomResizedCrop(antialias=True)`` ->
    ``v2.RandomHorizontalFlip`` for the same seed. With `fastjpeg` and ``draft`` (the default), a JPEG is
    decoded at the smallest DCT scale at which the box still covers ``crop_size`` pixels, and the box, mapped
    to it sub-pixel exact, is resampled by PIL: same box and flip, slightly different pixels, several times
    less decoding. ``transform(src, crop_size=c)`` makes a ``c x c`` crop (progressive resizing); the random
    draws do not depend on the size.
    """

    def __init__(self, crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear",
                 hflip=0.5, auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
        _check_interpolation(interpolation)
        self.crop_size, self.scale, self.ratio = int(crop_size), tuple(scale), tuple(ratio)
        self.interpolation, self.hflip, self.draft = interpolation, float(hflip), bool(draft)
        self.auto_augment = auto_augment
        self._aa = _auto_augment(auto_augment, ra_num_ops, ra_magnitude, interpolation)

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
        if self._aa is not None:
            return TF.pil_to_tensor(self._aa(TF.to_pil_image(x))).contiguous()
        return x.contiguous()

    def __repr__(self):
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation!r}, hflip={self.hflip}, auto_augment={self._aa}, "
                f"draft={self.draft})")


class EvalTransform:
    """Resize the shorter side to ``resize_size``, keep the centre ``crop_size`` square -> contiguous uint8
    (3, crop_size, crop_size): the centre view of `eval_crops`, which says how the pixels are made.

    By default: torchvision's ``PILToTensor`` -> ``v2.Resize(resize_size, antialias=True)`` ->
    ``v2.CenterCrop(crop_size)`` pixel for pixel, and its classic PIL pipeline ``Resize`` -> ``CenterCrop`` ->
    ``PILToTensor`` within 2 grey levels (the two kernels round differently). ``draft=True`` (needs `fastjpeg`)
    is not bit-identical, so accuracies measured that way are not exactly comparable.
    """

    def __init__(self, crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=False):
        _check_interpolation(interpolation)
        self.resize_size, self.crop_size = resolve_eval_sizes(crop_size, resize_size, crop_pct)
        self.interpolation, self.draft = interpolation, bool(draft)

    def __call__(self, src):
        return eval_crops(src, self.resize_size, self.crop_size, self.interpolation, self.draft)[0]

    def __repr__(self):
        return (f"EvalTransform(resize_size={self.resize_size}, crop_size={self.crop_size}, "
                f"interpolation={self.interpolation!r}, draft={self.draft})")


def eval_crops(src, resize_size, crop_size, interpolation="bilinear", draft=False, corners=False):
    """The image resized (shorter side -> ``resize_size``), then its centre ``crop_size`` square, or with
    ``corners`` torchvision's ``FiveCrop`` (top-left, top-right, bottom-left, bottom-right, centre;
    `five_crop_origins`) -> contiguous uint8 (V, 3, crop, crop), V = 1 or 5.

    How the pixels are made, the geometry (`eval_geometry`) being the same in every case:

    * canonical: ``v2.Resize(resize_size, antialias=True)`` + ``v2.CenterCrop`` / ``v2.FiveCrop`` on the decoded
      tensor, pixel for pixel (a centre crop larger than the image is zero-padded, as there);
    * bounded, beyond `WHOLE_RESIZE_MAX`: each square, mapped to source coordinates sub-pixel exact
      (``x_src = x * width / new_w``, the resize's mapping), is resampled alone by PIL (`_resample_box`): within
      2 grey levels of the canonical pixels (the kernels round differently); memory and time are the crops';
    * ``draft`` (with `fastjpeg`): a JPEG at least k = 2, 4 or 8 times larger than the resized image is decoded
      at 1/k, then resampled as in the bounded case (PSNR above 30 dB against the canonical).
    """
    img = _open(src)
    width, height = img.size
    c = crop_size
    new_w, new_h, left, top = eval_geometry(width, height, resize_size, c)
    fits = c <= new_w and c <= new_h
    if corners and not fits:
        raise ValueError(f"five crops of {c} px need a resize of at least {c}, got {resize_size}")
    origins = five_crop_origins(new_w, new_h, c) if corners else [(left, top)]
    scale = img.draft_for(new_w, new_h) if fastjpeg is not None and draft and fits else 1.0
    if scale == 1.0 and new_w * new_h <= WHOLE_RESIZE_MAX * c * c:
        x = _resize_whole(img, new_w, new_h, interpolation)
        if not fits:  # zero padding, as torchvision's CenterCrop
            return TF.center_crop(x, [c, c]).unsqueeze(0).contiguous()
        return torch.stack([x[:, y0:y0 + c, x0:x0 + c] for x0, y0 in origins])
    # bounded or draft (the decode scale joins the resize's mapping)
    image = img.rgb_pil() if fastjpeg is not None else img
    sx, sy = width / new_w * scale, height / new_h * scale
    views = []
    for x0, y0 in origins:
        (x0, x1, pad_x), (y0, y1, pad_y) = _kept(x0, c, new_w), _kept(y0, c, new_h)
        box = (x0 * sx, y0 * sy, min(image.size[0], x1 * sx), min(image.size[1], y1 * sy))
        view = TF.pil_to_tensor(_resample_box(image, box, (x1 - x0, y1 - y0), interpolation))
        views.append(torch.nn.functional.pad(view, (pad_x, c - pad_x - (x1 - x0), pad_y, c - pad_y - (y1 - y0))))
    return torch.stack(views)


def _kept(start, crop, new):
    """Along one axis of the resized image (``new`` pixels): the span ``[first, last)`` a crop starting at
    ``start`` keeps, and where it lands in the crop: a crop larger than the image keeps all of it, centred
    as torchvision's CenterCrop pads it, ``(crop - new) // 2`` zeros first."""
    if crop <= new:
        return start, start + crop, 0
    return 0, new, (crop - new) // 2


def train_transform(crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear", hflip=0.5,
                    auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
    """Training transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `TrainTransform`."""
    return TrainTransform(crop_size, scale, ratio, interpolation, hflip, auto_augment, ra_num_ops, ra_magnitude,
                          draft)


def eval_transform(crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=False):
    """Evaluation transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `EvalTransform`."""
    return EvalTransform(crop_size, resize_size, crop_pct, interpolation, draft)
