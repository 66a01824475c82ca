"""Image transforms: file or PIL image in, uint8 CHW RGB tensor out (plus the device-side float steps).

Data workers only decode, crop, resize and flip, and hand back uint8 tensors; conversion to float,
normalization and random erasing happen on the device, on the whole batch (`normalize`, `random_erase`).
A uint8 batch is 4x smaller to move between processes and to the accelerator than a float one.

Two speed levers keep the statistics of the augmentation unchanged:

* **Reduced-size JPEG decoding.** A baseline JPEG stores 8x8 blocks of DCT coefficients; libjpeg can run a
  smaller inverse DCT and decode the image at 1/2, 1/4 or 1/8 of its size for a fraction of the cost
  (PIL's `Image.draft`). The crop box is always drawn on the full-size geometry; the decoder scale is then
  chosen per image as the smallest one at which the box is still at least as large as the output in both
  directions, so the resampling only ever shrinks, as it would from the full image. The box is mapped to
  the reduced image with sub-pixel precision (PIL's `resize(box=...)`), so the geometry is exact and only
  the resampling differs a little (PSNR well above 30 dB, see the tests).
* **Full-size decoding straight into a tensor.** When no reduced scale fits, `torchvision.io.decode_jpeg`
  (libjpeg-turbo) decodes RGB and greyscale JPEGs into an HWC-strided tensor without a PIL round trip, and
  the crop is resized by torch's vectorized uint8 antialiased kernel (about 2x faster than PIL's resize,
  within 1 grey level of it). Everything else - CMYK, palette, alpha, PNG data behind a .JPEG name -
  goes through PIL and `convert("RGB")`.

All randomness of the train transform comes from torch's global RNG, drawn in the same order as
torchvision's `RandomResizedCrop.get_params` and `RandomHorizontalFlip`, so that seeding torch before a
call fixes the sample.
"""
import io
import math
import os

import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_TV_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
_DRAFT_FACTORS = (8, 4, 2)  # the DCT scalings libjpeg offers (besides 1)


# ----------------------------------------------------------------------------------------- device side

def normalize(batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.float32, channels_last=False):
    """uint8 batch (N, 3, H, W), on any device -> float batch ``(x / 255 - mean) / std`` in ``dtype``.

    Computed in fp32 as ``x * (1 / (255 std)) - mean / std`` and cast at the end, so bf16/fp16 outputs are the
    rounded fp32 values. With ``channels_last`` the uint8 batch is reordered first (4x fewer bytes to move)
    and the result has the channels_last memory format.
    """
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    scale, shift = _affine(tuple(mean), tuple(std), batch.device)
    x = batch.to(torch.float32).mul_(scale).add_(shift)  # = (x - 255 m) / (255 s), two in-place passes
    return x if dtype == torch.float32 else x.to(dtype)


_AFFINE_CACHE = {}


def _affine(mean, std, device):
    """(1 / (255 std), -mean / std) as (1, C, 1, 1) fp32 tensors on ``device``, made once per device: a fresh
    host-to-device copy on every batch would make the host wait for the GPU each step."""
    key = (mean, std, str(device))
    if key not in _AFFINE_CACHE:
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, -1, 1, 1).to(device)
        shift = (-m / s).to(torch.float32).view(1, -1, 1, 1).to(device)
        _AFFINE_CACHE[key] = (scale, shift)
    return _AFFINE_CACHE[key]


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


def draft_factor(box_w, box_h, out_w, out_h):
    """Largest DCT reduction k in (8, 4, 2) with the box, seen at 1/k, still >= the output in both
    directions (so resampling only shrinks); 1 if none."""
    for k in _DRAFT_FACTORS:
        if box_w / k >= out_w and box_h / k >= out_h:
            return k
    return 1


# ----------------------------------------------------------------------------------------- decoding

def jpeg_header(data):
    """(width, height, components) from a JPEG's start-of-frame segment, or None if ``data`` is not a
    JPEG we can read that way. Walking the segment lengths costs microseconds, a tenth of ``Image.open``."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: P, Y, X, Nf
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height, data[i + 9]) if width and height else None
        elif marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


class Source:
    """An image to transform: its size, and how to decode it.

    Files are read once into memory. A baseline/progressive RGB or greyscale JPEG of sane size is
    recognised from its header alone and can go to libjpeg-turbo; anything else (CMYK/YCCK, PNG behind a
    .JPEG name, palette, alpha, a PIL image passed in, a huge image that PIL's decompression-bomb check
    must see) is opened by PIL.
    """

    def __init__(self, src):
        self.data, self.pil = None, None
        if isinstance(src, Image.Image):
            self.pil = src
        elif isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                self.data = f.read()
            head = jpeg_header(self.data)
            limit = Image.MAX_IMAGE_PIXELS
            if head is not None and head[2] in (1, 3) and (limit is None or head[0] * head[1] <= limit):
                self.size = head[:2]
                return
            self.pil = Image.open(io.BytesIO(self.data))
        else:
            raise TypeError(f"expected a path or a PIL image, got {type(src).__name__}")
        self.size = self.pil.size

    def open(self):
        if self.pil is None:
            self.pil = Image.open(io.BytesIO(self.data))
        return self.pil

    def draft(self, k):
        """Reduced-size decoding at 1/k (only for JPEG files we read ourselves; a PIL image passed in is
        left untouched). -> the scale actually applied: 1 / k, or 1.0 when not possible."""
        if k == 1 or self.data is None:
            return 1.0
        im = self.open()
        if im.format != "JPEG":
            return 1.0
        res = im.draft("RGB", (im.size[0] // k, im.size[1] // k))
        return 1.0 if res is None else res[1][2] / self.size[0]  # PIL gives the full extent in reduced pixels

    def rgb_pil(self):
        return _rgb(self.open())

    def rgb_tensor(self):
        """Full-size RGB decode -> uint8 (3, H, W) tensor with HWC strides. libjpeg-turbo
        (`torchvision.io.decode_jpeg`) straight into the tensor when the header allowed it, else PIL's
        ``convert("RGB")`` (an error from libjpeg-turbo also goes to PIL, which reports it its way)."""
        if self.pil is None:
            try:
                return decode_jpeg(torch.frombuffer(bytearray(self.data), dtype=torch.uint8),
                                   mode=ImageReadMode.RGB)
            except RuntimeError:
                pass
        return _hwc_tensor(self.rgb_pil())


def _rgb(im):
    return im if im.mode == "RGB" else im.convert("RGB")


def _hwc_tensor(im):
    """RGB PIL image -> uint8 (3, H, W) tensor with HWC strides (a view over a fresh buffer)."""
    buf = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return buf.view(im.size[1], im.size[0], 3).permute(2, 0, 1)


def _resize_tensor(x, size, interpolation):
    """uint8 (3, H, W) -> uint8 (3, *size), antialiased (PIL-like) with torch's vectorized uint8 kernel
    (the same one torchvision's ``Resize(antialias=True)`` calls). The kernel's fast path wants a
    channels_last-contiguous input: a crop view of a decoded HWC image is not, so it is packed first
    (a cheap copy that makes the resize about 1.7x faster). The result has HWC strides."""
    x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=tuple(size), mode=interpolation, align_corners=False, antialias=True)
    return out[0]


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
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


class TrainTransform:
    """RandomResizedCrop (see `rrc_params`) -> horizontal flip -> optional auto-augment -> uint8 tensor.

    The box is drawn on the full-size image. With ``draft`` the JPEG is decoded at the smallest DCT scale
    at which the box still covers at least ``crop_size`` pixels in both directions, and the (sub-pixel)
    box is resized by PIL; otherwise the image is decoded at full size (`Source.rgb_tensor`) and the integer box
    is resized by torch. Either way the result equals torchvision's ``RandomResizedCrop`` +
    ``RandomHorizontalFlip`` up to resampling, with the same boxes for the same seed.
    """

    def __init__(self, crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear",
                 hflip=0.5, auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
        _check_interpolation(interpolation)
        self.crop_size, self.scale, self.ratio = int(crop_size), tuple(scale), tuple(ratio)
        self.interpolation, self.hflip, self.draft = interpolation, float(hflip), bool(draft)
        self.auto_augment = auto_augment
        self._aa = _auto_augment(auto_augment, ra_num_ops, ra_magnitude)

    def __call__(self, src):
        img = Source(src)
        width, height = img.size
        top, left, h, w = rrc_params(height, width, self.scale, self.ratio)
        c = self.crop_size
        s = img.draft(draft_factor(w, h, c, c)) if self.draft else 1.0
        if s < 1.0:
            box = (left * s, top * s, (left + w) * s, (top + h) * s)
            x = _hwc_tensor(img.rgb_pil().resize((c, c), _PIL_RESAMPLE[self.interpolation], box=box))
        else:
            x = img.rgb_tensor()[:, top:top + h, left:left + w]
            x = _resize_tensor(x, (c, c), self.interpolation)
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
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size`` -> uint8 tensor.

    Geometry exactly as torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` (`eval_geometry`).
    Full-size decodes are resized by torch's antialiased uint8 kernel: the output equals torchvision's
    tensor pipeline ``PILToTensor`` -> ``Resize(antialias=True)`` -> ``CenterCrop`` pixel for pixel, and
    its PIL pipeline within 1 grey level. With ``draft`` a JPEG whose size allows it is decoded at the
    smallest DCT scale that stays >= the resized image, and only the kept square is resampled by PIL
    (``resize(box=...)`` with the crop mapped back to source coordinates, sub-pixel exact).
    """

    def __init__(self, crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=True):
        _check_interpolation(interpolation)
        self.resize_size, self.crop_size = resolve_eval_sizes(crop_size, resize_size, crop_pct)
        self.interpolation, self.draft = interpolation, bool(draft)

    def __call__(self, src):
        img = Source(src)
        width, height = img.size
        c = self.crop_size
        new_w, new_h, left, top = eval_geometry(width, height, self.resize_size, c)
        fits = c <= new_w and c <= new_h
        s = img.draft(draft_factor(width, height, new_w, new_h)) if self.draft and fits else 1.0
        if s < 1.0:
            sx, sy = width / new_w, height / new_h
            box = (left * sx * s, top * sy * s, min(width, (left + c) * sx) * s, min(height, (top + c) * sy) * s)
            return _hwc_tensor(img.rgb_pil().resize((c, c), _PIL_RESAMPLE[self.interpolation], box=box)).contiguous()
        x = _resize_tensor(img.rgb_tensor(), (new_h, new_w), self.interpolation)
        if not fits:  # crop larger than the resized image: torchvision pads with zeros
            return TF.center_crop(x, [c, c]).contiguous()
        return x[:, top:top + c, left:left + c].contiguous()

    def __repr__(self):
        return (f"EvalTransform(resize_size={self.resize_size}, crop_size={self.crop_size}, "
                f"interpolation={self.interpolation!r}, draft={self.draft})")


def train_transform(crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear", hflip=0.5,
                    auto_augment=None, ra_num_ops=2, ra_magnitude=9, draft=True):
    """Training transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `TrainTransform`."""
    return TrainTransform(crop_size, scale, ratio, interpolation, hflip, auto_augment, ra_num_ops, ra_magnitude,
                          draft)


def eval_transform(crop_size=224, resize_size=None, crop_pct=None, interpolation="bilinear", draft=True):
    """Evaluation transform: path or PIL image -> uint8 (3, crop_size, crop_size). See `EvalTransform`."""
    return EvalTransform(crop_size, resize_size, crop_pct, interpolation, draft)
