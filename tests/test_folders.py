"""imnet.run.folders: the walker (order, hidden entries, FIFOs, symlink loops, non-UTF-8 names), resolve_val_dir,
and the one flat-folder message.

The order of the listing is checked against two references on generated trees: torchvision's make_dataset,
and imnet.run.data's listing before the compact index (copied below), so indices, and therefore training, stay
exactly what they were.
"""

import contextlib
import json
import os
import signal
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import make_dataset

from imnet.run import data, folders
from imnet.run.data import BadImageCounter, ImageFolder, why_unreadable
from imnet.run.folders import (IMG_EXTENSIONS, DataError, describe_skipped, display_path, find_classes, list_images,
                           resolve_val_dir, walk_images)


# ----------------------------------------------------------------------------------------------- helpers

def jpeg(path, value=128, size=16):
    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        Image.new("RGB", (size, size), (value, 255 - value, value // 2)).save(f, "JPEG")


def read(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def old_samples(root, classes):
    """imnet.run.data's listing before the compact index, verbatim: the reference for order and labels."""
    def walk(folder):
        listing = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            listing.append((dirpath, filenames))
        for dirpath, filenames in sorted(listing):
            for name in sorted(filenames):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS:
                    yield os.path.join(dirpath, name)
    return [(path, label) for label, name in enumerate(classes) for path in walk(os.path.join(root, name))]


def torchvision_samples(root, classes):
    reference = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS)
    return [(p, i) for p, i in reference if "/." not in p]


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging (a FIFO blocks open() forever): SIGALRM interrupts the blocked system call."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: something opened a FIFO")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def non_utf8_name_supported(folder) -> bool:
    probe = os.path.join(os.fsencode(folder), b"probe\xff")
    try:
        open(probe, "wb").close()
    except OSError:  # e.g. a file system that stores names as UTF-8 only
        return False
    os.remove(probe)
    return True


def tricky_tree(root):
    """Names whose order differs between a depth-first walk and a sort by path ('b-c' < 'b/c'), case,
    non-ASCII, nesting, symlinked files, a symlinked class folder and a symlinked subfolder (no loops)."""
    for rel in ["a/1.jpg", "a/10.jpg", "a/2.JPG", "a/b-c.png", "a/b/c.jpg", "a/b/c/d.jpeg", "a/b-c/x.jpg",
                "a/b c/x.jpg", "a/b.c/x.jpg", "a/B/x.jpg", "a/\u00e9t\u00e9.jpg", "a/z/y/x/w.jpg", "a b/1.jpg",
                "a-b/1.jpg", "A/1.jpg", "\u00e9/1.JPEG", "z/9.jpg", "z/sub/1.webp"]:
        jpeg(root / "train" / rel, value=len(rel) * 7 % 256)
    elsewhere = root / "elsewhere"
    for k in range(3):
        jpeg(elsewhere / "real" / f"{k}.jpg", value=k)
        jpeg(elsewhere / "files" / f"f{k}.jpg", value=100 + k)
    os.symlink(elsewhere / "real", root / "train/linked")  # a symlinked class folder
    os.symlink(elsewhere / "real", root / "train/z/linked_sub")  # a symlinked subfolder, not a loop
    for k in range(3):  # imnet.tools.prepare's layout: one symlink per file
        os.symlink(elsewhere / "files" / f"f{k}.jpg", root / "train/A" / f"link_{k}.jpg")
    (root / "train/a/notes.txt").write_text("not an image")
    return root / "train"


# ------------------------------------------------------------------------------------------------ order

def test_order_matches_torchvision_and_the_old_listing(tmp_path, tiny_data):
    train = tricky_tree(tmp_path)
    classes = find_classes(train)
    assert classes == sorted(classes) and "linked" in classes
    ds = ImageFolder(train, classes, read)
    expected = old_samples(train, classes)
    assert list(ds.samples) == expected == torchvision_samples(train, classes)
    assert [ds.path(i) for i in range(len(ds))] == [p for p, _ in expected]
    assert ds.targets.tolist() == [label for _, label in expected] == [ds.label(i) for i in range(len(ds))]
    assert ds.skipped == [] and ds.root == str(train)
    assert len(ds) == 18 + 3 + 3 + 3  # nothing lost, nothing doubled (the subfolder link counts once)
    for split in ("train", "val"):  # conftest's generated tree, both splits
        root = tiny_data / split
        split_classes = find_classes(root)
        dataset = ImageFolder(root, split_classes, read)
        assert list(dataset.samples) == old_samples(root, split_classes) == torchvision_samples(root, split_classes)


def test_list_images_is_relative_and_sorted_like_torchvision(tmp_path):
    train = tricky_tree(tmp_path)
    rel = list_images(train / "a")
    assert rel == [os.path.relpath(p, train / "a") for p, _ in old_samples(train, ["a"])]
    # Folders are sorted as path strings, not walked depth first: 'b' < 'b c' < 'b-c' < 'b.c' < 'b/c' ('-' < '/').
    assert rel.index("b/c.jpg") < rel.index("b c/x.jpg") < rel.index("b-c/x.jpg") < rel.index("b/c/d.jpeg")
    listing = dict(walk_images(train / "a"))
    assert sorted(listing["b"]) == ["c.jpg"] and "notes.txt" not in listing[""]


# ----------------------------------------------------------------------------- entries that are skipped

def test_fifo_socket_device_and_broken_link_are_skipped_not_opened(tmp_path):
    train = tmp_path / "train"
    for k in range(4):
        jpeg(train / f"c{k % 2}" / f"{k}.jpg", value=40 * k)
    os.mkfifo(train / "c0/x.jpg")
    os.symlink(train / "c0/x.jpg", train / "c1/to_fifo.JPEG")
    os.symlink(tmp_path / "missing.jpg", train / "c1/broken.jpg")
    os.mkfifo(train / "c1/not_an_image_name")  # no image name: ignored without a word, like any other file
    sock = None
    if len(os.fsencode(train / "c1/s.png")) < 100:  # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(train / "c1/s.png"))
    only_fifo = tmp_path / "only_fifo/c0"
    only_fifo.mkdir(parents=True)
    os.mkfifo(only_fifo / "a.jpg")
    try:
        with deadline(20):
            classes = find_classes(train)
            ds = ImageFolder(train, classes, read)
            assert len(ds) == 4 and all(ds.path(i).endswith(f"{k}.jpg") for i, k in enumerate((0, 2, 1, 3)))
            loader = data.build_loader(ds, data.EvalSampler(len(ds)), batch_size=3, workers=0)
            assert sum(len(labels) for _, labels, bad in loader if not bad) == 4
            with pytest.raises(DataError, match="contain no image file"):
                find_classes(only_fifo.parent)
    finally:
        if sock is not None:
            sock.close()
    reasons = {os.path.basename(p): why for p, why in ds.skipped}
    assert reasons["x.jpg"] == "a FIFO (named pipe)"
    assert reasons["to_fifo.JPEG"] == "symbolic link to a FIFO (named pipe)"
    assert reasons["broken.jpg"] == "broken symbolic link"
    if sock is not None:
        assert reasons["s.png"] == "a socket"
    assert len(ds.skipped) == 3 + (sock is not None)
    message = describe_skipped(ds.skipped)
    assert message.startswith(f"{len(ds.skipped)} entries with image names were skipped") and "x.jpg" in message
    assert describe_skipped([]) == ""


def test_symlink_loops_are_not_followed(tmp_path):
    train = tmp_path / "train"
    for cls in ("c0", "c1"):
        for k in range(3):
            jpeg(train / cls / f"{k}.jpg", value=k)
    jpeg(train / "c0/sub/deep.jpg")
    os.symlink(".", train / "c0/loop")  # os.walk would list c0 40 times
    os.symlink("..", train / "c0/sub/up")  # back to c0, from below
    os.symlink("..", train / "c1/root")  # the data root itself: c1 would swallow c0 and c2
    real = tmp_path / "real_c2"  # a symlinked class folder whose inside loops back to it
    jpeg(real / "0.jpg")
    os.symlink(real, train / "c2")
    os.symlink(real, real / "again")
    with deadline(20):
        classes = find_classes(train)
        ds = ImageFolder(train, classes, read)
    assert classes == ["c0", "c1", "c2"]
    assert [os.path.relpath(ds.path(i), train) for i in range(len(ds))] == [
        "c0/0.jpg", "c0/1.jpg", "c0/2.jpg", "c0/sub/deep.jpg", "c1/0.jpg", "c1/1.jpg", "c1/2.jpg", "c2/0.jpg"]
    assert ds.targets.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    skipped = sorted(os.path.relpath(p, train) for p, _ in ds.skipped)
    assert skipped == ["c0/loop", "c0/sub/up", "c1/root", "c2/again"]
    assert all(why == "symbolic link to a folder that encloses it, a loop: not followed" for _, why in ds.skipped)


def test_non_utf8_names_survive_and_reports_stay_printable(tmp_path):
    if not non_utf8_name_supported(tmp_path):
        pytest.skip("this file system refuses file names that are not valid UTF-8")
    train = os.path.join(os.fsencode(tmp_path), b"train")
    good, bad = os.path.join(train, b"c\xff", b"caf\xe9.jpg"), os.path.join(train, b"c\xff", b"bad\xff.JPEG")
    jpeg(good, value=200)
    jpeg(os.path.join(train, b"d", b"plain.jpg"), value=20)
    with open(bad, "wb") as f:
        f.write(b"not an image")
    os.mkfifo(os.path.join(train, b"d", b"pipe\xfe.jpg"))

    train_str = os.fsdecode(train)
    classes = find_classes(train_str)
    assert classes == sorted([os.fsdecode(b"c\xff"), "d"])
    ds = ImageFolder(train_str, classes, read)
    assert [os.fsencode(ds.path(i)) for i in range(len(ds))] == [bad, good, os.path.join(train, b"d", b"plain.jpg")]
    fifo = os.fsdecode(os.path.join(train, b"d", b"pipe\xfe.jpg"))  # listed by both references, opened later
    references = [[s for s in ref(train_str, classes) if s[0] != fifo] for ref in (old_samples, torchvision_samples)]
    assert list(ds.samples) == references[0] == references[1]
    image, label, reported = ds[(1, 0)]  # opened through its surrogate-escaped name
    assert label == 0 and reported == () and abs(int(image[0].float().mean()) - 200) < 8

    # The bad file: reported with its real name (to open it again), explained and counted in printable text.
    outcome = [ds[(0, epoch)] for epoch in range(3)]
    assert all(r == (ds.path(0),) for _, _, r in outcome)
    reason = why_unreadable(ds.path(0))
    reason.encode("utf-8")
    counter = BadImageCounter(0, total=len(ds))
    with pytest.raises(DataError) as info:
        counter.update([ds.path(0)])
    message = str(info.value)
    message.encode("utf-8")  # print() would raise UnicodeEncodeError on a lone surrogate
    json.dumps(message, ensure_ascii=False).encode("utf-8")
    assert "bad\\xff.JPEG" in message and display_path(ds.path(0)) in message
    assert counter.state_dict()["paths"] == [ds.path(0)]  # the real name, not the display one

    # The FIFO is skipped, and the report of it is printable too.
    assert [os.fsencode(p) for p, _ in ds.skipped] == [os.path.join(train, b"d", b"pipe\xfe.jpg")]
    describe_skipped(ds.skipped).encode("utf-8")
    assert display_path(b"x\xff") == display_path(os.fsdecode(b"x\xff")) == "x\\xff"
    assert display_path("\u00e9t\u00e9/ok.jpg") == "\u00e9t\u00e9/ok.jpg"


# ------------------------------------------------------------------------------------ layout checks

def test_one_data_error_one_flat_message_one_extension_list():
    assert data.DataError is folders.DataError
    assert not hasattr(data, "IMG_EXTENSIONS") and not hasattr(data, "CudaPrefetcher")


def test_resolve_val_dir(tmp_path):
    root = tmp_path / "root"
    jpeg(root / "val/a/1.jpg")
    jpeg(root / "train/a/1.jpg")
    assert resolve_val_dir(root) == str(root / "val")
    assert resolve_val_dir(root / "val") == str(root / "val")  # the val folder itself
    assert resolve_val_dir(str(root / "val") + "/") == str(root / "val") + "/"

    with pytest.raises(DataError, match="does not exist"):
        resolve_val_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        resolve_val_dir(tmp_path / "file")
    only_train = tmp_path / "only_train"
    jpeg(only_train / "train/a/1.jpg")
    with pytest.raises(DataError, match="has a train/ folder but no val/ folder"):
        resolve_val_dir(only_train)

    flat = tmp_path / "ILSVRC2012_img_val"
    for k in range(3):
        jpeg(flat / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
    (flat / ".cache").mkdir()  # a hidden folder is not a class folder
    os.mkfifo(flat / "pipe.JPEG")  # nor is a FIFO an image
    with pytest.raises(DataError) as from_resolve:
        resolve_val_dir(flat)
    with pytest.raises(DataError) as from_find:
        find_classes(flat)
    message = str(from_resolve.value)
    assert message == str(from_find.value)  # one message, whichever check meets the flat folder first
    assert "holds 3 image files but no class subfolders" in message and "one folder per class" in message
    assert f"python -m imnet.tools.prepare val --flat {flat} --labels LOC_val_solution.csv --out ROOT/val" in message
    flat_root = tmp_path / "flat_root"
    for k in range(2):
        jpeg(flat_root / "val" / f"{k}.JPEG")
    with pytest.raises(DataError, match=r"holds 2 image files but no class subfolders"):
        resolve_val_dir(flat_root)
