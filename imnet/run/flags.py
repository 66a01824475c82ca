"""train.py's flags: the manual (``python train.py --help``), each flag's valid range, and the layers they come in:
argparse defaults < ``--recipe NAME`` < ``--config FILE`` < the command line (`parse_args`). Standard library only
(and imnet.run.recipes, plain data): ``--help`` and flag errors are answered before torch is imported.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import re
import sys
import textwrap
from dataclasses import MISSING
from pathlib import Path

from imnet.run.errors import UsageError
from imnet.run.recipes import RECIPES

AMP_CHOICES = ("none", "bf16", "fp16")  # imnet.run.config maps them to torch dtypes
DRY_RUNS = ("plan", "loader")  # a bare --dry-run: plan
DECODE_MODES = ("full", "reduced")
INTERPOLATIONS = ("bilinear", "bicubic")
ERASE_MODES = ("pixel", "const")


def _literals(path: Path, names: tuple) -> tuple:
    """The literal values assigned to ``names`` at the top of the Python file ``path`` (read, not imported)."""
    found = {t.id: ast.literal_eval(node.value) for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name) and t.id in names}
    return tuple(found[name] for name in names)


# imnet/optim.py's, read from its source: importing it would import torch
NO_DECAY_CATEGORIES, IMNET_NO_DECAY = _literals(Path(__file__).parents[1] / "optim.py",
                                                ("NO_DECAY_CATEGORIES", "IMNET_NO_DECAY"))

# The values a run's config.json holds besides its flags, derived by imnet.run.config.resolve and Config.with_data
# (a --config file's copies are recomputed, not read): name -> default (MISSING: resolve always sets it).
DERIVED = dict(world_size=MISSING, global_batch_size=MISSING, peak_lr=MISSING, lr_given=MISSING,
               opt_given=MISSING, eval_policy=MISSING, mixing=MISSING, loss_label_smoothing=MISSING,
               mix_label_smoothing=MISSING, train_images=0, val_images=0, classes=0, steps_per_epoch=0,
               teacher_info=None)


class FlagError(UsageError):
    """A flag (or a --config setting) that cannot be used as given."""


# ----------------------------------------------------------------------------------------------- ranges

class Range:
    """An argparse ``type``: a finite number of ``kind`` (int or float) within [lo, hi] (``lo_open`` / ``hi_open``:
    the bound itself excluded; None: unbounded), stated in the flag's help."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            noun = "a whole number" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun} {self.describe()} (got {text!r})") from None
        bad = ((self.kind is float and not math.isfinite(value))  # (an int is finite; isfinite(10**400) raises)
               or (self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo))
               or (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)))
        if bad:
            raise argparse.ArgumentTypeError(f"must be {self.describe()} (got {text})")
        return value

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts) or "finite"


COUNT = Range(int, 1)                       # 1, 2, 3, ...
NATURAL = Range(int, 0)                     # 0, 1, 2, ...
SIZE = Range(int, 16, 4096)                 # image sizes in pixels
PROB = Range(float, 0.0, 1.0)               # probabilities
MAGNITUDE = Range(float, 0.0)               # learning rates, weight decay, norms, alphas
FRACTION_OPEN = Range(float, 0.0, 1.0, hi_open=True)   # [0, 1): smoothing, momentum, drop path
SEED = Range(int, 0, 2**63 - 1)
WORKERS = Range(int, 0, 256)                # data-loading processes per process (also capped by the cores)
WORKERS_HELP = ("; default: the CPUs this process may use, shared by the node's processes, less one, at most 16; "
                "above 4 per CPU core it is lowered to that, with a note")


def max_bad_images(text, total: int | None = None):
    """--max-bad-images: a whole number of files (10; 0 stops at the first one) or a fraction of the training
    set in [0, 1] with a decimal point (0.001) -> the text checked, or with ``total`` the count (rounded down)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return text if total is None else int(text)
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a count of unreadable images as a whole number (e.g. 10, or 0 "
                                         f"to stop at the first one) or a fraction of the training set between 0 "
                                         f"and 1 (e.g. 0.001); got {text!r}")
    return text if total is None else math.floor(fraction * total)


# ----------------------------------------------------------------------------------------------- the parser

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a number's valid range, and each flag's default except None and False (no "(default: None)")."""

    def _get_help_string(self, action):
        text = action.help
        if isinstance(action.type, Range):
            text += f" [valid: {action.type.describe()}]"
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"

    def _fill_text(self, text, width, indent):
        # the description and the epilog, whose flag names (--clip-grad-norm) must not be cut at their hyphens
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse, with mistakes raised as one-paragraph `FlagError`s instead of a usage block: an unknown flag
    gets the closest known ones ("did you mean"), a bad value the flag's valid range or choices."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, after the familiar flags that need another (`NEEDS`) are checked."""
        args = sys.argv[1:] if args is None else list(args)
        present = {a.split("=", 1)[0] for a in args[:args.index("--") if "--" in args else len(args)]}
        for name, (needed, hint) in NEEDS.items():
            if name in present and needed not in present and name in self.option_names():
                raise FlagError(f"{name} without {needed}: {hint}.")
        return super().parse_known_args(args, namespace)

    def option_names(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def error(self, message):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [w.split("=", 1)[0] for w in unknown.group(1).split() if w.startswith("-")]
            hints = []
            for flag in flags:
                names = self.option_names()
                # a flag cut short (--fake for --fake-data; abbreviations are not accepted), else a near spelling
                close = [n for n in names if n.startswith(flag)][:3] or \
                    difflib.get_close_matches(flag, names, n=3, cutoff=0.75)
                hints.append(f"{flag} (did you mean {' or '.join(close)}?)" if close else flag)
            words = hints or [unknown.group(1)]
            message = f"unknown flag{'s' if len(words) > 1 else ''} {', '.join(words)}"
        message = re.sub(r"invalid choice: (.*) \(choose from (.*)\)$",
                         lambda m: f"must be one of {m.group(2)} (got {m.group(1)})", message)
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[0] + " ", message)
        raise FlagError(f"{message}. `{self.prog} --help` lists every flag with its valid values.")


def settings(parser: Parser) -> dict:
    """dest -> action of the parser's own flags (not --help, not the `Familiar` flags of other scripts)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", argparse.SUPPRESS)}


# ----------------------------------------------------------------------------------------------- familiar flags
# torchvision's and timm's spellings with imnet's meaning are option strings of its flags (--wd); the others follow.

# theirs, with another meaning than any imnet flag's -> what to type instead
_STEP = ("for timm's step decay type --sched exp --lr-decay-epochs E --lr-gamma RATE (imnet decays per optimizer "
         "step, timm by default per epoch)")
_DECAY = "type --no-decay-on {0} for --{1}-decay 0 (imnet decays {0} at --weight-decay or not at all)"
POINTERS = {
    "--lr-step-size": "for torchvision's StepLR type --sched exp --lr-decay-epochs S --lr-gamma G",
    "--print-freq": "torchvision's counts batches: type --log-every N (optimizer steps of --accum-steps batches)",
    "--test-only": "type python eval.py --checkpoint RUN/best.pt --data ROOT (--use-ema for the EMA weights)",
    "--model-ema-decay": "type --ema-decay D for timm's; imnet.run.recipes.torchvision_ema_decay converts "
                         "torchvision's for --ema-every STEPS",
    "--model-ema-steps": "type --ema-every K with the --ema-decay that imnet.run.recipes.torchvision_ema_decay gives",
    "--img-size": "timm's sets both crops: type --train-crop-size N --val-crop-size N (--crop-pct P for its crop_pct)",
    "--input-size": "timm's C H W: type --train-crop-size N --val-crop-size N (square RGB inputs only)",
    "--aa": "the closest to timm's rand-mM is --auto-augment ra --ra-magnitude M --ra-num-ops 2",
    "--warmup-lr": "timm's is an absolute LR: type --warmup-start-factor F with F = warmup LR / peak LR",
    "--amp-dtype": "imnet's --amp takes the dtype: type --amp fp16 (with loss scaling) or --amp bf16",
    "--pretrained": "type --weights with the model's torchvision weights, e.g. --weights ResNet50_Weights.DEFAULT",
    "--decay-epochs": _STEP,
    "--decay-rate": _STEP,
    "--experiment": "type --output FOLDER, the run folder itself",
    "--ra-sampler": "type --ra-reps 3 (torchvision's default repeats) or another N",
    "--norm-weight-decay": _DECAY.format("norm", "norm-weight"),
    "--bias-weight-decay": _DECAY.format("bias", "bias-weight"),
    "--transformer-embedding-decay": _DECAY.format("embedding", "transformer-embedding"),
}
# theirs, with imnet's meaning for some values only -> (imnet's dest, their value -> imnet's (None: imnet's fixed
# behaviour, dropped), what to type for the others)
VALUES = {
    "--lr-scheduler": ("sched", {"cosineannealinglr": "cosine"},
                       "for steplr type --sched exp --lr-decay-epochs S --lr-gamma G, for exponentiallr "
                       "--sched exp --lr-decay-epochs 1 --lr-gamma G"),
    "--hflip": (None, {"0.5": None}, "imnet always flips with probability 0.5, so drop --hflip"),
    "--lr-warmup-method": (None, {"linear": None},
                           "imnet's warmup is linear: type --warmup-epochs N --warmup-start-factor F"),
}
# theirs, with imnet's meaning only beside another of theirs -> (that flag, what to type without it)
NEEDS = {"--lr-warmup-epochs": ("--lr-warmup-method", "torchvision's warmup is constant unless --lr-warmup-method "
                                                      "linear: add it, or type --warmup-epochs N")}
EVAL_POINTERS = {
    "--img-size": "timm's is the evaluation crop: type --val-crop-size N (--crop-pct P for its crop_pct)",
    "--amp-dtype": POINTERS["--amp-dtype"],
    "--test-only": "eval.py only evaluates: drop --test-only",
}


def _value_key(value: str) -> str:
    """A value as `VALUES` spells it: lower case, numbers in one form (.5, 0.50 and 5e-1 are 0.5)."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value.lower()


class Familiar(argparse.Action):
    """Another script's flag: a value in ``values`` sets imnet's ``target`` (or is dropped); else FlagError with
    ``hint``."""

    def __init__(self, option_strings, dest, hint="", target=None, values=None, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.hint, self.target, self.values = hint, target, values or {}

    def __call__(self, parser, namespace, value, option_string=None):
        key = None if value is None else _value_key(value)
        if key not in self.values:
            shown = option_string + ("" if value is None else f" {value}")
            raise FlagError(f"{shown} is torchvision's or timm's flag, not imnet's: {self.hint}.")
        if self.values[key] is not None:
            setattr(namespace, self.target, self.values[key])


def add_familiar(parser: Parser, pointers: dict, values: dict | None = None) -> Parser:
    """Adds the `Familiar` flags and the --help epilog that lists every familiar spelling."""
    for name, hint in pointers.items():
        parser.add_argument(name, action=Familiar, hint=hint)
    for name, (target, table, hint) in (values or {}).items():
        parser.add_argument(name, action=Familiar, hint=hint, target=target, values=table)
    same = [f"{s} ({a.option_strings[0]}{', with ' + NEEDS[s][0] if s in NEEDS else ''})"
            for a in settings(parser).values() for s in a.option_strings[1:] if not s.startswith("--no-")]
    same += [f"{name} (--{target}, {', '.join(f'{k} = {v}' for k, v in table.items())})" if target else
             f"{name} {' '.join(table)} (imnet's fixed behaviour)"
             for name, (target, table, _) in (values or {}).items()]
    parser.epilog = (f"Also accepted (torchvision's, timm's and older spellings): {', '.join(same)}. Refused, with "
                     f"what to type instead: {', '.join(pointers)}.")
    return parser


def add_eval_policy_flags(g, *, crop_default=None, decode_default=None, names=None) -> None:
    """The evaluation-policy flags of train.py and eval.py (``names``: eval.py's older spellings by dest)."""
    names = names or {}
    g.add_argument("--val-crop-size", *names.get("val_crop_size", ()), type=SIZE, default=crop_default,
                   help="centre crop size for evaluation (224, 288, 384...)")
    g.add_argument("--val-resize-size", *names.get("val_resize_size", ()), type=SIZE, default=None,
                   help="shorter side before the centre crop (default: floor(crop / crop_pct))")
    g.add_argument("--crop-pct", *names.get("crop_pct", ()), type=Range(float, 0.0, 1.0, lo_open=True), default=None,
                   help="centre crop / resize; sets the resize unless --val-resize-size is given (0.875: 224 -> 256)")
    g.add_argument("--val-interpolation", *names.get("val_interpolation", ()), choices=INTERPOLATIONS, default=None,
                   help="evaluation resize resampling")
    g.add_argument("--val-decode", *names.get("val_decode", ()), choices=DECODE_MODES, default=decode_default,
                   help="full: torchvision's Resize + CenterCrop pixels; reduced: faster DCT-scaled JPEG decoding")


def build_parser() -> Parser:
    p = Parser(prog="train.py",
               description="Train a torchvision classifier on an ImageFolder tree (train/<class>/*, val/<class>/*). "
                           "With no arguments at all, runs the demo recipe on a generated dataset.")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="defaults from a recipe (recipes.md); --recipe NAME --help shows its values")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="start from a run's config.json (flags given here override it)")

    g = p.add_argument_group("data")
    g.add_argument("--data", "--data-path", "--data-dir",
                   help="root folder holding train/ and val/ (class subfolders in each)")
    g.add_argument("--workers", "-j", type=WORKERS, default=None,
                   help="data loading processes per training process" + WORKERS_HELP)
    g.add_argument("--train-crop-size", type=SIZE, default=224, help="RandomResizedCrop output size")
    add_eval_policy_flags(g, crop_default=224, decode_default="full")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear",
                   help="resampling of the training crops and of the evaluation resize")
    g.add_argument("--train-interpolation", choices=INTERPOLATIONS, default=None,
                   help="RandomResizedCrop resampling only (default: --interpolation)")
    g.add_argument("--crop-scale", "--scale", type=Range(float, 0.0, 1.0, lo_open=True), nargs=2, default=[0.08, 1.0],
                   metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area fraction range (0.08-1 for ImageNet; larger for small objects)")
    g.add_argument("--progressive-res", type=SIZE, nargs=2, default=None, metavar=("START", "END"),
                   help="the training crop ramps from START to END (multiples of 16; END is --train-crop-size)")
    g.add_argument("--progressive-epochs", type=NATURAL, nargs=2, default=None, metavar=("FROM", "TO"),
                   help="epochs (from 1) of the ramp: START up to epoch FROM, END from epoch TO on, linear between")
    g.add_argument("--max-bad-images", type=max_bad_images, default="0.001",
                   help="unreadable images tolerated before stopping: a count (10) or a fraction of the set (0.001)")
    g.add_argument("--fake-data", action="store_true",
                   help="random uint8 tensors instead of files, 100 steps per epoch (throughput runs)")
    g.add_argument("--num-classes", type=COUNT, default=1000, help="classes for --fake-data")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="a torchvision classification model name, deit_tiny or deit_small")
    g.add_argument("--drop-path", type=FRACTION_OPEN, default=None,
                   help="stochastic depth rate (default: the model's own)")
    g.add_argument("--init-from", "--initial-checkpoint", metavar="PATH", default=None,
                   help="a new run's initial weights: a train.py checkpoint or a state_dict (other classes: new head)")
    g.add_argument("--init-ema", action="store_true", help="take the EMA weights of the --init-from checkpoint")
    g.add_argument("--weights", metavar="NAME", default=None,
                   help="like --init-from, from torchvision's weights, e.g. ResNet50_Weights.IMAGENET1K_V2")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="NHWC memory format (faster convolutions on GPUs and on this CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=COUNT, default=90, help="training epochs")
    g.add_argument("--batch-size", "-b", type=COUNT, default=32, help="images per process per micro-step")
    g.add_argument("--global-batch", type=COUNT, default=None,
                   help="total batch per optimizer step; sets --batch-size = global / (world size * accum steps)")
    g.add_argument("--accum-steps", "--grad-accum-steps", type=COUNT, default=1,
                   help="micro-steps accumulated per optimizer step")
    g.add_argument("--opt", choices=["sgd", "adamw", "lars", "lamb", "rmsprop", "rmsproptf"], default="sgd",
                   help="optimizer (sgd: momentum, Nesterov with --nesterov; lars, lamb: for large batches; "
                        "rmsprop: torch's, rmsproptf: TensorFlow's, epsilon inside the square root)")
    g.add_argument("--lr", type=MAGNITUDE, default=None, help="learning rate as is (overrides --lr-base)")
    g.add_argument("--lr-base", type=MAGNITUDE, default=0.1,
                   help="learning rate per 256 images, scaled linearly to the global batch (Goyal et al. 2017)")
    g.add_argument("--momentum", type=FRACTION_OPEN, default=0.9, help="SGD and RMSProp momentum")
    g.add_argument("--opt-eps", type=MAGNITUDE, default=1e-8,
                   help="AdamW and RMSProp epsilon (TensorFlow's RMSProp: 1e-3; torchvision's: 0.0316)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False, help="Nesterov momentum")
    g.add_argument("--weight-decay", "--wd", type=MAGNITUDE, default=1e-4,
                   help="L2 (SGD) or decoupled (AdamW) weight decay")
    g.add_argument("--no-decay-on", nargs="+", choices=[*NO_DECAY_CATEGORIES, "none"], default=list(IMNET_NO_DECAY),
                   metavar="CATEGORY",
                   help="parameters without weight decay: norm layers, biases, embeddings (tokens, position "
                        "tables), 1d (<= 1 dimension: timm's rule), layer_scale; none: decay all")
    g.add_argument("--clip-grad", "--clip-grad-norm", type=MAGNITUDE, default=0.0,
                   help="max global gradient norm (0: off)")
    g.add_argument("--sam", type=MAGNITUDE, default=0.0, metavar="RHO",
                   help="Sharpness-Aware Minimization with radius RHO, e.g. 0.05 (0: off); not with --accum-steps > 1")
    g.add_argument("--sam-adaptive", action="store_true", help="adaptive SAM (ASAM; use a larger RHO, e.g. 0.5)")

    g = p.add_argument_group("schedule")
    g.add_argument("--sched", choices=["cosine", "step", "exp", "constant"], default="cosine",
                   help="LR schedule (exp: x --lr-gamma every --lr-decay-epochs, stepped per optimizer step)")
    g.add_argument("--warmup-epochs", "--lr-warmup-epochs", type=Range(float, 0.0), default=0.0,
                   help="linear warmup length")
    g.add_argument("--warmup-start-factor", "--lr-warmup-decay", type=PROB, default=0.01,
                   help="warmup starts at this fraction of the LR")
    g.add_argument("--min-lr", "--lr-min", type=MAGNITUDE, default=0.0, help="cosine floor")
    g.add_argument("--lr-milestones", type=NATURAL, nargs="*", default=[30, 60, 80],
                   help="epochs of the step decays")
    g.add_argument("--lr-gamma", type=Range(float, 0.0, 1.0, lo_open=True), default=0.1,
                   help="step and exp decay factor")
    g.add_argument("--lr-decay-epochs", type=Range(float, 0.0, lo_open=True), default=2.4,
                   help="epochs between exp decays, fractional allowed (TensorFlow's EfficientNet: 2.4)")

    g = p.add_argument_group("regularization")
    g.add_argument("--label-smoothing", "--smoothing", type=FRACTION_OPEN, default=0.0,
                   help="label smoothing epsilon")
    g.add_argument("--mixup", "--mixup-alpha", type=MAGNITUDE, default=0.0, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", "--cutmix-alpha", type=MAGNITUDE, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", "--mixup-prob", type=PROB, default=1.0, help="probability of mixing a batch")
    g.add_argument("--switch-prob", "--mixup-switch-prob", type=PROB, default=0.5,
                   help="probability of CutMix rather than MixUp when both are on")
    g.add_argument("--auto-augment", choices=["none", "ra", "ta_wide", "imagenet"], default="none",
                   help="RandAugment, TrivialAugment Wide or AutoAugment's ImageNet policy")
    g.add_argument("--ra-num-ops", type=Range(int, 0, 16), default=2, help="RandAugment ops per image")
    g.add_argument("--ra-magnitude", type=Range(int, 0, 30), default=9,
                   help="RandAugment magnitude (bin of torchvision's 31)")
    g.add_argument("--random-erase", "--reprob", type=PROB, default=0.0, help="RandomErasing probability per image")
    g.add_argument("--random-erase-mode", "--remode", choices=ERASE_MODES, default="pixel",
                   help="erased box fill: pixel (normal noise, timm's) or const (the mean colour, torchvision's)")
    g.add_argument("--ra-reps", type=COUNT, default=1, metavar="N",
                   help="repeated augmentation (DeiT's RASampler): each image N times, epochs as long (1: off)")
    g.add_argument("--ema", "--model-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an EMA of the weights")
    g.add_argument("--ema-decay", type=Range(float, 0.0, 1.0, lo_open=True, hi_open=True), default=0.9999,
                   help="EMA decay per optimizer step")
    g.add_argument("--ema-every", type=COUNT, default=1, help="update the EMA every k optimizer steps (decay**k)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="EMA decay min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's num_updates)")
    g.add_argument("--ema-copy-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="torchvision's EMA start: copy the weights until the LR warmup ends (off: timm's)")
    g.add_argument("--swa-start", type=COUNT, default=None, metavar="EPOCH",
                   help="Stochastic Weight Averaging from this epoch (1-based) on: LR --swa-lr, weights averaged")
    g.add_argument("--swa-lr", type=Range(float, 0.0, lo_open=True), default=None,
                   help="constant learning rate of the SWA epochs")

    g = p.add_argument_group("distillation, large batches, fine-tuning")
    g.add_argument("--teacher", metavar="PATH|WEIGHTS", default=None,
                   help="knowledge distillation from a train.py checkpoint, a state_dict (with --teacher-model) or "
                        "torchvision weights (RegNet_Y_16GF_Weights.IMAGENET1K_V2), of the student's classes")
    g.add_argument("--teacher-model", metavar="NAME", default=None,
                   help="the teacher's network, for a --teacher state_dict")
    g.add_argument("--distill", choices=["hard", "soft"], default="hard",
                   help="hard: CE to the teacher's top-1 (DeiT); soft: tau^2 KL at --distill-tau (Hinton et al. 2015)")
    g.add_argument("--distill-alpha", type=PROB, default=0.5,
                   help="loss = (1 - alpha) x label loss + alpha x distillation loss (DeiT: 0.5)")
    g.add_argument("--distill-tau", type=Range(float, 0.0, lo_open=True), default=1.0,
                   help="temperature of --distill soft")
    g.add_argument("--layer-decay", type=Range(float, 0.0, 1.0, lo_open=True), default=None, metavar="RATE",
                   help="layer-wise LR decay for fine-tuning ViT/DeiT/Swin/ConvNeXt: block i of L at LR x "
                        "RATE^(L + 1 - i) (BEiT, MAE: 0.65-0.75)")
    g.add_argument("--bce", "--bce-loss", action="store_true",
                   help="binary cross-entropy on the (mixed, smoothed) targets ('ResNet strikes back')")
    g.add_argument("--bce-target-thresh", type=Range(float, 0.0, 1.0, hi_open=True), default=None,
                   metavar="T", help="with --bce: targets above T count as 1, the others as 0 (RSB: 0.2)")

    g = p.add_argument_group("mixed precision")
    g.add_argument("--amp", choices=[*AMP_CHOICES, "auto"], default="none", nargs="?", const="auto",
                   help="autocast dtype; fp16 adds loss scaling. A bare --amp is bf16 on GPUs that have it, fp16 on "
                        "older GPUs, fp32 on the CPU and MPS")

    g = p.add_argument_group("distributed")
    g.add_argument("--device", default="auto",
                   help="cuda, cuda:N, mps or cpu (auto: cuda:LOCAL_RANK if available, else Apple's mps, else cpu)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of weights, data order, augmentation and mixing")
    g.add_argument("--deterministic", "--use-deterministic-algorithms", action="store_true",
                   help="deterministic kernels (slower on GPU)")

    g = p.add_argument_group("checkpointing")
    g.add_argument("--output", "--output-dir", default=None,
                   help="run folder (default: runs/<recipe or model>); a folder holding a run needs --resume auto")
    g.add_argument("--resume", default=None,
                   help="'auto' (continue from OUTPUT/last.pt if present, else start fresh) or a checkpoint path")
    g.add_argument("--save-every-minutes", type=Range(float, 0.0), default=30.0,
                   help="also write last.pt mid-epoch this often (0: only at epoch ends)")
    g.add_argument("--stop-at-step", type=COUNT, default=None,
                   help="stop as if preempted after this many optimizer steps (--resume auto continues)")
    g.add_argument("--eval-every", type=NATURAL, default=1,
                   help="evaluate every N epochs and after the last (0: last only)")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", "--log-interval", type=COUNT, default=50,
                   help="console/jsonl line every N optimizer steps")
    g.add_argument("--dry-run", nargs="?", const="plan", choices=DRY_RUNS, default=None,
                   help="build everything, print the plan and warnings, exit; --dry-run loader also times the "
                        "decoding of a few dozen training images here (images/s per core and per process)")
    g.add_argument("--quiet", action="store_true", help="no console progress lines")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write log.jsonl's scalars as TensorBoard events (pip install tensorboard)")
    return add_familiar(p, POINTERS, VALUES)


# ----------------------------------------------------------------------------------------------- layers

def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """-> (every flag's value below the command line, the flags given on the command line)."""
    parser = build_parser()
    if not argv:
        argv = ["--recipe", "demo"]  # the demo (its dataset is generated on first use)
    pre = Parser(prog="train.py", add_help=False)
    pre.add_argument("--recipe", choices=sorted(RECIPES))
    pre.add_argument("--config")
    first, _ = pre.parse_known_args(argv)
    from_file = read_config_file(first.config, parser) if first.config else {}
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


def exit_on_bad_flags(argv: list[str]) -> None:
    """Answer ``--help`` and refuse bad flags (one paragraph, exit 2) before the caller imports torch."""
    try:
        parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_value(action: argparse.Action, value):
    """``value`` from a JSON file, checked as the command line checks it -> the value argparse would have produced;
    ArgumentTypeError otherwise."""
    switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                 argparse.BooleanOptionalAction))
    if switch:
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"must be true or false (got {json.dumps(value)})")
        return value
    if action.nargs == "?" and isinstance(value, bool):  # an optional value as a switch: true is the bare flag
        return action.const if value else action.default  # (config.json files once held "dry_run": false)
    if value is None:
        if action.default is not None:
            raise argparse.ArgumentTypeError(f"cannot be null (it has no 'unset' state; default {action.default})")
        return None
    many = action.nargs not in (None, "?")
    if many != isinstance(value, list):
        want = "a list" if many else "a single value, not a list"
        raise argparse.ArgumentTypeError(f"must be {want} (got {json.dumps(value)})")
    items = value if many else [value]
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise argparse.ArgumentTypeError(f"must hold {action.nargs} values (got {len(items)})")
    out = []
    for item in items:
        if isinstance(item, (bool, list, dict)) or item is None:
            raise argparse.ArgumentTypeError(f"must be {'numbers' if action.type else 'text'} (got {json.dumps(item)})")
        if not action.type and not isinstance(item, str):
            raise argparse.ArgumentTypeError(f"must be text (got {json.dumps(item)})")
        converted = action.type(str(item)) if action.type else item
        if action.choices is not None and converted not in action.choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, action.choices))} "
                                             f"(got {json.dumps(item)})")
        out.append(converted)
    return out if many else out[0]


def read_config_file(path: str, parser: Parser | None = None) -> dict:
    """The flag values of a run's ``config.json`` (not the derived ones), each checked by `check_value`."""
    parser = parser or build_parser()
    try:
        with open(path) as fh:
            d = json.load(fh)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise FlagError(f"Cannot read --config {path}: {e}. Pass a config.json written by train.py.") from None
    if not isinstance(d, dict):
        raise FlagError(f"--config {path} holds a {type(d).__name__}, not a JSON object of settings.")
    actions = settings(parser)
    unknown = sorted(set(d) - set(actions) - set(DERIVED))
    if unknown:
        raise FlagError(f"--config {path} has unknown settings {unknown}; was it written by another version?")
    out = {}
    for key, value in d.items():
        if key not in actions:
            continue
        try:
            out[key] = check_value(actions[key], value)
        except argparse.ArgumentTypeError as e:
            flag = actions[key].option_strings[0]
            raise FlagError(f"--config {path}: setting {key!r} ({flag}) {e}. Fix the file, or override the setting "
                            f"on the command line.") from None
    return out
