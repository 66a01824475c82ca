"""Datasets, samplers and loaders: from a list of image files to normalized batches on the device.

    TrainSampler -> (index, epoch) -> ImageFolder[(index, epoch)] in a worker: the transform decodes and
    augments one file into a uint8 CHW tensor -> collate: one uint8 NCHW batch (+ labels, + bad paths)
    -> pinned memory -> to_device: copy, then float + normalize on the device.

A sample's augmentation depends on (seed, epoch, index) only, whatever the workers, ranks or resumes; an
unreadable file is replaced by another sample and counted (BadImageCounter) up to ``--max-bad-images``.
Folder layout checks are imnet.run.folders'; docs/design.md gives the reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import signal
import time
import warnings

import numpy as np
import torch
from PIL import Image

from imnet.run.folders import DataError, display_path, order_listing, short_list, walk_images
from imnet.run import seeds
from imnet.run.flags import max_bad_images
from imnet.run.signals import PREEMPTION_SIGNALS
from imnet.transforms import IMAGENET_MEAN, IMAGENET_STD, load_rgb, normalize

MAX_IMAGE_PIXELS = 2**27  # decompression-bomb bound (~400 MB decoded)


def augment_seed(seed: int, epoch: int, index: int, attempt: int = 0, repeat: int = 0) -> int:
    """``attempt`` counts the replacements of an unreadable file, ``repeat`` the copies of a repeated image."""
    return seeds.derive(seeds.AUGMENT, seed, epoch, index, attempt, repeat)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


@contextlib.contextmanager
def _pil_guard(max_pixels: int):
    """Refuse images above `max_pixels` inside the block (PIL's warning band included); restored on exit."""
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


class SampleIndex:
    """Every sample's path (relative to the root, os.fsencode'd, NUL-terminated, concatenated in `blob`; path i
    is blob[offsets[i]:offsets[i + 1] - 1]) and label, in read-only buffers that forked workers share without
    copying (a list of tuples would be copied as its reference counts change). Not a numpy 'S' array: it pads
    every path to the longest one and strips trailing NULs. Build it with from_listings, which sorts."""

    def __init__(self, blob: bytes, offsets: np.ndarray, labels: np.ndarray):
        if len(offsets) != len(labels) + 1 or (len(labels) and offsets[-1] != len(blob)):
            raise ValueError("offsets must hold one more entry than labels and end at the length of blob")
        self.blob = bytes(blob)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.labels = np.ascontiguousarray(labels, dtype=np.int32)
        self.offsets.flags.writeable = False
        self.labels.flags.writeable = False

    @classmethod
    def from_listings(cls, listings) -> "SampleIndex":
        """`listings`: (class folder name, walk_images listing) in label order; files in order_listing's order."""
        paths: list[str] = []
        counts: list[int] = []
        for name, listing in listings:
            prefix = name + os.sep
            files = order_listing(listing)
            paths += [prefix + f for f in files]
            counts.append(len(files))
        blob = os.fsencode("\0".join(paths) + "\0") if paths else b""
        del paths  # the per-sample strings are gone before any worker is forked
        ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0)
        if len(ends) != sum(counts):  # impossible unless a name holds a NUL byte, which no file system allows
            raise ValueError("a file name contains a NUL byte")
        offsets = np.concatenate([np.zeros(1, np.int64), ends + 1])
        labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return cls(blob, offsets, labels)

    def __len__(self) -> int:
        return len(self.labels)

    def _check(self, i: int) -> int:
        n = len(self.labels)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        return i + n if i < 0 else int(i)

    def relpath(self, i: int) -> str:
        i = self._check(i)
        return os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1] - 1])

    def label(self, i: int) -> int:
        return int(self.labels[self._check(i)])

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.offsets.nbytes + self.labels.nbytes

    def record(self) -> dict:
        """The size and the sha256 of the sorted (relative path, label) list, which checkpoints keep: a resume
        checks that an epoch's permutation still means the same images."""
        h = hashlib.sha256(self.blob)
        h.update(self.labels.astype("<i4").tobytes())
        return {"images": len(self), "digest": "sha256:" + h.hexdigest()}


class ImageFolder(torch.utils.data.Dataset):
    """``ds[(index, epoch)] -> (uint8 CHW, label, the paths that could not be read for it)``: torchvision's samples
    in its order, minus what folders.walk_images skips (in `skipped`). The transform runs under torch's CPU RNG
    seeded with `augment_seed`, then restored; `crop_size_at(epoch)` (optional, picklable) gives its crop_size."""

    def __init__(self, root, classes, transform, seed: int = 0, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_tries: int = 32, crop_size_at=None):
        root = os.fspath(root)
        self.root = os.fsdecode(root) if isinstance(root, bytes) else root
        self.classes = list(classes)
        self.transform = transform
        self.crop_size_at = crop_size_at
        self.seed = _check_seed(seed)
        self.max_pixels = max_pixels
        self.max_tries = max_tries
        self.skipped: list[tuple[str, str]] = []
        self.index = SampleIndex.from_listings(
            (name, walk_images(os.path.join(self.root, name), self.skipped)) for name in self.classes)
        counts = self.index.class_counts(len(self.classes))
        empty = [name for name, count in zip(self.classes, counts) if count == 0]
        if empty:
            raise DataError(f"{len(empty)} class folders of {display_path(self.root)!r} are missing or hold no "
                            f"image file: {short_list(empty)}. Check the data root with check_data_root first.")

    def __len__(self) -> int:
        return len(self.index)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.index.relpath(i))

    def label(self, i: int) -> int:
        return self.index.label(i)

    @property
    def targets(self) -> np.ndarray:
        return self.index.labels

    @property
    def samples(self) -> list[tuple[str, int]]:
        """torchvision's `samples`, built at each access (for tests and one-off scripts)."""
        return [(self.path(i), self.label(i)) for i in range(len(self))]

    def _read(self, path: str, seed: int, epoch: int) -> torch.Tensor:
        generator = torch.default_generator  # CPU only: torch.manual_seed would also reseed every GPU
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            with _pil_guard(self.max_pixels):
                if self.crop_size_at is None:
                    return self.transform(path)
                return self.transform(path, crop_size=self.crop_size_at(epoch))
        finally:
            generator.set_state(state)

    def __getitem__(self, key):
        index, epoch, repeat = (*key, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
        bad: list[str] = []
        for attempt in range(self.max_tries):
            seed = augment_seed(self.seed, epoch, index, attempt, repeat)
            sample = index if attempt == 0 else seed % len(self.index)
            path, label = self.path(sample), self.label(sample)
            try:
                image = self._read(path, seed, epoch)
            except Exception as exc:  # anything a broken file can make PIL/torchvision raise
                if file_error(path, self.max_pixels) is None:
                    what = display_path(str(exc)).rstrip(".")
                    raise DataError(
                        f"The transform failed on {display_path(path)} with {type(exc).__name__}: {what}; the file "
                        f"decodes, so it is not the file's fault and it is not replaced as an unreadable image. "
                        f"Fix the settings of the transform ({display_path(repr(self.transform))}): --auto-augment, "
                        f"--ra-magnitude, the crop and resize sizes.") from exc
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
            f"Could not read sample {index} of {display_path(self.root)!r} nor any of the {self.max_tries - 1} "
            f"replacements tried ({short_list(bad, 4)}); the last error was {type(error).__name__}: "
            f"{display_path(str(error))}. Most files seem unreadable: check the copy of the data set.") from error


class FakeData(torch.utils.data.Dataset):
    """--fake-data: ImageFolder's items, from a bank of random images made once; label = index % num_classes."""

    def __init__(self, num_classes: int, image_size: int, length: int, seed: int = 0, bank: int = 16):
        self.classes = [f"class_{k}" for k in range(num_classes)]
        self.length = length
        generator = torch.Generator().manual_seed(_check_seed(seed))
        self.images = torch.randint(0, 256, (bank, 3, image_size, image_size), dtype=torch.uint8,
                                    generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return self.images[index % len(self.images)], index % len(self.classes), ()


def _check_rank(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")


class TrainSampler(torch.utils.data.Sampler):
    """Yields (index, epoch): rank r takes ``perm[r::num_replicas]`` of epoch e's permutation; drop_last truncates
    to a multiple of num_replicas, else the start of the permutation pads. ``repeats`` = N > 1 (--ra-reps, DeiT's
    RASampler): each index N times in a row, items (index, epoch, repeat), the epoch no longer. set_start(k) skips
    this rank's first k samples (mid-epoch resume) until a pass runs to its end."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = True, repeats: int = 1):
        super().__init__()
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.repeats = int(repeats)
        _check_rank(num_replicas, rank)
        if num_samples < num_replicas:
            raise DataError(f"The training set has {num_samples} images, fewer than the {num_replicas} "
                            f"processes. Use fewer processes or more data.")
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

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of the indices, shared by all ranks."""
        generator = torch.Generator().manual_seed(seeds.derive(seeds.SHUFFLE, self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator).numpy()

    def keys(self, epoch: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (indices, repeats) in `epoch` from its `start`-th sample on. The ranks deal out the sequence
        perm[0] x N, perm[1] x N, ... (N = repeats): rank r reads positions p = r + R t, p taken modulo its length
        (its beginning pads when not drop_last; p stays below twice the length)."""
        positions = np.arange(start, self.per_rank, dtype=np.int64) * self.num_replicas + self.rank
        positions %= self.num_samples * self.repeats
        return self.order(epoch)[positions // self.repeats], positions % self.repeats

    def __iter__(self):
        epoch = self.epoch
        indices, repeats = self.keys(epoch, self.start)
        for index, repeat in zip(indices, repeats):
            yield (int(index), epoch) if self.repeats == 1 else (int(index), epoch, int(repeat))
        self.start = 0  # the resumed pass is complete: the next one is a whole epoch

    def __len__(self) -> int:
        return self.per_rank - self.start


class EvalSampler(torch.utils.data.Sampler):
    """Yields (index, 0) of the contiguous shard [floor(n r / R), floor(n (r+1) / R)): no padding, so shards may
    differ by one (or be empty) and the evaluation loop must reduce only at the end, never per batch."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        super().__init__()
        _check_rank(num_replicas, rank)
        self.begin = num_samples * rank // num_replicas
        self.end = num_samples * (rank + 1) // num_replicas

    def __iter__(self):
        return iter([(i, 0) for i in range(self.begin, self.end)])

    def __len__(self) -> int:
        return self.end - self.begin


def collate(batch):
    """[(uint8 CHW, label, bad paths)] -> (uint8 NCHW, int64 labels, bad paths), in shared memory in a worker."""
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
    torch.set_num_threads(1)  # the parallelism is the workers'; stated here so it does not depend on torch's


def _preemptible_worker_init(worker_id: int) -> None:
    """Ignore the stop signals sent to the whole group (the main process decides, then `shutdown_workers`) and
    unblock them (train.py forks under signals.PreemptionSignals.deferred)."""
    _worker_init(worker_id)
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)


def shutdown_workers(loader) -> None:
    """Stop a loader's workers now: at exit multiprocessing would wait forever for one that ignores SIGTERM."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


MAX_DEFAULT_WORKERS = 16  # decoding many more per process rarely pays: the node's cores are shared


def cpus_and_processes() -> tuple[int, int]:
    """(the CPUs this process may use, the node's processes that share them: LOCAL_WORLD_SIZE, else 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return cores, max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cap_workers(workers: int | None) -> tuple[int, str | None]:
    """--workers -> (the count to use, a note when a given count was lowered). None, the default: the CPUs this
    process may use, shared by the node's LOCAL_WORLD_SIZE processes, less one for the main process (at least 1,
    at most MAX_DEFAULT_WORKERS). A given count is lowered to 4 per CPU core so shared."""
    cores, processes = cpus_and_processes()
    if workers is None:
        return min(MAX_DEFAULT_WORKERS, max(1, cores // processes - 1)), None
    limit = max(1, 4 * cores // processes)
    if workers <= limit:
        return workers, None
    shared = f", shared by {processes} processes" if processes > 1 else ""
    return limit, f"--workers {workers} is more than 4 per CPU core ({cores} cores here{shared}): using {limit}"


def describe_workers(given: int | None, used: int) -> str:
    """The dry run's line: the workers per process (`used`, cap_workers' count for --workers `given`) and why."""
    if given == used:
        return f"workers: {used} per process (--workers {given} as given)"
    cores, processes = cpus_and_processes()
    why = [f"{cores} CPU{'s' * (cores != 1)} this process may use",
           f"{processes} local process{'es' * (processes != 1)}"]
    if given is not None:
        return f"workers: {used} per process (--workers {given} lowered to 4 per CPU: {', '.join(why)})"
    why.append("1 left for the main process")
    share = cores // processes - 1
    why += ["at least 1"] if share < 1 else [f"at most {MAX_DEFAULT_WORKERS}"] if share > MAX_DEFAULT_WORKERS else []
    return f"workers: {used} per process ({', '.join(why)})"


def decode_rate(dataset: ImageFolder, count: int = 64) -> tuple[float, int]:
    """-> (images/s, images timed): the dataset's items (decode + training transform) of epoch 0, spread over the
    set, read here on one thread as a worker reads them (torch's threads restored after), one warm-up first."""
    n = min(count, len(dataset))
    picks = [i * len(dataset) // n for i in range(n)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's setting (_worker_init): the figure is per core
    try:
        dataset[(picks[-1], 0)]  # warm-up: imports, first-call allocations
        start = time.perf_counter()
        for i in picks:
            dataset[(i, 0)]
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return n / seconds, n


def describe_rate(dataset: ImageFolder, workers: int, size: int) -> str:
    """The dry run's loader line (--dry-run loader): decode_rate per core, and x `workers` per process."""
    rate, n = decode_rate(dataset)
    rate = round(rate, 1)  # as printed, so that the product reads right
    return (f"loader: {rate} images/s per core ({n} training images decoded and transformed at {size} px on "
            f"this process); x {workers} worker{'s' * (workers != 1)} = {rate * workers:.0f} images/s per process, "
            f"the most its training step can be fed")


def build_loader(dataset, sampler, batch_size: int, workers: int, pin_memory: bool = False,
                 drop_last: bool = False, prefetch_factor: int | None = None,
                 preemptible: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with `collate` and persistent workers, about 8 batches in flight by default (at least 2 per
    worker). preemptible: the caller must `shutdown_workers` before exiting."""
    if workers > 0 and prefetch_factor is None:
        prefetch_factor = max(2, math.ceil(8 / workers))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, drop_last=drop_last, persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=(_preemptible_worker_init if preemptible else _worker_init) if workers > 0 else None,
        generator=torch.Generator())  # private: the loader's (unused) base-seed draws must not move the global RNG


def to_device(images: torch.Tensor, labels: torch.Tensor, device, channels_last: bool = False,
              dtype: torch.dtype = torch.float32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Copy a uint8 batch and its labels to `device` (non_blocking) and normalize there -> (images, labels)."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    return normalize(images, mean=mean, std=std, dtype=dtype, channels_last=channels_last), labels


def images_on(loader, device, channels_last: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    for images, labels, *_ in loader:
        yield to_device(images, labels, device, channels_last=channels_last, mean=mean, std=std)[0]


def parse_max_bad(value, total: int) -> int:
    """--max-bad-images -> the count it allows out of ``total`` images (`imnet.run.flags.max_bad_images`)."""
    try:
        return max_bad_images(value, total)
    except argparse.ArgumentTypeError as e:
        raise DataError(f"--max-bad-images {e}.") from None


def file_error(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why `path` cannot be decoded as the transforms decode it, in printable words; None when it decodes."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with _pil_guard(max_pixels):
            load_rgb(path).load()
    except Exception as exc:
        return display_path(f"{type(exc).__name__}: {exc}")  # the error may quote a non-UTF-8 file name
    return None


def check_readable(dataset, split: str, count: int = 16) -> list[tuple[str, str]]:
    """Decode ``count`` files spread over an ImageFolder: half or more unreadable -> DataError; fewer -> their
    (path, reason), for a warning."""
    if not isinstance(dataset, ImageFolder) or len(dataset) == 0:
        return []
    n = len(dataset)
    picks = sorted({i * n // min(count, n) for i in range(min(count, n))})
    bad = [(dataset.path(i), reason) for i in picks
           if (reason := file_error(dataset.path(i), dataset.max_pixels)) is not None]
    if 2 * len(bad) >= len(picks):
        shown = "; ".join(f"{display_path(p)} ({why})" for p, why in bad[:3])
        raise DataError(f"The {split} set {display_path(dataset.root)!r} looks unreadable: {len(bad)} of the "
                        f"{len(picks)} files checked cannot be decoded: {shown}{' ...' if len(bad) > 3 else ''}. "
                        f"Check the copy of the data set (an interrupted download, files of another format).")
    return bad


def why_unreadable(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    return file_error(path, max_pixels) or "it decodes; the transform failed on it"


class BadImageCounter:
    """The distinct unreadable files of the batches (update() returns the new ones, to log); DataError beyond
    `max_bad`. Several ranks stop together with update(bad, check=False), then check(the count over ranks)."""

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
        first = "; ".join(f"{display_path(p)} ({why_unreadable(p)})" for p in list(self.paths)[:5])
        raise DataError(
            f"Too many unreadable images: {count} distinct files{of_total} could not be read, more than the "
            f"{self.max_bad} allowed by --max-bad-images; the first ones: {first}. Repair or remove these files, "
            f"or raise --max-bad-images N (a count) or --max-bad-images 0.001 (a fraction of the training set).")

    def state_dict(self) -> dict:
        return {"paths": list(self.paths), "max_bad": self.max_bad}

    def load_state_dict(self, state: dict) -> None:
        self.paths = dict.fromkeys(state["paths"])
