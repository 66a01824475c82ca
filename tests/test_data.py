"""imnet.run.data: folder checks, the robust reader, samplers, collate, device normalization, bad-image counting.

Images are identified by their content: each generated image draws its id as a 4x4 grid of black and white
cells (8 bits of id + 8 bits of its complement, so a wrongly decoded image does not pass for another one).
That survives JPEG, CMYK, greyscale, palette and resizing, so a test can tell which file fed which slot.
"""

import io
import math
import os
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torchvision.datasets.folder import make_dataset
from PIL import Image

from imnet.run import data, folders, seeds
from imnet.run.data import (BadImageCounter, EvalSampler, FakeData, ImageFolder, SampleIndex, TrainSampler,
                        build_loader, collate, parse_max_bad, to_device)
from imnet.run.folders import DataError, check_data_root, find_classes


# ----------------------------------------------------------------------------------------------- helpers

def pattern(sample_id: int, size: int = 48) -> np.ndarray:
    code = sample_id | ((~sample_id & 0xFF) << 8)
    bits = np.array([(code >> k) & 1 for k in range(16)], np.uint8).reshape(4, 4) * 255
    grey = np.kron(bits, np.ones((size // 4, size // 4), np.uint8))
    return np.repeat(grey[:, :, None], 3, axis=2)


def decode(image: torch.Tensor):
    """The id drawn in a uint8 CHW image, or None if the grid does not check out."""
    _, h, w = image.shape
    cells = image.float().mean(0).reshape(4, h // 4, 4, w // 4)
    cells = cells[:, h // 16: 3 * h // 16, :, w // 16: 3 * w // 16].mean((1, 3))  # cell centres only
    code = sum(int(bit) << k for k, bit in enumerate((cells > 127).flatten().tolist()))
    return code & 0xFF if (code >> 8) == (~code & 0xFF) else None


def simple_transform(path, size: int = 32) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


_rrc = T.Compose([T.RandomResizedCrop(24, antialias=True), T.RandomHorizontalFlip()])


def augment(path) -> torch.Tensor:
    """A random transform drawing from torch's global RNG, like torchvision's and imnet's."""
    with Image.open(path) as image:
        image = _rrc(image.convert("RGB"))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def save(path, sample_id, mode="RGB", fmt=None, size=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pattern(sample_id, size)).convert(mode)
    if mode == "RGBA":
        image.putalpha(100)
    image.save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))


def png_header(path, width, height):
    """A PNG that declares width x height (a decompression bomb) but holds a few bytes of data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def make_tree(split):
    """Every kind of file of issue 6 in split/{cat,dog,fox}. Returns (good {path: id}, bad {paths},
    hidden ids)."""
    good, bad, hidden = {}, set(), []

    def add(rel, **kw):
        path = split / rel
        save(path, len(good) + 1, **kw)
        good[str(path)] = len(good) + 1

    for cls in ("cat", "dog", "fox"):
        for k in range(3):
            add(f"{cls}/plain_{k}.JPEG", fmt="JPEG")
    add("cat/cmyk.JPEG", mode="CMYK", fmt="JPEG")
    add("cat/grey.JPEG", mode="L", fmt="JPEG")
    add("cat/png_inside.JPEG", fmt="PNG")
    add("dog/palette.png", mode="P", fmt="PNG")
    add("dog/rgba.png", mode="RGBA", fmt="PNG")
    add("dog/la.png", mode="LA", fmt="PNG")
    add("fox/upper.JPG", fmt="JPEG")
    add("fox/tiff.TIF", fmt="TIFF")
    add("fox/bitmap.bmp", fmt="BMP")
    add("fox/web.webp", fmt="WEBP")
    add("fox/nested/deep.jpeg", fmt="JPEG")

    jpeg = io.BytesIO()
    Image.fromarray(pattern(200)).save(jpeg, "JPEG", quality=95)
    (split / "cat/truncated.JPEG").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (split / "dog/zero.JPEG").write_bytes(b"")
    (split / "fox/text.JPEG").write_text("this is not an image\n")
    png_header(split / "fox/bomb.png", 12000, 12000)  # 1.44e8 px: PIL would only warn; refused here
    png_header(split / "cat/bomb_huge.png", 30000, 30000)  # beyond 2x the bound: PIL's own error
    bad = {str(split / p) for p in ("cat/truncated.JPEG", "dog/zero.JPEG", "fox/text.JPEG", "fox/bomb.png",
                                    "cat/bomb_huge.png")}

    # Hidden entries and non-image files: never listed, never read.
    for k, rel in enumerate([".ipynb_checkpoints/x.JPEG", "cat/.ipynb_checkpoints/copy.JPEG",
                             "dog/.hidden.JPEG"]):
        save(split / rel, 240 + k, fmt="JPEG")
        hidden.append(240 + k)
    (split / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (split / "cat/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (split / "dog/notes.txt").write_text("not an image either\n")
    return good, bad, hidden


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    split = tmp_path_factory.mktemp("data") / "train"
    good, bad, hidden = make_tree(split)
    return split, good, bad, hidden


def label_of(path, classes):
    return classes.index(path.split("/train/")[1].split("/")[0])


# ------------------------------------------------------------------------------------ folders and errors

def test_listing_ignores_hidden_and_non_images(tree):
    split, good, bad, _ = tree
    classes = find_classes(split)
    assert classes == ["cat", "dog", "fox"]
    ds = ImageFolder(split, classes, simple_transform)
    assert sorted(p for p, _ in ds.samples) == sorted([*good, *bad])
    assert all(label == label_of(p, classes) for p, label in ds.samples)
    # torchvision's order (and so its indices), minus the hidden entries torchvision would include
    reference = make_dataset(str(split), {c: i for i, c in enumerate(classes)}, folders.IMG_EXTENSIONS)
    assert list(ds.samples) == [(p, i) for p, i in reference if "/." not in p]


def test_sample_index_is_compact_and_exact(tree):
    # A synthetic listing, as folders.walk_images yields it: (reldir, unsorted names) per folder.
    listings = [("b", [("sub", ["x.png"]), ("", ["2.jpg", "10.jpg", "1.jpg"])]), ("a", [("", [])]),
                ("c", [("", [os.fsdecode(b"\xff.jpg")])])]
    index = SampleIndex.from_listings(listings)
    expected = ["b/1.jpg", "b/10.jpg", "b/2.jpg", "b/sub/x.png", os.fsdecode(b"c/\xff.jpg")]
    assert len(index) == 5 and [index.relpath(i) for i in range(5)] == expected
    assert [index.label(i) for i in range(5)] == index.labels.tolist() == [0, 0, 0, 0, 2]
    assert index.blob == b"b/1.jpg\0b/10.jpg\0b/2.jpg\0b/sub/x.png\0c/\xff.jpg\0"
    assert index.offsets.tolist() == [0, 8, 17, 25, 37, 45]
    assert index.labels.dtype == np.int32 and index.offsets.dtype == np.int64
    assert index.class_counts(3).tolist() == [4, 0, 1] and index.nbytes == 45 + 6 * 8 + 5 * 4
    assert index.relpath(-1) == expected[-1] and index.label(-5) == 0
    for wrong in (5, -6):
        with pytest.raises(IndexError):
            index.relpath(wrong)
    with pytest.raises(ValueError):
        index.labels[0] = 1  # read-only: nothing writes to the pages the workers share
    copy = pickle.loads(pickle.dumps(index))  # spawned workers receive it pickled
    assert [copy.relpath(i) for i in range(5)] == expected and len(SampleIndex.from_listings([])) == 0

    split = tree[0]
    ds = ImageFolder(split, find_classes(split), simple_transform)
    n = len(ds)
    assert isinstance(ds.targets, np.ndarray) and ds.targets.tolist() == [ds.label(i) for i in range(n)]
    assert ds.samples[-1] == (ds.path(n - 1), ds.label(n - 1)) and ds.samples[1:3] == list(ds.samples)[1:3]
    assert all(ds.path(i) == os.path.join(ds.root, ds.index.relpath(i)) for i in range(n))
    # No per-sample Python objects: no attribute of the dataset or of its index is a container of n items.
    for obj in (ds, ds.index):
        assert not [k for k, v in vars(obj).items() if isinstance(v, (list, tuple, dict)) and len(v) == n]


def test_data_errors_explain(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_classes(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        find_classes(tmp_path / "file")

    empty = tmp_path / "empty"
    (empty / ".ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class subfolders"):
        find_classes(empty)

    flat = tmp_path / "flat"
    for k in range(3):
        save(flat / f"ILSVRC2012_val_{k:08d}.JPEG", k, fmt="JPEG")
    with pytest.raises(DataError, match=r"3 image files but no class subfolders.*python -m imnet.tools.prepare val"):
        find_classes(flat)

    root = tmp_path / "root"
    save(root / "train/a/1.JPEG", 1, fmt="JPEG")
    (root / "train/b").mkdir()
    (root / "train/c").mkdir()
    (root / "train/c/.DS_Store").write_text("x")
    (root / "train/c/readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"2 of the 3 class folders .* 'b', 'c'\."):
        find_classes(root / "train")

    with pytest.raises(DataError, match="does not exist.*--data"):
        check_data_root(tmp_path / "nope")
    with pytest.raises(DataError, match="has no val/ folder"):
        check_data_root(root)
    with pytest.raises(DataError, match="passed a split itself"):
        check_data_root(root / "train")

    ok = tmp_path / "ok"
    for split, names in (("train", "abc"), ("val", "abd")):
        for k, name in enumerate(names):
            save(ok / split / name / f"{k}.JPEG", k, fmt="JPEG")
    with pytest.raises(DataError, match=r"only in val/: 'd'; only in train/: 'c'\)"):
        check_data_root(ok)
    (ok / "train/d").mkdir()
    save(ok / "train/d/x.JPEG", 9, fmt="JPEG")
    save(ok / "val/c/x.png", 9, fmt="PNG")
    assert check_data_root(ok) == (str(ok / "train"), str(ok / "val"), ["a", "b", "c", "d"])

    with pytest.raises(DataError, match="fewer than the 4 processes"):
        TrainSampler(3, num_replicas=4)


# ------------------------------------------------------------------------------------------ the reader

def _transforms():
    from imnet.transforms import eval_transform
    return {"simple": simple_transform, "imnet_eval": eval_transform(crop_size=32, resize_size=32)}


@pytest.mark.parametrize("which", ["simple", "imnet_eval"])
def test_every_good_image_once_bad_ones_named(tree, which):
    split, good, bad, hidden = tree
    classes = find_classes(split)
    ds = ImageFolder(split, classes, _transforms()[which], seed=3)
    paths = [p for p, _ in ds.samples]
    sampler = TrainSampler(len(ds), seed=3, drop_last=False)
    loader = build_loader(ds, sampler, batch_size=5, workers=2)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = [i for i, _ in sampler]
        own_slot_ids, reported, position = [], set(), 0
        for images, labels, bad_paths in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
            reported.update(bad_paths)
            for image, label in zip(images, labels.tolist()):
                path, seen = paths[order[position]], decode(image)
                position += 1
                if path in good:
                    assert seen == good[path], f"{path} decoded as {seen}"
                    assert label == label_of(path, classes)
                    own_slot_ids.append(seen)
                else:  # replaced by some good image, with that image's label; the bad path reported
                    assert path in bad_paths
                    source = [p for p, i in good.items() if i == seen]
                    assert len(source) == 1 and label == label_of(source[0], classes)
                assert seen not in hidden
        assert position == len(ds)
        assert sorted(own_slot_ids) == sorted(good.values())  # each good image once from its own slot
        assert reported == bad
    for name in ("cmyk.JPEG", "grey.JPEG", "png_inside.JPEG", "palette.png", "rgba.png", "la.png"):
        assert any(p.endswith(name) for p in good)  # ... and each was decoded correctly above


def test_decompression_bomb_bound(tree, tmp_path):
    bomb = tree[0] / "fox/bomb.png"
    with warnings.catch_warnings():  # without the guard PIL opens it (and would try to allocate 430 MB)
        warnings.simplefilter("ignore")
        with Image.open(bomb) as image:
            assert image.size == (12000, 12000)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombWarning):
        with data._pil_guard(data.MAX_IMAGE_PIXELS), Image.open(bomb):
            pass
    assert Image.MAX_IMAGE_PIXELS == before

    # The bound refuses a valid image just above it and accepts one below.
    save(tmp_path / "a/small.png", 1, fmt="PNG", size=32)
    save(tmp_path / "a/large.png", 2, fmt="PNG", size=64)
    strict = ImageFolder(tmp_path, ["a"], simple_transform, max_pixels=40 * 40)
    assert strict[(0, 0)][2] == (str(tmp_path / "a/large.png"),)
    assert decode(strict[(0, 0)][0]) == 1
    assert ImageFolder(tmp_path, ["a"], simple_transform)[(0, 0)][2] == ()


def test_bad_image_counter_threshold(tree):
    split, _, bad, _ = tree
    ds = ImageFolder(split, find_classes(split), simple_transform)
    batches = [collate([ds[(i, 0)] for i in range(k, min(k + 6, len(ds)))]) for k in range(0, len(ds), 6)]

    lenient = BadImageCounter(parse_max_bad("0.5", len(ds)), total=len(ds))
    new = [p for _, _, b in batches for p in lenient.update(b)]
    for _, _, b in batches:  # a second epoch meets the same files: not counted again
        assert lenient.update(b) == []
    assert sorted(new) == sorted(bad) and lenient.count == len(bad)
    restored = BadImageCounter(0)
    restored.load_state_dict(lenient.state_dict())
    assert restored.count == len(bad)

    strict = BadImageCounter(parse_max_bad("2", len(ds)), total=len(ds))
    with pytest.raises(DataError) as info:
        for _, _, b in batches:
            strict.update(b)
    message = str(info.value)
    assert strict.count > 2
    assert f"Too many unreadable images: {strict.count} distinct files out of {len(ds)}" in message
    assert "more than the 2 allowed by --max-bad-images" in message
    assert any(p in message for p in bad) and "--max-bad-images 0.001" in message


def test_unreadable_everything_and_wrong_transform(tree, tmp_path):
    (tmp_path / "a").mkdir()
    for k in range(3):
        (tmp_path / f"a/{k}.JPEG").write_text("junk")
    with pytest.raises(DataError, match="Could not read sample 1 .* UnidentifiedImageError"):
        ImageFolder(tmp_path, ["a"], simple_transform, max_tries=5)[(1, 0)]
    split = tree[0]
    broken = ImageFolder(split, find_classes(split), lambda path: simple_transform(path).float())
    with pytest.raises(TypeError, match="uint8 CHW"):
        broken[(0, 0)]


def test_transform_failure_on_a_readable_file_is_not_blamed_on_the_file(tree, tmp_path):
    """A transform that raises on a file that decodes stops at once with DataError naming the transform, the
    file and the error, and saying it is not the file's fault; unreadable files are still replaced and
    counted, and a wide image of unknown range counts as unreadable."""
    split = tree[0]
    classes = find_classes(split)

    def picky(path):
        raise RuntimeError("kernel size too large for this crop")

    ds = ImageFolder(split, classes, picky)
    good = next(i for i in range(len(ds)) if "plain_0" in ds.path(i))
    with pytest.raises(DataError) as info:
        ds[(good, 0)]
    message = str(info.value)
    assert "not the file's fault" in message and "RuntimeError: kernel size too large" in message
    assert ds.path(good) in message and "picky" in message and "--ra-magnitude" in message
    assert "unreadable" in message and "not replaced as an unreadable image" in message.replace("it is ", "")
    assert "Repair" not in message and "check the copy" not in message
    assert isinstance(info.value.__cause__, RuntimeError)

    # RandAugment at magnitude 100 (of 31 bins) fails inside torchvision's op, on every file that decodes.
    # (imnet's TrainTransform now refuses that magnitude up front; the op is planted to see the reader's side.)
    from imnet.transforms import train_transform
    transform = train_transform(32, auto_augment="ra")
    transform._aa = T.RandAugment(num_ops=2, magnitude=100)
    aug = ImageFolder(split, classes, transform)
    with pytest.raises(DataError, match=r"IndexError.*not the file's fault.*RandAugment\(.*magnitude=100"):
        for i in range(len(aug)):
            aug[(i, 0)]

    # A file that does not decode is still replaced and reported, whatever the transform would have done.
    bad = next(i for i in range(len(ds)) if ds.path(i).endswith("truncated.JPEG"))
    image, _, reported = ImageFolder(split, classes, simple_transform)[(bad, 0)]
    assert reported == (ds.path(bad),) and decode(image) is not None
    assert "truncated" in data.why_unreadable(ds.path(bad)).lower() and data.file_error(ds.path(good)) is None

    # Images whose range cannot be known are refused by the decoder: unreadable, replaced, explained.
    folder = tmp_path / "wide"
    save(folder / "a/ok.png", 7, fmt="PNG")
    Image.fromarray(np.full((32, 32), 1000.0, np.float32)).save(folder / "a/float.tif")
    levels = np.where(pattern(9)[..., 0] > 0, 220, 40).astype(np.uint16) * 257  # clipped, 40 would turn white
    Image.fromarray(levels).save(folder / "a/grey16.png")
    from imnet.transforms import eval_transform
    wide = ImageFolder(folder, ["a"], eval_transform(32, 32))
    paths = [wide.path(i) for i in range(len(wide))]
    assert [os.path.basename(p) for p in paths] == ["float.tif", "grey16.png", "ok.png"]
    image, _, reported = wide[(0, 0)]
    assert reported == (paths[0],) and decode(image) in (7, 9)
    assert "float.tif: a floating-point image with values from 1000 to 1000" in data.why_unreadable(paths[0])
    assert decode(wide[(1, 0)][0]) == 9 and wide[(1, 0)][2] == ()  # 16-bit: scaled, not clipped to white


def test_parse_max_bad():
    assert parse_max_bad("10", 1000) == 10
    assert parse_max_bad("0", 1000) == 0
    assert parse_max_bad("0.001", 1281167) == 1281
    assert parse_max_bad("1e-2", 1000) == 10
    assert parse_max_bad("1.0", 1000) == 1000
    for wrong in ("-1", "1.5", "10.0", "abc", "", "nan", "inf"):
        with pytest.raises(DataError, match="--max-bad-images .* whole number .* between 0 and 1"):
            parse_max_bad(wrong, 1000)


# --------------------------------------------------------------------------------- seeding and samplers

def test_augmentation_depends_only_on_seed_epoch_index(tree):
    split = tree[0]
    ds = ImageFolder(split, find_classes(split), augment, seed=5)
    rng = torch.get_rng_state()
    first = ds[(4, 1)][0]
    assert torch.equal(first, ds[(4, 1)][0])
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert sum(not torch.equal(ds[(i, 0)][0], ds[(i, 1)][0]) for i in range(8)) >= 6  # epochs differ

    def run(workers, replicas, rank, batch):
        sampler = TrainSampler(len(ds), num_replicas=replicas, rank=rank, seed=5)
        sampler.set_epoch(1)
        return [b[0] for b in build_loader(ds, sampler, batch, workers, drop_last=True)]

    single = run(0, 1, 0, 8)
    assert all(torch.equal(a, b) for a, b in zip(single, run(2, 1, 0, 8)))
    rank0, rank1 = run(2, 2, 0, 4), run(0, 2, 1, 4)
    assert len(single) == len(rank0) == len(rank1) == len(ds) // 8
    for whole, r0, r1 in zip(single, rank0, rank1):  # rank r holds global positions r, r+2, ...
        assert torch.equal(whole, torch.stack([r0, r1], 1).flatten(0, 1))
    assert torch.equal(torch.get_rng_state(), rng)  # loaders use their own generator, workers or not


def test_train_sampler_partition_shuffle_resume():
    for n in (10, 11, 37):
        for replicas in (1, 2, 3, 4):
            samplers = [TrainSampler(n, replicas, r, seed=7) for r in range(replicas)]
            shards = [[i for i, e in s] for s in samplers]
            assert all(len(s) == len(x) == n // replicas for s, x in zip(shards, samplers))
            union = [i for s in shards for i in s]
            assert len(set(union)) == len(union) == n - n % replicas  # disjoint; truncated to a multiple
            padded = [[i for i, _ in TrainSampler(n, replicas, r, seed=7, drop_last=False)] for r in range(replicas)]
            assert len({len(s) for s in padded}) == 1 and {i for s in padded for i in s} == set(range(n))

    sampler = TrainSampler(37, seed=7)
    epoch0 = list(sampler)
    assert epoch0 == list(TrainSampler(37, seed=7)) and all(e == 0 for _, e in epoch0)
    assert epoch0 != list(TrainSampler(37, seed=8))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted((i, 1) for i, _ in epoch0)

    resumed = TrainSampler(37, seed=7)
    resumed.set_epoch(1)
    resumed.set_start(10)
    assert len(resumed) == 27
    partial = iter(resumed)
    assert [next(partial) for _ in range(5)] == epoch1[10:15]
    assert len(resumed) == 27 and list(resumed) == epoch1[10:]  # an unfinished pass keeps the start
    assert len(resumed) == 37 and list(resumed) == epoch1  # a finished one resets it
    with pytest.raises(ValueError):
        resumed.set_start(38)

    # 2 ranks x batch b == 1 rank x batch 2b, batch by batch.
    b, n = 4, 40
    whole = [i for i, _ in TrainSampler(n, 1, 0, seed=3)]
    halves = [[i for i, _ in TrainSampler(n, 2, r, seed=3)] for r in (0, 1)]
    for k in range(n // (2 * b)):
        assert set(halves[0][k * b:(k + 1) * b] + halves[1][k * b:(k + 1) * b]) == set(whole[2 * k * b:2 * (k + 1) * b])


def test_eval_sampler_exact():
    for n in (0, 1, 2, 7, 13, 101):
        for replicas in range(1, 6):
            shards = [list(EvalSampler(n, replicas, r)) for r in range(replicas)]
            assert [i for s in shards for i, _ in s] == list(range(n))  # once each, contiguous, in order
            assert all(e == 0 for s in shards for _, e in s)
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            assert [len(EvalSampler(n, replicas, r)) for r in range(replicas)] == list(map(len, shards))


# ---------------------------------------------------------------------------- batches and the device

def test_collate():
    items = [(torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8), k, ("x",) * (k % 2)) for k in range(4)]
    images, labels, bad = collate(items)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 5, 7) and images.is_contiguous()
    assert torch.equal(images, torch.stack([x for x, _, _ in items]))
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3]
    assert bad == ["x", "x"]
    with pytest.raises(ValueError, match="same size"):
        collate(items + [(torch.zeros(3, 5, 8, dtype=torch.uint8), 0, ())])


def test_to_device_equals_float_in_worker_normalization():
    generator = torch.Generator().manual_seed(0)
    pils = [Image.fromarray(torch.randint(0, 256, (9, 11, 3), dtype=torch.uint8, generator=generator).numpy())
            for _ in range(4)]
    uint8 = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pils])
    reference = torch.stack([T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)(T.ToTensor()(p)) for p in pils])
    labels = torch.arange(4)
    images, out_labels = to_device(uint8, labels, "cpu")
    assert images.dtype == torch.float32 and torch.equal(out_labels, labels)
    torch.testing.assert_close(images, reference, atol=1e-5, rtol=1e-5)
    images_cl, _ = to_device(uint8, labels, "cpu", channels_last=True)
    assert images_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images_cl, reference, atol=1e-5, rtol=1e-5)
    assert to_device(uint8, labels, "cpu", dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_fake_data_loader():
    fake = FakeData(num_classes=10, image_size=16, length=23)
    image, label, bad = fake[(22, 3)]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == 2 and bad == ()
    assert torch.equal(FakeData(10, 16, 23).images, fake.images) and len(fake.classes) == 10
    loader = build_loader(fake, EvalSampler(len(fake)), batch_size=8, workers=0)
    assert not loader.persistent_workers and loader.collate_fn is collate
    workers = build_loader(fake, EvalSampler(len(fake)), batch_size=8, workers=2, pin_memory=False)
    assert workers.persistent_workers and workers.prefetch_factor == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [8, 8, 7]
    assert all(bad == [] for _, _, bad in batches)


def test_repeated_augmentation_sampler():
    from collections import Counter
    n, reps = 37, 3
    for replicas in (1, 2, 4):
        samplers = [TrainSampler(n, replicas, r, seed=7, repeats=reps) for r in range(replicas)]
        # Before truncation (as DeiT's / torchvision's RASampler): every index exactly N times, in runs of N.
        perm = samplers[0].order(2).tolist()
        assert sorted(perm) == list(range(n))
        order = [(i, j) for i in perm for j in range(reps)]
        # The epoch keeps its length: n // R items per rank, i.e. about n / N distinct images, N times each
        # (the last one seen may be cut).
        for s in samplers:
            s.set_epoch(2)
        shards = [list(s) for s in samplers]
        assert all(len(x) == len(s) == n // replicas for x, s in zip(shards, samplers))
        assert all(e == 2 for x in shards for _, e, _ in x)
        seen = Counter((i, k) for x in shards for i, _, k in x)
        assert max(seen.values()) == 1  # each copy once
        counts = Counter(i for i, _ in seen)
        assert sum(c == reps for c in counts.values()) >= len(counts) - 1
        assert set(seen) == set(order[:replicas * (n // replicas)])
        if replicas >= reps:  # the N copies of an image are read by N different ranks
            ranks = {}
            for r, x in enumerate(shards):
                for i, _, _ in x:
                    ranks.setdefault(i, []).append(r)
            assert all(len(set(v)) == len(v) for v in ranks.values())
            assert ranks[order[0][0]] == list(range(reps))  # the first image: ranks 0..N-1, in the first step
    # repeats=1 is the plain sampler, item for item
    assert list(TrainSampler(n, 2, 1, seed=7)) == list(TrainSampler(n, 2, 1, seed=7, repeats=1))
    # resume mid-epoch: the same items from the start point on
    full = TrainSampler(n, 2, 1, seed=7, repeats=reps)
    full.set_epoch(1)
    resumed = TrainSampler(n, 2, 1, seed=7, repeats=reps)
    resumed.set_epoch(1)
    resumed.set_start(5)
    assert list(resumed) == list(full)[5:]
    with pytest.raises(ValueError):
        TrainSampler(n, repeats=0)


def reference_keys(n, replicas, rank, seed, epoch, drop_last, reps, start):
    """The epoch order as TrainSampler built it in Python lists, the reference for the numpy one."""
    generator = torch.Generator().manual_seed(seeds.derive(seeds.SHUFFLE, seed, epoch))
    order = [(i, k) for i in torch.randperm(n, generator=generator).tolist() for k in range(reps)]
    total = (n // replicas if drop_last else math.ceil(n / replicas)) * replicas
    return (order * 2)[:total][rank::replicas][start:]


def test_train_sampler_order_equals_the_list_algorithm():
    cases = [(37, 1, 1, True), (37, 4, 3, True), (37, 4, 1, False), (10, 3, 2, False), (11, 4, 4, False),
             (101, 8, 4, True), (101, 8, 4, False), (5, 5, 1, False), (64, 2, 3, True)]
    for n, replicas, reps, drop_last in cases:
        for epoch, start in ((0, 0), (3, 1), (7, n // replicas - 1), (2, n // replicas)):
            for rank in range(replicas):
                sampler = TrainSampler(n, replicas, rank, seed=11, drop_last=drop_last, repeats=reps)
                sampler.set_epoch(epoch)
                sampler.set_start(start)
                got = [(key[0], key[2] if reps > 1 else 0) for key in sampler]
                assert got == reference_keys(n, replicas, rank, 11, epoch, drop_last, reps, start), (n, replicas)


def test_repeated_copies_get_different_crops_and_ranks_add_up(tree):
    split = tree[0]
    ds = ImageFolder(split, find_classes(split), augment, seed=5)
    # copy 0 is the unrepeated sample (runs without --ra-reps are unchanged); copies 1, 2 differ from it
    assert torch.equal(ds[(3, 1, 0)][0], ds[(3, 1)][0])
    assert sum(not torch.equal(ds[(i, 1, 0)][0], ds[(i, 1, 1)][0]) for i in range(8)) >= 6
    assert sum(not torch.equal(ds[(i, 1, 1)][0], ds[(i, 1, 2)][0]) for i in range(8)) >= 6
    assert torch.equal(ds[(3, 1, 2)][0], ds[(3, 1, 2)][0])

    def run(workers, replicas, rank, batch):
        sampler = TrainSampler(len(ds), num_replicas=replicas, rank=rank, seed=5, repeats=2)
        sampler.set_epoch(1)
        return [b[0] for b in build_loader(ds, sampler, batch, workers, drop_last=True)]

    single = run(0, 1, 0, 8)
    assert all(torch.equal(a, b) for a, b in zip(single, run(2, 1, 0, 8)))  # whatever the workers
    rank0, rank1 = run(2, 2, 0, 4), run(0, 2, 1, 4)
    assert len(single) == len(rank0) == len(ds) // 8
    for whole, r0, r1 in zip(single, rank0, rank1):  # 2 processes x b == 1 process x 2b
        assert torch.equal(whole, torch.stack([r0, r1], 1).flatten(0, 1))
