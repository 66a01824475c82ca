"""train.py's flags: the manual (``python train.py --help``), their valid ranges, and the layers they come in.

Layers, lowest first: argparse defaults < ``--recipe NAME`` < ``--config FILE`` < flags given on the command
line. `parse_args` returns two dicts, every flag's value below the command line and the flags the command line
gave; `imnet.run.config.resolve` turns them into the run's one frozen Config.

Every number has a stated valid range (`Range`: shown in ``--help``, checked on every value), and a value read
from a ``--config`` file goes through the very same checks as the same value typed on the command line
(`read_config_file`): its type, its choices, its range. Mistakes are one paragraph, exit code 2 (`FlagError`),
with "did you mean" for a misspelled flag.

Standard library only (and imnet.run.recipes, plain data): ``--help`` and flag errors are answered before torch is
imported, which takes seconds.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass

from imnet.run.errors import UsageError
from imnet.run.recipes import RECIPES

AMP_CHOICES = ("none", "bf16", "fp16")  # imnet.run.config maps them to torch dtypes
DECODE_MODES = ("full", "reduced")
INTERPOLATIONS = ("bilinear", "bicubic")
# imnet.optim.NO_DECAY_CATEGORIES and IMNET_NO_DECAY (this module imports no torch); tests/test_optim.py checks
# that they agree
NO_DECAY_CATEGORIES = ("norm", "bias", "embedding", "1d", "layer_scale")
IMNET_NO_DECAY = ("1d", "embedding", "layer_scale")
ERASE_MODES = ("pixel", "const")

# Values that a run's config.json holds besides its flags: derived once by imnet.run.config.resolve (and
# Config.with_data), recomputed on every run, so a --config file's copies are ignored.
DERIVED = ("world_size", "global_batch_size", "peak_lr", "lr_given", "eval_policy", "mixing", "loss_label_smoothing",
           "mix_label_smoothing", "train_images", "val_images", "classes", "steps_per_epoch", "teacher_info")


class FlagError(UsageError):
    """A flag (or a --config setting) that cannot be used as given."""


# ----------------------------------------------------------------------------------------------- ranges

class Range:
    """An argparse ``type``: a number of ``kind`` (int or float) within [lo, hi] (``lo_open`` / ``hi_open``:
    the bound itself excluded; None: unbounded). NaN and infinities are refused. The range is stated in the
    flag's help (`HelpFormatter`) and checked for every value, from the command line or a --config file."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            noun = "a whole number" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun} {self.describe()} (got {text!r})") from None
        bad = (not math.isfinite(value)
               or (self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo))
               or (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)))
        if bad:
            raise argparse.ArgumentTypeError(f"must be {self.describe()} (got {text})")
        return value

    def describe(self) -> str:
        """'>= 0', '> 0 and < 1', ... (the words the messages use)."""
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
WORKERS_HELP = ("; above 4 per CPU core of this machine (shared by the processes of one node) it is lowered to "
                "that at setup, with a note")


def max_bad_images(text):
    """--max-bad-images: a whole number of files (10; 0 stops at the first one) or a fraction of the training
    set in [0, 1] with a decimal point (0.001)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return text
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a count of unreadable images (e.g. 10, or 0 to stop at the "
                                         f"first one) or a fraction of the training set in [0, 1] (e.g. 0.001); "
                                         f"got {text!r}")
    return text


# ----------------------------------------------------------------------------------------------- the parser

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None (not set; the help text says what unset means) and False
    (switches), so that no help line reads "(default: None)"; and a number's valid range."""

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

    def __init__(self, *args, aliases: dict | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        self.aliases = aliases or {}
        if self.aliases:
            kwargs.setdefault("epilog", describe_aliases(self.aliases))
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, after the familiar spellings of ``aliases`` are rewritten (`apply_aliases`)."""
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(apply_aliases(args, self.aliases, self.prog), namespace)

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


# ----------------------------------------------------------------------------------------------- familiar flags

@dataclass(frozen=True)
class Alias:
    """A flag spelled as in torchvision's reference scripts or timm's (``source``).

    ``flag``: imnet's flag of exactly that meaning; the value passes through unchanged, or through ``values``
    (their value, lower case -> imnet's; None drops the pair: imnet's fixed behaviour). Refused, with ``why``
    (what differs and what to type instead): an alias without ``flag`` or ``values`` (its meaning differs), a
    value outside ``values``, and an alias given without the flag it ``needs`` (another of the table)."""
    source: str
    flag: str | None = None
    values: dict | None = None
    why: str = ""
    needs: str | None = None


TV, TIMM = "torchvision", "timm"
_EMA_DECAY_WHY = (
    "the two codebases mean different things by it. timm's is the decay per optimizer step: type --ema-decay D. "
    "torchvision's is rescaled by processes x batch x --model-ema-steps / epochs and applied every "
    "--model-ema-steps iterations: imnet.run.recipes.torchvision_ema_decay(global_batch, epochs, decay, steps) gives "
    "the --ema-decay to use with --ema-every STEPS.")
_AMP_DTYPE_WHY = (
    "timm's --amp-dtype float16|bfloat16 picks the autocast dtype of its --amp; imnet's --amp takes the dtype as "
    "its value: type --amp fp16 (timm's float16, with loss scaling) or --amp bf16. A bare --amp here is not "
    "timm's float16 but bf16 on GPUs that have it.")

# train.py's familiar spellings (Parser(aliases=...) rewrites them before parsing; `train.py --help` lists them).
ALIASES = {
    # torchvision's references/classification/train.py
    "--data-path": Alias(TV, "--data"),
    "--wd": Alias(TV, "--weight-decay"),
    "--lr-warmup-epochs": Alias(TV, "--warmup-epochs", needs="--lr-warmup-method", why=(
        "torchvision's warmup is constant unless --lr-warmup-method linear is given (the LR times "
        "--lr-warmup-decay for those epochs, then the full LR at once), and imnet has no constant warmup: its "
        "--warmup-epochs N ramps linearly from --warmup-start-factor x LR, updated every step. For torchvision's "
        "linear warmup type --warmup-epochs N --warmup-start-factor D (torchvision's --lr-warmup-decay, default "
        "0.01), or add --lr-warmup-method linear.")),
    "--lr-warmup-method": Alias(TV, values={"linear": None}, why=(
        "torchvision's constant warmup (the LR times --lr-warmup-decay for --lr-warmup-epochs epochs, then the "
        "full LR at once) is not in imnet, whose warmup is linear: --warmup-epochs N --warmup-start-factor F "
        "(--lr-warmup-method linear is accepted).")),
    "--lr-warmup-decay": Alias(TV, "--warmup-start-factor"),
    "--lr-min": Alias(TV, "--min-lr"),
    "--mixup-alpha": Alias(TV, "--mixup"),
    "--cutmix-alpha": Alias(TV, "--cutmix"),
    "--clip-grad-norm": Alias(TV, "--clip-grad"),
    "--lr-scheduler": Alias(TV, "--sched", values={"cosineannealinglr": "cosine"}, why=(
        "torchvision's steplr decays every --lr-step-size epochs (default 30), imnet's --sched step at the epochs "
        "of --lr-milestones (default 30 60 80): type --sched step --lr-milestones S 2S 3S ... (the multiples of "
        "the step size below --epochs) --lr-gamma G. exponentiallr has no imnet counterpart; cosineannealinglr "
        "is accepted (--sched cosine).")),
    "--lr-step-size": Alias(TV, why=(
        "imnet's step schedule decays at listed epochs: torchvision's --lr-step-size S is --sched step "
        "--lr-milestones S 2S 3S ... (the multiples of S below --epochs).")),
    "--print-freq": Alias(TV, why=(
        "torchvision's --print-freq N counts iterations (batches); imnet's --log-every N counts optimizer steps, "
        "each of --accum-steps batches: type --log-every N (the same interval when --accum-steps is 1).")),
    "--test-only": Alias(TV, why=(
        "evaluating without training is imnet's eval.py, with the checkpoint's own evaluation policy and "
        "classes: python eval.py --checkpoint RUN/best.pt --data ROOT (add --use-ema for the EMA weights, as "
        "torchvision's --test-only --model-ema does).")),
    "--model-ema-decay": Alias(f"{TV}'s and {TIMM}", why=_EMA_DECAY_WHY),
    "--model-ema-steps": Alias(TV, why=(
        "torchvision's --model-ema-steps K updates the average every K iterations and also enters its decay "
        "formula; imnet's --ema-every K only spaces the updates (--ema-decay to the power K each): use "
        "--ema-every K with the --ema-decay that imnet.run.recipes.torchvision_ema_decay gives.")),
    # timm's train.py
    "--data-dir": Alias(TIMM, "--data"),
    "--img-size": Alias(TIMM, why=(
        "timm's --img-size N sets both the training crop and the evaluation crop (its evaluation resize then "
        "floor(N / crop_pct) with the model's crop_pct): type --train-crop-size N --val-crop-size N (with "
        "--crop-pct P for timm's crop_pct; without it the recipe's crop/resize ratio is kept).")),
    "--aa": Alias(TIMM, why=(
        "timm's --aa takes timm's own policy strings (rand-m9-mstd0.5-inc1, augmix-..., v0, 3a), another "
        "implementation than imnet's torchvision ops: the closest to rand-mM is --auto-augment ra --ra-magnitude "
        "M --ra-num-ops 2 (without timm's magnitude noise and increasing ops); imnet also has --auto-augment "
        "ta_wide and imagenet.")),
    "--grad-accum-steps": Alias(TIMM, "--accum-steps"),
    "--warmup-lr": Alias(TIMM, why=(
        "timm's --warmup-lr is the absolute LR the warmup starts from (default 1e-5); imnet's "
        "--warmup-start-factor F is a fraction of the peak LR: type --warmup-start-factor F with F = warmup LR / "
        "peak LR (1e-5 under --lr 5e-4 is 0.02). timm's cosine also spans all epochs, its warmup written over "
        "the start; imnet's, like torchvision's, starts after the warmup.")),
    "--log-interval": Alias(TIMM, "--log-every"),
    "--hflip": Alias(TIMM, values={"0.5": None}, why=(
        "timm's --hflip is the probability of a horizontal flip; imnet always flips with probability 0.5 (timm's "
        "and torchvision's default) and has no flag for another: drop --hflip (--hflip 0.5 is accepted).")),
    "--amp-dtype": Alias(TIMM, why=_AMP_DTYPE_WHY),
    "--mixup-prob": Alias(TIMM, "--mix-prob"),
    "--mixup-switch-prob": Alias(TIMM, "--switch-prob"),
}

# eval.py's: the evaluation scripts' spellings (torchvision's train.py --test-only, timm's validate.py).
EVAL_ALIASES = {
    "--data-path": ALIASES["--data-path"],
    "--data-dir": ALIASES["--data-dir"],
    "--model-ema": Alias(TV, "--use-ema"),  # torchvision's --test-only --model-ema evaluates the EMA
    "--img-size": Alias(TIMM, why=(
        "timm's validate.py --img-size N is the evaluation crop, its resize then floor(N / crop_pct) with the "
        "model's crop_pct: type --val-crop-size N (with --crop-pct P for timm's crop_pct; without it the "
        "checkpoint's crop/resize ratio is kept).")),
    "--amp-dtype": ALIASES["--amp-dtype"],
    "--test-only": Alias(TV, why="eval.py only evaluates: drop --test-only."),
}


def _value_key(value: str) -> str:
    """A value as the alias tables spell it: lower case, numbers in one form (.5, 0.50 and 5e-1 are 0.5)."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value.lower()


def apply_aliases(argv: list[str], aliases: dict, prog: str = "train.py") -> list[str]:
    """``argv`` with every familiar spelling of ``aliases`` (`Alias`) rewritten to imnet's flag (``--name value``
    and ``--name=value`` alike), or FlagError with the alias's ``why`` when its meaning is not imnet's."""
    present = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":  # what follows is not flags
            out += argv[i - 1:]
            break
        name, eq, inline = token.partition("=")
        alias = aliases.get(name) if token.startswith("--") else None
        if alias is None:
            out.append(token)
            continue
        value = None
        if alias.values is not None:
            if eq:
                value = inline
            elif i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
            else:
                raise FlagError(f"{name} ({alias.source}'s spelling) needs a value. `{prog} --help` lists the "
                                f"familiar spellings it accepts.")
        if (alias.flag is None and alias.values is None) or (alias.needs and alias.needs not in present) or \
                (value is not None and _value_key(value) not in alias.values):
            shown = name + (f" {value}" if value is not None else "")
            raise FlagError(f"{shown} is {alias.source}'s flag, and its meaning there is not that of an imnet flag: "
                            f"{alias.why} `{prog} --help` lists the familiar spellings it accepts.")
        if value is None:
            out.append(alias.flag + eq + inline)
        elif alias.values[_value_key(value)] is not None:
            out += [alias.flag, alias.values[_value_key(value)]]
    return out


def describe_aliases(aliases: dict) -> str:
    """The --help epilog: the spellings accepted (-> imnet's flag) and those refused with a conversion."""
    same = [f"{name} ({a.flag}{', ' + ', '.join(f'{k} = {v}' for k, v in a.values.items() if v) if a.values else ''}"
            f"{f'; with {a.needs}' if a.needs else ''})" for name, a in aliases.items() if a.flag]
    dropped = [f"{name} {'|'.join(k for k, v in a.values.items() if v is None)}" for name, a in aliases.items()
               if a.values and None in a.values.values()]
    refused = [name for name, a in aliases.items() if not a.flag and not a.values]
    text = f"Familiar spellings of torchvision's and timm's scripts, read as imnet's flags: {', '.join(same)}."
    if dropped:
        text += f" Accepted as imnet's fixed behaviour: {', '.join(dropped)}."
    if refused:
        text += (f" Refused with a one-line conversion, because their meaning differs from any imnet flag's: "
                 f"{', '.join(refused)}.")
    return text


def add_eval_policy_flags(g, *, crop_default=None, decode_default=None, names=None) -> None:
    """The evaluation-policy flags, one definition for train.py and eval.py (whose older spellings are passed
    in ``names`` as extra aliases). dests: val_crop_size, val_resize_size, crop_pct, val_interpolation,
    val_decode (imnet.run.config.EVAL_FLAGS maps them to the EvalPolicy's fields)."""
    names = names or {}
    g.add_argument("--val-crop-size", *names.get("val_crop_size", ()), type=SIZE, default=crop_default,
                   help="centre crop size for evaluation (224, 288, 384...)")
    g.add_argument("--val-resize-size", *names.get("val_resize_size", ()), type=SIZE, default=None,
                   help="shorter side before the centre crop (default: floor(crop / crop_pct))")
    g.add_argument("--crop-pct", *names.get("crop_pct", ()), type=Range(float, 0.0, 1.0, lo_open=True), default=None,
                   help="centre crop fraction = crop / resize; recomputes the resize unless --val-resize-size is given "
                        "(0.875: 224 -> 256)")
    g.add_argument("--val-interpolation", *names.get("val_interpolation", ()), choices=INTERPOLATIONS, default=None,
                   help="evaluation resize resampling")
    g.add_argument("--val-decode", *names.get("val_decode", ()), choices=DECODE_MODES, default=decode_default,
                   help="full: canonical pixels (torchvision's Resize + CenterCrop); reduced: faster DCT-scaled JPEG "
                        "decoding, not the published pipeline")


def build_parser() -> Parser:
    """train.py's flags. Aliases in the spelling of timm's and torchvision's reference scripts: -b, -j,
    --output-dir, --model-ema, --smoothing, --reprob, --remode."""
    p = Parser(prog="train.py", aliases=ALIASES,
               description="Train a torchvision classifier on an ImageFolder tree (train/<class>/*, val/<class>/*). "
                           "With no arguments at all, runs the demo recipe on a generated dataset.")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="fill defaults from a recipe (see recipes.md); explicit flags override; "
                        "--recipe NAME --help shows its values")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="start from a run's config.json (flags given here override it)")

    g = p.add_argument_group("data")
    g.add_argument("--data", help="root folder holding train/ and val/ (class subfolders in each)")
    g.add_argument("--workers", "-j", type=WORKERS, default=4,
                   help="data loading processes per training process" + WORKERS_HELP)
    g.add_argument("--train-crop-size", type=SIZE, default=224, help="RandomResizedCrop output size")
    add_eval_policy_flags(g, crop_default=224, decode_default="full")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear",
                   help="resampling of the training crops and of the evaluation resize")
    g.add_argument("--train-interpolation", choices=INTERPOLATIONS, default=None,
                   help="RandomResizedCrop resampling only (default: --interpolation)")
    g.add_argument("--crop-scale", type=Range(float, 0.0, 1.0, lo_open=True), nargs=2, default=[0.08, 1.0],
                   metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area fraction range (0.08-1 for ImageNet; larger for small objects)")
    g.add_argument("--progressive-res", type=SIZE, nargs=2, default=None, metavar=("START", "END"),
                   help="progressive resolution: the RandomResizedCrop size ramps from START to END (multiples of "
                        "16; sets --train-crop-size to END) over --progressive-epochs; evaluation keeps its own "
                        "sizes (evaluating above the last training size is intended: Touvron et al. 2019)")
    g.add_argument("--progressive-epochs", type=NATURAL, nargs=2, default=None, metavar=("FROM", "TO"),
                   help="epoch numbers (from 1, as printed) of the ramp: START up to epoch FROM, END from epoch TO "
                        "on, linear in between, rounded to a multiple of 16 (FFCV's schedule)")
    g.add_argument("--max-bad-images", type=max_bad_images, default="0.001",
                   help="unreadable images tolerated before stopping: a count (10) or a fraction of the set (0.001)")
    g.add_argument("--fake-data", action="store_true",
                   help="random uint8 tensors instead of files, 100 steps per epoch (throughput runs)")
    g.add_argument("--num-classes", type=COUNT, default=1000, help="classes for --fake-data")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="any torchvision classification model name (torchvision.models.list_models(module="
                        "torchvision.models); EfficientNet-Lite is not one), deit_tiny, deit_small")
    g.add_argument("--drop-path", type=FRACTION_OPEN, default=None,
                   help="stochastic depth rate (default: the model's own)")
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
    g.add_argument("--epochs", type=COUNT, default=90, help="training epochs")
    g.add_argument("--batch-size", "-b", type=COUNT, default=32, help="images per process per micro-step")
    g.add_argument("--global-batch", type=COUNT, default=None,
                   help="total batch per optimizer step; sets --batch-size = global / (world size * accum steps)")
    g.add_argument("--accum-steps", type=COUNT, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--opt", choices=["sgd", "adamw", "lars", "lamb"], default="sgd",
                   help="optimizer; lars and lamb (imnet/lars.py, for large batches) give no weight decay and no "
                        "trust ratio to the parameters --no-decay-on exempts")
    g.add_argument("--lr", type=MAGNITUDE, default=None, help="learning rate as is (overrides --lr-base)")
    g.add_argument("--lr-base", type=MAGNITUDE, default=0.1,
                   help="learning rate per 256 images, scaled linearly to the global batch (Goyal et al. 2017)")
    g.add_argument("--momentum", type=FRACTION_OPEN, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False, help="Nesterov momentum")
    g.add_argument("--weight-decay", type=MAGNITUDE, default=1e-4,
                   help="L2 (SGD) or decoupled (AdamW) weight decay")
    g.add_argument("--no-decay-on", nargs="+", choices=[*NO_DECAY_CATEGORIES, "none"], default=list(IMNET_NO_DECAY),
                   metavar="CATEGORY",
                   help="parameters trained without weight decay: norm (normalization layers' weights and biases, "
                        "torchvision's --norm-weight-decay 0), bias (parameters named bias: --bias-weight-decay 0), "
                        "embedding (class tokens, position embeddings, relative-position tables: "
                        "--transformer-embedding-decay 0), 1d (every parameter of <= 1 dimension: timm's and DeiT's "
                        "rule), layer_scale (ConvNeXt's); none: decay every parameter")
    g.add_argument("--clip-grad", type=MAGNITUDE, default=0.0, help="max global gradient norm (0: off)")
    g.add_argument("--sam", type=MAGNITUDE, default=0.0, metavar="RHO",
                   help="Sharpness-Aware Minimization with radius RHO, e.g. 0.05 (0: off); two forward/backward "
                        "passes per step; not with --accum-steps > 1")
    g.add_argument("--sam-adaptive", action="store_true", help="adaptive SAM (ASAM; use a larger RHO, e.g. 0.5)")

    g = p.add_argument_group("schedule")
    g.add_argument("--sched", choices=["cosine", "step", "constant"], default="cosine", help="LR schedule")
    g.add_argument("--warmup-epochs", type=Range(float, 0.0), default=0.0, help="linear warmup length")
    g.add_argument("--warmup-start-factor", type=PROB, default=0.01,
                   help="warmup starts at this fraction of the LR")
    g.add_argument("--min-lr", type=MAGNITUDE, default=0.0, help="cosine floor")
    g.add_argument("--lr-milestones", type=NATURAL, nargs="*", default=[30, 60, 80],
                   help="epochs of the step decays")
    g.add_argument("--lr-gamma", type=Range(float, 0.0, 1.0, lo_open=True), default=0.1, help="step decay factor")

    g = p.add_argument_group("regularization")
    g.add_argument("--label-smoothing", "--smoothing", type=FRACTION_OPEN, default=0.0,
                   help="label smoothing epsilon")
    g.add_argument("--mixup", type=MAGNITUDE, default=0.0, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=MAGNITUDE, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", type=PROB, default=1.0, help="probability of mixing a batch")
    g.add_argument("--switch-prob", type=PROB, default=0.5,
                   help="probability of CutMix rather than MixUp when both are on")
    g.add_argument("--auto-augment", choices=["none", "ra", "ta_wide", "imagenet"], default="none",
                   help="RandAugment, TrivialAugment Wide or AutoAugment's ImageNet policy")
    g.add_argument("--ra-num-ops", type=Range(int, 0, 16), default=2, help="RandAugment ops per image")
    g.add_argument("--ra-magnitude", type=Range(int, 0, 30), default=9,
                   help="RandAugment magnitude (bin of torchvision's 31)")
    g.add_argument("--random-erase", "--reprob", type=PROB, default=0.0, help="RandomErasing probability per image")
    g.add_argument("--random-erase-mode", "--remode", choices=ERASE_MODES, default="pixel",
                   help="what fills the erased box: pixel (per-pixel normal noise, timm's and DeiT's) or const (0 "
                        "after normalisation = the mean colour, torchvision's RandomErasing value=0)")
    g.add_argument("--ra-reps", type=COUNT, default=1, metavar="N",
                   help="repeated augmentation (DeiT's RASampler): each image N times per epoch, differently "
                        "augmented, on different processes when there are >= N; the epoch keeps its length, so it "
                        "sees about 1/N of the images (1: off)")
    g.add_argument("--ema", "--model-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an EMA of the weights")
    g.add_argument("--ema-decay", type=Range(float, 0.0, 1.0, lo_open=True, hi_open=True), default=0.9999,
                   help="EMA decay per optimizer step")
    g.add_argument("--ema-every", type=COUNT, default=1, help="update the EMA every k optimizer steps (decay**k)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="ramp the EMA decay up over the first updates: min(decay, (1 + n) / (10 + n)) after n updates "
                        "(TensorFlow's ExponentialMovingAverage num_updates)")
    g.add_argument("--ema-copy-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="torchvision's EMA start: the first EMA update, every update during the LR warmup "
                        "(--warmup-epochs) and the first one after it copy the weights; averaging starts after "
                        "(off: the average starts from the initial weights, as timm's ModelEma in DeiT)")
    g.add_argument("--swa-start", type=COUNT, default=None, metavar="EPOCH",
                   help="Stochastic Weight Averaging: from this epoch (1-based) on, train at --swa-lr and average "
                        "the weights at the end of each epoch; the average's BatchNorm statistics are recomputed "
                        "over the epoch's training data at each update, before the average is saved or evaluated")
    g.add_argument("--swa-lr", type=Range(float, 0.0, lo_open=True), default=None,
                   help="constant learning rate of the SWA epochs")

    g = p.add_argument_group("distillation, large batches, fine-tuning")
    g.add_argument("--teacher", metavar="PATH|WEIGHTS", default=None,
                   help="knowledge distillation from this teacher: a train.py checkpoint, a plain state_dict (with "
                        "--teacher-model), or torchvision weights by name (RegNet_Y_16GF_Weights.IMAGENET1K_V2). It "
                        "runs in eval mode, without gradients, under the same autocast, on the student's batch "
                        "after MixUp/CutMix (as DeiT); its classes and input size must be the student's; it is "
                        "not saved in the checkpoints (its path and sha256 are)")
    g.add_argument("--teacher-model", metavar="NAME", default=None,
                   help="the teacher's network, for a --teacher state_dict (checkpoints and weights names say it)")
    g.add_argument("--distill", choices=["hard", "soft"], default="hard",
                   help="hard: cross-entropy to the teacher's top-1 class (DeiT's best); soft: tau^2 KL at "
                        "temperature tau (Hinton et al. 2015)")
    g.add_argument("--distill-alpha", type=PROB, default=0.5,
                   help="loss = (1 - alpha) x label loss + alpha x distillation loss (DeiT: 0.5)")
    g.add_argument("--distill-tau", type=Range(float, 0.0, lo_open=True), default=1.0,
                   help="temperature of --distill soft")
    g.add_argument("--layer-decay", type=Range(float, 0.0, 1.0, lo_open=True), default=None, metavar="RATE",
                   help="layer-wise LR decay for fine-tuning ViT/DeiT/Swin/ConvNeXt (BEiT, MAE: 0.65-0.75): "
                        "block i of L trains at LR x RATE^(L + 1 - i), the head at LR (default: off)")
    g.add_argument("--bce", "--bce-loss", action="store_true",
                   help="binary cross-entropy on the (mixed, smoothed) targets instead of cross-entropy "
                        "('ResNet strikes back')")
    g.add_argument("--bce-target-thresh", type=Range(float, 0.0, 1.0, hi_open=True), default=None,
                   metavar="T", help="with --bce: targets above T count as 1, the others as 0 (RSB: 0.2)")

    g = p.add_argument_group("mixed precision")
    g.add_argument("--amp", choices=[*AMP_CHOICES, "auto"], default="none", nargs="?", const="auto",
                   help="autocast dtype; fp16 adds loss scaling. A bare --amp (= auto) means bf16 on GPUs that "
                        "have it, fp16 on older GPUs, and no autocast (fp32, with a note) on the CPU and MPS, where "
                        "bf16 is slow without native support")

    g = p.add_argument_group("distributed")
    g.add_argument("--device", default="auto",
                   help="cuda, cuda:N, mps or cpu (auto: cuda:LOCAL_RANK if available, else Apple's mps, else cpu)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of weights, data order, augmentation and mixing")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")

    g = p.add_argument_group("checkpointing")
    g.add_argument("--output", "--output-dir", default=None,
                   help="run folder (default: runs/<recipe or model>); one run at a time (OUTPUT/.lock), and a "
                        "folder holding a run needs --resume auto")
    g.add_argument("--resume", default=None,
                   help="'auto' (continue from OUTPUT/last.pt if present, else start fresh) or a checkpoint path")
    g.add_argument("--save-every-minutes", type=Range(float, 0.0), default=30.0,
                   help="also write last.pt mid-epoch this often (0: only at epoch ends)")
    g.add_argument("--stop-at-step", type=COUNT, default=None,
                   help="act as if preempted once this many optimizer steps are done: write last.pt, exit 0 "
                        "(for time-sliced jobs; --resume auto continues)")
    g.add_argument("--eval-every", type=NATURAL, default=1,
                   help="evaluate every N epochs and after the last (0: last only)")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=COUNT, default=50, help="console/jsonl line every N optimizer steps")
    g.add_argument("--dry-run", action="store_true", help="build everything, print the plan and warnings, exit")
    g.add_argument("--quiet", action="store_true", help="no console progress lines")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write log.jsonl's scalars as TensorBoard events into the run folder (needs the "
                        "tensorboard package: pip install tensorboard)")
    return p


# ----------------------------------------------------------------------------------------------- layers

def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """-> (every flag's value below the command line, the flags given on the command line).

    Layers, lowest first: argparse defaults < --recipe < --config FILE < command line. A bare `python train.py`
    (no arguments at all) is the demo recipe; any other command without --data or --fake-data is refused at
    setup (a flag the user gave would otherwise be silently mixed with the demo's settings)."""
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
    """``value`` (from a JSON file) for the flag of ``action``, checked exactly as the command line checks it:
    its JSON type, then the flag's own type (with its range) and choices on each element. -> the value argparse
    would have produced; ArgumentTypeError (the reason) otherwise."""
    switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                 argparse.BooleanOptionalAction))
    if switch:
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"must be true or false (got {json.dumps(value)})")
        return value
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
    """The flag values stored in a run's ``config.json`` (derived values are recomputed, not read), each checked
    by `check_value` like the same value on the command line. FlagError with the setting and its rule."""
    parser = parser or build_parser()
    try:
        with open(path) as fh:
            d = json.load(fh)
    except (OSError, ValueError) as e:
        raise FlagError(f"Cannot read --config {path}: {e}. Pass a config.json written by train.py.") from None
    if not isinstance(d, dict):
        raise FlagError(f"--config {path} holds a {type(d).__name__}, not a JSON object of settings.")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
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
            flag = max(actions[key].option_strings, key=len)
            raise FlagError(f"--config {path}: setting {key!r} ({flag}) {e}. Fix the file, or override the setting "
                            f"on the command line.") from None
    return out
