"""Train an image classifier on ImageNet (or any ImageFolder tree), from one CPU process to many GPU nodes.

    python train.py                                   # the demo recipe on a generated dataset
    python train.py --data /datasets/imagenet --recipe resnet50_classic
    torchrun --nproc_per_node=8 train.py --data /datasets/imagenet --recipe resnet50 --output runs/r50
    python train.py --recipe resnet50 --data /datasets/imagenet --dry-run   # what would this run do?

Reads top to bottom: flags -> one resolved Config -> setup (processes, data, model, optimizer) -> resume ->
the epoch loop (train steps, logging, timed checkpoints, preemption, bad-image budget, evaluation) -> summary.
``python train.py --help`` is the manual.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


def preempt_hook(point: str, count: int) -> None:
    """Deterministic preemption for the test suite: with ``IMNET_TEST_SIGTERM=POINT:N`` in the environment, the
    N-th time this process reaches the named point (startup, step, eval, save, exit) it sends SIGTERM to its whole
    process group, exactly as a scheduler does - only when it leads its group (started with setsid), so that
    it can never signal the shell or test runner that started it. Unset (always, outside tests): nothing."""
    if os.environ.get("IMNET_TEST_SIGTERM") == f"{point}:{count}" and os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGTERM)


# A scheduler's SIGTERM can come while torch is still importing, or after the run, while the interpreter shuts
# down its workers. Until main() installs PreemptionSignals, and again after it, a signal is only recorded
# here, so that neither turns into a kill (exit -15); main() reads the record.
EARLY_SIGNALS: list[int] = []
if __name__ == "__main__":
    for _name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), lambda signum, frame: EARLY_SIGNALS.append(signum))
    preempt_hook("startup", 1)

import torch  # noqa: E402 (after the signal handlers, on purpose)
from torch import nn  # noqa: E402
from torch.optim.swa_utils import AveragedModel, update_bn  # noqa: E402

import imnet
from imnet import checkpoint as ckpt_io
from imnet import config, data, dist, engine, folders, models
from imnet.checkpoint import CheckpointError, PreemptionSignals, Progress
from imnet.config import Config, ConfigError
from imnet.folders import DataError
from imnet.ema import ModelEma
from imnet.log import RunLog, peak_memory_gib, progress_line
from imnet.metrics import Meter
from imnet.mixing import Mixer
from imnet.optim import build_optimizer, count_param_groups, param_groups
from imnet.recipes import RECIPES
from imnet.sam import SAM
from imnet.schedule import progressive_size
from imnet.transforms import train_transform


# ----------------------------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    """The flags. Aliases in the spelling of timm's and torchvision's reference scripts: -b, -j, --output-dir,
    --model-ema, --smoothing, --reprob."""
    p = argparse.ArgumentParser(
        description="Train a torchvision classifier on an ImageFolder tree (train/<class>/*, val/<class>/*). "
                    "With no arguments at all, runs the demo recipe on a generated dataset.",
        formatter_class=config.HelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="fill defaults from a recipe (see recipes.md); explicit flags override; "
                        "--recipe NAME --help shows its values")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="start from a run's config.json (flags given here override it)")

    g = p.add_argument_group("data")
    g.add_argument("--data", help="root folder holding train/ and val/ (class subfolders in each)")
    g.add_argument("--workers", "-j", type=int, default=4, help="data loading processes per training process")
    g.add_argument("--train-crop-size", type=int, default=224, help="RandomResizedCrop output size")
    g.add_argument("--val-crop-size", type=int, default=224, help="centre crop size for evaluation")
    g.add_argument("--val-resize-size", type=int, default=None,
                   help="shorter side before the centre crop (default: floor(val_crop_size / crop_pct))")
    g.add_argument("--crop-pct", type=float, default=None,
                   help="centre crop fraction; recomputes the resize unless --val-resize-size is given "
                        "(default 0.875: 224 -> 256)")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="resampling of the training crops and of the evaluation resize")
    g.add_argument("--train-interpolation", choices=["bilinear", "bicubic"], default=None,
                   help="RandomResizedCrop resampling only (default: --interpolation)")
    g.add_argument("--val-interpolation", choices=["bilinear", "bicubic"], default=None,
                   help="evaluation resize resampling only (default: --interpolation)")
    g.add_argument("--val-decode", choices=config.DECODE_MODES, default="full",
                   help="full: canonical pixels (torchvision's Resize + CenterCrop); reduced: faster DCT-scaled "
                        "JPEG decoding, not the published pipeline")
    g.add_argument("--crop-scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area fraction range (0.08-1 for ImageNet; larger for small objects)")
    g.add_argument("--progressive-res", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="progressive resolution: the RandomResizedCrop size ramps from START to END (multiples of "
                        "16; sets --train-crop-size to END) over --progressive-epochs; evaluation keeps its own "
                        "sizes (evaluating above the last training size is intended: Touvron et al. 2019)")
    g.add_argument("--progressive-epochs", type=int, nargs=2, default=None, metavar=("FROM", "TO"),
                   help="epoch numbers (from 1, as printed) of the ramp: START up to epoch FROM, END from epoch TO "
                        "on, linear in between, rounded to a multiple of 16 (FFCV's schedule)")
    g.add_argument("--max-bad-images", default="0.001",
                   help="unreadable images tolerated before stopping: a count (10) or a fraction of the set (0.001)")
    g.add_argument("--fake-data", action="store_true",
                   help="random uint8 tensors instead of files, 100 steps per epoch (throughput runs)")
    g.add_argument("--num-classes", type=int, default=1000, help="classes for --fake-data")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="any torchvision classification model name (torchvision.models.list_models(module="
                        "torchvision.models); EfficientNet-Lite is not one), deit_tiny, deit_small")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the model's own)")
    g.add_argument("--init-from", metavar="PATH", default=None,
                   help="start a NEW run (fresh optimizer and schedule, epoch 0) from these weights: a train.py "
                        "checkpoint or a plain state_dict (.pth). Keys must match, except the classifier head "
                        "(re-initialised when the classes differ) and a ViT position embedding (interpolated to "
                        "--train-crop-size)")
    g.add_argument("--init-ema", action="store_true", help="take the EMA weights of the --init-from checkpoint")
    g.add_argument("--weights", metavar="NAME", default=None,
                   help="like --init-from, from torchvision's published weights, e.g. ResNet50_Weights.IMAGENET1K_V2 "
                        "(downloaded once into torchvision's cache, torch.hub.get_dir()/checkpoints)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="NHWC memory format (faster convolutions on GPUs and on this CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=90, help="training epochs")
    g.add_argument("--batch-size", "-b", type=int, default=32, help="images per process per micro-step")
    g.add_argument("--global-batch", type=int, default=None,
                   help="total batch per optimizer step; sets --batch-size = global / (world size * accum steps)")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--opt", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    g.add_argument("--lr", type=float, default=None, help="learning rate as is (overrides --lr-base)")
    g.add_argument("--lr-base", type=float, default=0.1,
                   help="learning rate per 256 images, scaled linearly to the global batch (Goyal et al. 2017)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False, help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="L2 (SGD) or decoupled (AdamW) weight decay")
    g.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=False,
                   help="also decay normalization weights, biases and tokens (off: they are excluded)")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max global gradient norm (0: off)")
    g.add_argument("--sam", type=float, default=0.0, metavar="RHO",
                   help="Sharpness-Aware Minimization with radius RHO, e.g. 0.05 (0: off); two forward/backward "
                        "passes per step; not with --accum-steps > 1")
    g.add_argument("--sam-adaptive", action="store_true", help="adaptive SAM (ASAM; use a larger RHO, e.g. 0.5)")

    g = p.add_argument_group("schedule")
    g.add_argument("--sched", choices=["cosine", "step", "constant"], default="cosine", help="LR schedule")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup length")
    g.add_argument("--warmup-start-factor", type=float, default=0.01, help="warmup starts at this fraction of the LR")
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--lr-milestones", type=int, nargs="*", default=[30, 60, 80], help="epochs of the step decays")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor")

    g = p.add_argument_group("regularization")
    g.add_argument("--label-smoothing", "--smoothing", type=float, default=0.0, help="label smoothing epsilon")
    g.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--switch-prob", type=float, default=0.5, help="probability of CutMix rather than MixUp when both are on")
    g.add_argument("--auto-augment", choices=["none", "ra", "ta_wide", "imagenet"], default="none",
                   help="RandAugment, TrivialAugment Wide or AutoAugment's ImageNet policy")
    g.add_argument("--ra-num-ops", type=int, default=2, help="RandAugment ops per image")
    g.add_argument("--ra-magnitude", type=int, default=9, help="RandAugment magnitude (of 31 bins)")
    g.add_argument("--random-erase", "--reprob", type=float, default=0.0, help="RandomErasing probability per image")
    g.add_argument("--ra-reps", type=int, default=1, metavar="N",
                   help="repeated augmentation (DeiT's RASampler): each image N times per epoch, differently "
                        "augmented, on different processes when there are >= N; the epoch keeps its length, so it "
                        "sees about 1/N of the images (1: off)")
    g.add_argument("--ema", "--model-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an EMA of the weights")
    g.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay per optimizer step")
    g.add_argument("--ema-every", type=int, default=1, help="update the EMA every k optimizer steps (decay**k)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="ramp the EMA decay up over the first steps")
    g.add_argument("--swa-start", type=int, default=None, metavar="EPOCH",
                   help="Stochastic Weight Averaging: from this epoch (1-based) on, train at --swa-lr and average "
                        "the weights at the end of each epoch; BatchNorm statistics are recomputed over the "
                        "training data before each evaluation of the average")
    g.add_argument("--swa-lr", type=float, default=None, help="constant learning rate of the SWA epochs")

    g = p.add_argument_group("mixed precision")
    g.add_argument("--amp", choices=[*config.AMP_DTYPES, "auto"], default="none", nargs="?", const="auto",
                   help="autocast dtype; fp16 adds loss scaling. A bare --amp (= auto) means bf16 on GPUs that "
                        "have it, fp16 on older GPUs, and no autocast (fp32, with a note) on the CPU and MPS, where "
                        "bf16 is slow without native support")

    g = p.add_argument_group("distributed")
    g.add_argument("--device", default="auto",
                   help="cuda, cuda:N, mps or cpu (auto: cuda:LOCAL_RANK if available, else Apple's mps, else cpu)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order, augmentation and mixing")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")

    g = p.add_argument_group("checkpointing")
    g.add_argument("--output", "--output-dir", default=None,
                   help="run folder (default: runs/<recipe or model>); one run at a time (OUTPUT/.lock), and a "
                        "folder holding a run needs --resume auto")
    g.add_argument("--resume", default=None,
                   help="'auto' (continue from OUTPUT/last.pt if present, else start fresh) or a checkpoint path")
    g.add_argument("--save-every-minutes", type=float, default=30.0, help="also write last.pt mid-epoch this often")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="act as if preempted once this many optimizer steps are done: write last.pt, exit 0 "
                        "(for time-sliced jobs; --resume auto continues)")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs and after the last (0: last only)")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=50, help="console/jsonl line every N optimizer steps")
    g.add_argument("--dry-run", action="store_true", help="build everything, print the plan and warnings, exit")
    g.add_argument("--quiet", action="store_true", help="no console progress lines")
    return p


def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """-> (every flag's value below the command line, the flags given on the command line).

    Layers, lowest first: argparse defaults < --recipe < --config FILE < command line. A bare `python train.py`
    (no arguments at all) is the demo recipe; any other command without --data or --fake-data is refused at
    setup (a flag the user gave would otherwise be silently mixed with the demo's settings)."""
    parser = build_parser()
    if not argv:
        argv = ["--recipe", "demo"]  # the demo (its dataset is generated on first use)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", choices=sorted(RECIPES))
    pre.add_argument("--config")
    first, _ = pre.parse_known_args(argv)
    from_file = config.read_config_file(first.config) if first.config else {}
    recipe = first.recipe or from_file.get("recipe")
    if recipe:
        parser.set_defaults(**{k: v for k, v in RECIPES[recipe].items() if not k.startswith("_")})
    parser.set_defaults(**from_file)
    below = vars(parser.parse_args([a for a in argv if a in ("-h", "--help")]))  # --help shows recipe values
    # The flags given on the command line: parse again, with a fresh parser whose defaults are all suppressed.
    command_line = build_parser()
    for action in command_line._actions:  # (set_defaults would also plant the marker in the namespace)
        action.default = argparse.SUPPRESS
    return below, vars(command_line.parse_args(argv))


# ----------------------------------------------------------------------------------------------- setup

def build_datasets(cfg: Config):
    """(classes, train set, val set). Class folders are checked before any work is done."""
    if cfg.fake_data:
        classes = [f"class{i}" for i in range(cfg.num_classes)]
        # An "epoch" of 100 optimizer steps; --epochs sets the length of the throughput run.
        return (classes, data.FakeData(cfg.num_classes, cfg.train_crop_size, length=100 * cfg.global_batch_size),
                data.FakeData(cfg.num_classes, cfg.eval_policy.crop_size, length=10 * cfg.global_batch_size))
    train_dir, val_dir, classes = folders.check_data_root(cfg.data)
    size_at = None
    if cfg.progressive_res is not None:  # picklable, stateless: workers derive the size from the epoch key
        size_at = functools.partial(progressive_size, start=cfg.progressive_res[0], end=cfg.progressive_res[1],
                                    first=cfg.progressive_epochs[0], last=cfg.progressive_epochs[1])
    train_tf = train_transform(crop_size=cfg.train_crop_size, scale=cfg.crop_scale,
                               interpolation=cfg.train_interpolation or cfg.interpolation,
                               auto_augment=cfg.auto_augment, ra_num_ops=cfg.ra_num_ops,
                               ra_magnitude=cfg.ra_magnitude)
    return (classes, data.ImageFolder(train_dir, classes, train_tf, seed=cfg.seed, crop_size_at=size_at),
            data.ImageFolder(val_dir, classes, cfg.eval_policy.transform(), seed=cfg.seed))


def build_model(cfg: Config, num_classes: int, info) -> nn.Module:
    if cfg.sync_bn and info.distributed and info.device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm refuses CPU tensors. On the CPU, drop "
                          "--sync-bn (each process then keeps its own BatchNorm statistics) or use a BatchNorm-free "
                          "model such as convnext_tiny.")
    try:
        model = models.build_model(cfg.model, num_classes, drop_path=cfg.drop_path, image_size=cfg.train_crop_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def init_weights(cfg: Config, model: nn.Module, classes: list) -> dict:
    """--init-from / --weights: copy the initial weights into the fresh model (`imnet.models.load_init`:
    strict keys and shapes, except the classifier head and a ViT position embedding). -> what the log says."""
    try:
        state, source_classes, source = models.init_source(cfg.init_from, cfg.weights, cfg.model, cfg.init_ema,
                                                           progress=not cfg.quiet)
        done = models.load_init(models.unwrap(model), cfg.model, state, cfg.train_crop_size, source_classes, classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"source": source, **done}


def init_line(report: dict) -> str:
    s = f"initial weights: {report['source']}: {len(report['loaded'])} tensors loaded"
    if report["interpolated"]:
        s += f"; interpolated to this image size: {', '.join(report['interpolated'])}"
    if report["reinitialised"]:
        s += (f"; classifier head re-initialised (other classes): {', '.join(report['reinitialised'])} (the "
              f"initial weights' head was not used)")
    return s


def build_param_groups(cfg: Config, model: nn.Module) -> list[dict]:
    if cfg.decay_norm_bias:
        return [{"name": "decay (all)", "params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": cfg.weight_decay}]
    return param_groups(model, cfg.weight_decay)


def plan(cfg: Config, groups: list[dict], train_tf, device: str | None = None) -> str:
    """What --dry-run prints: the resolved Config, the derived numbers, and the audit's warnings."""
    from imnet.audit import audit, notes
    lines = ["resolved configuration:"]
    lines += [f"  {k:<22} {v}" for k, v in sorted(cfg.to_dict().items()) if k != "eval_policy"]
    total, spe = cfg.total_steps, cfg.steps_per_epoch
    lines += [f"processes {cfg.world_size} x batch {cfg.batch_size} x accum {cfg.accum_steps} = global batch "
              f"{cfg.global_batch_size}",
              f"learning rate {cfg.peak_lr:.6g}" + ("" if cfg.lr_given else
                                                     f" (= {cfg.lr_base} x {cfg.global_batch_size} / 256, linear scaling)"),
              f"data: {cfg.train_images} train / {cfg.val_images} val images, {cfg.classes} classes; {spe} steps/epoch, "
              f"{total} steps",
              f"parameter groups: {count_param_groups(groups)}"]
    keys = sorted({0, 1, round(cfg.warmup_epochs * spe), total // 2, total - 1})
    lines.append("LR at steps: " + ", ".join(f"{s}: {cfg.lr_at(s):.6g}" for s in keys if 0 <= s < total))
    if cfg.progressive_res is not None:
        lines += progressive_plan(cfg)
    p = cfg.eval_policy
    lines += [f"train transform: {train_tf}", f"eval transform: {p.transform()}",
              f"eval policy: resize {p.resize_size} -> centre crop {p.crop_size} ({p.interpolation}), {p.decode} decode"]
    lines += [f"NOTE: {n}" for n in notes(cfg)]
    lines += [f"WARNING: {w}" for w in audit(cfg, device=device)]
    return "\n".join(lines)


def progressive_plan(cfg: Config) -> list[str]:
    """The training size of every epoch (runs of equal sizes merged) and the training FLOPs against
    training at END throughout: a convnet's FLOPs per image scale with size^2."""
    sizes = [cfg.train_size_at(e) for e in range(cfg.epochs)]
    runs, first = [], 0
    for e in range(1, cfg.epochs + 1):
        if e == cfg.epochs or sizes[e] != sizes[first]:
            span = f"{first + 1}" if e == first + 1 else f"{first + 1}-{e}"
            runs.append(f"{span}: {sizes[first]}")
            first = e
    end = cfg.progressive_res[1]
    share = sum(s * s for s in sizes) / (len(sizes) * end * end)
    return [f"progressive resolution, train crop size by epoch: {', '.join(runs)}",
            f"training FLOPs ~ {100 * share:.1f}% of training at {end} throughout (saves {100 * (1 - share):.1f}%; "
            f"FLOPs ~ size^2)"]


def check_compatible(state: dict, cfg: Config, classes: list, path) -> list[str]:
    """Refuse a resume that cannot continue the same run; return the other settings that changed."""
    then = state["config"]
    problems = [f"{label} {then.get(key)} vs {getattr(cfg, key)}" for key, label in
                (("model", "model"), ("global_batch_size", "global batch"), ("seed", "seed"))
                if then.get(key) != getattr(cfg, key)]
    if list(state["classes"]) != list(classes):
        problems.append(f"classes differ ({len(state['classes'])} in the checkpoint, {len(classes)} in the data)")
    if problems:
        raise ConfigError(f"Cannot resume from {path}: " + "; ".join(problems) + ". Resume with the settings of "
                          "the original run, or start a new run with another --output.")
    now = cfg.flags()
    ignore = {"resume", "config", "dry_run", "quiet", "workers", "device", "output", "data", "log_every",
              "save_every_minutes", "stop_at_step"}
    same = lambda a, b: (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)
    return [f"{k}: {then[k]} -> {v}" for k, v in now.items() if k in then and k not in ignore and not same(then[k], v)]


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint this run continues from: --resume PATH, or OUTPUT/last.pt under --resume auto, else None
    (a new run). Nothing is implied after a torchrun --max-restarts restart: in our trials the restarted gloo
    workers hung; a requeued job with --resume auto is the tested path."""
    resume = cfg.resume
    if resume == "auto":
        last = Path(cfg.output) / "last.pt"
        return last if last.is_file() else None
    return Path(resume) if resume else None


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # First thing: a scheduler's SIGTERM during startup (imports, data scan, model build) only sets a flag,
    # and the run stops cleanly at the first point where it can (before training, or after a step).
    signals = PreemptionSignals().install()
    signals.requested = bool(EARLY_SIGNALS)
    try:
        below, given = parse_args(argv)
        with contextlib.ExitStack() as cleanup:
            return run(below, given, signals, cleanup)
    except (ConfigError, DataError, CheckpointError, dist.DeviceError) as e:
        dist.eprint0(f"error: {dist.message_of(e)}")
        return 2
    finally:
        dist.cleanup()
        signals.uninstall()


def check_output(output: Path) -> None:
    """--output must be a folder this process can create and write into (checked before any work)."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is an existing file, not a folder. The run folder holds last.pt, "
                          f"best.pt and the logs; pass a folder path (new or an earlier run's).")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        raise ConfigError(f"Cannot write into --output {output}: {e.strerror or e}. Pass a folder you can "
                          f"write to (check the path and its permissions).") from None


def claim_output(cfg: Config, output: Path, cleanup: contextlib.ExitStack, log_note) -> None:
    """Rank 0 takes the run folder: refuses a second live run (OUTPUT/.lock), refuses to start a new run over an
    earlier one without --resume, and removes the temporary files of saves killed midway."""
    check_output(output)
    lock = ckpt_io.RunLock(output).acquire()
    cleanup.callback(lock.release)
    if cfg.resume is None and (output / "last.pt").exists():
        # A bare `python train.py` is the demo; with any flag it is not, so the demo's commands name --recipe demo.
        demo = " (for the demo: python train.py --recipe demo --resume auto)" if cfg.recipe == "demo" else ""
        raise ConfigError(f"{output} already holds a run (last.pt). A new run there would overwrite its "
                          f"checkpoints, best.pt included. To continue that run pass --resume auto{demo}; to start a "
                          f"new one pass another --output (or delete the folder).")
    for path in ckpt_io.remove_stale_temporaries(output):
        log_note(f"note: removed {path.name}, left by a save that was killed midway")


def resolve_config(below: dict, given: dict, info) -> Config:
    """The run's Config: the command line's flags over the lower layers, with the three values that depend
    on this machine filled in first (a bare --amp, the demo's generated data, the default output folder)."""
    given, flags = dict(given), {**below, **given}
    if flags["amp"] == "auto":
        given["amp"] = dist.auto_amp(info.device)
        if given["amp"] == "none":
            dist.print0(f"note: --amp on {info.device.type}: no autocast (fp32). bf16 autocast runs on CPUs "
                        f"without native bf16 support many times slower than fp32; ask --amp bf16 to force it.")
    if flags["data"] is None and flags["recipe"] == "demo" and not flags["fake_data"]:
        from imnet.demo import ensure_dataset
        given["data"] = str(ensure_dataset())
    if given.get("data", flags["data"]) is None and not flags["fake_data"]:
        raise ConfigError("No data: pass --data ROOT, where ROOT holds train/<class>/*.JPEG and val/<class>/*.JPEG "
                          "(the ImageNet layout), or --fake-data for a throughput run, or run with no arguments "
                          "for the demo.")
    given["output"] = flags["output"] or str(Path("runs") / (flags["recipe"] or flags["model"]))
    return config.resolve(below, given, info.world_size)


def build_parts(cfg: Config, model: nn.Module, groups: list[dict], num_classes: int, info):
    """-> (engine.Parts, the model evaluation runs, the SWA average or None): the objects the steps act on."""
    optimizer = build_optimizer(cfg.opt, groups, lr=cfg.peak_lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, nesterov=cfg.nesterov)
    train_model = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    eval_model = model  # never DDP: ranks see uneven evaluation shards
    if cfg.compile:
        train_model, eval_model = torch.compile(train_model), torch.compile(model)
    parts = engine.Parts(
        model=model, train_model=train_model, optimizer=optimizer, device=info.device, rank=info.rank,
        scaler=torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None,
        sam=SAM(optimizer, rho=cfg.sam, adaptive=cfg.sam_adaptive) if cfg.sam > 0 else None,
        ema=ModelEma(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup, every=cfg.ema_every) if cfg.ema else None,
        mixer=Mixer(num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                    switch_prob=cfg.switch_prob, label_smoothing=cfg.label_smoothing) if cfg.mixing else None)
    swa = AveragedModel(model) if cfg.swa_start is not None else None  # a copy on the model's device
    return parts, eval_model, swa


def restore(path: Path, cfg: Config, classes: list, parts, swa, meter: Meter, bad_counter, info, log) -> Progress:
    """Load a checkpoint of this run into every stateful piece; -> where the run was."""
    state = ckpt_io.read_state(path)
    for change in check_compatible(state, cfg, classes, path):
        log.event("setting_changed", echo=f"note: setting changed since the checkpoint: {change}", change=change)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.ema is not None and state.get("ema") is not None:
        parts.ema.load_state_dict(state["ema"])
    if swa is not None and state.get("swa") is not None:
        swa.load_state_dict(state["swa"])
    if parts.scaler is not None and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    progress = ckpt_io.progress_of(state)
    if progress.step_in_epoch and info.is_main and state.get("meter") is not None:
        meter.load_state_dict(state["meter"])  # rank 0 carries the epoch's partial sums of all ranks
    if info.rank < len(state["rng"]):
        ckpt_io.set_rng_state(state["rng"][info.rank])
    if state.get("bad_images"):
        bad_counter.load_state_dict(state["bad_images"])
    log.event("resume", echo=f"resumed from {path} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}",
              path=str(path), epoch=progress.epoch, step_in_epoch=progress.step_in_epoch)
    return progress


def run(below: dict, given: dict, signals: PreemptionSignals | None = None,
        cleanup: contextlib.ExitStack | None = None) -> int:
    t_start = time.time()
    signals = signals or PreemptionSignals()
    cleanup = cleanup or contextlib.ExitStack()
    info = dist.init({**below, **given}["device"])
    cfg = resolve_config(below, given, info)
    output = Path(cfg.output)
    if not cfg.dry_run and info.is_main:
        claim_output(cfg, output, cleanup, dist.print0)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)

    # ------------------------------------------------------------------------------------- data, model
    classes, train_set, val_set = build_datasets(cfg)
    cfg = cfg.with_data(len(train_set), len(val_set), len(classes))
    sampler = data.TrainSampler(len(train_set), info.world_size, info.rank, seed=cfg.seed, drop_last=True,
                                repeats=cfg.ra_reps)
    pin = info.device.type == "cuda"
    # Preemptible: the workers ignore the scheduler's SIGTERM (this process decides), so they are shut down
    # explicitly when run() ends, however it ends.
    train_loader = data.build_loader(train_set, sampler, cfg.batch_size, cfg.workers, pin_memory=pin, drop_last=True,
                                     preemptible=True)
    val_loader = data.build_loader(val_set, data.EvalSampler(len(val_set), info.world_size, info.rank),
                                   cfg.batch_size, cfg.workers, pin_memory=pin, preemptible=True)
    cleanup.callback(data.shutdown_workers, val_loader)
    cleanup.callback(data.shutdown_workers, train_loader)
    if cfg.steps_per_epoch < 1:
        raise ConfigError(f"One epoch has fewer than one optimizer step: {len(sampler)} images per process, batch "
                          f"{cfg.batch_size} x accum {cfg.accum_steps}. Lower the batch or accumulation.")
    model = build_model(cfg, len(classes), info)
    init_report = None
    if (cfg.init_from or cfg.weights) and find_resume(cfg) is None:  # a resumed run has its own weights
        # --weights: rank 0 downloads into torchvision's cache first; the other ranks then read the cached file.
        first = cfg.weights is not None and info.distributed
        if first and not info.is_main:
            torch.distributed.barrier()
        try:
            init_report = init_weights(cfg, model, classes)
        finally:
            if first and info.is_main:
                torch.distributed.barrier()
    groups = build_param_groups(cfg, model)
    if cfg.dry_run:
        if info.is_main:
            print(plan(cfg, groups, getattr(train_set, "transform", None), info.device.type), flush=True)
            if init_report:
                print(init_line(init_report), flush=True)
        return 0

    parts, eval_model, swa = build_parts(cfg, model, groups, len(classes), info)
    meter = Meter(info.device)
    bad_counter = data.BadImageCounter(data.parse_max_bad(cfg.max_bad_images, len(train_set)), len(train_set))

    log = RunLog(output, enabled=info.is_main, quiet=cfg.quiet)
    if info.is_main:
        config.write_config_file(cfg, output / "config.json")

    # ------------------------------------------------------------------------------------- resume
    resume_path = find_resume(cfg)
    progress = Progress()
    if resume_path is not None:
        progress = restore(resume_path, cfg, classes, parts, swa, meter, bad_counter, info, log)
        if info.is_main and resume_path == output / "last.pt":
            repair_best(output, progress, log)
    else:
        log.event("start", config=cfg.to_dict(), classes=len(classes), train_images=len(train_set),
                  val_images=len(val_set))
        if init_report:
            log.event("init", echo=init_line(init_report), **init_report)
    for split, dataset in (("train", train_set), ("val", val_set)):
        if getattr(dataset, "skipped", None):
            log.event("skipped_files", echo=f"note: {split}/: {folders.describe_skipped(dataset.skipped)}",
                      split=split, count=len(dataset.skipped))
    from imnet.audit import notes
    for note in notes(cfg):
        log.print(f"note: {note}")
    log.print(f"imnet {imnet.__version__}: {cfg.model} on {cfg.world_size} x {info.device.type}, global batch "
              f"{cfg.global_batch_size}, lr {cfg.peak_lr:.4g}, {cfg.epochs} epochs x {cfg.steps_per_epoch} steps "
              f"-> {output}")

    saves = 0

    def save(name: str) -> None:
        """Write OUTPUT/name; every rank takes part (the meter's sums and RNG states are gathered)."""
        nonlocal saves
        saves += 1
        preempt_hook("save", saves)
        meter_state = meter.state_dict()
        if info.distributed:  # one copy of the epoch's partial sums: the sum over ranks
            meter_state = {k: dist.all_reduce_sum(v.to(info.device)).cpu() if torch.is_tensor(v) else v
                           for k, v in meter_state.items()}
        rngs = dist.gather_object(ckpt_io.rng_state())
        if info.is_main:
            ckpt_io.save_atomic(ckpt_io.make_state(
                model=model.state_dict(), optimizer=parts.optimizer.state_dict(), progress=progress, config=cfg.to_dict(),
                classes=classes, ema=parts.ema.state_dict() if parts.ema else None,
                swa=swa.state_dict() if swa is not None else None,
                scaler=parts.scaler.state_dict() if parts.scaler else None, meter=meter_state, rngs=rngs,
                bad_images=bad_counter.state_dict(), imnet_version=imnet.__version__), output / name)

    def finish_epoch(row: dict) -> None:
        """Evaluate the finished epoch if it is due (``progress.pending_eval``), then write best.pt (when the
        top-1 improved) BEFORE last.pt: a kill between the two writes leaves last.pt still pending, so the
        resumed run evaluates again and rewrites both; best.pt can never lag behind last.pt's best_top1."""
        if progress.pending_eval:
            t0 = time.time()
            preempt_hook("eval", progress.epoch)
            with signals.deferred():  # workers may be forked here; a signal waits until the evaluation ends
                row.update(evaluate_row(cfg, parts, eval_model, val_loader, len(classes), progress.epoch - 1,
                                        swa=swa, bn_data=(train_loader, sampler)))
            progress.pending_eval = False
            row["epoch_time"] = row.get("epoch_time", 0.0) + time.time() - t0
            if row["val_top1"] > progress.best_top1:
                progress.best_top1 = row["val_top1"]
                save("best.pt")
            save("last.pt")
        log.event("epoch", echo=epoch_line(row), **row)
        log.write_summary(progress.history)

    # ------------------------------------------------------------------------------------- epochs
    if progress.pending_eval:  # resumed from an epoch saved before its evaluation
        finish_epoch(progress.history[-1])
    if signals.requested and not info.distributed:  # a signal during startup: nothing trained, nothing to lose
        log.event("preempted", echo=f"stopped by signal before training (epoch {progress.epoch + 1}, step "
                  f"{progress.step_in_epoch}); nothing to save. Continue with --resume auto --output {output}",
                  epoch=progress.epoch, step_in_epoch=progress.step_in_epoch)
        return 0
    agree = dist.Flags(info, n=3)  # stop / save / too many bad images, agreed by all ranks one step later
    nan_guard = engine.NonFiniteGuard(info.device)
    last_save = time.time()
    steps_at_start, run_t0 = progress.global_step, time.time()
    try:
        while progress.epoch < cfg.epochs:
            epoch_t0 = time.time()
            sampler.set_epoch(progress.epoch)
            sampler.set_start(progress.step_in_epoch * cfg.accum_steps * cfg.batch_size)
            if progress.step_in_epoch == 0:
                meter.reset()
            parts.train_model.train()
            with signals.deferred():  # workers are forked here (first epoch): see PreemptionSignals.deferred
                batches = iter(train_loader)
            train_size, window = None, Window(info.device)
            while progress.step_in_epoch < cfg.steps_per_epoch:
                t = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.accum_steps)]
                train_size = micro[0][0].shape[-1]  # what the batches really hold (progressive resolution)
                window.data_time += time.perf_counter() - t
                loss, grad_norm = engine.train_step(cfg, parts, [(x, y) for x, y, _ in micro], progress.epoch,
                                                    progress.step_in_epoch, progress.global_step, meter)
                # Bookkeeping on the device only: no host synchronisation per step.
                nan_guard.update(loss, progress.global_step)
                window.loss += loss
                window.steps += 1
                progress.global_step += 1
                progress.step_in_epoch += 1
                preempt_hook("step", progress.global_step)

                end = progress.step_in_epoch == cfg.steps_per_epoch
                if cfg.log_every and (progress.step_in_epoch % cfg.log_every == 0 or end):
                    nan_guard.check()
                    done = progress.global_step - steps_at_start
                    eta = (time.time() - run_t0) / max(done, 1) * (cfg.total_steps - progress.global_step)
                    log_window(log, cfg, progress, window, grad_norm, eta, info.device)
                    window = Window(info.device)

                for path in bad_counter.update([p for _, _, bad in micro for p in bad], check=False):
                    log.event("bad_image", echo=f"skipped unreadable image {folders.display_path(path)} (replaced "
                              f"by another sample)", path=folders.display_path(path), epoch=progress.epoch, step=progress.step_in_epoch)
                timer_due = info.is_main and cfg.save_every_minutes > 0 and \
                    time.time() - last_save > 60 * cfg.save_every_minutes
                stop, save_now, too_many_bad = agree.post([signals.requested or progress.global_step == cfg.stop_at_step,
                                                           timer_due, bad_counter.count > bad_counter.max_bad])
                if save_now or stop or too_many_bad:
                    nan_guard.check()  # never overwrite a good checkpoint with NaN weights
                    save("last.pt")
                    last_save = time.time()
                    log.event("checkpoint", path=str(output / "last.pt"), epoch=progress.epoch,
                              step_in_epoch=progress.step_in_epoch,
                              reason="preemption" if stop else "bad images" if too_many_bad else "timer")
                if too_many_bad:  # every rank stops together; the message names this rank's files
                    bad_counter.check(max(bad_counter.count, bad_counter.max_bad + 1))
                if stop:
                    log.event("preempted", echo=f"stopped by signal at epoch {progress.epoch + 1} step "
                              f"{progress.step_in_epoch}; last.pt written, continue with --resume auto --output "
                              f"{output}", epoch=progress.epoch, step_in_epoch=progress.step_in_epoch)
                    return 0
            nan_guard.check()

            # End of the epoch: average (SWA); first secure the epoch's training in last.pt (an evaluation that
            # fails or is interrupted must not throw the epoch away), then evaluate and write best.pt / last.pt.
            if swa is not None and progress.epoch + 1 >= cfg.swa_start:
                swa.update_parameters(model)
            row = train_row(cfg, parts, meter, progress.epoch, bad_counter.count)
            row["epoch_time"] = time.time() - epoch_t0
            row["train_size"] = train_size
            progress.history.append(row)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            progress.pending_eval = evaluates(cfg, progress.epoch)
            save("last.pt")
            finish_epoch(row)
            last_save = time.time()
            if agree.drain()[0] or (not info.distributed and signals.requested):
                log.event("preempted", echo=f"stopped by signal after epoch {progress.epoch}; continue with "
                          f"--resume auto --output {output}", epoch=progress.epoch, step_in_epoch=0)
                return 0
    except engine.NonFiniteLoss as e:
        last = output / "last.pt"
        log.event("nonfinite", step=e.step)
        dist.eprint0(f"error: the loss became NaN or infinite at optimizer step {e.step} (epoch {progress.epoch + 1}). "
                     f"Training stopped; the last good checkpoint {last if last.exists() else '(none yet)'} is "
                     f"untouched. Lower the learning rate, add warmup or --clip-grad, or use bf16 instead of fp16; "
                     f"then --resume {last}.")
        return 1

    summary(progress, output, log, time.time() - t_start)
    return 0


class Window:
    """The optimizer steps since the last log line: their summed loss (kept on the device until the line is
    written: no host sync per step), how many, since when, and how long they waited for data."""

    def __init__(self, device):
        self.loss, self.steps, self.data_time, self.t0 = torch.zeros((), device=device), 0, 0.0, time.perf_counter()


def log_window(log: RunLog, cfg: Config, progress: Progress, window: Window, grad_norm, eta: float, device) -> None:
    """One progress line (console) and "train" event (log.jsonl) for the steps of ``window``."""
    elapsed = max(time.perf_counter() - window.t0, 1e-9)
    img_s, data_share = window.steps * cfg.global_batch_size / elapsed, window.data_time / elapsed
    loss, lr, mem = (window.loss / window.steps).item(), cfg.lr_at(progress.global_step - 1), peak_memory_gib(device)
    log.event("train", echo=progress_line(progress.epoch, cfg.epochs, progress.step_in_epoch, cfg.steps_per_epoch,
                                          loss, lr, img_s, data_share, eta, mem),
              epoch=progress.epoch, step=progress.step_in_epoch, global_step=progress.global_step, loss=loss, lr=lr,
              img_per_s=img_s, data_share=data_share, grad_norm=float(grad_norm) if grad_norm is not None else None,
              peak_mem_gib=mem)


def train_row(cfg: Config, parts, meter: Meter, epoch: int, bad_images: int) -> dict:
    """The finished epoch's summary row, training figures (the validation figures are added by evaluate_row)."""
    train = meter.compute(distributed=True)
    return {"epoch": epoch + 1, "train_loss": train["loss"],
            "train_top1": train["top1"] if not (parts.mixer and parts.mixer.enabled) else None,
            "lr": cfg.lr_at((epoch + 1) * cfg.steps_per_epoch), "bad_images": bad_images}


def evaluates(cfg: Config, epochs_done: int) -> bool:
    """Whether the epoch that makes ``epochs_done`` evaluates: every --eval-every epochs and after the last."""
    return epochs_done == cfg.epochs or bool(cfg.eval_every and epochs_done % cfg.eval_every == 0)


def evaluate_row(cfg: Config, parts, eval_model, val_loader, num_classes: int, epoch: int, swa=None,
                 bn_data=None) -> dict:
    """The validation figures of the summary row of (0-based) ``epoch``, and those of the EMA and SWA weights
    when the run keeps them."""
    evaluate = lambda m: engine.evaluate(m, val_loader, parts.device, cfg.eval_policy, num_classes,
                                         amp_dtype=cfg.amp_dtype, channels_last=cfg.channels_last)
    v = evaluate(eval_model)
    row = dict(val_loss=v.loss, val_top1=v.top1, val_top5=v.top5, val_count=v.count)
    for path in v.unreadable:
        print(f"warning: unreadable validation image {path}: it was replaced by another image, so this "
              f"evaluation is not exact; repair or remove the file", file=sys.stderr, flush=True)
    if parts.ema is not None:
        e = evaluate(parts.ema.module)
        row.update(ema_val_loss=e.loss, ema_val_top1=e.top1, ema_val_top5=e.top5)
    if swa is not None and int(swa.n_averaged) > 0:
        swa_batchnorm(cfg, swa, *bn_data, epoch, parts.device)
        s = evaluate(swa.module)
        row.update(swa_val_loss=s.loss, swa_val_top1=s.top1, swa_val_top5=s.top5)
    return row


def swa_batchnorm(cfg: Config, swa: AveragedModel, loader, sampler, epoch: int, device) -> None:
    """BatchNorm statistics for the averaged weights (Izmailov et al. 2018, "Averaging Weights Leads to Wider
    Optima and Better Generalization", Sec. 3.2): the running means and variances of the snapshots do not
    describe the activations of their average, so torch's ``update_bn`` recomputes them as plain averages
    over one pass of the training data (this epoch's augmentation, from its first sample). Each rank sees
    its shard; the ranks' statistics are then averaged (equal shard sizes: the mean is exact, the variance
    is the mean of the ranks' variances). A model without BatchNorm skips the pass."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in swa.modules()):
        return
    sampler.set_epoch(epoch)
    sampler.set_start(0)
    with engine.autocast(device, cfg.amp_dtype):
        update_bn((data.to_device(x, y, device, channels_last=cfg.channels_last)[0] for x, y, _ in loader), swa)
    if cfg.world_size > 1:
        for m in swa.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for t in (m.running_mean, m.running_var):
                    t.copy_(dist.all_reduce_sum(t.clone()) / cfg.world_size)


def repair_best(output: Path, progress: Progress, log: RunLog) -> None:
    """On resume: best.pt must hold the run's best top-1. A run written before best.pt was saved ahead of last.pt
    could be killed between the two writes (last.pt knowing a newer best than best.pt); if last.pt's own epoch
    is that best, it becomes best.pt; otherwise the stale best.pt is reported."""
    best_path, last_path = output / "best.pt", output / "last.pt"
    if progress.pending_eval or progress.best_top1 < 0 or not best_path.exists():
        return
    best = ckpt_io.load(best_path).get("best_top1", -1.0)
    if best >= progress.best_top1:
        return
    newest = progress.history[-1].get("val_top1") if progress.history else None
    if newest == progress.best_top1:
        shutil.copyfile(last_path, output / ".best.pt.repair")
        os.replace(output / ".best.pt.repair", best_path)
        log.event("best_repaired", echo=f"note: best.pt (top-1 {best:.2f}) lagged behind last.pt (best top-1 "
                  f"{progress.best_top1:.2f}, its own epoch); best.pt now holds that epoch", old=best,
                  new=progress.best_top1)
    else:
        log.event("best_stale", echo=f"warning: best.pt holds top-1 {best:.2f} but the run's best was "
                  f"{progress.best_top1:.2f}, an epoch whose weights were not saved; best.pt is kept as it is",
                  old=best, new=progress.best_top1)


def epoch_line(row: dict) -> str:
    s = f"epoch {row['epoch']} done in {row['epoch_time']:.1f}s: train loss {row['train_loss']:.4f}"
    if row.get("val_top1") is not None:
        s += f"  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f} top-5 {row['val_top5']:.2f}"
    if row.get("ema_val_top1") is not None:
        s += f"  EMA top-1 {row['ema_val_top1']:.2f}"
    if row.get("swa_val_top1") is not None:
        s += f"  SWA top-1 {row['swa_val_top1']:.2f}"
    return s


def summary(progress: Progress, output: Path, log: RunLog, wall: float) -> None:
    last = progress.history[-1] if progress.history else {}
    top1 = last.get("val_top1")
    lines = [f"done in {wall / 60:.1f} min.",
             f"final val top-1 {top1:.2f}%  top-5 {last.get('val_top5'):.2f}%" if top1 is not None else "no evaluation",
             f"best val top-1 {progress.best_top1:.2f}%" if progress.best_top1 >= 0 else "",
             f"checkpoints: {output / 'last.pt'}, {output / 'best.pt'}",
             f"logs: {output / 'log.jsonl'}, {output / 'summary.csv'}; plot: {output / 'curves.svg'}"]
    log.event("done", echo="\n".join(x for x in lines if x), wall_s=wall, final=last, best_top1=progress.best_top1)


if __name__ == "__main__":
    code = main()
    preempt_hook("exit", 1)  # teardown: a signal now is recorded by the early handler, not a kill
    sys.exit(code)
