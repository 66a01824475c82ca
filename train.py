"""Train an image classifier on ImageNet (or any ImageFolder tree), from one CPU process to many GPU nodes.

    python train.py                                   # the demo recipe on a generated dataset
    python train.py --data /datasets/imagenet --recipe resnet50_classic
    torchrun --nproc_per_node=8 train.py --data /datasets/imagenet --recipe resnet50 --output runs/r50
    python train.py --recipe resnet50 --data /datasets/imagenet --dry-run   # what would this run do?

Reads top to bottom: flags -> setup (processes, data, model, optimizer, schedule) -> resume -> epochs
(train, evaluate, checkpoint, log). ``python train.py --help`` is the manual.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

import imnet
from imnet import checkpoint as ckpt_io
from imnet import data, dist, engine, models
from imnet.checkpoint import CheckpointError, PreemptionSignals
from imnet.data import DataError
from imnet.ema import ModelEma
from imnet.log import RunLog, peak_memory_gib, progress_line
from imnet.metrics import Meter
from imnet.mixing import Mixer
from imnet.optim import build_optimizer, count_param_groups, param_groups
from imnet.recipes import RECIPES
from imnet.schedule import lr_at, scale_lr
from imnet.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, resolve_eval_sizes, train_transform


class SetupError(Exception):
    """A bad command line or data layout: printed as one paragraph, exit code 2, no traceback."""


# ----------------------------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a torchvision classifier on an ImageFolder tree (train/<class>/*, val/<class>/*). "
                    "With no arguments, runs the demo recipe on a generated dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="root folder holding train/ and val/ (class subfolders in each)")
    g.add_argument("--workers", type=int, default=4, help="data loading processes per training process")
    g.add_argument("--train-crop-size", type=int, default=224, help="RandomResizedCrop output size")
    g.add_argument("--val-crop-size", type=int, default=224, help="centre crop size for evaluation")
    g.add_argument("--val-resize-size", type=int, default=None,
                   help="shorter side before the centre crop (default: floor(val_crop_size / crop_pct))")
    g.add_argument("--crop-pct", type=float, default=None, help="centre crop fraction (default 0.875: 224 -> 256)")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear")
    g.add_argument("--crop-scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area fraction range (0.08-1 for ImageNet; larger for small objects)")
    g.add_argument("--max-bad-images", default="0.001",
                   help="unreadable images tolerated before stopping: a count (10) or a fraction of the set (0.001)")
    g.add_argument("--fake-data", action="store_true",
                   help="random uint8 tensors instead of files, 100 steps per epoch (throughput runs)")
    g.add_argument("--num-classes", type=int, default=1000, help="classes for --fake-data")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50", help="any torchvision classification model name, deit_tiny, deit_small")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the model's own)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="NHWC memory format (faster convolutions on GPUs and on this CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=90)
    g.add_argument("--batch-size", type=int, default=32, help="images per process per micro-step")
    g.add_argument("--global-batch", type=int, default=None,
                   help="total batch per optimizer step; sets --batch-size = global / (world size * accum steps)")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--opt", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--lr", type=float, default=None, help="learning rate as is (overrides --lr-base)")
    g.add_argument("--lr-base", type=float, default=0.1,
                   help="learning rate per 256 images, scaled linearly to the global batch (Goyal et al. 2017)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=False,
                   help="also decay normalization weights, biases and tokens (off: they are excluded)")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max global gradient norm (0: off)")

    g = p.add_argument_group("schedule")
    g.add_argument("--sched", choices=["cosine", "step", "constant"], default="cosine")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup length")
    g.add_argument("--warmup-start-factor", type=float, default=0.01, help="warmup starts at this fraction of the LR")
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--lr-milestones", type=int, nargs="*", default=[30, 60, 80], help="epochs of the step decays")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor")

    g = p.add_argument_group("regularization")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--switch-prob", type=float, default=0.5, help="probability of CutMix rather than MixUp when both are on")
    g.add_argument("--auto-augment", choices=["none", "ra", "ta_wide", "imagenet"], default="none")
    g.add_argument("--ra-num-ops", type=int, default=2)
    g.add_argument("--ra-magnitude", type=int, default=9)
    g.add_argument("--random-erase", type=float, default=0.0, help="RandomErasing probability per image")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False, help="keep an EMA of the weights")
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--ema-every", type=int, default=1, help="update the EMA every k optimizer steps (decay**k)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="ramp the EMA decay up over the first steps")

    g = p.add_argument_group("mixed precision")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast dtype; fp16 adds loss scaling. On CPUs without native bf16 keep none")

    g = p.add_argument_group("distributed")
    g.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (auto: cuda:LOCAL_RANK if available)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")

    g = p.add_argument_group("checkpointing")
    g.add_argument("--output", default=None, help="run folder (default: runs/<recipe or model>)")
    g.add_argument("--resume", default=None,
                   help="'auto' (continue from OUTPUT/last.pt if present, else start fresh) or a checkpoint path")
    g.add_argument("--save-every-minutes", type=float, default=30.0, help="also write last.pt mid-epoch this often")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="act as if preempted once this many optimizer steps are done: write last.pt, exit 0 "
                        "(for time-sliced jobs; --resume auto continues)")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=50, help="console/jsonl line every N optimizer steps")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="fill defaults from a recipe (see recipes.md); explicit flags override")
    g.add_argument("--dry-run", action="store_true", help="build everything, print the plan and warnings, exit")
    g.add_argument("--quiet", action="store_true", help="no console progress lines")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Two passes: find --recipe, install its values as defaults, then parse for real (explicit flags win).
    Without --data, --fake-data or --recipe, the run is the demo recipe (so `python train.py` just works)."""
    parser = build_parser()
    if not any(a.split("=")[0] in ("--data", "--fake-data", "--recipe", "-h", "--help") for a in argv):
        argv = ["--recipe", "demo", *argv]  # no data named: the demo (its dataset is generated on first use)
    pre, _ = parser.parse_known_args(argv)
    if pre.recipe:
        recipe = {k: v for k, v in RECIPES[pre.recipe].items() if not k.startswith("_")}
        unknown = set(recipe) - {a.dest for a in parser._actions}
        assert not unknown, f"recipe {pre.recipe} sets unknown flags {unknown}"
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    args.lr_given = "--lr" in argv or any(a.startswith("--lr=") for a in argv)
    return args


# ----------------------------------------------------------------------------------------------- setup

def resolve(args: argparse.Namespace, world_size: int) -> dict:
    """Derived settings: global batch, scaled LR, eval sizes; contradictions become SetupError."""
    if args.data is None and args.recipe == "demo":
        from imnet.demo import ensure_dataset
        args.data = str(ensure_dataset())
    if args.data is None and not args.fake_data:
        raise SetupError("No data: pass --data ROOT, where ROOT holds train/<class>/*.JPEG and val/<class>/*.JPEG "
                         "(the ImageNet layout), or --fake-data for a throughput run, or run with no arguments "
                         "for the demo.")
    for name in ("epochs", "batch_size", "accum_steps", "train_crop_size", "val_crop_size", "ema_every"):
        if getattr(args, name) < 1:
            raise SetupError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)}).")
    if not 0 < args.crop_scale[0] <= args.crop_scale[1] <= 1:
        raise SetupError(f"--crop-scale {args.crop_scale[0]} {args.crop_scale[1]}: need 0 < MIN <= MAX <= 1.")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise SetupError(f"--crop-pct must be in (0, 1] (got {args.crop_pct}); 0.875 gives the classic 224/256.")
    if args.mixup < 0 or args.cutmix < 0 or not 0 <= args.label_smoothing < 1:
        raise SetupError("--mixup and --cutmix must be >= 0 and --label-smoothing in [0, 1).")
    if args.sched == "step" and sorted(args.lr_milestones) != list(args.lr_milestones):
        raise SetupError(f"--lr-milestones must be increasing (got {args.lr_milestones}).")
    if args.warmup_epochs >= args.epochs and args.warmup_epochs > 0:
        raise SetupError(f"--warmup-epochs {args.warmup_epochs} is not shorter than --epochs {args.epochs}: "
                         f"the run would never leave warmup.")
    if args.ema and not 0 < args.ema_decay < 1:
        raise SetupError(f"--ema-decay must be in (0, 1) (got {args.ema_decay}).")
    requested = args.global_batch
    if requested is not None:
        per = requested // (world_size * args.accum_steps)
        if per < 1:
            raise SetupError(f"--global-batch {requested} is smaller than world size {world_size} x accum steps "
                             f"{args.accum_steps}.")
        args.batch_size = per
    global_batch = args.batch_size * world_size * args.accum_steps
    lr = args.lr if args.lr is not None else scale_lr(args.lr_base, global_batch)
    resize, crop = resolve_eval_sizes(args.val_crop_size, args.val_resize_size, args.crop_pct)
    mixing = args.mixup > 0 or args.cutmix > 0
    return {"global_batch": global_batch, "global_batch_requested": requested, "world_size": world_size,
            "lr": lr, "lr_given": args.lr_given, "val_resize": resize, "val_crop": crop, "mixing": mixing,
            "loss_label_smoothing": 0.0 if mixing else args.label_smoothing,
            "mix_label_smoothing": args.label_smoothing if mixing else 0.0}


def default_output(args) -> Path:
    return Path("runs") / (args.recipe or args.model)


def build_transforms(args, r):
    train_tf = train_transform(crop_size=args.train_crop_size, scale=tuple(args.crop_scale),
                               interpolation=args.interpolation,
                               auto_augment=args.auto_augment, ra_num_ops=args.ra_num_ops,
                               ra_magnitude=args.ra_magnitude)
    eval_tf = eval_transform(crop_size=r["val_crop"], resize_size=r["val_resize"], interpolation=args.interpolation)
    return train_tf, eval_tf


def build_data(args, r, info):
    """Datasets and loaders. Class folders are checked before any work is done."""
    train_tf, eval_tf = build_transforms(args, r)
    if args.fake_data:
        classes = [f"class{i}" for i in range(args.num_classes)]
        # An "epoch" of 100 optimizer steps; --epochs sets the length of the throughput run.
        train_set = data.FakeData(args.num_classes, args.train_crop_size, length=100 * r["global_batch"])
        val_set = data.FakeData(args.num_classes, r["val_crop"], length=10 * r["global_batch"])
    else:
        train_dir, val_dir, classes = data.check_data_root(args.data)
        train_set = data.ImageFolder(train_dir, classes, train_tf, seed=args.seed)
        val_set = data.ImageFolder(val_dir, classes, eval_tf, seed=args.seed)
    if len(train_set) < r["global_batch"]:
        raise SetupError(f"The training set has {len(train_set)} images, fewer than one global batch "
                         f"({r['global_batch']}). Lower --batch-size or --accum-steps.")
    sampler = data.TrainSampler(len(train_set), info.world_size, info.rank, seed=args.seed, drop_last=True)
    pin = info.device.type == "cuda"
    train_loader = data.build_loader(train_set, sampler, args.batch_size, args.workers, pin_memory=pin, drop_last=True)
    val_sampler = data.EvalSampler(len(val_set), info.world_size, info.rank)
    val_loader = data.build_loader(val_set, val_sampler, args.batch_size, args.workers, pin_memory=pin)
    return classes, train_set, val_set, sampler, train_loader, val_loader, train_tf, eval_tf


def build_model(args, num_classes, info):
    if args.sync_bn and info.distributed and info.device.type != "cuda":
        raise SetupError("--sync-bn needs CUDA: torch's SyncBatchNorm refuses CPU tensors. On the CPU, drop "
                         "--sync-bn (each process then keeps its own BatchNorm statistics) or use a BatchNorm-free "
                         "model such as convnext_tiny.")
    try:
        model = models.build_model(args.model, num_classes, drop_path=args.drop_path, image_size=args.train_crop_size)
    except ValueError as e:
        raise SetupError(str(e)) from None
    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def lr_function(args, r, steps_per_epoch):
    total = args.epochs * steps_per_epoch
    warmup = round(args.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in args.lr_milestones]

    def f(step: int) -> float:
        return lr_at(step, base_lr=r["lr"], total_steps=total, warmup_steps=warmup,
                     warmup_start_factor=args.warmup_start_factor, sched=args.sched, min_lr=args.min_lr,
                     milestones=milestones, gamma=args.lr_gamma)
    return f


def print_plan(args, r, info, counts, lr_f, steps_per_epoch, train_tf, eval_tf, n_train, n_val, classes):
    from imnet.audit import audit
    total = args.epochs * steps_per_epoch
    cfg = {**{k: v for k, v in vars(args).items()}, **r}
    lines = ["resolved configuration:"]
    lines += [f"  {k:<22} {v}" for k, v in sorted(vars(args).items())]
    lines += [f"processes {info.world_size} x batch {args.batch_size} x accum {args.accum_steps} = global batch "
              f"{r['global_batch']}",
              f"learning rate {r['lr']:.6g}" + ("" if r["lr_given"] else
                                                 f" (= {args.lr_base} x {r['global_batch']} / 256, linear scaling)"),
              f"data: {n_train} train / {n_val} val images, {len(classes)} classes; {steps_per_epoch} steps/epoch, "
              f"{total} steps",
              f"parameter groups: {counts}"]
    keys = sorted({0, 1, round(args.warmup_epochs * steps_per_epoch), total // 2, total - 1})
    lines.append("LR at steps: " + ", ".join(f"{s}: {lr_f(s):.6g}" for s in keys if 0 <= s < total))
    lines += [f"train transform: {train_tf}", f"eval transform: {eval_tf}",
              f"eval policy: resize {r['val_resize']} -> centre crop {r['val_crop']} ({args.interpolation})"]
    recipe = RECIPES.get(args.recipe) if args.recipe else None
    for w in audit(cfg, recipe):
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return run(args)
    except (SetupError, DataError, CheckpointError) as e:
        dist.eprint0(f"error: {e}")
        return 2
    finally:
        dist.cleanup()


def run(args) -> int:
    t_start = time.time()
    info = dist.init(args.device)
    r = resolve(args, info.world_size)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts them)

    classes, train_set, val_set, sampler, train_loader, val_loader, train_tf, eval_tf = build_data(args, r, info)
    steps_per_epoch = len(sampler) // args.batch_size // args.accum_steps
    if steps_per_epoch < 1:
        raise SetupError(f"One epoch has fewer than one optimizer step: {len(sampler)} images per process, batch "
                         f"{args.batch_size} x accum {args.accum_steps}. Lower the batch or accumulation.")
    model = build_model(args, len(classes), info)
    groups = param_groups(model, args.weight_decay) if not args.decay_norm_bias else \
        [{"name": "decay (all)", "params": [p for p in model.parameters() if p.requires_grad],
          "weight_decay": args.weight_decay}]
    counts = count_param_groups(groups)
    lr_f = lr_function(args, r, steps_per_epoch)
    if args.dry_run:
        if info.is_main:
            print(print_plan(args, r, info, counts, lr_f, steps_per_epoch, train_tf, eval_tf,
                             len(train_set), len(val_set), classes), flush=True)
        return 0

    optimizer = build_optimizer(args.opt, groups, lr=r["lr"], weight_decay=args.weight_decay,
                                momentum=args.momentum, nesterov=args.nesterov)
    scaler = torch.amp.GradScaler(info.device.type) if args.amp == "fp16" else None
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    ema = ModelEma(model, decay=args.ema_decay, warmup=args.ema_warmup, every=args.ema_every) if args.ema else None
    mixer = Mixer(len(classes), mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mix_prob,
                  switch_prob=args.switch_prob, label_smoothing=args.label_smoothing) if r["mixing"] else None

    train_model = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    eval_model = model
    if args.compile:
        train_model = torch.compile(train_model)
        eval_model = torch.compile(model)

    output = Path(args.output) if args.output else default_output(args)
    log = RunLog(output, enabled=info.is_main, quiet=args.quiet)
    prog = engine.Progress()
    meter = Meter(info.device)
    eval_policy = {"resize_size": r["val_resize"], "crop_size": r["val_crop"], "interpolation": args.interpolation,
                   "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    run_args = {k: v for k, v in vars(args).items()}
    run_args.update(lr=r["lr"], global_batch=r["global_batch"], world_size=info.world_size)

    # ------------------------------------------------------------------------------------- resume
    resume = args.resume
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"  # torchrun --max-restarts: a restarted job continues by itself
    resume_path, state = None, {}
    if resume == "auto":
        resume_path = output / "last.pt" if (output / "last.pt").is_file() else None
    elif resume:
        resume_path = Path(resume)
    if resume_path is not None:
        state = ckpt_io.load(resume_path)
        check_compatible(state, args, classes, r, resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        prog = engine.Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                               list(state.get("history", [])), state.get("best_top1", -1.0))
        if state["step_in_epoch"] and info.is_main and state.get("meter") is not None:
            meter.load_state_dict(state["meter"])  # rank 0 carries the epoch's partial sums of all ranks
        rngs = state.get("rng") or []
        if info.rank < len(rngs):
            ckpt_io.set_rng_state(rngs[info.rank])
        log.event("resume", echo=f"resumed from {resume_path} at epoch {prog.epoch + 1}, step {prog.step_in_epoch}",
                  path=str(resume_path), epoch=prog.epoch, step_in_epoch=prog.step_in_epoch)
    else:
        log.event("start", args=run_args, classes=len(classes), train_images=len(train_set), val_images=len(val_set))
    log.print(f"imnet {imnet.__version__}: {args.model} on {info.world_size} x {info.device.type}, global batch "
              f"{r['global_batch']}, lr {r['lr']:.4g}, {args.epochs} epochs x {steps_per_epoch} steps -> {output}")

    parts = engine.Parts(model=model, train_model=train_model, eval_model=eval_model, optimizer=optimizer,
                         lr_at=lr_f, device=info.device, num_classes=len(classes), mixer=mixer, scaler=scaler,
                         ema=ema, amp_dtype=amp_dtype, channels_last=args.channels_last,
                         accum_steps=args.accum_steps, clip_grad=args.clip_grad,
                         label_smoothing=r["loss_label_smoothing"], random_erase=args.random_erase,
                         seed=args.seed, rank=info.rank, world_size=info.world_size)

    def make_checkpoint(first_bad=None) -> dict:
        if first_bad is not None:
            engine.check_finite(first_bad)  # never overwrite a good checkpoint with NaN weights
        meter_state = meter.state_dict()
        if info.distributed:  # one copy of the epoch's partial sums: the sum over ranks
            meter_state = {k: dist.all_reduce_sum(v.to(info.device)).cpu() if torch.is_tensor(v) else v
                           for k, v in meter_state.items()}
        rngs = dist.gather_object(ckpt_io.rng_state())
        return {"model": models.unwrap(model).state_dict(), "ema": ema.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": prog.epoch, "step_in_epoch": prog.step_in_epoch, "global_step": prog.global_step,
                "meter": meter_state, "rng": rngs, "bad_images": bad_counter.state_dict(),
                "sampler_seed": args.seed, "history": prog.history,
                "best_top1": prog.best_top1, "args": run_args, "classes": list(classes),
                "eval_policy": eval_policy, "metrics": prog.history[-1] if prog.history else None,
                "world_size": info.world_size, "global_batch": r["global_batch"],
                "imnet_version": imnet.__version__}

    def save(name: str, state: dict) -> None:
        if info.is_main:
            ckpt_io.save_atomic(state, output / name)

    signals = PreemptionSignals().install()
    flags = dist.Flags(info, n=3)
    bad_counter = data.BadImageCounter(data.parse_max_bad(args.max_bad_images, len(train_set)), len(train_set))
    if state.get("bad_images"):
        bad_counter.load_state_dict(state["bad_images"])
    last_save = [time.time()]
    epoch_t0 = [time.time()]
    steps_left_at_start = args.epochs * steps_per_epoch - prog.global_step
    run_t0 = time.time()

    def after_step(p: engine.Progress, bad_paths: list, first_bad) -> bool:
        for path in bad_counter.update(bad_paths, check=False):
            log.event("bad_image", echo=f"skipped unreadable image {path} (replaced by another sample)",
                      path=path, epoch=p.epoch, step=p.step_in_epoch)
        due = info.is_main and args.save_every_minutes > 0 and time.time() - last_save[0] > 60 * args.save_every_minutes
        stop_here = signals.requested or p.global_step == args.stop_at_step
        stop, save_now, too_many_bad = flags.post([stop_here, due, bad_counter.count > bad_counter.max_bad])
        if save_now or stop or too_many_bad:
            save("last.pt", make_checkpoint(first_bad))
            last_save[0] = time.time()
            log.event("checkpoint", path=str(output / "last.pt"), epoch=p.epoch, step_in_epoch=p.step_in_epoch,
                      reason="preemption" if stop else "bad images" if too_many_bad else "timer")
        if too_many_bad:  # every rank stops together; the message names this rank's files
            bad_counter.check(max(bad_counter.count, bad_counter.max_bad + 1))
        return stop

    def log_step(p: engine.Progress, w: dict) -> None:
        done = p.global_step - (args.epochs * steps_per_epoch - steps_left_at_start)
        elapsed = time.time() - run_t0
        eta = elapsed / max(done, 1) * (args.epochs * steps_per_epoch - p.global_step)
        img_s = w["micro_batches"] * args.batch_size * info.world_size / max(w["elapsed"], 1e-9)
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        log.event("train", echo=progress_line(p.epoch, args.epochs, p.step_in_epoch, steps_per_epoch, w["loss"], lr,
                                              img_s, w["data_share"], eta, peak_memory_gib(info.device)),
                  epoch=p.epoch, step=p.step_in_epoch, global_step=p.global_step, loss=w["loss"], lr=lr,
                  img_per_s=img_s, data_share=w["data_share"], grad_norm=w["grad_norm"],
                  peak_mem_gib=peak_memory_gib(info.device))

    # ------------------------------------------------------------------------------------- epochs
    try:
        while prog.epoch < args.epochs:
            epoch_t0[0] = time.time()
            sampler.set_epoch(prog.epoch)
            sampler.set_start(prog.step_in_epoch * args.accum_steps * args.batch_size)
            if prog.step_in_epoch == 0:
                meter.reset()
            stopped = engine.train_one_epoch(parts, train_loader, prog, steps_per_epoch, meter, after_step,
                                             log_step, args.log_every)
            if stopped:
                log.event("preempted", echo=f"stopped by signal at epoch {prog.epoch + 1} step {prog.step_in_epoch}; "
                          f"last.pt written, continue with --resume auto --output {output}",
                          epoch=prog.epoch, step_in_epoch=prog.step_in_epoch)
                return 0
            row = end_of_epoch(args, parts, prog, meter, val_loader, info, epoch_t0[0], bad_counter)
            prog.history.append(row)
            prog.epoch += 1
            prog.step_in_epoch = 0
            improved = row.get("val_top1") is not None and row["val_top1"] > prog.best_top1
            if improved:
                prog.best_top1 = row["val_top1"]
            state = make_checkpoint()
            save("last.pt", state)
            if improved:
                save("best.pt", state)
            last_save[0] = time.time()
            log.event("epoch", echo=epoch_line(row), **row)
            log.write_summary(prog.history)
            if flags.drain()[0] or (not info.distributed and signals.requested):
                log.event("preempted", echo=f"stopped by signal after epoch {prog.epoch}; continue with "
                          f"--resume auto --output {output}", epoch=prog.epoch, step_in_epoch=0)
                return 0
    except engine.NonFiniteLoss as e:
        last = output / "last.pt"
        log.event("nonfinite", step=e.step)
        dist.eprint0(f"error: the loss became NaN or infinite at optimizer step {e.step} (epoch {prog.epoch + 1}). "
                     f"Training stopped; the last good checkpoint {last if last.exists() else '(none yet)'} is "
                     f"untouched. Lower the learning rate, add warmup or --clip-grad, or use bf16 instead of fp16; "
                     f"then --resume {last}.")
        return 1
    finally:
        signals.uninstall()

    summary(args, prog, output, log, time.time() - t_start)
    return 0


def check_compatible(state: dict, args, classes, r, path) -> None:
    """Refuse a resume that cannot continue the same run."""
    a = state.get("args", {})
    problems = []
    if a.get("model") != args.model:
        problems.append(f"model {a.get('model')} vs {args.model}")
    if list(state.get("classes", [])) != list(classes):
        problems.append(f"classes differ ({len(state.get('classes', []))} in the checkpoint, {len(classes)} in the data)")
    if state.get("global_batch") != r["global_batch"]:
        problems.append(f"global batch {state.get('global_batch')} vs {r['global_batch']}")
    if problems:
        raise SetupError(f"Cannot resume from {path}: " + "; ".join(problems) + ". Resume with the settings of "
                         "the original run, or start a new run with another --output.")


def end_of_epoch(args, parts, prog, meter, val_loader, info, t0, bad_counter) -> dict:
    train = meter.compute(distributed=True)
    row = {"epoch": prog.epoch + 1, "train_loss": train["loss"],
           "train_top1": train["top1"] if not (parts.mixer and parts.mixer.enabled) else None,
           "lr": parts.optimizer.param_groups[0]["lr"] / parts.optimizer.param_groups[0].get("lr_scale", 1.0),
           "bad_images": bad_counter.count}
    last = prog.epoch + 1 == args.epochs
    if (prog.epoch + 1) % args.eval_every == 0 or last:
        v = engine.evaluate(parts.eval_model, val_loader, info.device, parts.amp_dtype, args.channels_last)
        row.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"], val_count=v["count"])
        for path in v["unreadable"]:
            print(f"warning: unreadable validation image {path}: it was replaced by another image, so this "
                  f"evaluation is not exact; repair or remove the file", file=sys.stderr, flush=True)
        if parts.ema is not None:
            e = engine.evaluate(parts.ema.module, val_loader, info.device, parts.amp_dtype, args.channels_last)
            row.update(ema_val_loss=e["loss"], ema_val_top1=e["top1"], ema_val_top5=e["top5"])
    row["epoch_time"] = time.time() - t0
    return row


def epoch_line(row: dict) -> str:
    s = f"epoch {row['epoch']} done in {row['epoch_time']:.1f}s: train loss {row['train_loss']:.4f}"
    if row.get("val_top1") is not None:
        s += f"  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f} top-5 {row['val_top5']:.2f}"
    if row.get("ema_val_top1") is not None:
        s += f"  EMA top-1 {row['ema_val_top1']:.2f}"
    return s


def summary(args, prog, output, log, wall) -> None:
    last = prog.history[-1] if prog.history else {}
    top1 = last.get("val_top1")
    lines = [f"done in {wall / 60:.1f} min.",
             f"final val top-1 {top1:.2f}%  top-5 {last.get('val_top5'):.2f}%" if top1 is not None else "no evaluation",
             f"best val top-1 {prog.best_top1:.2f}%" if prog.best_top1 >= 0 else "",
             f"checkpoints: {output / 'last.pt'}, {output / 'best.pt'}",
             f"logs: {output / 'log.jsonl'}, {output / 'summary.csv'}; plot: {output / 'curves.svg'}"]
    log.event("done", echo="\n".join(x for x in lines if x), wall_s=wall, final=last, best_top1=prog.best_top1)


if __name__ == "__main__":
    sys.exit(main())
