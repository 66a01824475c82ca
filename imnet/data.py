"""Datasets, samplers and loaders: from an ImageFolder tree to normalized batches on the device.

The path of one training batch (see DESIGN.md, "Data flow"):

    TrainSampler -> (index, epoch) -> ImageFolder[(index, epoch)] in a worker: the transform decodes and
    augments one file into a uint8 CHW tensor -> collate: one uint8 NCHW batch (+ labels, + bad paths)
    -> pinned memory -> to_device / CudaPrefetcher: copy, then float + normalize on the device.

Three decisions shape this module:

* **uint8 until the device.** Workers ship uint8 batches, 4x fewer bytes than float32 through shared memory,
  the pinned copy and the PCIe bus; the conversion to float and the normalization run on the accelerator,
  where they cost nothing next to the model.
* **The randomness of a sample is a function of (seed, epoch, index) only.** The dataset seeds torch's global
  RNG from those three numbers right before calling the transform, so the augmentation of image i in epoch e
  is the same whichever worker or rank decodes it, with 0 or 16 workers, on 1 or 64 GPUs, and after a
  resume. Worker seeds (torch's default scheme) would tie the augmentation to the worker layout.
* **A bad file never stops a run by itself.** Unreadable images are replaced by another, deterministic
  sample and reported by path with the batch; the training loop counts them (BadImageCounter) and stops
  with a clear message only beyond ``--max-bad-images``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings

import numpy as np
import torch
from PIL import Image

from imnet.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

# The extensions torchvision's ImageFolder accepts; matched case-insensitively (ImageNet uses ".JPEG").
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Decompression-bomb bound, in pixels (width x height), enforced while the transform opens a file.
# 2**27 = 134 million pixels is about 400 MB once decoded to RGB: far above ordinary photographs (a 60 MP
# camera makes 6e7 pixels) yet small enough that a worker cannot be made to allocate gigabytes by a tiny
# file declaring a huge size. PIL's own default only *warns* between MAX_IMAGE_PIXELS and twice that; here
# the warning is turned into an error, so the bound is exact. ImageFolder(max_pixels=...) overrides it.
MAX_IMAGE_PIXELS = 2**27

# First word of the entropy given to SeedSequence, so that the shuffle seed of (seed, epoch) can never equal
# the augmentation seed of some (seed, epoch, index, attempt): SeedSequence pads short entropy with zeros.
_SHUFFLE, _AUGMENT = 1, 2


class DataError(Exception):
    """A problem with the data or the data flags. The message is one paragraph: what is wrong and how to fix
    it; train.py and eval.py print it and exit with code 2, without a traceback."""


# --------------------------------------------------------------------------------------------------------
# Seeds


def derive_seed(*words: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (e.g. purpose, seed, epoch, index).

    numpy's SeedSequence hashes the whole tuple into well-mixed state words (the seed-derivation scheme of
    O'Neill's PCG work), so neighbouring tuples, say index 7 and 8, give unrelated streams; we keep 63 bits of
    the first 64-bit word so the result is a valid non-negative seed for any RNG. Cost: ~30 us.
    """
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------------------
# Folder checks


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _walk_images(folder: str):
    """Yield the image files under `folder`, recursively, in a fixed (sorted) order; hidden files and hidden
    folders (.DS_Store, .ipynb_checkpoints, anything starting with '.') are skipped. The order is
    torchvision's ImageFolder order minus hidden entries, so indices agree with torchvision's."""
    listing = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # do not descend into hidden folders
        listing.append((dirpath, filenames))
    for dirpath, filenames in sorted(listing):
        for name in sorted(filenames):
            if _is_image(name):
                yield os.path.join(dirpath, name)


def _first_image(folder: str) -> str | None:
    return next(_walk_images(folder), None)


def _names(items, limit: int = 8) -> str:
    """'a', 'b', 'c' and 12 more."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


_LAYOUT = "ROOT/<class name>/<image file>, e.g. ROOT/n01440764/n01440764_10026.JPEG"


def find_classes(root) -> list[str]:
    """The sorted class-folder names under `root` (one subfolder per class, any depth of images below).

    Hidden entries are ignored. Raises DataError if `root` is missing or not a folder, has no class folders
    (with a specific message for a flat folder of images, the usual state of a freshly extracted ImageNet
    val set), or has class folders without a single image file (listed by name)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(f"The folder {root!r} does not exist. Check the path (and --data); the expected "
                        f"layout is {_LAYOUT}.")
    if not os.path.isdir(root):
        raise DataError(f"{root!r} is a file, not a folder. Pass the folder that holds one subfolder per "
                        f"class: {_LAYOUT}.")
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"Cannot list {root!r} ({exc}). Check the path and its permissions.") from exc
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
        if loose:
            raise DataError(
                f"{root!r} holds {len(loose)} image files but no class subfolders; images must be sorted into "
                f"one folder per class ({_LAYOUT}), the class being the folder name. A freshly extracted "
                f"ImageNet validation set is flat like this: arrange it with `python -m imnet.prepare val --flat "
                f"{root} --labels LOC_val_solution.csv --out ROOT/val` (symlinks into one folder per class).")
        raise DataError(f"{root!r} has no class subfolders (it is empty or holds only hidden or non-image "
                        f"files). The expected layout is {_LAYOUT}.")
    empty = [c for c in classes if _first_image(os.path.join(root, c)) is None]
    if empty:
        raise DataError(
            f"{len(empty)} of the {len(classes)} class folders in {root!r} contain no image file: "
            f"{_names(empty)}. Accepted extensions are {', '.join(IMG_EXTENSIONS)} (any case). Put the images "
            f"back, or delete these folders from both train/ and val/ if the classes are not wanted.")
    return classes


def check_data_root(data_root) -> tuple[str, str, list[str]]:
    """Validate a dataset root `data_root/{train,val}/<class>/<image>` before any work is done.

    Returns (train_dir, val_dir, classes). Raises DataError with a fix when the root or one of the splits is
    missing, a split has no or empty class folders, or val/ and train/ do not have the same class folders
    (both differences listed): a label index is a position in the sorted class list, so the two splits
    must agree exactly or val accuracy would silently compare the wrong classes."""
    root = os.fspath(data_root)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DataError(f"The data root {root!r} {what}. Pass --data the folder that holds train/ and val/, "
                        f"each laid out as {_LAYOUT.replace('ROOT', 'train')}.")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    missing = [name + "/" for name, d in (("train", train_dir), ("val", val_dir)) if not os.path.isdir(d)]
    if missing:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        hint = (f" It contains the folders {_names(found)}." if found else " It contains no folders.")
        if found and not any(n in ("train", "val") for n in found):
            hint += " If these are class folders, you passed a split itself: pass its parent folder instead."
        raise DataError(f"The data root {root!r} has no {' and no '.join(missing)} folder.{hint} --data must "
                        f"point at a folder with train/ and val/ inside, each laid out as "
                        f"{_LAYOUT.replace('ROOT', 'train')} (rename e.g. 'validation' to 'val').")
    classes = find_classes(train_dir)
    val_classes = find_classes(val_dir)
    if classes != val_classes:
        only_val = sorted(set(val_classes) - set(classes))
        only_train = sorted(set(classes) - set(val_classes))
        raise DataError(
            f"train/ and val/ in {root!r} do not have the same class folders ({len(classes)} in train/, "
            f"{len(val_classes)} in val/). Only in val/: {_names(only_val) or 'none'}. Only in train/: "
            f"{_names(only_train) or 'none'}. Labels are positions in the sorted class list, so both splits "
            f"must hold exactly the same class folder names: add or remove folders until they match.")
    return train_dir, val_dir, classes


# --------------------------------------------------------------------------------------------------------
# Datasets


@contextlib.contextmanager
def _pil_guard(max_pixels: int):
    """Refuse images above `max_pixels` while the block runs: sets PIL's bound and turns PIL's
    DecompressionBombWarning (pixels in (bound, 2 x bound]) into an exception, as PIL already raises
    DecompressionBombError above 2 x bound. Both are restored on exit."""
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


class ImageFolder(torch.utils.data.Dataset):
    """Images under `root/<class>/...` for the given class list; ``ds[(index, epoch)] -> (uint8 CHW, label,
    bad)`` where `bad` is a tuple of the paths that could not be read for this item (usually empty).

    `transform(path) -> uint8 CHW tensor` decodes and augments one file (imnet.transforms). Before each call
    torch's global CPU RNG is seeded with ``derive_seed(2, seed, epoch, index, attempt)`` and restored
    afterwards: the augmentation of sample `index` in `epoch` depends only on (seed, epoch, index), not on
    which worker or rank runs it, and the caller's RNG stream (dropout, MixUp in the main process when
    workers=0) is left untouched.

    A file the transform cannot read (truncated, zero bytes, not an image, more than `max_pixels` pixels:
    any Exception from the transform) is replaced by sample ``derive_seed(2, seed, epoch, index, attempt) %
    n`` for attempt = 1, 2, ...: a pseudo-random other sample, so a bad file does not always duplicate its
    neighbour of the same class. After `max_tries` failed attempts (the data set is mostly unreadable, or
    the transform itself is broken) DataError is raised, chained to the last error.
    """

    def __init__(self, root, classes, transform, seed: int = 0, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_tries: int = 32):
        self.root = os.fspath(root)
        self.classes = list(classes)
        self.transform = transform
        self.seed = _check_seed(seed)
        self.max_pixels = max_pixels
        self.max_tries = max_tries
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            found = [(path, label) for path in _walk_images(os.path.join(self.root, name))]
            if not found:
                empty.append(name)
            self.samples += found
        if empty:
            raise DataError(f"{len(empty)} class folders of {self.root!r} are missing or hold no image file: "
                            f"{_names(empty)}. Run check_data_root on the data root first, which explains the "
                            f"expected layout.")

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str, seed: int) -> torch.Tensor:
        generator = torch.default_generator  # CPU only: torch.manual_seed would also reseed every GPU
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            with _pil_guard(self.max_pixels):
                return self.transform(path)
        finally:
            generator.set_state(state)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        bad: list[str] = []
        for attempt in range(self.max_tries):
            seed = derive_seed(_AUGMENT, self.seed, epoch, index, attempt)
            path, label = self.samples[index if attempt == 0 else seed % len(self.samples)]
            try:
                image = self._read(path, seed)
            except Exception as exc:  # anything a broken file can make PIL/torchvision raise
                if path not in bad:
                    bad.append(path)
                error = exc
                continue
            # Outside the try: a wrong return type is a bug in the transform, not a bad file.
            if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3):
                raise TypeError(f"the transform must return a uint8 CHW tensor, got "
                                f"{getattr(image, 'dtype', type(image))} {tuple(getattr(image, 'shape', ()))}")
            return image, label, tuple(bad)
        raise DataError(
            f"Could not read sample {index} of {self.root!r} nor any of the {self.max_tries - 1} replacements "
            f"tried ({_names(bad, 4)}); the last error was {type(error).__name__}: {error}. Either most files "
            f"are unreadable (check the copy of the data set) or the transform fails on every image.") from error


class FakeData(torch.utils.data.Dataset):
    """Random uint8 images in ImageFolder's item format, for --fake-data throughput runs (no file I/O).

    The images come from a bank of 16 made once from `seed`, so producing an item costs nothing and the loader
    measures the pipeline, not a random number generator; label = index % num_classes."""

    def __init__(self, num_classes: int, image_size: int, length: int, seed: int = 0, bank: int = 16):
        self.classes = [f"class_{k}" for k in range(num_classes)]
        self.length = length
        generator = torch.Generator().manual_seed(_check_seed(seed))
        self.images = torch.randint(0, 256, (bank, 3, image_size, image_size), dtype=torch.uint8,
                                    generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        index, _ = key if isinstance(key, tuple) else (key, 0)
        return self.images[index % len(self.images)], index % len(self.classes), ()


# --------------------------------------------------------------------------------------------------------
# Samplers


class TrainSampler(torch.utils.data.Sampler):
    """Distributed, per-epoch reshuffled, resumable training order; yields (index, epoch).

    Epoch e uses one global permutation of range(num_samples), drawn from ``derive_seed(1, seed, e)``; rank r
    takes ``perm[r::num_replicas]``. So with batch size b, batch k of rank r holds global positions
    k*R*b + r, k*R*b + r + R, ...: the union over the R ranks of their batch k is batch k of a single process
    with batch R*b. That is what makes "2 processes x b" equal "1 process x 2b".

    drop_last=True truncates the permutation to a multiple of num_replicas, so every rank yields the same
    number of samples (DDP needs equal step counts; the few dropped samples change every epoch).
    drop_last=False pads by repeating the start of the permutation instead.

    set_start(k) skips this rank's first k samples (mid-epoch resume: k = steps done x batch size) until a
    pass runs to its end; later passes start at 0 again. So both "set_start once after loading the
    checkpoint, then loop over epochs" and "set_epoch + set_start at the top of each epoch" work, and len()
    (= the samples the coming pass yields) is the resumed epoch's remainder while it runs. set_epoch(e)
    selects the permutation and does not touch the start.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = True):
        super().__init__()
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        if num_samples < num_replicas:
            raise DataError(f"The training set has {num_samples} images, fewer than the {num_replicas} "
                            f"processes: each process needs at least one. Use fewer processes or more data.")
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.seed, self.drop_last = _check_seed(seed), drop_last
        self.epoch, self.start = 0, 0
        self.per_rank = (num_samples // num_replicas if drop_last else math.ceil(num_samples / num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}] (samples per rank), got {start}")
        self.start = int(start)

    def indices(self, epoch: int) -> list[int]:
        """All indices this rank reads in `epoch`, ignoring set_start."""
        generator = torch.Generator().manual_seed(derive_seed(_SHUFFLE, self.seed, epoch))
        perm = torch.randperm(self.num_samples, generator=generator).tolist()
        total = self.per_rank * self.num_replicas
        perm = (perm * 2)[:total]  # truncates (drop_last) or pads with the start of the permutation
        return perm[self.rank::self.num_replicas]

    def __iter__(self):
        epoch = self.epoch
        for index in self.indices(epoch)[self.start:]:
            yield index, epoch
        self.start = 0  # the resumed pass is complete: the next one is a whole epoch

    def __len__(self) -> int:
        return self.per_rank - self.start


class EvalSampler(torch.utils.data.Sampler):
    """Exact distributed evaluation order; yields (index, 0).

    Rank r reads the contiguous shard [floor(n r / R), floor(n (r+1) / R)): every index exactly once over all
    ranks, no padding, so no image is counted twice (DistributedSampler pads with duplicates) and each rank
    reads neighbouring files. Shard sizes differ by at most one (a rank may even get none when n < R): the
    evaluation loop must not run a collective per batch, only reduce its sums at the end."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        super().__init__()
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.begin = num_samples * rank // num_replicas
        self.end = num_samples * (rank + 1) // num_replicas

    def __iter__(self):
        return iter([(i, 0) for i in range(self.begin, self.end)])

    def __len__(self) -> int:
        return self.end - self.begin


# --------------------------------------------------------------------------------------------------------
# Batches


def collate(batch):
    """[(uint8 CHW, label, bad paths)] -> (uint8 NCHW, int64 labels, list of bad paths).

    The images are written straight into one preallocated batch tensor; inside a worker that tensor lives in
    shared memory (as torch's default_collate does), so handing it to the main process copies nothing."""
    images, labels, bad = zip(*batch)
    first = images[0]
    if any(im.shape != first.shape for im in images):
        raise ValueError(f"cannot batch images of different shapes {sorted({tuple(im.shape) for im in images})}: "
                         f"the transform must crop every image to the same size")
    out = None
    if torch.utils.data.get_worker_info() is not None:
        storage = first.untyped_storage()._new_shared(len(images) * first.numel() * first.element_size())
        out = first.new(storage).view(len(images), *first.shape)
    return (torch.stack(images, out=out), torch.tensor(labels, dtype=torch.int64),
            [path for paths in bad for path in paths])


def _worker_init(worker_id: int) -> None:
    # One intra-op thread per worker: parallelism comes from the workers; more threads would oversubscribe
    # the cores (torch also does this; stated here so it does not depend on that).
    torch.set_num_threads(1)


def build_loader(dataset, sampler, batch_size: int, workers: int, pin_memory: bool = False,
                 drop_last: bool = False, prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over (index, epoch) keys with `collate`.

    - persistent workers (workers > 0): the decoding processes and their caches survive between epochs;
    - prefetch_factor: by default enough to keep about 8 batches in flight in total, at least 2 per worker,
      so a slow JPEG or a hiccup in one worker does not stall the accelerator;
    - a private torch.Generator: the DataLoader draws a worker base seed from its generator at every
      iter(); with the default (global) one, that draw would shift the training process's RNG stream by an
      amount depending on --workers (workers=0 draws every epoch, persistent workers only once). The base
      seed is unused anyway, since every sample is seeded by (seed, epoch, index).
    """
    if workers > 0 and prefetch_factor is None:
        prefetch_factor = max(2, math.ceil(8 / workers))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, drop_last=drop_last, persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None, generator=torch.Generator())


def to_device(images: torch.Tensor, labels: torch.Tensor, device, channels_last: bool = False,
              dtype: torch.dtype = torch.float32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Copy a uint8 batch and its labels to `device` (non_blocking: asynchronous from pinned memory) and
    normalize there: (x / 255 - mean) / std in `dtype`, channels_last if asked. Returns (images, labels)."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    return normalize(images, mean=mean, std=std, dtype=dtype, channels_last=channels_last), labels


class CudaPrefetcher:
    """Iterate a loader yielding (images, labels, bad) already on the device and normalized, copying and
    normalizing batch k+1 on a side CUDA stream while the model computes on batch k.

    On a non-CUDA device it is plain iteration through to_device. The loader should pin memory, or the
    copies cannot overlap with compute."""

    def __init__(self, loader, device, channels_last: bool = False, dtype: torch.dtype = torch.float32):
        self.loader, self.device = loader, torch.device(device)
        self.channels_last, self.dtype = channels_last, dtype

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch):
        images, labels, bad = batch
        return (*to_device(images, labels, self.device, self.channels_last, self.dtype), bad)

    def __iter__(self):
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._to_device(batch)
            return
        stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        batches = iter(self.loader)

        def load_next():
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(stream):
                return self._to_device(batch)

        upcoming = load_next()
        while upcoming is not None:
            main.wait_stream(stream)  # the copy of this batch is finished before the model reads it
            images, labels, bad = upcoming
            # Made on the side stream, used on the main one: keep the allocator from reusing their memory
            # for the next copy before the main stream is done with them.
            images.record_stream(main)
            labels.record_stream(main)
            upcoming = load_next()
            yield images, labels, bad


# --------------------------------------------------------------------------------------------------------
# Counting bad images


def parse_max_bad(value, total: int) -> int:
    """--max-bad-images -> the number of distinct unreadable files tolerated.

    A plain integer is a count ("10" -> 10, "0" -> none tolerated); a decimal number in [0, 1] is a fraction
    of the `total` images, rounded down ("0.001" with 1,281,167 images -> 1281)."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:  # also rejects nan
        raise DataError(f"--max-bad-images {value!r} is not valid: give a count of unreadable images to "
                        f"tolerate as a whole number (e.g. 10, or 0 to stop at the first one), or a fraction of "
                        f"the {total} images between 0 and 1 (e.g. 0.001).")
    return math.floor(fraction * total)


def why_unreadable(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """A short reason why `path` cannot be read, found by opening it with PIL again (used in messages)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with _pil_guard(max_pixels), Image.open(path) as image:
            image.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "PIL reads it; the transform failed on it"


class BadImageCounter:
    """Collects the unreadable files reported with each batch and stops the run beyond a threshold.

        counter = BadImageCounter(parse_max_bad(args.max_bad_images, len(train_set)), total=len(train_set))
        for images, labels, bad in loader:
            for path in counter.update(bad):   # the newly seen ones, to name in the log
                log(f"skipped unreadable image {path}")

    Files are counted once however often they are met (every epoch meets them again). update() raises
    DataError once more than `max_bad` distinct files were seen by this process. With several ranks each
    counts what it reads; to stop all ranks together, call update(bad, check=False) and, at log time,
    check(count) with the count summed (or maxed) over ranks. state_dict() / load_state_dict() carry the
    list through a resume (plain types)."""

    def __init__(self, max_bad: int, total: int | None = None):
        self.max_bad, self.total = max_bad, total
        self.paths: dict[str, None] = {}  # an ordered set: first seen first

    @property
    def count(self) -> int:
        return len(self.paths)

    def update(self, bad_paths, check: bool = True) -> list[str]:
        new = [p for p in dict.fromkeys(bad_paths) if p not in self.paths]
        self.paths.update(dict.fromkeys(new))
        if check:
            self.check()
        return new

    def check(self, count: int | None = None) -> None:
        count = self.count if count is None else count
        if count <= self.max_bad:
            return
        of_total = f" out of {self.total}" if self.total else ""
        first = "; ".join(f"{p} ({why_unreadable(p)})" for p in list(self.paths)[:5])
        raise DataError(
            f"Too many unreadable images: {count} distinct files{of_total} could not be read, more than the "
            f"{self.max_bad} allowed by --max-bad-images. Each was skipped and replaced by another image. "
            f"The first ones: {first}. Repair or remove these files (check the copy of the data set), or "
            f"raise the threshold with --max-bad-images N (a count) or --max-bad-images 0.001 (a fraction of "
            f"the training set).")

    def state_dict(self) -> dict:
        return {"paths": list(self.paths), "max_bad": self.max_bad}

    def load_state_dict(self, state: dict) -> None:
        self.paths = dict.fromkeys(state["paths"])
