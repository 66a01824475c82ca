"""imnet.run.tta: the 10-crop views are the single-crop evaluation's, plus four corners and the mirrors.

The reference for the geometry is torchvision's v2 pipeline on the decoded tensor (PILToTensor -> Resize
(antialias) -> FiveCrop), whose resize kernel is the canonical one the evaluation uses.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T2
from PIL import Image, JpegImagePlugin

import imnet.transforms as tr
from imnet.run import tta

INTERP = {"bilinear": T2.InterpolationMode.BILINEAR, "bicubic": T2.InterpolationMode.BICUBIC}


def textured(width, height, seed=0):
    """Smooth gradients plus noise: a JPEG of it decodes to varied pixels, and a crop one pixel off its place
    differs from the right one."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 80 * np.sin(x / (7 + 3 * c) + y / 11) for c in range(3)], -1)
    img = img + rng.normal(0, 25, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def five_crop_reference(image, resize, crop, interpolation):
    x = T2.Resize(resize, INTERP[interpolation], antialias=True)(T2.PILToTensor()(image))
    return torch.stack(T2.FiveCrop(crop)(x))


# (width, height), resize, crop: odd and even margins on both axes, landscape and portrait.
GEOMETRIES = [((61, 45), 40, 32), ((45, 61), 40, 33), ((300, 200), 73, 64), ((97, 130), 56, 49),
              ((64, 64), 64, 64), ((500, 375), 256, 224)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta")
    files = []
    for k, (size, _, _) in enumerate(GEOMETRIES):
        image = textured(*size, seed=k)
        files.append(str(folder / f"{k}.JPEG"))
        image.save(files[-1], quality=90)
        files.append(str(folder / f"{k}.png"))
        image.save(files[-1])
    return files


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_centre_view_is_the_single_crop_and_corners_are_five_crops(images, monkeypatch, fast, interpolation):
    """Full decode: the centre view equals EvalTransform's tensor exactly, the corners are FiveCrop's on the
    canonically resized image, and every mirror is exact; with fastjpeg (libjpeg-turbo + torch kernel) and
    without it (PIL + torchvision)."""
    if not fast:
        monkeypatch.setattr(tr, "fastjpeg", None)
    for k, (_, resize, crop) in enumerate(GEOMETRIES):
        for path in images[2 * k:2 * k + 2]:
            views = tta.TenCrop(crop, resize, interpolation).views(path)
            assert views.shape == (10, 3, crop, crop) and views.dtype == torch.uint8
            single = tr.eval_transform(crop, resize, interpolation=interpolation)(path)
            assert torch.equal(views[4], single), path
            assert torch.equal(views[5:], views[:5].flip(-1)), path
            reference = five_crop_reference(Image.open(path).convert("RGB"), resize, crop, interpolation)
            assert torch.equal(views[:5], reference), path


def test_tiles_round_trip_and_view_transform(images):
    policy = SimpleNamespace(crop_size=33, resize_size=40, interpolation="bicubic", decode="full",
                             transform=lambda: "single")
    f = tta.view_transform(policy, "10crop")
    assert isinstance(f, tta.TenCrop) and (f.crop_size, f.resize_size, f.interpolation, f.decode) == \
        (33, 40, "bicubic", "full")
    assert tta.view_transform(policy, "flip") == "single" and tta.view_transform(policy, "none") == "single"
    views = f.views(images[2])
    tiles = f(images[2])
    assert tiles.shape == (3, 330, 33) and tiles.is_contiguous()
    batch, v = tta.make_views(torch.stack([tiles, tiles]), "10crop")
    assert v == 10 and torch.equal(batch, torch.cat([views, views]))


def test_reduced_decode_follows_the_policy(tmp_path, monkeypatch):
    """decode="reduced": a JPEG large enough is decoded at 1/k, as for the single crop, whose output the centre
    view equals; decode="full" never asks PIL for a reduced decode."""
    path = str(tmp_path / "big.JPEG")
    textured(1100, 800).save(path, quality=90)
    asked = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        asked.append(draft(self, mode, size))
        return asked[-1]

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    full = tta.TenCrop(64, 73, decode="full").views(path)
    assert asked == []
    reduced = tta.TenCrop(64, 73, decode="reduced").views(path)
    assert len(asked) == 1 and asked[0] is not None and asked[0][1][2] <= 1100 // 2
    assert torch.equal(reduced[4], tr.eval_transform(64, 73, draft=True)(path))
    assert torch.equal(reduced[5:], reduced[:5].flip(-1))
    assert not torch.equal(reduced, full)
    assert torch.equal(full[:5], five_crop_reference(Image.open(path).convert("RGB"), 73, 64, "bilinear"))


@pytest.mark.parametrize("fast", [True, False])
def test_extreme_aspect_ratio_views_are_bounded(tmp_path, monkeypatch, fast):
    """Past transforms.WHOLE_RESIZE_MAX each view's region is resampled alone: same boxes, within 2 grey
    levels of FiveCrop on the canonically resized image; the centre is still the single crop."""
    if not fast:
        monkeypatch.setattr(tr, "fastjpeg", None)
    for w, h in [(8, 4000), (4000, 9)]:
        path = str(tmp_path / f"{w}x{h}.png")
        Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        views = tta.TenCrop(32, 36, "bicubic").views(path)
        reference = five_crop_reference(Image.open(path).convert("RGB"), 36, 32, "bicubic")
        assert (views[:5].int() - reference.int()).abs().max() <= 2
        assert torch.equal(views[4], tr.eval_transform(32, 36, interpolation="bicubic")(path))
        assert torch.equal(views[5:], views[:5].flip(-1))


def test_bad_settings_refused():
    with pytest.raises(ValueError, match="decode must be one of"):
        tta.TenCrop(32, 36, decode="fast")
    with pytest.raises(ValueError, match="resize >= the crop"):
        tta.TenCrop(32, 30)
