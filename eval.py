"""Evaluate a classifier on an ImageNet-style validation folder, exactly, and benchmark its inference.

    torchrun --nproc_per_node=8 eval.py --checkpoint RUN/best.pt --data /datasets/imagenet --use-ema
    python eval.py --weights ResNet50_Weights.IMAGENET1K_V2 --data /datasets/imagenet   # a published number
    python eval.py --model resnet50 --bench --batch-sizes 1 32 256 --amp bf16 --channels-last
"""

import csv
import json
import os
import re
import sys
import time

import torch
import torchvision

from imnet.run import benchmark, config, data, dist, evaluation, folders, models
from imnet.tools import export
from imnet.run.atomic import check_writable, write_text
from imnet.run.config import AMP_DTYPES, EvalPolicy
from imnet.run.errors import UsageError, message_of
from imnet.run.flags import (AMP_CHOICES, COUNT, EVAL_POINTERS, NATURAL, WORKERS, WORKERS_HELP, Parser, Range,
                              add_eval_policy_flags, add_familiar)
from imnet.run.log import val_key
from imnet.run.tta import TTA_VIEWS, view_transform


def build_parser():
    parser = Parser(prog="eval.py", description="Evaluate a classifier on a validation folder, or time it (--bench).")
    g = parser.add_argument_group("weights")
    source, average = g.add_mutually_exclusive_group(), g.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH", help="a train.py checkpoint (best.pt / last.pt)")
    average.add_argument("--use-ema", "--model-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    average.add_argument("--use-swa", action="store_true", help="evaluate the checkpoint's SWA weights")
    g.add_argument("--model", metavar="NAME", help="torchvision model name, with --weights-file (or --bench)")
    source.add_argument("--weights-file", metavar="FILE", help="a state_dict for --model, or an export")
    source.add_argument("--weights", metavar="NAME", help="torchvision's weights, e.g. ResNet50_Weights.IMAGENET1K_V2")
    g.add_argument("--num-classes", type=COUNT, default=1000, help="outputs of --model for --bench without weights")

    g = parser.add_argument_group("data")
    g.add_argument("--data", "--data-path", "--data-dir", metavar="ROOT",
                   help="folder holding val/<class>/..., or the val folder itself")
    g.add_argument("--batch-size", "-b", type=COUNT, default=128, help="images per batch per process")
    g.add_argument("--workers", "-j", type=WORKERS, default=None,
                   help="decoding processes per rank (0: in the main process)" + WORKERS_HELP)

    g = parser.add_argument_group("evaluation policy (default: the checkpoint's)")
    add_eval_policy_flags(g, names={"val_crop_size": ("--crop-size",), "val_resize_size": ("--resize-size",),
                                    "val_interpolation": ("--interpolation",), "val_decode": ("--decode",)})
    g.add_argument("--mean", type=Range(float), nargs=3, help="normalization mean (RGB, 0-1 scale)")
    g.add_argument("--std", type=Range(float, 0.0, lo_open=True), nargs=3, help="normalization std (RGB, 0-1 scale)")
    g.add_argument("--tta", choices=list(TTA_VIEWS), default="none",
                   help="test-time augmentation; softmax probabilities of the views are averaged")

    g = parser.add_argument_group("speed")
    g.add_argument("--amp", choices=[*AMP_CHOICES, "auto"], default="none", nargs="?", const="auto",
                   help="autocast dtype (default none); a bare --amp chooses as train.py does")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK, else mps, else cpu), cpu, cuda, mps...")

    g = parser.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", help="write the results as a JSON object")
    g.add_argument("--predictions", metavar="PATH", help="write a CSV: file, true class, top-5 classes, probabilities")
    g.add_argument("--show", type=NATURAL, default=10, help="how many classes / confused pairs to print")

    g = parser.add_argument_group("benchmark")
    g.add_argument("--bench", action="store_true", help="time inference on random input instead (no data needed)")
    g.add_argument("--batch-sizes", type=COUNT, nargs="+", default=[1, 32, 128], help="batch sizes to time")
    g.add_argument("--bench-warmup", type=NATURAL, default=5, help="untimed batches first")
    g.add_argument("--bench-iters", type=COUNT, default=20, help="timed batches per batch size")
    return add_familiar(parser, EVAL_POINTERS)


def check_flags(args):
    if not (args.checkpoint or args.weights_file or args.weights or (args.bench and args.model)):
        raise UsageError("nothing to evaluate: give --checkpoint PATH, --weights NAME, or --model NAME "
                         "--weights-file FILE (--bench also accepts --model NAME alone, with random weights).")
    if (args.use_ema or args.use_swa) and not args.checkpoint:
        raise UsageError("--use-ema / --use-swa need --checkpoint (a train.py checkpoint).")
    if not args.bench and not args.data:
        raise UsageError("--data ROOT is required (the folder holding val/, or the val folder itself).")
    if args.bench and (args.predictions or args.tta != "none"):
        raise UsageError("--bench times plain forward passes; --predictions and --tta apply to evaluation only.")
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 writes the outputs
        for flag in ("json", "predictions"):
            if getattr(args, flag):
                check_writable(getattr(args, flag), f"--{flag}")


def load_source(args):
    """-> (model name, state_dict or None, classes or None, stored policy, what the report says of the source)."""
    if args.weights:
        try:
            weights = models.torchvision_weights(args.weights)
            name = args.model or models.weights_model(weights)
            if name is None:
                raise UsageError(f"no torchvision classification model has the weights {weights}; give --model.")
            models.torchvision_weights(args.weights, name)  # --model, when given, must be the weights' network
            t = weights.transforms()
            policy = EvalPolicy(t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
            state = models.download_weights(weights, args.weights, file_flag=f"--model {name} --weights-file")
        except ValueError as e:
            raise UsageError(str(e)) from None
        return name, state, None, policy, {"weights": args.weights, "categories": weights.meta.get("categories"),
                                           "published": weights.meta.get("_metrics", {}).get("ImageNet-1K")}
    if args.checkpoint or args.weights_file:
        kind = "ema" if args.use_ema else "swa" if args.use_swa else "model"
        source = export.load_weights(args.checkpoint, args.weights_file, kind, args.model)
        if source[0] is None:
            raise UsageError(f"--weights-file needs --model NAME: {args.weights_file} has no sidecar of an imnet "
                             f"export ({export.sidecar_path(args.weights_file)}).")
        return source
    return args.model, None, None, None, {"weights": "random"}


def build_model(name, state, num_classes, policy, source):
    model, done = export.build_model(name, state, num_classes, policy, source.get("image_size"))
    if done and done["interpolated"]:
        side = model.image_size // model.patch_size
        tokens = model.seq_length - side * side  # the class token, and a distilled DeiT's distillation token
        before = int((state["encoder.pos_embedding"].shape[1] - tokens) ** 0.5)
        dist.eprint0(f"eval.py: note: the position embedding was interpolated from a {before}x{before} to a "
                     f"{side}x{side} patch grid; fine-tune at {model.image_size}px with train.py --init-from.")
    return model


def check_classes(data_classes, model_classes, val_dir, source):
    missing, extra = set(model_classes) - set(data_classes), set(data_classes) - set(model_classes)
    if missing or extra:
        listing = lambda names: folders.short_list(sorted(names), 10)  # noqa: E731
        parts = [f"{len(missing)} classes of the checkpoint are not in the data: {listing(missing)}"] if missing else []
        parts += [f"{len(extra)} class folders are not classes of the checkpoint: {listing(extra)}"] if extra else []
        raise UsageError(f"the classes of {val_dir} differ from those {source} was trained on ("
                         + "; ".join(parts) + "). Evaluate on a folder with exactly the training classes.")


def resolve_policy(args, stored: EvalPolicy | None, name: str | None = None) -> EvalPolicy:
    """Over the training run's policy; weights without one get their model's normalisation (models.normalization)."""
    base = stored or (dict(zip(("mean", "std"), models.normalization(name)[:2])) if name else None)
    return config.resolve_eval_policy({**config.policy_keys(vars(args)), "mean": args.mean, "std": args.std}, base)


def policy_warnings(args, p: EvalPolicy, stored: EvalPolicy | None, name: str):
    """The policy's differences from the training run's; for weights without one, the parts no flag gave."""
    if stored:
        return config.policy_mismatch(p, stored, "the training run's validation")
    if not args.weights_file:
        return []
    parts = [f"crop {p.crop_size}"] if args.val_crop_size is None else []
    if args.val_resize_size is None and args.crop_pct is None:
        parts.append(f"resize {p.resize_size} (crop_pct {p.crop_pct:.3f})")
    if args.val_interpolation is None:
        parts.append(f"{p.interpolation} interpolation")
    if args.mean is None or args.std is None:
        parts.append(f"normalisation ({models.normalization(name)[2]})")
    return [f"{args.weights_file} has no sidecar ({export.sidecar_path(args.weights_file)}), so the policy's "
            f"{', '.join(parts)} are defaults. Give --val-resize-size, --val-crop-size, --val-interpolation, --mean, "
            f"--std as trained, or evaluate an export of its checkpoint."] if parts else []


def class_names(classes, val_dir):
    """{class: name} from a LOC_synset_mapping.txt in or above val_dir, else torchvision's for 1,000 wnids; or None."""
    for folder in (val_dir, os.path.dirname(os.path.abspath(val_dir))):
        mapping = os.path.join(folder, "LOC_synset_mapping.txt")
        if os.path.isfile(mapping):
            try:
                with open(mapping, encoding="utf-8") as f:
                    names = dict(line.rstrip("\n").split(" ", 1) for line in f if " " in line)
            except (OSError, ValueError) as e:  # ValueError: not UTF-8
                raise UsageError(f"Cannot read {mapping} (the class names of the report): {e}. Repair or "
                                 f"remove it.") from None
            return {c: names[c] for c in classes if c in names} or None
    if len(classes) == 1000 and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]  # no download
        return dict(zip(sorted(classes), categories))
    return None


def class_report(confusion, classes, show, names=None):
    """Per-class top-1 (percent) and the most frequent confusions, from the confusion matrix."""
    names = names or {}
    counts = confusion.sum(dim=1)
    correct = confusion.diagonal()
    per_class = {c: {"top1": 100.0 * int(correct[i]) / max(int(counts[i]), 1), "count": int(counts[i]),
                     **({"name": names[c]} if c in names else {})} for i, c in enumerate(classes)}
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(show, off.numel()))
    pairs = []
    for n, i in zip(values.tolist(), flat.tolist()):
        if n > 0:
            t, p = classes[i // len(classes)], classes[i % len(classes)]
            pairs.append({"true": t, "predicted": p, "count": int(n),
                          "share_of_true": 100.0 * int(n) / max(int(counts[i // len(classes)]), 1),
                          **({"true_name": names[t], "predicted_name": names[p]} if t in names and p in names
                             else {})})
    return per_class, pairs


def write_predictions(path, dataset, order, top_idx, top_prob, labels, classes, names=None):
    """Rows in dataset order; with ``names``, a name column after each class column."""
    rows = sorted(zip(order, top_idx.tolist(), top_prob.tolist(), labels.tolist()))
    k = top_idx.shape[1]
    cls = (lambda c: [classes[c], names.get(classes[c], "")]) if names else (lambda c: [classes[c]])
    head = (lambda h: [h, h.replace("class", "name")]) if names else (lambda h: [h])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *head("true_class")] + [v for j in range(1, k + 1)
                                                         for v in (*head(f"class{j}"), f"prob{j}")])
        for index, idx, prob, label in rows:
            file = os.path.relpath(dataset.path(index), dataset.root)
            writer.writerow([file, *cls(label)] + [v for c, p in zip(idx, prob) for v in (*cls(c), f"{p:.6f}")])


def print_report(r, show):
    print(f"top-1 {r['top1']:.3f}%  top-5 {r['top5']:.3f}%  loss {r['loss']:.4f}  images {r['count']}  "
          f"({r['seconds']:.1f} s)")
    published = r.get("published")
    if published:
        print(f"published by torchvision for {r['weights']}: acc@1 {published['acc@1']:.3f}%  acc@5 "
              f"{published['acc@5']:.3f}%  (measured - published: {r['top1'] - published['acc@1']:+.3f} / "
              f"{r['top5'] - published['acc@5']:+.3f})")
    recorded = r.get("recorded") or {}
    key = val_key(r["weights"] if r["weights"] in ("ema", "swa") else "model", "top1")
    if recorded.get(key) is not None:
        print(f"training recorded {key} {recorded[key]:.3f}% at epoch {recorded.get('epoch')}")
    if r["bad_images"]:
        print(f"eval.py: warning: {len(r['bad_images'])} unreadable images were replaced by other samples; repair "
              f"them: {folders.short_list(r['bad_images'], 10)}", file=sys.stderr)
    ranked = sorted(r["per_class"].items(), key=lambda kv: (kv[1]["top1"], kv[0]))
    title = "per-class top-1" if len(ranked) <= show else f"per-class top-1, the {show} worst of {len(ranked)}"
    named = lambda c, name: f"{c} ({name})" if name else c
    print(f"{title}: " + ", ".join(f"{named(c, v.get('name'))} {v['top1']:.1f}% ({v['count']})"
                                   for c, v in ranked[:show]))
    if r["confused_pairs"]:
        print("most confused (true -> predicted): " + ", ".join(
            f"{named(p['true'], p.get('true_name'))} -> {named(p['predicted'], p.get('predicted_name'))} "
            f"{p['count']} ({p['share_of_true']:.1f}%)" for p in r["confused_pairs"]))


def run_bench(args, name, model, policy, device):
    params = sum(p.numel() for p in model.parameters())
    gflops = benchmark.forward_flops(model, policy.crop_size, device)  # before compile: count the eager graph
    if args.compile:
        model = torch.compile(model)
    rows = benchmark.benchmark(model, policy, args.batch_sizes, device, AMP_DTYPES[args.amp], args.channels_last,
                               args.bench_warmup, args.bench_iters)
    report = {"model": name, "device": benchmark.device_name(device), "params": params, "gflops": gflops,
              "gmacs": gflops / 2, "crop_size": policy.crop_size, "amp": args.amp,
              "channels_last": args.channels_last, "compile": args.compile, "results": rows}
    dist.print0(f"{name}: {params / 1e6:.2f} M parameters, {gflops:.3f} GFLOPs ({gflops / 2:.3f} GMACs) per "
                f"{policy.crop_size}px image; {report['device']}, amp {args.amp}, channels_last "
                f"{args.channels_last}, compile {args.compile}")
    dist.print0(f"{'batch':>7} {'img/s':>10} {'p50 ms':>9} {'p95 ms':>9}")
    for r in rows:
        dist.print0(f"{r['batch_size']:>7} {r['img_per_s']:>10.1f} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f}")
    return report


def run(args, info):
    name, state, classes, stored, source = load_source(args)
    policy = resolve_policy(args, stored, name)
    label = args.checkpoint or args.weights_file or args.weights or f"random {name}"
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    if args.bench:
        model = build_model(name, state, len(classes) if classes else args.num_classes, policy, source)
        report = run_bench(args, name, model.to(info.device, memory_format=memory_format), policy, info.device)
        if args.json and info.is_main:
            write_text(args.json, json.dumps(report, indent=2))
        return 0

    val_dir = folders.resolve_val_dir(args.data)
    data_classes = folders.find_classes(val_dir)
    if classes is None:
        classes = data_classes  # torchvision's ImageNet weights: sorted wnid order, like find_classes
        if args.weights and len(classes) != len(source.get("categories") or classes):
            raise UsageError(f"{args.weights} predicts {len(source['categories'])} classes, but {val_dir} has "
                             f"{len(classes)} class folders. Evaluate on its full validation set.")
    else:
        check_classes(data_classes, classes, val_dir, label)
    model = build_model(name, state, len(classes), policy, source).to(info.device, memory_format=memory_format)
    if args.compile:
        model = torch.compile(model)

    dataset = data.ImageFolder(val_dir, classes, view_transform(policy, args.tta))
    if dataset.skipped:  # FIFOs, broken links, symlink loops: not images, so not part of the count
        dist.eprint0(f"eval.py: note: {folders.describe_skipped(dataset.skipped)}")
    sampler = data.EvalSampler(len(dataset), info.world_size, info.rank)
    order = [index for index, _ in sampler]  # the loader keeps this order, so row j of our outputs is order[j]
    workers, note = data.cap_workers(args.workers)
    if note:
        dist.eprint0(f"eval.py: note: {note}")
    loader = data.build_loader(dataset, sampler, args.batch_size, workers, pin_memory=info.device.type == "cuda")

    dist.print0(f"eval.py: {name} ({source['weights']} weights of {label}), {len(classes)} classes, "
                f"{len(dataset)} images in {val_dir}, {info.world_size} process(es) on {info.device}")
    views = TTA_VIEWS[args.tta]
    dist.print0(f"policy: {policy.describe()}; tta {args.tta} ({views} view{'s' if views > 1 else ''} per image)")
    for warning in policy_warnings(args, policy, stored, name):
        dist.eprint0(f"eval.py: warning: {warning}")

    start = time.perf_counter()
    result = evaluation.evaluate(model, loader, info.device, policy, len(classes), tta=args.tta,
                             amp_dtype=AMP_DTYPES[args.amp], channels_last=args.channels_last)
    elapsed = time.perf_counter() - start
    gathered = dist.gather_object((order, result.top_idx, result.top_prob, result.labels, result.unreadable))
    if not info.is_main:
        return 0

    bad = sorted({p for g in gathered for p in g[4]})
    if result.count != len(dataset):  # the exactness guarantee; a failure here is a bug, not bad input
        raise RuntimeError(f"counted {result.count} images but the set has {len(dataset)}")
    names = class_names(classes, val_dir)
    per_class, pairs = class_report(result.confusion, classes, args.show, names)
    report = {**result.metrics(), "model": name, **{k: v for k, v in source.items() if k != "categories"},
              "data": os.path.abspath(val_dir), "policy": policy.to_dict(), "tta": args.tta,
              "views_per_image": result.views, "amp": args.amp, "world_size": info.world_size, "seconds": elapsed,
              "bad_images": bad, "per_class": per_class, "confused_pairs": pairs}
    print_report(report, args.show)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2))
    if args.predictions:
        merged = [torch.cat([g[i] for g in gathered]) for i in (1, 2, 3)]
        write_predictions(args.predictions, dataset, [i for g in gathered for i in g[0]], *merged, classes, names)
    return 0


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        check_flags(args)
        info = dist.init(args.device)
        if args.amp == "auto":  # a bare --amp
            args.amp = dist.auto_amp(info.device)
        try:
            return run(args, info)
        finally:
            dist.cleanup()
    except UsageError as e:
        dist.eprint0(f"eval.py: error: {message_of(e)}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
