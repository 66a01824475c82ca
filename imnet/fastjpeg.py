"""Fast decode-and-resize for `transforms`: the same crops, computed with less work.

`transforms` uses this module when it sits next to it and works without it; the geometry and the random draws
are decided there either way, this module only changes how the pixels of a given box are made. Two levers:

* **Full-size decoding straight into a tensor.** ``torchvision.io.decode_jpeg`` (libjpeg-turbo) decodes RGB
  and greyscale JPEGs without a PIL round trip, and the box is resized by the uint8 antialiased kernel
  torchvision's ``Resize(antialias=True)`` calls: torchvision's pixels, about 2x faster than PIL's resize.
  Everything else (CMYK/YCCK, palette, alpha, 16-bit, PNG data behind a .JPEG name, a PIL image passed in) is
  decoded by PIL and converted by the caller's ``to_rgb`` (one conversion rule whichever module decodes).
* **Reduced-size ("draft") JPEG decoding**, opt-in per call. A JPEG stores 8x8 blocks of DCT coefficients, and
  libjpeg can run a smaller inverse DCT to decode at 1/2, 1/4 or 1/8 of the size for a fraction of the cost
  (PIL's ``Image.draft``). The largest k at which the box still covers the output (`draft_factor`) is taken,
  so resampling only ever shrinks; the box is mapped to the reduced image sub-pixel exact (PIL's
  ``resize(box=...)``). The geometry stays exact; the pixels differ a little from a full-size decode (PSNR
  well above 30 dB), since the IDCT has already low-passed the image.

Depends on torch, torchvision and PIL only.
"""
import io
import os

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

DRAFT_FACTORS = (8, 4, 2)  # the DCT scalings libjpeg offers besides 1, largest first
_PIL_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def draft_factor(box_w, box_h, out_w, out_h):
    """Largest k in `DRAFT_FACTORS` with ``box_w / k >= out_w`` and ``box_h / k >= out_h``, else 1."""
    for k in DRAFT_FACTORS:
        if box_w / k >= out_w and box_h / k >= out_h:
            return k
    return 1


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


def hwc_tensor(im):
    """RGB PIL image -> uint8 (3, H, W) tensor with HWC strides (a view over a fresh buffer)."""
    buf = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return buf.view(im.size[1], im.size[0], 3).permute(2, 0, 1)


def resize_tensor(x, size, interpolation):
    """uint8 (3, H, W) -> uint8 (3, *size) with HWC strides, by torchvision's ``Resize(antialias=True)`` kernel.
    Its fast path wants channels_last-contiguous input: a crop view is packed first (a cheap copy, 1.7x faster)."""
    x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=tuple(size), mode=interpolation, align_corners=False, antialias=True)
    return out[0]


class Source:
    """An image to transform: its ``size`` (width, height), and the decoders that may produce its pixels.

    ``to_rgb(pil_image, name)`` converts whatever PIL decodes (transforms' `to_rgb`). A file is read once into
    memory. An RGB or greyscale JPEG within PIL's decompression-bomb limit is recognised from its header alone
    (no PIL object unless needed) and can go to libjpeg-turbo; anything else is handled by PIL. ``scale`` is the
    scale the image is decoded at: 1.0, or 1/k after `draft`.
    """

    def __init__(self, src, to_rgb):
        self.data, self.pil, self.to_rgb, self.name, self.scale = None, None, to_rgb, None, 1.0
        if isinstance(src, Image.Image):
            self.pil = src
        elif isinstance(src, (str, os.PathLike)):
            self.name = os.fspath(src)
            with open(src, "rb") as f:
                self.data = f.read()
            head = jpeg_header(self.data)
            limit = Image.MAX_IMAGE_PIXELS
            if head is not None and head[2] in (1, 3) and (limit is None or head[0] * head[1] <= limit):
                self.size = head[:2]
                return
            self.pil = Image.open(io.BytesIO(self.data))  # PIL sees huge images: its bomb check applies
        else:
            raise TypeError(f"expected a path or a PIL image, got {type(src).__name__}")
        self.size = self.pil.size

    def open(self):
        if self.pil is None:
            self.pil = Image.open(io.BytesIO(self.data))
        return self.pil

    def draft(self, k):
        """Ask for decoding at 1/k, once (later calls keep the first answer; only JPEG files read here) -> the
        scale applied: 1 / k, or 1.0 when not possible."""
        if k == 1 or self.data is None or self.scale != 1.0:
            return self.scale
        im = self.open()
        if im.format != "JPEG":
            return 1.0
        res = im.draft("RGB", (im.size[0] // k, im.size[1] // k))
        if res is not None:
            self.scale = res[1][2] / self.size[0]  # PIL gives the full extent in reduced pixels
        return self.scale

    def draft_for(self, out_w, out_h):
        """Decode at the smallest DCT scale at which the whole image still has ``out_w x out_h`` pixels
        (`draft_factor`) -> the scale applied."""
        return self.draft(draft_factor(self.size[0], self.size[1], out_w, out_h))

    def rgb_pil(self):
        return self.to_rgb(self.open(), self.name)

    def rgb_tensor(self):
        """Full-size RGB decode -> uint8 (3, H, W), HWC strides: libjpeg-turbo when the header allowed it, else
        (or when libjpeg-turbo fails: PIL then reports the error its own way) PIL and ``to_rgb``."""
        if self.pil is None:
            try:
                return decode_jpeg(torch.frombuffer(bytearray(self.data), dtype=torch.uint8),
                                   mode=ImageReadMode.RGB)
            except RuntimeError:
                pass
        return hwc_tensor(self.rgb_pil())

    def resized(self, new_w, new_h, interpolation="bilinear"):
        """The whole image, decoded at full size, resized to ``new_w x new_h`` -> uint8 (3, new_h, new_w), HWC
        strides: torchvision's ``resize(pil_to_tensor(image), [new_h, new_w], antialias=True)``."""
        return resize_tensor(self.rgb_tensor(), (new_h, new_w), interpolation)

    def resized_crop(self, top, left, height, width, size, interpolation="bilinear", draft=True):
        """The box ``(top, left, height, width)`` resized to ``size = (out_h, out_w)`` -> uint8 (3, out_h, out_w),
        HWC strides: torchvision's ``resized_crop(pil_to_tensor(image), ..., antialias=True)``, unless ``draft``
        finds a reduced scale that keeps the box as large as the output; then PIL resamples the box scaled by 1/k."""
        out_h, out_w = size
        s = self.draft(draft_factor(width, height, out_w, out_h)) if draft else 1.0
        if s < 1.0:
            box = (left * s, top * s, (left + width) * s, (top + height) * s)
            return hwc_tensor(self.rgb_pil().resize((out_w, out_h), _PIL_RESAMPLE[interpolation], box=box))
        x = self.rgb_tensor()[:, top:top + height, left:left + width]
        return resize_tensor(x, (out_h, out_w), interpolation)
