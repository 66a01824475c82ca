"""Predict the classes of unlabelled images with a checkpoint's (or an export's) model, classes and policy::

    python -m imnet.tools.predict --checkpoint runs/r50/best.pt photos/ a.jpg "more/*.jpg" --csv predictions.csv
    python -m imnet.tools.predict --weights-file model.pth photos/       # an export, with its sidecar
"""

from __future__ import annotations

import csv
import glob
import os
import sys

import torch

from imnet.run import config, dist, folders
from imnet.tools import export
from imnet.run.atomic import check_writable
from imnet.run.data import cap_workers, why_unreadable
from imnet.run.errors import UsageError, message_of
from imnet.run.flags import COUNT, WORKERS, WORKERS_HELP, Parser, add_eval_policy_flags
from imnet.transforms import normalize


def build_parser() -> Parser:
    p = Parser(prog="python -m imnet.tools.predict",
               description="Predict the classes of images with a train.py checkpoint or an export.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (recursive) or glob patterns")
    g = p.add_argument_group("weights")
    g.add_argument("--checkpoint", metavar="PATH", help="a train.py checkpoint (best.pt / last.pt)")
    g.add_argument("--use-ema", action="store_true", help="the checkpoint's EMA weights")
    g.add_argument("--weights-file", metavar="FILE", help="an export of python -m imnet.tools.export, with its sidecar")
    g = p.add_argument_group("output")
    g.add_argument("--topk", type=COUNT, default=5, help="classes per image (at most the number of classes)")
    g.add_argument("--csv", metavar="PATH", help="write the predictions as CSV: file, class1, prob1, ...")
    g = p.add_argument_group("speed")
    g.add_argument("--batch-size", "-b", type=COUNT, default=64, help="images per batch")
    g.add_argument("--workers", "-j", type=WORKERS, default=None,
                   help="decoding processes (0: in this process)" + WORKERS_HELP)
    g.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, mps...")
    add_eval_policy_flags(p.add_argument_group("evaluation policy (default: the checkpoint's)"))
    return p


def find_images(items: list[str]) -> list[str]:
    """The files, in the order given: a folder's in ImageFolder order, a glob pattern's sorted."""
    files = []
    for item in items:
        if os.path.isdir(item):
            found = [os.path.join(item, rel) for rel in folders.list_images(item)]
            if not found:
                raise UsageError(f"the folder {item} holds no image file (extensions "
                                 f"{', '.join(folders.IMG_EXTENSIONS)}, in any case, searched recursively).")
            files += found
        elif os.path.exists(item):
            files.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise UsageError(f"the pattern {item!r} matches no file.")
            files += found
        else:
            raise UsageError(f"{item} does not exist: give image files, folders or glob patterns.")
    return files


class Files(torch.utils.data.Dataset):
    """``ds[i] -> (uint8 CHW or None, i, why it could not be read or None)`` for the files ``paths``."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(self.paths[i]), i, None
        except Exception:  # anything a broken file can make PIL/torchvision raise; the reason is found below
            return None, i, why_unreadable(self.paths[i])


def collate(batch):
    """-> (the readable images as one uint8 batch, or None; their indices; [(index, why)] of the others)."""
    good = [(image, i) for image, i, _ in batch if image is not None]
    images = torch.stack([image for image, _ in good]) if good else None
    return images, [i for _, i in good], [(i, why) for image, i, why in batch if image is None]


def load_source(args):
    if bool(args.checkpoint) == bool(args.weights_file):
        raise UsageError("give the weights: --checkpoint RUN/best.pt (a train.py checkpoint), or --weights-file "
                         "FILE for an export of python -m imnet.tools.export (one of them).")
    if args.use_ema and args.weights_file:
        raise UsageError("--use-ema applies to --checkpoint only; drop it (python -m imnet.tools.export --ema "
                         "exports the EMA).")
    name, state, classes, policy, info = export.load_weights(args.checkpoint, args.weights_file,
                                                             "ema" if args.use_ema else "model")
    if classes is None:
        raise UsageError(f"{args.weights_file} has no sidecar ({export.sidecar_path(args.weights_file)}): export "
                         f"the checkpoint with python -m imnet.tools.export, or give it with --checkpoint.")
    return name, state, classes, policy, info.get("image_size")


def run(args) -> int:
    name, state, classes, stored, train_size = load_source(args)
    policy = config.resolve_eval_policy(config.policy_keys(vars(args)), stored)
    files = find_images(args.images)
    if args.csv:
        check_writable(args.csv, "--csv")
    device = dist.init(args.device).device
    model = export.build_model(name, state, len(classes), policy, train_size)[0].to(device)
    topk = min(args.topk, len(classes))
    workers, note = cap_workers(args.workers)
    if note:
        dist.eprint0(f"imnet.tools.predict: note: {note}")
    loader = torch.utils.data.DataLoader(Files(files, policy.transform()), batch_size=args.batch_size,
                                         num_workers=workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda")
    dist.eprint0(f"imnet.tools.predict: {name}, {len(classes)} classes, {len(files)} files; policy: "
                 f"{policy.describe()}")
    rows, bad = {}, 0
    with torch.inference_mode():
        for images, indices, unreadable in loader:
            for i, why in unreadable:
                bad += 1
                dist.eprint0(f"imnet.tools.predict: skipped unreadable file {folders.display_path(files[i])}: {why}")
            if images is None:
                continue
            x = normalize(images.to(device, non_blocking=True), policy.mean, policy.std)
            top_prob, top_idx = model(x).float().softmax(dim=1).topk(topk, dim=1)
            for i, idx, prob in zip(indices, top_idx.tolist(), top_prob.tolist()):
                rows[i] = [(classes[c], p) for c, p in zip(idx, prob)]
                print(f"{files[i]}: " + ", ".join(f"{c} ({p:.4f})" for c, p in rows[i]), flush=True)
    if not rows:
        raise UsageError(f"none of the {len(files)} files could be read as an image (each is named above).")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file"] + [v for j in range(1, topk + 1) for v in (f"class{j}", f"prob{j}")])
            for i in sorted(rows):
                writer.writerow([files[i]] + [v for c, p in rows[i] for v in (c, f"{p:.6f}")])
    dist.eprint0(f"imnet.tools.predict: {len(rows)} images predicted"
                 + (f", {bad} unreadable files skipped" if bad else "") + (f"; CSV: {args.csv}" if args.csv else ""))
    return 0


def main(argv=None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as e:
        print(f"imnet.tools.predict: error: {message_of(e)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
