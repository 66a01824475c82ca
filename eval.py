"""Evaluate a classifier on an ImageNet-style validation folder, exactly, and benchmark its inference.

    python eval.py --checkpoint RUN/best.pt --data /datasets/imagenet
    torchrun --nproc_per_node=8 eval.py --checkpoint RUN/best.pt --data /datasets/imagenet --use-ema
    python eval.py --model resnet50 --weights-file resnet50-0676ba61.pth --data /datasets/imagenet/val \\
        --resize-size 256 --crop-size 224
    python eval.py --model resnet50 --bench --batch-sizes 1 32 256 --amp bf16 --channels-last

What it guarantees, and why each piece is there:

- **The numbers are exact.** Every validation image is evaluated exactly once, however many processes run
  (``imnet.data.EvalSampler`` shards without padding, unlike ``DistributedSampler``, which repeats images to
  even out the shards), and accuracies are ratios of counts summed over all ranks, not means of per-rank
  means. The count is printed so it can be checked against the size of the set (50,000 for ImageNet-1k).
- **The policy is the training run's.** A checkpoint carries the model name, the class names in index
  order, and the evaluation policy (resize, crop, interpolation, normalization) that train.py validated
  with; eval.py uses them unless told otherwise, prints the policy in force, and warns when a flag changes
  it ("resize policy mismatch", "normalization mismatch"). Changing the test resolution is legitimate
  (Touvron et al. 2019, "Fixing the train-test resolution discrepancy", show that a larger test crop often
  helps), but the figure is then not the one of the training log, and a paper must say so.
- **Classes cannot be mixed up.** The data's class folders must be exactly the checkpoint's classes;
  otherwise the run is refused and the difference listed. Labels follow the checkpoint's class order.
- **Loading cannot run code.** Files are read with ``torch.load(weights_only=True)`` only.
- **Like training, but faster.** Workers decode to uint8; batches are moved to the device and normalized
  there (4x less to copy than float32); ``torch.inference_mode``; optional autocast, channels_last and
  torch.compile.

Test-time augmentation (``--tta``) averages the softmax *probabilities* of the views, as AlexNet did
(Krizhevsky et al. 2012, Sec. 4.1: "averaging the predictions made by the network's softmax layer on the
ten patches"). Averaged probabilities are again a probability distribution -- the prediction of the
ensemble of views -- so the reported loss stays an honest cross-entropy, and a view that is confidently
wrong cannot outvote the others by the size of its logits, which averaging logits (a geometric mean of
probabilities) allows. ``flip`` adds the horizontal mirror of the centre crop (2 views); ``10crop`` takes the
four corners and the centre of the resized image, each with its mirror (10 views). ``--batch-size`` counts
images, so 10crop runs 10 times as many forward passes per batch.

Bad input (missing or corrupt checkpoint, classes that differ, a flat folder of images given as
``--data``, contradictory flags) is reported in one paragraph on stderr with exit status 2, no traceback.
"""

import argparse
import csv
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from imnet import checkpoint, data, dist, losses, metrics, models, transforms

TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class EvalError(Exception):
    """Bad input: the message says what is wrong and how to fix it (printed without a traceback, exit 2)."""


# --------------------------------------------------------------------------------------------- flags
def build_parser():
    parser = argparse.ArgumentParser(
        description="Evaluate a checkpoint on a validation folder (top-1/top-5, crop policies, TTA, "
                    "distributed under torchrun), or benchmark inference with --bench.")
    g = parser.add_argument_group("weights")
    g.add_argument("--checkpoint", metavar="PATH", help="a train.py checkpoint (best.pt / last.pt): model, classes "
                   "and evaluation policy are read from it")
    g.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    g.add_argument("--model", metavar="NAME", help="torchvision model name, with --weights-file (or --bench)")
    g.add_argument("--weights-file", metavar="FILE", help="a plain state_dict for --model (e.g. torchvision's "
                   "published weights); classes are the sorted class folders of the data")
    g.add_argument("--num-classes", type=int, default=1000, help="outputs of --model for --bench without weights")

    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", help="folder holding val/<class>/..., or the val folder itself")
    g.add_argument("--batch-size", type=int, default=128, help="images per batch per process")
    g.add_argument("--workers", type=int, default=4, help="decoding processes per rank (0: in the main process)")

    g = parser.add_argument_group("evaluation policy (default: the checkpoint's)")
    g.add_argument("--resize-size", type=int, help="shorter side after resizing")
    g.add_argument("--crop-size", type=int, help="centre crop size (any resolution: 224, 288, 384...)")
    g.add_argument("--crop-pct", type=float, help="resize = floor(crop / crop_pct), e.g. 0.875: 224 -> 256")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="resize interpolation")
    g.add_argument("--mean", type=float, nargs=3, help="normalization mean (RGB, 0-1 scale)")
    g.add_argument("--std", type=float, nargs=3, help="normalization std (RGB, 0-1 scale)")
    g.add_argument("--tta", choices=list(TTA_VIEWS), default="none",
                   help="test-time augmentation; softmax probabilities of the views are averaged")

    g = parser.add_argument_group("speed")
    g.add_argument("--amp", choices=list(AMP_DTYPES), default="none",
                   help="autocast dtype (default none: the fp32 figure; bf16 is for GPUs)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda...")

    g = parser.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", help="write the results as a JSON object")
    g.add_argument("--predictions", metavar="PATH", help="write a CSV: file, true class, top-5 classes and "
                   "probabilities")
    g.add_argument("--show", type=int, default=10, help="how many classes / confused pairs to print")

    g = parser.add_argument_group("benchmark")
    g.add_argument("--bench", action="store_true", help="time inference on random input instead (no data needed)")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128], help="batch sizes to time")
    g.add_argument("--bench-warmup", type=int, default=5, help="untimed batches first (allocator, cudnn, compile)")
    g.add_argument("--bench-iters", type=int, default=20, help="timed batches per batch size")
    return parser


def check_flags(args):
    """Contradictions that argparse cannot express."""
    if args.checkpoint and args.weights_file:
        raise EvalError("--checkpoint and --weights-file both give weights; use one of them.")
    if args.weights_file and not args.model:
        raise EvalError("--weights-file needs --model NAME (a plain state_dict does not say which network it is).")
    if not (args.checkpoint or args.weights_file or (args.bench and args.model)):
        raise EvalError("nothing to evaluate: give --checkpoint PATH, or --model NAME --weights-file FILE "
                        "(--bench also accepts --model NAME alone, with random weights).")
    if args.use_ema and not args.checkpoint:
        raise EvalError("--use-ema reads the EMA weights of a train.py checkpoint; give --checkpoint.")
    if not args.bench and not args.data:
        raise EvalError("--data ROOT is required (the folder holding val/, or the val folder itself).")
    if args.resize_size and args.crop_pct:
        raise EvalError("--resize-size and --crop-pct both set the resize; give one of them.")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise EvalError(f"--crop-pct {args.crop_pct} must be in (0, 1]: it is crop / resize.")
    if args.bench and (args.predictions or args.tta != "none"):
        raise EvalError("--bench times plain forward passes; --predictions and --tta apply to evaluation only.")
    for flag in ("batch_size", "resize_size", "crop_size", "bench_iters"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be positive, not {value}.")
    if args.bench and min(args.batch_sizes) < 1:
        raise EvalError("--batch-sizes must be positive.")


# ------------------------------------------------------------------------------------ weights & classes
def load_source(args):
    """Where the weights come from: (model name, state_dict or None, classes or None, stored policy, info).

    ``info`` holds what the report should say about the source (file, which weights, recorded metrics).
    """
    if args.checkpoint:
        ckpt = checkpoint.load(args.checkpoint)  # weights_only=True; CheckpointError if missing / corrupt
        if "model" not in ckpt or "classes" not in ckpt or not isinstance(ckpt.get("args"), dict):
            hint = (" It looks like a plain state_dict: use --model NAME --weights-file FILE."
                    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()) else "")
            raise EvalError(f"{args.checkpoint} is not a train.py checkpoint (it has no 'model', 'classes' and "
                            f"'args' entries).{hint}")
        name = ckpt["args"].get("model")
        if args.model and args.model != name:
            raise EvalError(f"--model {args.model} contradicts the checkpoint, which holds a {name}.")
        state = ckpt["model"]
        if args.use_ema:
            if not ckpt.get("ema"):
                raise EvalError(f"{args.checkpoint} has no EMA weights (the run was trained without --ema); "
                                "drop --use-ema.")
            state = ckpt["ema"]["module"]
        info = {"checkpoint": os.path.abspath(args.checkpoint), "weights": "ema" if args.use_ema else "model",
                "recorded": ckpt.get("metrics"), "image_size": ckpt["args"].get("train_crop_size")}
        return name, state, list(ckpt["classes"]), ckpt.get("eval_policy"), info
    if args.weights_file:
        state = checkpoint.load(args.weights_file)
        for key in ("model", "state_dict"):  # a checkpoint from train.py or another codebase
            if isinstance(state.get(key), dict):
                state = state[key]
        return args.model, state, None, None, {"weights_file": os.path.abspath(args.weights_file),
                                                "weights": "file"}
    return args.model, None, None, None, {"weights": "random"}


def build_model(name, state, num_classes, image_size):
    """The torchvision model with the weights loaded strictly (every key, every shape)."""
    try:
        model = models.build_model(name, num_classes, image_size=image_size or 224)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:600]
            raise EvalError(f"the weights do not fit {name} with {num_classes} classes: {detail}") from None
    return model.eval()


def resolve_val_dir(path):
    """``ROOT/val`` if it exists, else ``ROOT`` itself; a flat folder of images is refused with the fix."""
    if not os.path.isdir(path):
        raise EvalError(f"--data {path} is not a directory.")
    val_dir = os.path.join(path, "val") if os.path.isdir(os.path.join(path, "val")) else path
    if val_dir == path and os.path.isdir(os.path.join(path, "train")):
        raise EvalError(f"--data {path} has a train/ folder but no val/ folder; pass the root that holds val/, "
                        "or the val folder itself.")
    entries = [e for e in os.scandir(val_dir) if not e.name.startswith(".")]
    images = [e for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if images and not any(e.is_dir() for e in entries):
        raise EvalError(
            f"{val_dir} holds {len(images)} images directly, with no class folders (like ILSVRC2012's flat "
            f"validation folder), so their labels are unknown. Arrange them into <class>/ folders first, e.g. "
            f"python -m imnet.prepare val --flat {val_dir} --labels LOC_val_solution.csv --out ROOT/val "
            f"(or the devkit's ground-truth list with --synsets), then pass --data ROOT.")
    return val_dir


def _listing(names, show=10):
    names = sorted(names)
    return ", ".join(names[:show]) + (f" (and {len(names) - show} more)" if len(names) > show else "")


def check_classes(data_classes, model_classes, val_dir, source):
    """Refuse a data set whose classes are not exactly the model's: the labels would silently mean other things."""
    missing, extra = set(model_classes) - set(data_classes), set(data_classes) - set(model_classes)
    if missing or extra:
        parts = [f"{len(missing)} classes of the checkpoint are not in the data: {_listing(missing)}"] if missing else []
        parts += [f"{len(extra)} class folders are not classes of the checkpoint: {_listing(extra)}"] if extra else []
        raise EvalError(f"the classes of {val_dir} differ from those {source} was trained on ("
                        + "; ".join(parts) + "). Evaluate on a folder with exactly the training classes.")


# --------------------------------------------------------------------------------------------- policy
def resolve_policy(args, stored):
    """The evaluation policy in force: the checkpoint's, overridden by the flags given.

    Resize precedence: ``--resize-size``; else ``--crop-pct`` (resize = floor(crop / crop_pct)); else, when only
    ``--crop-size`` changes, the stored crop/resize ratio is kept (a 224/256 run evaluated at 288 resizes to
    329); else the stored resize; else the classic 0.875 (224 -> 256).
    """
    stored = stored or {}
    crop = args.crop_size or stored.get("crop_size") or 224
    crop_pct = args.crop_pct
    if crop_pct is None and args.resize_size is None and args.crop_size and stored.get("resize_size"):
        crop_pct = stored["crop_size"] / stored["resize_size"]
    if args.resize_size or crop_pct or args.crop_size or not stored.get("resize_size"):
        resize, crop = transforms.resolve_eval_sizes(crop, args.resize_size, crop_pct)
    else:
        resize = stored["resize_size"]
    if resize < crop:
        raise EvalError(f"resize {resize} is smaller than crop {crop}: the centre crop would need padding. "
                        "Use --resize-size >= --crop-size (or --crop-pct <= 1).")
    return {
        "resize_size": int(resize),
        "crop_size": int(crop),
        "crop_pct": crop / resize,
        "interpolation": args.interpolation or stored.get("interpolation") or "bilinear",
        "mean": [float(v) for v in (args.mean or stored.get("mean") or transforms.IMAGENET_MEAN)],
        "std": [float(v) for v in (args.std or stored.get("std") or transforms.IMAGENET_STD)],
    }


def describe_policy(p, tta):
    return (f"policy: resize {p['resize_size']} (shorter side, {p['interpolation']}) -> centre crop "
            f"{p['crop_size']} (crop_pct {p['crop_pct']:.4f}); mean ({', '.join(f'{v:.4g}' for v in p['mean'])}), "
            f"std ({', '.join(f'{v:.4g}' for v in p['std'])}); tta {tta} ({TTA_VIEWS[tta]} view"
            f"{'s' if TTA_VIEWS[tta] > 1 else ''} per image)")


def policy_warnings(p, stored):
    """The two classic pitfalls, relative to the policy train.py validated with."""
    if not stored:
        return []
    warnings = []
    now = (p["resize_size"], p["crop_size"], p["interpolation"])
    then = (stored.get("resize_size"), stored.get("crop_size"), stored.get("interpolation"))
    if now != then:
        warnings.append(f"resize policy mismatch: evaluating with resize {now[0]} / crop {now[1]} / {now[2]}, but "
                        f"training validated with resize {then[0]} / crop {then[1]} / {then[2]}; the figure is "
                        "not comparable with the training log.")
    close = lambda a, b: b is not None and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))
    if not (close(p["mean"], stored.get("mean")) and close(p["std"], stored.get("std"))):
        warnings.append(f"normalization mismatch: mean {p['mean']} std {p['std']} differ from the model's "
                        f"training normalization, mean {stored.get('mean')} std {stored.get('std')}.")
    return warnings


# ------------------------------------------------------------------------------------ test-time views
class TenCrop:
    """File or PIL image -> the 10-crop views of one image, stacked along the height: uint8 (3, 10*crop, crop).

    The shorter side is resized to ``resize_size`` (PIL, antialiased), then the four corner crops and the
    centre crop of ``crop_size`` are taken from the whole resized image (torchvision's ``FiveCrop``), each
    followed by its own horizontal mirror. The centre view is torchvision's ``Resize`` + ``CenterCrop``, the
    single-crop policy (``transforms.eval_transform`` resamples only the crop box, and may decode JPEGs at a
    reduced scale, so its pixels can differ by a rounding step; this slower, accuracy-first mode resizes the
    whole image, as the corners need it). torchvision's ``TenCrop`` instead takes the five crops of the
    mirrored image: when the margin (width - crop) is odd, its mirrored centre view is one pixel off the
    mirror of the centre view; here every view has its exact mirror.

    ``views(image)`` returns them as (10, 3, crop, crop). ``__call__`` tiles them into one tall CHW image
    because ImageFolder and collate carry one uint8 CHW image per sample; ``make_views`` undoes the tiling on
    the device.
    """

    def __init__(self, crop_size, resize_size, interpolation="bilinear"):
        self.crop_size, self.resize_size = crop_size, resize_size
        self.interpolation = InterpolationMode(interpolation)

    def views(self, image):
        if not isinstance(image, Image.Image):
            with Image.open(image) as f:
                image = f.convert("RGB")
        image = TF.resize(image.convert("RGB"), self.resize_size, interpolation=self.interpolation)
        x = TF.pil_to_tensor(image)
        c, (h, w) = self.crop_size, x.shape[1:]
        top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        boxes = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), (top, left)]
        crops = torch.stack([x[:, i:i + c, j:j + c] for i, j in boxes])
        return torch.cat([crops, crops.flip(-1)])

    def __call__(self, image):
        views = self.views(image)
        return views.transpose(0, 1).reshape(3, 10 * self.crop_size, self.crop_size).contiguous()


def make_views(images, tta):
    """uint8 batch -> (views (N*V, 3, H, W) grouped image by image, V).

    ``images`` is (N, 3, H, W), or for 10crop the tiles of ``TenCrop``, (N, 3, 10*H, W).
    """
    if tta == "10crop":
        n, _, tall, w = images.shape
        return images.view(n, 3, 10, tall // 10, w).transpose(1, 2).flatten(0, 1), 10
    if tta == "flip":
        return torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1), 2
    return images, 1


def predict(model, images, tta, policy, amp_dtype=None, channels_last=False):
    """Scores for ranking and the probabilities of one uint8 batch: (scores (N, C), probs (N, C), V).

    Without TTA the scores are the logits themselves (the exact figures train.py computes); with TTA both
    are the views' averaged softmax probabilities, computed in float32.
    """
    views, v = make_views(images, tta)
    x = transforms.normalize(views, policy["mean"], policy["std"], channels_last=channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(x).float()
    if v == 1:
        return logits, logits.softmax(dim=1), 1
    probs = logits.softmax(dim=1).view(images.shape[0], v, -1).mean(dim=1)
    return probs, probs, v


# -------------------------------------------------------------------------------------------- evaluate
@torch.inference_mode()
def evaluate(model, loader, device, policy, tta, num_classes, amp_dtype=None, channels_last=False):
    """Sums over this rank's shard, reduced over all ranks.

    Returns (metrics dict, confusion matrix (C, C) int64 [true, predicted] summed over ranks, this rank's
    (top5 indices, top5 probabilities, labels) in sampler order, bad file paths seen by this rank, views).
    Nothing is read back to the host inside the loop.
    """
    meter = metrics.Meter(device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    k = min(5, num_classes)
    top_idx, top_prob, all_labels, bad, views = [], [], [], [], TTA_VIEWS[tta]
    for images, labels, bad_paths in loader:
        bad += bad_paths
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        scores, probs, views = predict(model, images, tta, policy, amp_dtype, channels_last)
        if tta == "none":
            loss = losses.cross_entropy(scores, labels)
        else:  # cross-entropy of the averaged distribution; tiny floor so that p = 0 gives a large, finite loss
            loss = F.nll_loss(probs.clamp_min(torch.finfo(torch.float32).tiny).log(), labels)
        meter.update(loss, scores, labels, n=labels.shape[0])
        ranked = scores.topk(k, dim=1).indices
        confusion += torch.bincount(labels * num_classes + ranked[:, 0], minlength=num_classes ** 2)
        top_idx.append(ranked)
        top_prob.append(probs.gather(1, ranked))
        all_labels.append(labels)
    result = meter.compute(distributed=True)
    dist.all_reduce_sum(confusion)
    cat = lambda xs, shape: torch.cat(xs).cpu() if xs else torch.zeros(shape)
    mine = (cat(top_idx, (0, k)).long(), cat(top_prob, (0, k)), cat(all_labels, (0,)).long())
    return result, confusion.view(num_classes, num_classes).cpu(), mine, bad, views


def class_report(confusion, classes, show):
    """Per-class top-1 (percent) and the most frequent confusions, from the confusion matrix."""
    counts = confusion.sum(dim=1)
    correct = confusion.diagonal()
    per_class = {name: {"top1": 100.0 * int(correct[i]) / max(int(counts[i]), 1), "count": int(counts[i])}
                 for i, name in enumerate(classes)}
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(show, off.numel()))
    pairs = [{"true": classes[i // len(classes)], "predicted": classes[i % len(classes)], "count": int(n),
              "share_of_true": 100.0 * int(n) / max(int(counts[i // len(classes)]), 1)}
             for n, i in zip(values.tolist(), flat.tolist()) if n > 0]
    return per_class, pairs


def write_predictions(path, dataset, order, top_idx, top_prob, labels, classes):
    """CSV rows in dataset order: the file (relative to the val folder), its true class, the top-5 with probabilities."""
    rows = sorted(zip(order, top_idx.tolist(), top_prob.tolist(), labels.tolist()))
    k = top_idx.shape[1]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "true_class"] + [f"{h}{j}" for j in range(1, k + 1) for h in ("class", "prob")])
        for index, idx, prob, label in rows:
            file = os.path.relpath(dataset.samples[index][0], dataset.root)
            writer.writerow([file, classes[label]] + [v for c, p in zip(idx, prob) for v in (classes[c], f"{p:.6f}")])


# ------------------------------------------------------------------------------------------- benchmark
def forward_flops(model, crop_size, device):
    """Forward FLOPs for one image, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    FlopCounterMode counts 2 FLOPs per multiply-accumulate (a matmul of m x k by k x n is 2mkn). Papers and
    model cards usually quote multiply-accumulates under the name "FLOPs" (ResNet-50: 4.1 G), so both are
    reported: ``gflops`` and ``gmacs`` = gflops / 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, crop_size, crop_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def percentile(sorted_values, q):
    """Nearest-rank percentile (no interpolation): the smallest value with at least q% of the data at or below it."""
    return sorted_values[max(math.ceil(q / 100 * len(sorted_values)) - 1, 0)]


@torch.inference_mode()
def benchmark(model, policy, batch_sizes, device, amp_dtype, channels_last, warmup, iters):
    """For each batch size: ``warmup`` untimed batches, then ``iters`` timed ones of uint8 -> normalize -> forward.

    Each timed batch ends with a device synchronisation, so a latency is the full time of one batch;
    throughput is images / total timed time.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for bs in batch_sizes:
        images = torch.randint(0, 256, (bs, 3, policy["crop_size"], policy["crop_size"]), dtype=torch.uint8,
                               device=device)
        for _ in range(warmup):
            predict(model, images, "none", policy, amp_dtype, channels_last)
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            predict(model, images, "none", policy, amp_dtype, channels_last)
            sync()
            times.append(time.perf_counter() - start)
        times.sort()
        rows.append({"batch_size": bs, "img_per_s": bs * iters / sum(times), "p50_ms": 1e3 * percentile(times, 50),
                     "p95_ms": 1e3 * percentile(times, 95), "iters": iters})
    return rows


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def run_bench(args, name, model, policy, device, amp_dtype):
    params = sum(p.numel() for p in model.parameters())
    gflops = forward_flops(model, policy["crop_size"], device)  # before compile: count the eager graph
    if args.compile:
        model = torch.compile(model)
    rows = benchmark(model, policy, args.batch_sizes, device, amp_dtype, args.channels_last, args.bench_warmup,
                     args.bench_iters)
    report = {"model": name, "device": device_name(device), "params": params, "gflops": gflops, "gmacs": gflops / 2,
              "crop_size": policy["crop_size"], "amp": args.amp, "channels_last": args.channels_last,
              "compile": args.compile, "results": rows}
    dist.print0(f"{name}: {params / 1e6:.2f} M parameters, {gflops:.3f} GFLOPs ({gflops / 2:.3f} GMACs) per "
                f"{policy['crop_size']}px image; {report['device']}, amp {args.amp}, channels_last "
                f"{args.channels_last}, compile {args.compile}")
    dist.print0(f"{'batch':>7} {'img/s':>10} {'p50 ms':>9} {'p95 ms':>9}")
    for r in rows:
        dist.print0(f"{r['batch_size']:>7} {r['img_per_s']:>10.1f} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f}")
    return report


# ------------------------------------------------------------------------------------------------ main
def resolve_device(flag):
    """``auto``/``cuda`` mean this process's GPU under torchrun (cuda:LOCAL_RANK), so ranks never share one."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if flag == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"--device {flag}: CUDA is not available here; use --device cpu.")
    return f"cuda:{local_rank}" if flag == "cuda" else flag


def run(args, info):
    name, state, classes, stored, source = load_source(args)
    policy = resolve_policy(args, stored)
    amp_dtype = AMP_DTYPES[args.amp]
    label = args.checkpoint or args.weights_file or f"random {name}"

    if args.bench:
        num_classes = len(classes) if classes else args.num_classes
        model = build_model(name, state, num_classes, source.get("image_size") or policy["crop_size"])
        model = model.to(info.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
        report = run_bench(args, name, model, policy, info.device, amp_dtype)
        if args.json and info.is_main:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return 0

    val_dir = resolve_val_dir(args.data)
    data_classes = data.find_classes(val_dir)
    if classes is None:
        classes = data_classes  # torchvision's ImageNet weights index the classes in sorted wnid order, like find_classes
    else:
        check_classes(data_classes, classes, val_dir, label)
    model = build_model(name, state, len(classes), source.get("image_size") or policy["crop_size"])
    if getattr(model, "image_size", policy["crop_size"]) != policy["crop_size"]:
        raise EvalError(f"{name} takes {model.image_size}px inputs only (its position embedding has a fixed size); "
                        f"use --crop-size {model.image_size}.")
    model = model.to(info.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    if args.compile:
        model = torch.compile(model)

    if args.tta == "10crop":
        transform = TenCrop(policy["crop_size"], policy["resize_size"], policy["interpolation"])
    else:
        transform = transforms.eval_transform(crop_size=policy["crop_size"], resize_size=policy["resize_size"],
                                              interpolation=policy["interpolation"])
    dataset = data.ImageFolder(val_dir, classes, transform)
    sampler = data.EvalSampler(len(dataset), info.world_size, info.rank)
    order = [index for index, _ in sampler]  # the loader keeps this order, so row j of our outputs is order[j]
    loader = data.build_loader(dataset, sampler, args.batch_size, args.workers,
                               pin_memory=info.device.type == "cuda")

    dist.print0(f"eval.py: {name} ({source['weights']} weights of {label}), {len(classes)} classes, "
                f"{len(dataset)} images in {val_dir}, {info.world_size} process(es) on {info.device}")
    dist.print0(describe_policy(policy, args.tta))
    for warning in policy_warnings(policy, stored):
        dist.eprint0(f"eval.py: warning: {warning}")

    start = time.perf_counter()
    result, confusion, mine, bad, views = evaluate(model, loader, info.device, policy, args.tta, len(classes),
                                                   amp_dtype, args.channels_last)
    elapsed = time.perf_counter() - start
    gathered = dist.gather_object((order, *mine, bad))  # predictions are small: top-5 per image
    if not info.is_main:
        return 0

    bad = sorted({p for g in gathered for p in g[4]})
    if result["count"] != len(dataset):  # the exactness guarantee; a failure here is a bug, not bad input
        raise RuntimeError(f"counted {result['count']} images but the set has {len(dataset)}")
    per_class, pairs = class_report(confusion, classes, args.show)
    report = {"top1": result["top1"], "top5": result["top5"], "loss": result["loss"], "count": result["count"],
              "model": name, **source, "data": os.path.abspath(val_dir), "policy": policy, "tta": args.tta,
              "views_per_image": views, "amp": args.amp, "world_size": info.world_size,
              "seconds": elapsed, "bad_images": bad, "per_class": per_class, "confused_pairs": pairs}
    print_report(report, args.show)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.predictions:
        merged = [torch.cat([g[i] for g in gathered]) for i in (1, 2, 3)]
        write_predictions(args.predictions, dataset, [i for g in gathered for i in g[0]], *merged, classes)
    return 0


def print_report(r, show):
    print(f"top-1 {r['top1']:.3f}%  top-5 {r['top5']:.3f}%  loss {r['loss']:.4f}  images {r['count']}  "
          f"({r['seconds']:.1f} s)")
    recorded = r.get("recorded") or {}
    key = "ema_val_top1" if r["weights"] == "ema" else "val_top1"
    if recorded.get(key) is not None:
        print(f"training recorded {key} {recorded[key]:.3f}% at epoch {recorded.get('epoch')}")
    if r["bad_images"]:
        print(f"eval.py: warning: {len(r['bad_images'])} unreadable images were replaced by other samples (as "
              f"train.py's validation does), so the figures are not those of the intact set; their prediction "
              f"rows describe the replacements. Repair them: {_listing(r['bad_images'])}", file=sys.stderr)
    ranked = sorted(r["per_class"].items(), key=lambda kv: (kv[1]["top1"], kv[0]))
    title = "per-class top-1" if len(ranked) <= show else f"per-class top-1, the {show} worst of {len(ranked)}"
    print(f"{title}: " + ", ".join(f"{c} {v['top1']:.1f}% ({v['count']})" for c, v in ranked[:show]))
    if r["confused_pairs"]:
        print("most confused (true -> predicted): " + ", ".join(
            f"{p['true']} -> {p['predicted']} {p['count']} ({p['share_of_true']:.1f}%)" for p in r["confused_pairs"]))


def main(argv=None):
    """Command line entry point; returns the exit status (0 done, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        info = dist.init(resolve_device(args.device))
        try:
            return run(args, info)
        finally:
            dist.cleanup()
    except (EvalError, data.DataError, checkpoint.CheckpointError) as e:
        dist.eprint0(f"eval.py: error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
