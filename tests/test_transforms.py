"""imnet.transforms against torchvision and closed forms.

Test images are generated: smooth, photo-like content (gradients, blurred shapes, a little texture) so
that JPEG and PSNR comparisons mean something.
"""
import inspect
import json
import math
import shutil
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter, JpegImagePlugin

import imnet.fastjpeg as fj
import imnet.transforms as tr

INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


# ----------------------------------------------------------------------------------------- helpers

def photo(width, height, seed=0):
    """Smooth RGB content: per-channel gradients + blurred random ellipses + low-amplitude texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * (a * x / width + b * y / height) + 20 * np.sin(2 * np.pi * (x / width * 3 + ph))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    layer = Image.new("RGB", im.size)
    from PIL import ImageDraw
    draw = ImageDraw.Draw(layer)
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=tuple(rng.integers(0, 255, 3).tolist()))
    layer = layer.filter(ImageFilter.GaussianBlur(max(2.0, min(width, height) / 40)))
    out = Image.blend(im, layer, 0.5)
    noise = rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(out) + noise, 0, 255).astype(np.uint8))


def save(im, path, fmt="JPEG", **kw):
    im.save(path, fmt, **({"quality": 95} if fmt == "JPEG" and not kw else kw))
    return str(path)


def psnr(a, b):
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ks_stat(a, b):
    """Two-sample Kolmogorov-Smirnov statistic D = sup |F_a - F_b| (ties handled on the pooled grid)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return np.abs(fa - fb).max()


def ks_critical(n, m, alpha=1e-3):
    """Asymptotic critical value: c(alpha) sqrt((n + m) / (n m)), c(alpha) = sqrt(-ln(alpha / 2) / 2)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def box_stats(sampler, height, width, n, seed):
    torch.manual_seed(seed)
    area, logr = [], []
    for _ in range(n):
        top, left, h, w = sampler(height, width)
        area.append(h * w / (height * width))
        logr.append(math.log(w / h))
    return np.array(area), np.array(logr)


def tv_sampler(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    return T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))


def uniform_ratio_sampler(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A plausible but wrong RandomResizedCrop: aspect ratio uniform instead of log-uniform."""
    for _ in range(10):
        a = height * width * torch.empty(1).uniform_(*scale).item()
        r = torch.empty(1).uniform_(*ratio).item()
        w, h = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < w <= width and 0 < h <= height:
            return int(torch.randint(0, height - h + 1, (1,))), int(torch.randint(0, width - w + 1, (1,))), h, w
    return 0, 0, height, width


# ----------------------------------------------------------------------------------------- RandomResizedCrop

def test_rrc_box_inside_image():
    torch.manual_seed(0)
    for height, width in [(375, 500), (500, 333), (64, 64), (10, 1000), (1000, 10), (1, 1), (2, 300)]:
        for _ in range(300):
            top, left, h, w = tr.rrc_params(height, width)
            assert 0 < h and 0 < w and top >= 0 and left >= 0
            assert top + h <= height and left + w <= width


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (10, 1000), (1000, 10), (3, 2)])
def test_rrc_same_boxes_as_torchvision_for_same_seed(size):
    """Same RNG draws in the same order: the boxes (fallback included) are torchvision's."""
    for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.9, 1.1)), ((0.25, 1.0), (0.5, 2.0))]:
        torch.manual_seed(1)
        ours = [tr.rrc_params(*size, scale, ratio) for _ in range(200)]
        torch.manual_seed(1)
        ref = [tuple(tv_sampler(*size, scale, ratio)) for _ in range(200)]
        assert ours == ref


def test_rrc_fallback_equals_torchvision_on_extreme_aspect_ratios():
    for height, width in [(10, 1000), (1000, 10), (7, 300)]:
        # a big minimal area makes all 10 tries fail on such thin images -> fallback centre crop
        torch.manual_seed(0)
        ours = tr.rrc_params(height, width, (0.9, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(0)
        ref = tuple(tv_sampler(height, width, (0.9, 1.0), (3 / 4, 4 / 3)))
        assert ours == ref
        top, left, h, w = ours
        if width > height:  # clamped to the largest ratio 4/3, full height, centred
            assert (h, w) == (height, int(round(height * 4 / 3))) and left == (width - w) // 2 and top == 0
        else:
            assert (h, w) == (int(round(width / (3 / 4))), width) and top == (height - h) // 2 and left == 0


@pytest.mark.parametrize("size", [(375, 500), (300, 300)])
def test_rrc_distribution_matches_torchvision(size):
    n = 6000
    a1, r1 = box_stats(tr.rrc_params, *size, n, seed=10)
    a2, r2 = box_stats(tv_sampler, *size, n, seed=20)  # independent draws
    crit = ks_critical(n, n)
    assert ks_stat(a1, a2) < crit
    assert ks_stat(r1, r2) < crit
    # the log ratio spans [log 3/4, log 4/3] (up to rounding of w and h)
    assert r1.min() >= math.log(3 / 4) - 0.02 and r1.max() <= math.log(4 / 3) + 0.02


def test_ks_rejects_a_uniform_ratio_sampler():
    """The distribution test has teeth: a uniform (not log-uniform) aspect ratio is rejected."""
    n = 6000
    _, r_bad = box_stats(uniform_ratio_sampler, 375, 500, n, seed=10)
    _, r_ref = box_stats(tv_sampler, 375, 500, n, seed=20)
    assert ks_stat(r_bad, r_ref) > 1.5 * ks_critical(n, n)


# ----------------------------------------------------------------------------------------- eval

def test_resize_for_crop_is_timms_floor():
    """floor(crop / crop_pct) on the float quotient (timm's transforms_imagenet_eval), exact for the usual
    pairs, and exact for a Fraction; the documented float cases lose a pixel like timm."""
    assert tr.DEFAULT_CROP_PCT == 0.875 and tr.resize_for_crop(224) == 256
    for crop, pct in [(224, "0.875"), (384, "0.875"), (288, "0.9"), (224, "0.95"), (256, "0.95"), (384, "1.0"),
                      (224, "0.96"), (320, "1.0"), (160, "0.875"), (448, "0.875"), (240, "0.9")]:
        assert tr.resize_for_crop(crop, float(pct)) == math.floor(Fraction(crop) / Fraction(pct)), (crop, pct)
    assert tr.resize_for_crop(288, 0.9) == 320 and 288 / 0.9 == 320.0
    assert tr.resize_for_crop(535, 0.535) == math.floor(535 / 0.535) == 999  # float quotient 999.99..., as timm
    assert tr.resize_for_crop(535, Fraction("0.535")) == 1000
    assert tr.resize_for_crop(17, 17 / 25) == 24 and tr.resize_for_crop(17, Fraction(17, 25)) == 25
    assert tr.resize_for_crop(288, Fraction(224, 256)) == 329  # another policy's ratio kept: 288 * 256 / 224
    for bad in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="crop_pct must be positive"):
            tr.resize_for_crop(224, bad)


def test_resolve_eval_sizes():
    assert tr.resolve_eval_sizes() == (256, 224)
    assert tr.resolve_eval_sizes(384) == (438, 384)
    assert tr.resolve_eval_sizes(224, crop_pct=0.95) == (235, 224)
    assert tr.resolve_eval_sizes(224, resize_size=232) == (232, 224)
    assert tr.resolve_eval_sizes(224, crop_pct=1.0) == (224, 224)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("wh,crop,resize", [((500, 375), 224, None), ((333, 500), 224, None),
                                             ((640, 480), 384, 438), ((96, 80), 64, None), ((80, 96), 64, 60)])
def test_eval_equals_torchvision_without_draft(tmp_path, interpolation, wh, crop, resize):
    path = save(photo(*wh), tmp_path / "a.JPEG")
    ours = tr.eval_transform(crop, resize, interpolation=interpolation, draft=False)(path)
    resize_size, _ = tr.resolve_eval_sizes(crop, resize)
    img = Image.open(path).convert("RGB")
    # exactly torchvision's tensor pipeline (same antialiased uint8 kernel), padding case included
    ref_t = T2.Compose([T2.PILToTensor(), T2.Resize(resize_size, INTERP[interpolation], antialias=True),
                        T2.CenterCrop(crop)])(img)
    assert ours.shape == (3, crop, crop) and ours.dtype == torch.uint8 and ours.is_contiguous()
    assert torch.equal(ours, ref_t)
    # and within resampling rounding of the classic PIL pipeline
    ref_pil = T.Compose([T.Resize(resize_size, INTERP[interpolation]), T.CenterCrop(crop), T.PILToTensor()])(img)
    diff = (ours.int() - ref_pil.int()).abs()
    assert diff.max() <= (1 if interpolation == "bilinear" else 2)
    assert (diff > 0).float().mean() < 0.2


def test_eval_on_pil_input_equals_path_input(tmp_path):
    path = save(photo(300, 200), tmp_path / "a.JPEG")
    f = tr.eval_transform(64, draft=False)
    assert torch.equal(f(path), f(Image.open(path)))


@pytest.mark.parametrize("crop", [224, 64])
def test_eval_draft_psnr(tmp_path, crop):
    path = save(photo(1200, 900, seed=3), tmp_path / "big.JPEG")
    resize, _ = tr.resolve_eval_sizes(crop)
    assert fj.draft_factor(1200, 900, *tr.eval_geometry(1200, 900, resize, crop)[:2]) > 1  # draft is used
    fast = tr.eval_transform(crop, draft=True)(path)
    full = tr.eval_transform(crop, draft=False)(path)
    assert fast.shape == full.shape == (3, crop, crop)
    assert psnr(fast, full) >= 30
    assert not torch.equal(fast, full)  # it really took the other path


# Canonical evaluation pixels: JPEGs large enough that a reduced-size decode would apply at both sizes
# (shorter side >= 2 x 320), RGB and greyscale, quality 90.
EVAL_SIZES = [(224, 256, "bilinear"), (288, 320, "bicubic")]


@pytest.fixture(scope="module")
def draftable_jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("draftable")
    files = []
    for i, (w, h) in enumerate([(1100, 800), (700, 1000)]):
        im = photo(w, h, seed=20 + i)
        files.append(save(im, folder / f"rgb{i}.JPEG", quality=90))
        files.append(save(im.convert("L"), folder / f"grey{i}.JPEG", quality=90))
    return files


@pytest.mark.parametrize("crop,resize,interpolation", EVAL_SIZES)
def test_eval_default_is_canonical_on_draftable_jpegs(draftable_jpegs, crop, resize, interpolation):
    """Default eval = torchvision's tensor pipeline exactly, PIL pipeline within 2 levels, even where a
    reduced-size decode would be possible."""
    f = tr.eval_transform(crop, resize) if interpolation == "bilinear" else \
        tr.eval_transform(crop, resize, interpolation=interpolation)
    assert f.draft is False and "draft=False" in repr(f)
    for path in draftable_jpegs:
        img = Image.open(path).convert("RGB")
        new_w, new_h = tr.eval_geometry(*img.size, resize, crop)[:2]
        assert fj.draft_factor(*img.size, new_w, new_h) > 1  # a reduced decode would apply here
        ours = f(path)
        ref_t = T2.Compose([T2.PILToTensor(), T2.Resize(resize, INTERP[interpolation], antialias=True),
                            T2.CenterCrop(crop)])(img)
        assert ours.shape == (3, crop, crop) and ours.dtype == torch.uint8 and ours.is_contiguous()
        assert torch.equal(ours, ref_t), path
        ref_pil = T.Compose([T.Resize(resize, INTERP[interpolation]), T.CenterCrop(crop), T.PILToTensor()])(img)
        assert (ours.int() - ref_pil.int()).abs().max() <= 2, path


def test_eval_draft_is_opt_in_and_takes_the_reduced_path(draftable_jpegs, monkeypatch):
    """PIL's JPEG draft is never asked for by default; with draft=True it is, it reduces the decode, and
    the output differs from the canonical one (within PSNR 30 dB)."""
    results = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        results.append(draft(self, mode, size))
        return results[-1]

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    for crop, resize, interpolation in EVAL_SIZES:
        canonical = tr.eval_transform(crop, resize, interpolation=interpolation)
        fast = tr.eval_transform(crop, resize, interpolation=interpolation, draft=True)
        assert "draft=True" in repr(fast)
        for path in draftable_jpegs:
            a = canonical(path)
            assert results == []
            b = fast(path)
            assert len(results) == 1 and results[0] is not None
            assert results[0][1][2] <= Image.open(path).size[0] // 2  # decoded at 1/2 or less
            results.clear()
            assert b.shape == a.shape and b.is_contiguous()
            assert not torch.equal(a, b)
            assert psnr(a, b) >= 30


def noise(width, height, seed=0):
    """Uniform noise: a crop one pixel off its place differs by tens of levels almost everywhere."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def canonical_views(image, resize, crop, interpolation, five=False):
    """torchvision's tensor pipeline: PILToTensor -> v2.Resize(antialias) -> CenterCrop / FiveCrop."""
    x = T2.Resize(resize, INTERP[interpolation], antialias=True)(T2.PILToTensor()(image))
    return torch.stack(T2.FiveCrop(crop)(x)) if five else T2.CenterCrop(crop)(x)[None]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_extreme_aspect_ratio_eval_is_bounded_and_within_2_levels(tmp_path, monkeypatch, fast, interpolation):
    """Beyond WHOLE_RESIZE_MAX only the kept squares are resampled: the same boxes (noise would show a one-pixel
    shift), within 2 grey levels of the canonical pixels, centre and five crops, padding included; up to the
    limit (12:1 at crop_pct 0.875) the pixels are the canonical ones exactly."""
    if not fast:
        monkeypatch.setattr(tr, "fastjpeg", None)
    cases = [((8, 4000), 36, 32), ((4000, 8), 36, 32), ((37, 5000), 64, 56), ((3, 1001), 36, 32),
             ((1, 2000), 36, 32), ((100, 20000), 36, 32), ((8, 4000), 31, 32)]  # the last one pads
    for (w, h), resize, crop in cases:
        path = save(noise(w, h), tmp_path / f"{w}x{h}.png", "PNG")
        new_w, new_h = tr.eval_geometry(w, h, resize, crop)[:2]
        assert new_w * new_h > tr.WHOLE_RESIZE_MAX * crop * crop  # the bounded path
        image = Image.open(path).convert("RGB")
        five = resize >= crop
        ours = tr.eval_crops(path, resize, crop, interpolation, corners=five)
        ref = canonical_views(image, resize, crop, interpolation, five)
        assert ours.shape == ref.shape and ours.is_contiguous()
        diff = (ours.int() - ref.int()).abs()
        assert diff.max() <= 2 and (diff > 0).float().mean() < 0.15, ((w, h), resize, crop, diff.max())
        assert torch.equal(tr.eval_transform(crop, resize, interpolation=interpolation)(path), ours[-1])
    # Ordinary panoramas, up to the limit: canonical exactly.
    for w, h in [(36 * 12, 36), (36, 36 * 12), (400, 100)]:
        path = save(noise(w, h), tmp_path / f"p{w}x{h}.png", "PNG")
        assert math.prod(tr.eval_geometry(w, h, 36, 32)[:2]) <= tr.WHOLE_RESIZE_MAX * 32 * 32
        ref = canonical_views(Image.open(path).convert("RGB"), 36, 32, interpolation, five=True)
        assert torch.equal(tr.eval_crops(path, 36, 32, interpolation, corners=True), ref)


MEMORY_PROBE = """
import json, resource, sys
import torch
import imnet.transforms as tr
import imnet.run.tta as tta
tall, wide, ordinary = sys.argv[1:4]
fast = tr.fastjpeg

def every_transform(path):
    out = [tr.eval_transform(224)(path), tta.TenCrop(224, 256)(path), tta.TenCrop(224, 256, "bicubic")(path)]
    torch.manual_seed(0)
    return out + [tr.train_transform(224)(path), tr.train_transform(224, draft=False)(path)]

for tr.fastjpeg in (fast, None):  # warm up both paths: threads, allocator arenas, lazy imports
    every_transform(ordinary)
vm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = vm_kb * 1024 + 2 * 2**30  # 2 GB more address space: today 1 x 200000 at 256 would ask for 39 GB
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shapes = []
for tr.fastjpeg in (fast, None):
    for path in (tall, wide):
        shapes += [tuple(x.shape) for x in every_transform(path)]
growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"growth_mb": growth_mb, "shapes": shapes}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_one_pixel_strip_costs_megabytes_not_gigabytes(tmp_path):
    """A 1 x 200000 PNG (and its transpose) through eval, 10-crop and train, with and without fastjpeg, in a
    subprocess whose address space is capped at 2 GB above its warmed-up size: the canonical pipeline would
    ask for a 256 x 51,200,000 image (39 GB) and fail at once; here the peak memory grows by megabytes."""
    ramp = (np.arange(200000) % 251).astype(np.uint8)
    strip = np.stack([ramp, ramp[::-1], ramp // 2], -1)[:, None, :]  # (200000, 1, 3)
    tall = save(Image.fromarray(strip), tmp_path / "tall.png", "PNG")
    wide = save(Image.fromarray(strip.transpose(1, 0, 2)), tmp_path / "wide.png", "PNG")
    ordinary = save(photo(300, 200), tmp_path / "ordinary.JPEG")
    root = str(Path(tr.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, tall, wide, ordinary], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shapes"] == [[3, 224, 224], [3, 2240, 224], [3, 2240, 224], [3, 224, 224], [3, 224, 224]] * 4
    assert report["growth_mb"] < 300, report
    # Training was bounded already: every try of RandomResizedCrop fails on a strip, and the fallback box is
    # the largest one of aspect ratio 3/4..4/3 inside it, here 1 x 1.
    torch.manual_seed(0)
    assert tr.rrc_params(200000, 1) == (99999, 0, 1, 1) and tr.rrc_params(1, 200000) == (0, 99999, 1, 1)
    assert tr.rrc_params(4000, 8) == (1994, 0, 11, 8)


def test_draft_factor_and_reduced_decode(tmp_path):
    assert fj.draft_factor(500, 375, 224, 224) == 1
    assert fj.draft_factor(448, 448, 224, 224) == 2
    assert fj.draft_factor(447, 900, 224, 224) == 1
    assert fj.draft_factor(1800, 1800, 224, 224) == 8
    assert fj.draft_factor(900, 1000, 224, 224) == 4
    path = save(photo(803, 601), tmp_path / "a.JPEG")
    src = fj.Source(path, tr.to_rgb)
    assert src.draft(4) == pytest.approx(1 / 4)
    assert src.open().size == (math.ceil(803 / 4), math.ceil(601 / 4))
    assert fj.Source(Image.open(path), tr.to_rgb).draft(4) == 1.0  # a caller's PIL image is left alone


def test_jpeg_header_matches_pil(tmp_path):
    for i, (w, h) in enumerate([(500, 375), (17, 1001), (1, 1)]):
        for kw in ({"quality": 90}, {"quality": 75, "progressive": True}, {"quality": 80, "optimize": True}):
            p = save(photo(w, h), tmp_path / f"{i}.jpg", **kw)
            assert fj.jpeg_header(open(p, "rb").read()) == (w, h, 3)
    p = save(photo(40, 30).convert("L"), tmp_path / "g.jpg")
    assert fj.jpeg_header(open(p, "rb").read()) == (40, 30, 1)
    p = save(photo(40, 30), tmp_path / "x.png", "PNG")
    assert fj.jpeg_header(open(p, "rb").read()) is None


# ----------------------------------------------------------------------------------------- train: fast vs reference

def reference_train(img, crop, interpolation="bilinear", scale=(0.08, 1.0)):
    return T.Compose([T.RandomResizedCrop(crop, scale=scale, interpolation=INTERP[interpolation]),
                      T.RandomHorizontalFlip(), T.PILToTensor()])(img)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_train_full_decode_path_equals_reference_up_to_resampling(tmp_path, interpolation):
    path = save(photo(500, 375, seed=1), tmp_path / "a.JPEG")
    img = Image.open(path).convert("RGB")
    f = tr.train_transform(224, interpolation=interpolation)
    for seed in range(8):
        torch.manual_seed(seed)
        ours = f(path)
        torch.manual_seed(seed)
        ref = reference_train(img, 224, interpolation)
        assert ours.shape == (3, 224, 224) and ours.dtype == torch.uint8 and ours.is_contiguous()
        assert psnr(ours, ref) >= 40


def test_train_draft_path_equals_reference_up_to_resampling(tmp_path):
    """Small crops from a big JPEG: most boxes allow 1/2-1/8 decoding; same box, same flip, PSNR >= 30."""
    path = save(photo(1024, 768, seed=2), tmp_path / "big.JPEG")
    img = Image.open(path).convert("RGB")
    fast, slow = tr.train_transform(64), tr.train_transform(64, draft=False)
    drafted = 0
    for seed in range(12):
        torch.manual_seed(seed)
        top, left, h, w = tr.rrc_params(768, 1024)
        drafted += fj.draft_factor(w, h, 64, 64) > 1
        torch.manual_seed(seed)
        a = fast(path)
        torch.manual_seed(seed)
        b = slow(path)
        torch.manual_seed(seed)
        ref = reference_train(img, 64)
        assert psnr(a, ref) >= 30 and psnr(b, ref) >= 40
    assert drafted >= 8


def test_train_boxes_are_torchvision_boxes(tmp_path):
    """The transform draws exactly torchvision's box and flip: compare against a reference that resizes
    with the same kernel, so equality is exact."""
    path = save(photo(320, 240, seed=4), tmp_path / "a.png", "PNG")
    img = Image.open(path).convert("RGB")
    f = tr.train_transform(48, draft=False)
    ref_tf = T2.Compose([T2.PILToTensor(), T2.RandomResizedCrop(48, antialias=True), T2.RandomHorizontalFlip()])
    for seed in range(20):
        torch.manual_seed(seed)
        ours = f(path)
        torch.manual_seed(seed)
        assert torch.equal(ours, ref_tf(img))


def test_train_determinism_under_manual_seed(tmp_path):
    path = save(photo(500, 375), tmp_path / "a.JPEG")
    f = tr.train_transform(64)
    torch.manual_seed(123)
    a = [f(path) for _ in range(3)]
    torch.manual_seed(123)
    b = [f(path) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_train_crop_size_override(tmp_path):
    """transform(src, crop_size=c) is the transform built with crop_size=c: same draws, same pixels."""
    path = save(photo(1024, 768, seed=6), tmp_path / "a.JPEG")
    f, g = tr.train_transform(224), tr.train_transform(96)
    for seed in range(6):
        torch.manual_seed(seed)
        a = f(path, crop_size=96)
        rng_a = torch.get_rng_state()
        torch.manual_seed(seed)
        b = g(path)
        assert a.shape == (3, 96, 96) and torch.equal(a, b) and torch.equal(rng_a, torch.get_rng_state())
    assert f.crop_size == 224 and f(path).shape == (3, 224, 224)


def test_flip_probability(tmp_path):
    """hflip=0.5: the flip coin follows torch's global RNG like RandomHorizontalFlip; p=0 never flips."""
    path = save(photo(40, 40), tmp_path / "a.png", "PNG")
    full = tr.train_transform(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), draft=False, hflip=0.0)
    flip = tr.train_transform(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), draft=False, hflip=1.0)
    base = full(path)
    assert torch.equal(flip(path), base.flip(-1))
    half = tr.train_transform(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), draft=False)
    torch.manual_seed(0)
    flips = sum(torch.equal(half(path), base.flip(-1)) for _ in range(200))
    assert 70 <= flips <= 130  # Binomial(200, 0.5): mean 100, sd 7


def preset_auto_augment(name, interpolation, ra_magnitude=9):
    """The auto-augment torchvision's reference recipe builds (references/classification/presets.py,
    ClassificationPresetTrain): the training interpolation passed on, RandAugment's num_ops left at 2."""
    mode = INTERP[interpolation]
    if name == "ra":
        return T.RandAugment(interpolation=mode, magnitude=ra_magnitude)
    if name == "ta_wide":
        return T.TrivialAugmentWide(interpolation=mode)
    return T.AutoAugment(policy=T.AutoAugmentPolicy(name), interpolation=mode)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("name", ["ra", "ta_wide", "imagenet"])
def test_auto_augment_is_torchvisions_preset(tmp_path, name, interpolation):
    """Crop + flip, then the preset's op at the training interpolation on the crop (as a PIL image, the
    presets' default backend), all from the same global RNG stream: equal output. torchvision's class
    default (nearest) gives other pixels."""
    path = save(photo(300, 200), tmp_path / "a.JPEG")
    plain = tr.train_transform(64, interpolation=interpolation)
    aug = tr.train_transform(64, interpolation=interpolation, auto_augment=name)
    assert aug._aa.interpolation == INTERP[interpolation]
    nearest = {"ra": lambda: T.RandAugment(2, 9), "ta_wide": T.TrivialAugmentWide,
               "imagenet": lambda: T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)}[name]()
    differ = 0
    for seed in range(12):
        torch.manual_seed(seed)
        ours = aug(path)
        torch.manual_seed(seed)
        crop = TF.to_pil_image(plain(path))
        state = torch.get_rng_state()
        ref = TF.pil_to_tensor(preset_auto_augment(name, interpolation)(crop))
        assert ours.shape == (3, 64, 64) and ours.dtype == torch.uint8 and ours.is_contiguous()
        assert torch.equal(ours, ref), seed
        torch.set_rng_state(state)
        differ += not torch.equal(ours, TF.pil_to_tensor(nearest(crop)))
    assert differ >= 1  # some draws are geometric ops, where the interpolation shows


def test_auto_augment_settings_checked():
    with pytest.raises(ValueError):
        tr.train_transform(64, auto_augment="bogus")
    assert tr.train_transform(64, auto_augment="none")._aa is None
    for magnitude in (31, 100, -1, 9.5):
        with pytest.raises(ValueError, match="magnitude in 0..30"):
            tr.train_transform(64, auto_augment="ra", ra_magnitude=magnitude)
    assert tr.train_transform(64, auto_augment="ra", ra_magnitude=30)._aa.magnitude == 30


# ----------------------------------------------------------------------------------------- modes and bad input

def mode_files(tmp_path):
    base = photo(120, 90, seed=5)
    files = {}
    files["rgb.JPEG"] = save(base, tmp_path / "rgb.JPEG")
    files["cmyk.JPEG"] = save(base.convert("CMYK"), tmp_path / "cmyk.JPEG")
    files["grey.JPEG"] = save(base.convert("L"), tmp_path / "grey.JPEG")
    files["png_named.JPEG"] = save(base, tmp_path / "png_named.JPEG", "PNG")
    files["palette.png"] = save(base.convert("P"), tmp_path / "palette.png", "PNG")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    files["rgba.png"] = save(rgba, tmp_path / "rgba.png", "PNG")
    files["la.png"] = save(base.convert("LA"), tmp_path / "la.png", "PNG")
    return files


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_every_mode_gives_rgb_uint8(tmp_path, kind):
    for name, path in mode_files(tmp_path).items():
        f = tr.train_transform(48) if kind == "train" else tr.eval_transform(48)
        torch.manual_seed(0)
        x = f(path)
        assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and x.is_contiguous(), name
        # content is the image's: compare with the reference on PIL's RGB conversion
        img = Image.open(path).convert("RGB")
        torch.manual_seed(0)
        ref = reference_train(img, 48) if kind == "train" else \
            T.Compose([T.Resize(54), T.CenterCrop(48), T.PILToTensor()])(img)
        assert psnr(x, ref) >= 35, name
        if name in ("grey.JPEG", "la.png"):
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def png16(path, samples):
    """uint16 samples (H, W) greyscale or (H, W, 3) RGB -> a 16-bit PNG (PIL writes no 48-bit PNG)."""
    a = np.asarray(samples, np.uint16)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))
    return str(path)


def gradient16(size=64):
    """A known 16-bit image: every level from 0 to 65520 in steps of 16, rows of 64 consecutive levels."""
    y, x = np.mgrid[0:size, 0:size]
    return ((y * size + x) * 16).astype(np.uint16)


def identity_transforms():
    """A train and an eval transform that keep a 64 x 64 image's pixels as they are (box = the image, no flip;
    resize to its own size)."""
    return (tr.train_transform(64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0),
            tr.eval_transform(64, resize_size=64))


@pytest.mark.parametrize("fast", [True, False])
def test_16_bit_pngs_are_scaled_not_clipped(tmp_path, monkeypatch, fast):
    """16-bit greyscale PNG (PIL mode I;16): exactly round(v * 255 / 65535); 16-bit RGB PNG (PIL keeps the high
    byte): within one level of it; with and without fastjpeg, through train and eval transforms."""
    if not fast:
        monkeypatch.setattr(tr, "fastjpeg", None)
    v = gradient16()
    expected = lambda a: torch.from_numpy(np.rint(a.astype(np.float64) * 255 / 65535).astype(np.int64))
    grey = png16(tmp_path / "grey16.png", v)
    rgb = np.stack([v, 65535 - v, (v.astype(np.int64) * 7 % 65536).astype(np.uint16)], -1)
    colour = png16(tmp_path / "rgb48.png", rgb)
    assert Image.open(grey).mode == "I;16" and Image.open(colour).mode == "RGB"
    for f in identity_transforms():
        out = f(grey)
        assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
        assert torch.equal(out.long(), expected(v).expand(3, 64, 64)), f
        out = f(colour)
        assert (out.long() - expected(rgb).permute(2, 0, 1)).abs().max() <= 1, f
    # Resized as well: as the 8-bit image of the expected values (up to the one level of the 48-bit case).
    ref8 = save(Image.fromarray(expected(rgb).numpy().astype(np.uint8)), tmp_path / "rgb8.png", "PNG")
    grey8 = save(Image.fromarray(expected(v).numpy().astype(np.uint8)), tmp_path / "grey8.png", "PNG")
    for f in (tr.eval_transform(48), tr.train_transform(40, draft=False)):
        torch.manual_seed(0)
        a = f(grey)
        torch.manual_seed(0)
        assert torch.equal(a, f(grey8))
        torch.manual_seed(0)
        a = f(colour)
        torch.manual_seed(0)
        assert (a.int() - f(ref8).int()).abs().max() <= 1


@pytest.mark.parametrize("fast", [True, False])
def test_other_wide_modes(tmp_path, monkeypatch, fast):
    """Big-endian 16-bit TIFF, 32-bit integer TIFF within 16 bits and float TIFF in [0, 1] are scaled; out of
    those ranges the file is refused with a message naming it."""
    if not fast:
        monkeypatch.setattr(tr, "fastjpeg", None)
    v = gradient16()
    expected = torch.from_numpy((v.astype(np.int64) * 255 + 32767) // 65535)  # round(v * 255 / 65535)
    files = {"be16.tif": Image.fromarray(v.astype(">u2")), "i32.tif": Image.fromarray(v.astype(np.int32)),
             "float.tif": Image.fromarray((v / 65535.0).astype(np.float32))}
    for name, image in files.items():
        image.save(tmp_path / name)
    assert [Image.open(tmp_path / n).mode for n in files] == ["I;16B", "I", "F"]
    for f in identity_transforms():
        for name in files:
            out = f(str(tmp_path / name)).long()
            diff = (out - expected.expand(3, 64, 64)).abs().max()
            assert diff <= (1 if name == "float.tif" else 0), name  # float32 of v / 65535 may round either way
    Image.fromarray((v.astype(np.int32) * 4)).save(tmp_path / "i18.tif")  # up to 262080: 18 bits
    Image.fromarray((v / 256.0).astype(np.float32)).save(tmp_path / "f255.tif")  # up to 255.94
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tif")
    for name, what in [("i18.tif", "values from 0 to 262080, beyond 16 bits"), ("f255.tif", "not in \\[0, 1\\]"),
                       ("nan.tif", "not in \\[0, 1\\]")]:
        for f in identity_transforms():
            with pytest.raises(ValueError, match=f"{name}: .*{what}"):
                f(str(tmp_path / name))
    with pytest.raises(ValueError, match="^the image: "):
        tr.load_rgb(Image.open(tmp_path / "i18.tif"))


def test_unreadable_input_raises(tmp_path):
    good = save(photo(100, 80), tmp_path / "a.JPEG")
    data = open(good, "rb").read()
    (tmp_path / "trunc.JPEG").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "text.JPEG").write_bytes(b"this is not an image\n" * 20)
    for f in (tr.train_transform(32), tr.eval_transform(32)):
        for name in ("trunc.JPEG", "empty.JPEG", "text.JPEG"):
            with pytest.raises(Exception):
                f(str(tmp_path / name))
        with pytest.raises(Exception):
            f(str(tmp_path / "missing.JPEG"))


# ----------------------------------------------------------------------------------------- device side

def test_normalize_equals_torchvision():
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8)
    ref_tf = T.Compose([T.ToTensor(), T.Normalize(tr.IMAGENET_MEAN, tr.IMAGENET_STD)])
    ref = torch.stack([ref_tf(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in batch])
    out = tr.normalize(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    cl = tr.normalize(batch, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    bf = tr.normalize(batch, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), ref, rtol=1e-2, atol=1e-2)
    other = tr.normalize(batch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(other, batch.float() / 127.5 - 1, rtol=1e-5, atol=1e-5)


def erased_mask(before, after):
    return (before != after).any(0)


def test_random_erase_semantics():
    n, c, h, w = 400, 3, 32, 40
    x = torch.full((n, c, h, w), 7.0)
    g = torch.Generator().manual_seed(0)
    out = tr.random_erase(x.clone(), p=0.5, mode="const", generator=g)
    fracs, erased = [], 0
    for k in range(n):
        m = (out[k] != 7.0).any(0)
        if m.any():
            erased += 1
            rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
            hh, ww = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert m.sum() == hh * ww  # one full rectangle ...
            assert (out[k][:, m] == 0).all()  # ... of zeros, on every channel
            fracs.append(float(hh * ww) / (h * w))
    assert abs(erased - n * 0.5) < 4 * math.sqrt(n * 0.25)  # per-sample probability p
    assert 0.02 - 0.01 <= min(fracs) and max(fracs) <= 1 / 3 + 0.03
    # in place, returns its input
    y = torch.zeros(2, 3, 8, 8)
    assert tr.random_erase(y, p=1.0) is y
    assert torch.equal(tr.random_erase(torch.ones(5, 3, 8, 8), p=0.0), torch.ones(5, 3, 8, 8))
    with pytest.raises(ValueError):
        tr.random_erase(torch.ones(1, 3, 8, 8), mode="bogus")


def test_random_erase_area_matches_torchvision_and_noise_is_normal():
    n, h, w = 3000, 24, 32
    x = torch.zeros(n, 3, h, w)
    tr.random_erase(x, p=1.0, mode="pixel", generator=torch.Generator().manual_seed(1))
    mask = (x != 0).any(1)
    ours = mask.flatten(1).sum(1).numpy() / (h * w)
    torch.manual_seed(2)
    img = torch.zeros(3, h, w)
    ref = []
    for _ in range(n):
        i, j, eh, ew, _ = T.RandomErasing.get_params(img, scale=(0.02, 1 / 3), ratio=(0.3, 3.3))
        ref.append(eh * ew / (h * w) if (eh, ew) != (h, w) else 0.0)
    assert ks_stat(ours, ref) < ks_critical(n, n)
    vals = x[mask.unsqueeze(1).expand_as(x)]
    assert abs(vals.mean().item()) < 0.02 and abs(vals.std().item() - 1) < 0.02  # per-pixel N(0, 1)
    # per-pixel and per-channel: neighbours and channels differ
    k = int(mask.flatten(1).sum(1).argmax())
    region = x[k][:, mask[k]]
    assert not torch.equal(region[0], region[1])


def test_random_erase_aspect_range_is_torchvisions_not_timms():
    """docs/sources.md: the box's aspect ratio is drawn from torchvision's (0.3, 3.3), in both modes; timm's (and
    DeiT's) pixel-mode RandomErasing draws it from (0.3, 1 / 0.3)."""
    assert inspect.signature(tr.random_erase).parameters["ratio"].default == (0.3, 3.3)
    assert inspect.signature(T.RandomErasing).parameters["ratio"].default == (0.3, 3.3)
    timm_data = pytest.importorskip("timm.data.random_erasing")
    assert timm_data.RandomErasing(probability=0.25, mode="pixel").log_aspect_ratio == (math.log(0.3),
                                                                                       math.log(1 / 0.3))


def test_random_erase_generator_determinism():
    x = torch.randn(16, 3, 16, 16)
    a = tr.random_erase(x.clone(), p=0.5, generator=torch.Generator().manual_seed(3))
    b = tr.random_erase(x.clone(), p=0.5, generator=torch.Generator().manual_seed(3))
    c = tr.random_erase(x.clone(), p=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------- copyability

def test_module_copies_alone(tmp_path):
    """The file alone, imported from an empty folder, works (and names no other imnet module)."""
    import importlib.util
    shutil.copy(tr.__file__, tmp_path / "transforms_copy.py")
    spec = importlib.util.spec_from_file_location("transforms_copy", tmp_path / "transforms_copy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.normalize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).shape == (1, 3, 8, 8)
    assert mod.resolve_eval_sizes() == (256, 224)
    src = open(tr.__file__).read()
    assert "import imnet" not in src and "from imnet" not in src and "from ." not in src


def load_lone_copy(folder):
    """transforms.py copied alone into ``folder`` and imported from there (no fastjpeg beside it)."""
    import importlib.util
    shutil.copy(tr.__file__, folder / "transforms_alone.py")
    spec = importlib.util.spec_from_file_location("transforms_alone", folder / "transforms_alone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lone_copy_gives_torchvision_boxes_and_pixels(tmp_path):
    """Without fastjpeg: PIL decode + torchvision resize, the same boxes and flips for the same seed, and
    the same pixels as imnet's transforms without draft (whose decoders differ, whose result does not)."""
    mod = load_lone_copy(tmp_path)
    assert mod.fastjpeg is None and tr.fastjpeg is fj
    files = dict(mode_files(tmp_path))
    files["big.JPEG"] = save(photo(1024, 768, seed=7), tmp_path / "big.JPEG")
    ref_tf = T2.Compose([T2.PILToTensor(), T2.RandomResizedCrop(48, antialias=True), T2.RandomHorizontalFlip()])
    lone, ours = mod.train_transform(48), tr.train_transform(48, draft=False)
    for name, path in files.items():
        img = Image.open(path).convert("RGB")
        for seed in range(4):
            torch.manual_seed(seed)
            a = lone(path)
            torch.manual_seed(seed)
            assert torch.equal(a, ref_tf(img)), name
            torch.manual_seed(seed)
            assert torch.equal(a, ours(path)), name
        assert torch.equal(mod.eval_transform(48)(path), tr.eval_transform(48)(path)), name
        assert torch.equal(mod.eval_transform(48, draft=True)(path), tr.eval_transform(48)(path)), name
