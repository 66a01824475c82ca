"""Memory of the sample index in forked DataLoader workers; time to build the index and to scan a tree.

ImageNet's train split is 1,281,167 files in 1000 class folders. Three measurements:

* **index**: a synthetic listing shaped like ImageNet's (1000 classes ``n0xxxxxxx``, ~1281 files each named
  ``<wnid>_<number>.JPEG``, in arbitrary order as a directory listing gives them) goes through the code path
  ImageFolder uses after its scandir calls, ``SampleIndex.from_listings`` (sorting included). Side by side
  in the same process: the list of (path, label) tuples imnet.run.data kept before (torchvision's ``samples``).
* **workers**: a torch DataLoader with ``--workers`` forked workers reads every sample's path and label once,
  in a random order (as training does), over each representation in turn. Each worker reads its private
  memory (Private_Clean + Private_Dirty of /proc/self/smaps_rollup) when it starts and after each batch;
  the growth is the copy-on-write cost of reading the index (plus a little bookkeeping of its own).
* **scan**: ``--scan-files`` empty files (100 classes x 1000 by default) under a temporary folder, listed by
  the real scanning code (``folders.find_classes`` + ``ImageFolder``), next to torchvision's ``make_dataset``;
  extrapolated linearly to ``--samples``. The files were just written, so this is the warm-cache cost (the
  CPU side); a cold disk or a network file system adds its own latency per directory entry.

    python bench/memory.py [--samples 1281167] [--workers 8] [--scan-files 100000] [--batch 4096]

Targets: ``worker_growth_mb`` <= 30 (the largest worker's growth, compact index) and ``index_build_s`` a few
seconds. The last line printed is a JSON object with the figures. Linux only (/proc, fork).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torchvision.datasets.folder import make_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imnet.run import folders  # noqa: E402
from imnet.run.data import ImageFolder, SampleIndex  # noqa: E402

ROOT = "/data/imagenet/train"  # the synthetic paths are never opened
IMAGENET_TRAIN = 1281167


def private_kb(pid="self") -> int:
    """Private_Clean + Private_Dirty of a process, in kB: the memory no other process shares."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def synthetic_listing(samples: int, classes: int, seed: int = 0):
    """[(wnid, [("", names)])]: one flat folder per class, names in a shuffled (directory-listing) order."""
    rng = np.random.default_rng(seed)
    wnids = sorted({f"n{n:08d}" for n in rng.choice(15_000_000, size=classes, replace=False)})
    counts = [samples // classes + (k < samples % classes) for k in range(classes)]
    listing = []
    for wnid, count in zip(wnids, counts):
        numbers = rng.choice(max(20_000, 2 * count), size=count, replace=False)
        listing.append((wnid, [("", [f"{wnid}_{n}.JPEG" for n in numbers.tolist()])]))
    return listing


def old_samples(listing):
    """The representation before SampleIndex: torchvision's `samples`, a list of (path, label) tuples."""
    return [(os.path.join(ROOT, wnid, name), label)
            for label, (wnid, dirs) in enumerate(listing) for _, names in dirs for name in sorted(names)]


class Reader(torch.utils.data.Dataset):
    """__getitem__ reads sample i's path and label and returns a tiny number."""

    def __init__(self, n, get):
        self.n, self.get = n, get

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        path, label = self.get(i)
        return len(path) + label


_BASE = {}


def _init(worker_id):
    _BASE["kb"] = private_kb()  # before this worker reads any sample


def _collate(values):
    """Runs in the worker after each batch: (worker id, growth so far in kB, checksum of the batch)."""
    info = torch.utils.data.get_worker_info()
    return info.id, private_kb() - _BASE["kb"], sum(values)


def worker_growth(dataset, workers: int, batch: int, seed: int = 0):
    """Read every sample once through a forked DataLoader; returns ({worker: growth MB}, checksum, seconds)."""
    order = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers,
                                         collate_fn=_collate, worker_init_fn=_init,
                                         multiprocessing_context="fork", prefetch_factor=2)
    growth, checksum, start = {}, 0, time.perf_counter()
    for worker, kb, total in loader:
        growth[worker] = max(growth.get(worker, 0), kb / 1024)
        checksum += total
    return growth, checksum, time.perf_counter() - start


def scan(files: int, classes: int = 100):
    """Seconds to list a generated tree of `files` empty files with imnet's scanning code and torchvision's."""
    top = tempfile.mkdtemp(prefix="imnet_scan_")
    try:
        root = os.path.join(top, "train")
        per_class = files // classes
        for c in range(classes):
            wnid = f"n{1440764 + 7919 * c:08d}"
            os.makedirs(os.path.join(root, wnid))
            for k in range(per_class):
                open(os.path.join(root, wnid, f"{wnid}_{k}.JPEG"), "wb").close()
        t0 = time.perf_counter()
        names = folders.find_classes(root)
        t1 = time.perf_counter()
        dataset = ImageFolder(root, names, transform=None)
        t2 = time.perf_counter()
        reference = make_dataset(root, {c: i for i, c in enumerate(names)}, folders.IMG_EXTENSIONS)
        t3 = time.perf_counter()
        assert list(dataset.samples) == reference and not dataset.skipped
        return {"files": len(dataset), "classes": len(names), "find_classes_s": t1 - t0, "imnet_s": t2 - t0,
                "torchvision_s": t3 - t2}
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=IMAGENET_TRAIN)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--scan-files", type=int, default=100_000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose

    listing = synthetic_listing(args.samples, args.classes)
    before = private_kb()
    start = time.perf_counter()
    index = SampleIndex.from_listings(listing)
    index_s = time.perf_counter() - start
    index_parent_mb = (private_kb() - before) / 1024
    before = private_kb()
    start = time.perf_counter()
    samples = old_samples(listing)
    list_s = time.perf_counter() - start
    list_parent_mb = (private_kb() - before) / 1024
    del listing
    assert len(index) == len(samples) == args.samples
    for i in np.random.default_rng(1).integers(0, len(index), 2000).tolist() + [0, len(index) - 1]:
        assert (os.path.join(ROOT, index.relpath(i)), index.label(i)) == samples[i]

    print(f"{args.samples} synthetic ImageNet-shaped paths, {args.classes} classes; {args.workers} forked "
          f"DataLoader workers read every sample once in random order (batch {args.batch})")
    expected = sum(len(p) + label for p, label in samples)
    rows = {}
    for name, get, build_s, parent_mb in (
            ("SampleIndex (imnet)", lambda i: (os.path.join(ROOT, index.relpath(i)), index.label(i)), index_s,
             index_parent_mb),
            ("list of tuples (before)", samples.__getitem__, list_s, list_parent_mb)):
        growth, checksum, seconds = worker_growth(Reader(len(index), get), args.workers, args.batch)
        assert checksum == expected, "the workers did not read every sample exactly once"
        rows[name] = {"build_s": build_s, "parent_mb": parent_mb, "growth": growth, "read_s": seconds}
    print(f"{'representation':26s} {'build s':>8s} {'parent MB':>10s} {'max worker growth MB':>21s} "
          f"{'mean MB':>8s} {'read s':>7s}")
    for name, r in rows.items():
        g = list(r["growth"].values())
        print(f"{name:26s} {r['build_s']:8.2f} {r['parent_mb']:10.1f} {max(g):21.1f} {sum(g) / len(g):8.1f} "
              f"{r['read_s']:7.1f}")
    new, old = (rows[k] for k in rows)
    new_max, old_max = max(new["growth"].values()), max(old["growth"].values())
    print(f"index arrays: {index.nbytes / 2**20:.1f} MB shared by all workers; the list costs each worker "
          f"{old_max:.0f} MB, {old_max / max(new_max, 0.1):.0f}x the index's {new_max:.1f} MB "
          f"({args.workers} workers: {args.workers * old_max / 1024:.2f} GB against {args.workers * new_max:.0f} MB)")

    s = scan(args.scan_files)
    factor = args.samples / s["files"]
    print(f"scan of {s['files']} empty files in {s['classes']} class folders (warm cache): imnet "
          f"{s['imnet_s']:.2f} s (find_classes {s['find_classes_s']:.2f} s + ImageFolder index), torchvision "
          f"make_dataset {s['torchvision_s']:.2f} s; extrapolated to {args.samples}: imnet "
          f"{s['imnet_s'] * factor:.1f} s, torchvision {s['torchvision_s'] * factor:.1f} s")

    result = {
        "samples": args.samples, "workers": args.workers,
        "worker_growth_mb": round(new_max, 2),
        "index_build_s": round(index_s, 3),
        "index_mb": round(index.nbytes / 2**20, 1),
        "list_worker_growth_mb": round(old_max, 1),
        "list_build_s": round(list_s, 3),
        "growth_ratio_list_over_index": round(old_max / max(new_max, 0.1), 1),
        "parent_mb": {"index": round(index_parent_mb, 1), "list": round(list_parent_mb, 1)},
        "worker_growth_mb_each": {"index": [round(v, 2) for _, v in sorted(new["growth"].items())],
                                  "list": [round(v, 1) for _, v in sorted(old["growth"].items())]},
        "scan_files": s["files"], "scan_s": round(s["imnet_s"], 3),
        "scan_torchvision_s": round(s["torchvision_s"], 3),
        "scan_extrapolated_s": round(s["imnet_s"] * factor, 2),
        "targets_met": new_max <= 30 and index_s <= 10,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
