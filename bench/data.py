"""Input pipeline benchmark: imnet's transforms against torchvision's standard ones, side by side.

Same files, same order, one thread, in one process. Each round walks the files in chunks; every chunk is
run through every pipeline in turn (the order rotates), so a noisy machine slows all of them alike; the
best round of each pipeline is reported.

* train: torchvision's standard pipeline (PIL open + convert, RandomResizedCrop(224), RandomHorizontalFlip,
  ToTensor, Normalize, default collate) against imnet's ``train_transform`` (uint8 out) + a uint8 batch +
  ``normalize`` on the (here CPU) device: both end in the same normalized float batch. Both are seeded
  alike per chunk, and imnet draws its random numbers in torchvision's order, so they cut the same boxes.
* eval: Resize(256) + CenterCrop(224) + ToTensor + Normalize against imnet's ``eval_transform``.
* decode only: PIL (open + load, RGB) and libjpeg-turbo (``torchvision.io.decode_jpeg``); the faster of
  the two is the decode-only bound. imnet's train pipeline is reported as a fraction of it for the
  workers' share (decode to uint8 batch: what a data worker does; on a GPU run normalization is on the
  GPU), and also with the CPU normalization included.
* DataLoader, ``--workers`` 0 and 2, batches per second, over a plain Dataset of the file list.

    python bench/data.py [--data DIR] [--rounds 3] [--limit N] [--workers 0 2] [--batch-size 32]

The last line printed is a JSON object with the figures.
"""
import argparse
import io
import json
import os
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imnet.fastjpeg import draft_factor  # noqa: E402
from imnet.transforms import (IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize, rrc_params,  # noqa: E402
                              train_transform)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "imagenet-sample", "val"))
IMAGE_EXT = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def list_images(root):
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        files += [os.path.join(d, n) for n in sorted(names)
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXT)]
    return files


def pil_loader(path):  # torchvision.datasets.folder.pil_loader
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


# --------------------------------------------------------------------------- per-chunk pipelines

def standard(tf):
    """torchvision's way: float normalized tensors per image in the worker, default collate (stack)."""
    def run(paths):
        return torch.stack([tf(pil_loader(p)) for p in paths])
    return run


def imnet(tf, device_normalize=True):
    """imnet's way: uint8 per image, copied into one preallocated uint8 batch, normalized as a batch
    (``device_normalize=False``: only the workers' share, the uint8 batch)."""
    def run(paths):
        first = tf(paths[0])
        batch = torch.empty((len(paths),) + tuple(first.shape), dtype=torch.uint8)
        batch[0].copy_(first)
        for i, p in enumerate(paths[1:], 1):
            batch[i].copy_(tf(p))
        return normalize(batch) if device_normalize else batch
    return run


def decode_pil(paths):
    for p in paths:
        im = Image.open(p)
        if im.mode != "RGB":
            im = im.convert("RGB")
        im.load()


def decode_turbo(paths):
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        try:
            decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # not a JPEG libjpeg-turbo takes (CMYK, PNG data): PIL, as imnet does
            Image.open(io.BytesIO(data)).convert("RGB")


def time_side_by_side(files, pipelines, rounds, chunk, seed=0):
    """-> {name: best seconds over rounds for all files}."""
    names = list(pipelines)
    best = {n: float("inf") for n in names}
    for r in range(rounds):
        total = {n: 0.0 for n in names}
        for c, start in enumerate(range(0, len(files), chunk)):
            paths = files[start:start + chunk]
            k = (c + r) % len(names)
            for n in names[k:] + names[:k]:
                torch.manual_seed(seed + start)
                t0 = time.perf_counter()
                pipelines[n](paths)
                total[n] += time.perf_counter() - t0
        for n in names:
            best[n] = min(best[n], total[n])
    return best


# --------------------------------------------------------------------------- DataLoader

class Files(torch.utils.data.Dataset):
    def __init__(self, files, transform, loader=None):
        self.files, self.transform, self.loader = files, transform, loader

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        src = self.files[i] if self.loader is None else self.loader(self.files[i])
        return self.transform(src)


def uint8_collate(batch):
    out = torch.empty((len(batch),) + tuple(batch[0].shape), dtype=torch.uint8)
    for i, x in enumerate(batch):
        out[i].copy_(x)
    return out


def loader_rate(dataset, batch_size, workers, collate=None, device_normalize=False):
    """Batches per second over one pass, after the first batch (worker start-up excluded)."""
    kw = dict(batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
              persistent_workers=workers > 0)
    if collate is not None:
        kw["collate_fn"] = collate
    if workers > 0:
        kw["prefetch_factor"] = 2
    loader = torch.utils.data.DataLoader(dataset, **kw)
    torch.manual_seed(0)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        if device_normalize:
            b = normalize(b)
        n += 1
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder of images (searched recursively)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N files (0: all)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the files; the best one counts")
    ap.add_argument("--chunk", type=int, default=25, help="files per interleaved chunk")
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32, help="DataLoader batch size")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader worker counts")
    args = ap.parse_args()

    if not os.path.isdir(args.data):
        sys.exit(f"--data {args.data}: no such folder (give a folder of JPEGs, e.g. an ImageNet val/ folder)")
    files = list_images(args.data)
    if args.limit:
        files = files[:args.limit]
    if not files:
        sys.exit(f"--data {args.data}: no images found")
    torch.set_num_threads(1)
    c = args.crop_size
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    std_train = T.Compose([T.RandomResizedCrop(c), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    std_eval = T.Compose([T.Resize(int(c / 0.875)), T.CenterCrop(c), T.ToTensor(), norm])
    im_train, im_eval = train_transform(c), eval_transform(c)

    # how often the train crop allows a reduced-size decode (same boxes as the timed runs)
    torch.manual_seed(0)
    n_draft = 0
    for p in files:
        w, h = Image.open(p).size
        _, _, bh, bw = rrc_params(h, w)
        torch.rand(1)
        n_draft += draft_factor(bw, bh, c, c) > 1

    pipelines = {"decode PIL": decode_pil, "decode libjpeg-turbo": decode_turbo,
                 "train standard": standard(std_train), "train imnet": imnet(im_train),
                 "train imnet, uint8 only": imnet(im_train, device_normalize=False),
                 "eval standard": standard(std_eval), "eval imnet": imnet(im_eval)}
    # warm up caches (file system, allocator) once
    for f in pipelines.values():
        f(files[:8])
    t = time_side_by_side(files, pipelines, args.rounds, args.chunk)
    rate = {n: len(files) / s for n, s in t.items()}
    bound_name = max(("decode PIL", "decode libjpeg-turbo"), key=rate.get)
    bound = rate[bound_name]

    print(f"{len(files)} images from {args.data}; crop {c}; 1 thread; best of {args.rounds} interleaved rounds")
    print(f"train crops that allow a reduced-size decode: {n_draft}/{len(files)}")
    print(f"{'pipeline':32s} {'img/s':>8s} {'ms/img':>8s}  note")
    frac = rate["train imnet, uint8 only"] / bound
    notes = {"train imnet": f"x{rate['train imnet'] / rate['train standard']:.2f} standard "
                            f"(normalize on the device included)",
             "train imnet, uint8 only": f"worker side: {frac:.2f} of the decode bound, "
                                        f"{rate['train imnet, uint8 only'] / rate['decode PIL']:.2f} of PIL decode",
             "eval imnet": f"x{rate['eval imnet'] / rate['eval standard']:.2f} standard",
             bound_name: "decode-only bound"}
    for n in pipelines:
        print(f"{n:32s} {rate[n]:8.1f} {1e3 / rate[n]:8.3f}  {notes.get(n, '')}")

    loader_results = {}
    std_eval_tf = T.Compose([T.Resize(int(c / 0.875)), T.CenterCrop(c), T.ToTensor(), norm])
    for w in args.workers:
        for split, std_tf, im_tf in (("train", std_train, im_train), ("eval", std_eval_tf, im_eval)):
            rs = loader_rate(Files(files, std_tf, pil_loader), args.batch_size, w)
            ri = loader_rate(Files(files, im_tf), args.batch_size, w, uint8_collate, device_normalize=True)
            loader_results[f"loader_{split}_w{w}"] = {"standard": round(rs, 2), "imnet": round(ri, 2)}
            print(f"{'DataLoader ' + split + f' workers={w}':32s} batches/s (batch {args.batch_size}): "
                  f"standard {rs:6.2f}  imnet {ri:6.2f}  x{ri / rs:.2f}")

    result = {
        "images": len(files),
        "train_speedup": round(rate["train imnet"] / rate["train standard"], 3),
        "eval_speedup": round(rate["eval imnet"] / rate["eval standard"], 3),
        "train_fraction_of_decode": round(frac, 3),
        "train_fraction_of_decode_normalize_included": round(rate["train imnet"] / bound, 3),
        "train_fraction_of_pil_decode": round(rate["train imnet, uint8 only"] / rate["decode PIL"], 3),
        "decode_bound": bound_name,
        "img_per_s": {n: round(v, 1) for n, v in rate.items()},
        "train_draft_fraction": round(n_draft / len(files), 3),
        **loader_results,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
