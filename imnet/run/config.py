"""Settings, resolved once into frozen objects: the evaluation policy (`EvalPolicy`) and a training run's `Config`
(every derived number: global batch, scaled LR, eval resize/crop, where label smoothing goes, steps per epoch)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from imnet.run.atomic import write_text
from imnet.deit import DEIT_DISTILLED
from imnet.run.errors import UsageError
from imnet.run.flags import AMP_CHOICES, DECODE_MODES, DERIVED, build_parser, settings
from imnet.run.models import fixed_input_size, normalization
from imnet.sam import check_accum_steps
from imnet.schedule import PROGRESSIVE_MULTIPLE, lr_at, progressive_size, scale_lr
from imnet.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, eval_transform, resize_for_crop

AMP_DTYPES = dict(zip(AMP_CHOICES, (None, torch.bfloat16, torch.float16)))

# The evaluation-policy flags (train.py's and eval.py's, imnet.run.flags.add_eval_policy_flags) -> EvalPolicy fields.
EVAL_FLAGS = {"val_crop_size": "crop_size", "val_resize_size": "resize_size", "crop_pct": "crop_pct",
              "val_interpolation": "interpolation", "val_decode": "decode"}


class ConfigError(UsageError):
    """Contradictory or impossible settings."""


# ------------------------------------------------------------------------------------------ eval policy

@dataclass(frozen=True)
class EvalPolicy:
    """How validation images become model inputs (`describe`); ``decode="reduced"`` lets libjpeg decode at 1/2,
    1/4 or 1/8 scale (faster, not torchvision's pixels)."""
    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    decode: str = "full"

    @property
    def crop_pct(self) -> float:
        return self.crop_size / self.resize_size

    def transform(self):
        """The worker-side transform: file -> uint8 (3, crop, crop)."""
        return eval_transform(crop_size=self.crop_size, resize_size=self.resize_size,
                              interpolation=self.interpolation, draft=self.decode == "reduced")

    def describe(self) -> str:
        fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)
        return (f"resize {self.resize_size} (shorter side, {self.interpolation}) -> centre crop {self.crop_size} "
                f"(crop_pct {self.crop_pct:.4f}); mean ({fmt(self.mean)}), std ({fmt(self.std)}); "
                f"{self.decode} decode")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(mean=list(self.mean), std=list(self.std), crop_pct=self.crop_pct)
        return d

    @staticmethod
    def from_dict(d: dict | None) -> "EvalPolicy | None":
        return resolve_eval_policy({}, d) if d else None


def resolve_eval_policy(given: dict, base: EvalPolicy | dict | None = None) -> EvalPolicy:
    """The evaluation policy from the keys the user set (``given``; None: not given) over ``base`` (a recipe's,
    config file's or checkpoint's), by docs/design.md's precedence. A new crop keeps the base's ratio in integers
    (176 x 233 / 176 through a float is 232.99...)."""
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(base, EvalPolicy):
        base = base.to_dict()
    base = {k: v for k, v in (base or {}).items() if v is not None}
    crop = int(given.get("crop_size") or base.get("crop_size") or 224)
    base_pct = base.get("crop_pct")
    if base.get("resize_size") and base.get("crop_size"):  # the base's own ratio, exactly: no pixel lost
        base_pct = Fraction(int(base["crop_size"]), int(base["resize_size"]))
    if "resize_size" in given:
        resize = given["resize_size"]
    elif "crop_pct" in given:
        resize = _resize_for(crop, given["crop_pct"])
    elif "crop_size" in given and base_pct:
        resize = _resize_for(crop, base_pct)
    elif base.get("resize_size"):
        resize = base["resize_size"]
    else:
        resize = _resize_for(crop, base.get("crop_pct") or DEFAULT_CROP_PCT)
    pick = lambda key, default: given.get(key, base.get(key, default))
    policy = EvalPolicy(int(resize), crop, pick("interpolation", "bilinear"),
                        tuple(float(v) for v in pick("mean", IMAGENET_MEAN)),
                        tuple(float(v) for v in pick("std", IMAGENET_STD)), pick("decode", "full"))
    if policy.resize_size < policy.crop_size:
        raise ConfigError(f"The evaluation resize {policy.resize_size} is smaller than the crop {policy.crop_size}. "
                          f"Give a resize >= the crop, e.g. resize {_resize_for(policy.crop_size, DEFAULT_CROP_PCT)} "
                          f"for crop {policy.crop_size}.")
    if policy.decode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {DECODE_MODES}, not {policy.decode!r}.")
    return policy


def _resize_for(crop: int, crop_pct) -> int:
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1] (got {float(crop_pct):g}); 0.875 gives the classic 224 -> 256.")
    return resize_for_crop(crop, crop_pct)


def policy_keys(flags: dict) -> dict:
    """The evaluation-policy flags among ``flags`` as resolve_eval_policy's keys; train.py's --interpolation
    stands in for an absent --val-interpolation."""
    out = {key: flags[flag] for flag, key in EVAL_FLAGS.items() if flag in flags}
    if out.get("interpolation") is None and flags.get("interpolation") is not None:
        out["interpolation"] = flags["interpolation"]
    return out


def policy_mismatch(now: EvalPolicy, then: EvalPolicy, then_name: str) -> list[str]:
    """What makes an accuracy under ``now`` not comparable with one under ``then`` (named ``then_name``):
    "resize policy mismatch: ..." and/or "normalization mismatch: ..." (empty: comparable)."""
    out = []
    a, b = (now.resize_size, now.crop_size, now.interpolation), (then.resize_size, then.crop_size, then.interpolation)
    if a != b:
        out.append(f"resize policy mismatch: this evaluation uses resize {a[0]} / crop {a[1]} / {a[2]}, {then_name} "
                   f"used resize {b[0]} / crop {b[1]} / {b[2]}, so the accuracies are not comparable.")
    close = lambda x, y: all(abs(u - v) <= 1e-6 for u, v in zip(x, y))
    if not (close(now.mean, then.mean) and close(now.std, then.std)):
        out.append(f"normalization mismatch: this evaluation uses mean {list(now.mean)} std {list(now.std)}, "
                   f"{then_name} used mean {list(then.mean)} std {list(then.std)}.")
    return out


# ------------------------------------------------------------------------------------------ training

def _lr_at(self, step: int) -> float:
    """The LR of optimizer step ``step`` (0-based); from epoch ``swa_start`` on, SWA's constant ``swa_lr``."""
    spe = self.steps_per_epoch
    if self.swa_start is not None and step >= (self.swa_start - 1) * spe:
        return self.swa_lr
    return lr_at(step, base_lr=self.peak_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                 warmup_start_factor=self.warmup_start_factor, sched=self.sched, min_lr=self.min_lr,
                 milestones=[m * spe for m in self.lr_milestones], gamma=self.lr_gamma,
                 decay_steps=self.lr_decay_epochs * spe)


def _train_size_at(self, epoch: int) -> int:
    """The RandomResizedCrop output size of ``epoch`` (0-based)."""
    if self.progressive_res is None:
        return self.train_crop_size
    return progressive_size(epoch, *self.progressive_res, *self.progressive_epochs)


def _with_data(self, train_images: int, val_images: int, classes: int):
    if train_images < self.global_batch_size:
        raise ConfigError(f"The training set has {train_images} images, fewer than one global batch "
                          f"({self.global_batch_size}). Lower --batch-size or --accum-steps.")
    steps = train_images // self.world_size // self.batch_size // self.accum_steps
    return dataclasses.replace(self, train_images=train_images, val_images=val_images, classes=classes,
                               steps_per_epoch=steps)


def _to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["eval_policy"] = self.eval_policy.to_dict()
    return d


def _flags(self) -> dict:
    """The flag values that reproduce this Config through ``--config``, the evaluation policy resolved (resize and
    crop) so that re-reading it cannot apply the precedence rules a second time."""
    d = {k: v for k, v in self.to_dict().items() if k not in DERIVED}
    p = self.eval_policy
    d.update(val_resize_size=p.resize_size, val_crop_size=p.crop_size, crop_pct=None, val_decode=p.decode,
             val_interpolation=p.interpolation, config=None, dry_run=None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# Everything a training run does: train.py's flags but the evaluation ones (in eval_policy), and flags.DERIVED.
_SETTINGS = settings(build_parser())
Config = dataclasses.make_dataclass(
    "Config", [(name, Any) for name in _SETTINGS if name not in EVAL_FLAGS]
    + [(name, Any, dataclasses.field(default=default)) for name, default in DERIVED.items()],
    frozen=True, namespace=dict(
        total_steps=property(lambda self: self.epochs * self.steps_per_epoch),
        amp_dtype=property(lambda self: AMP_DTYPES[self.amp]),
        warmup_steps=property(lambda self: round(self.warmup_epochs * self.steps_per_epoch)),
        with_teacher=lambda self, info: dataclasses.replace(self, teacher_info=dict(info)),
        lr_at=_lr_at, train_size_at=_train_size_at, with_data=_with_data, to_dict=_to_dict, flags=_flags))
Config.__module__ = __name__


def resolve(below: dict, given: dict, world_size: int) -> Config:
    """-> the run's Config; contradictions between flags raise ConfigError."""
    f = {**below, **given}
    if f["crop_scale"][0] > f["crop_scale"][1]:
        raise ConfigError(f"--crop-scale {f['crop_scale'][0]} {f['crop_scale'][1]}: need MIN <= MAX.")
    if f["sched"] == "step" and sorted(f["lr_milestones"]) != list(f["lr_milestones"]):
        raise ConfigError(f"--lr-milestones must be increasing (got {f['lr_milestones']}).")
    if f["warmup_epochs"] >= f["epochs"] and f["warmup_epochs"] > 0:
        raise ConfigError(f"--warmup-epochs {f['warmup_epochs']} is not shorter than --epochs {f['epochs']}. "
                          f"Shorten the warmup.")

    check_progressive(f, given)
    if "num_classes" in given and not f["fake_data"]:
        raise ConfigError(f"--num-classes {given['num_classes']} is for --fake-data (real data has its folders' "
                          f"classes): drop --num-classes.")
    if f["dry_run"] == "loader" and f["fake_data"]:
        raise ConfigError("--dry-run loader times the decoding of the training images of --data; --fake-data has "
                          "none to decode. Drop --fake-data, or use a bare --dry-run.")

    requested = f["global_batch"]
    if requested is not None:
        per = requested // (world_size * f["accum_steps"])
        if per < 1:
            raise ConfigError(f"--global-batch {requested} is smaller than world size {world_size} x accum steps "
                              f"{f['accum_steps']}.")
        f["batch_size"] = per
    total = f["batch_size"] * world_size * f["accum_steps"]
    lr_given = f["lr"] is not None  # recipes give --lr-base; only the user (or a config file) sets --lr
    lr = f["lr"] if f["lr"] is not None else scale_lr(f["lr_base"], total)

    peak = f"the peak LR {lr:g}" + ("" if lr_given else f" (--lr-base {f['lr_base']:g} at batch {total})")
    if f["sched"] == "cosine" and f["min_lr"] > lr:
        raise ConfigError(f"--min-lr {f['min_lr']:g} is above {peak}, so the cosine would climb. Give a --min-lr "
                          f"below the peak (e.g. 0), or a higher --lr.")
    if f["swa_lr"] is not None and f["swa_lr"] > lr:
        raise ConfigError(f"--swa-lr {f['swa_lr']:g} is above {peak}. Give an SWA LR at most the peak (SWA: about "
                          f"half of it, e.g. 0.05 for SGD at batch 256).")

    mean, std, _ = normalization(f["model"])  # the pixels its source fed it; training normalises the same way
    policy = resolve_eval_policy(policy_keys(given), {"mean": mean, "std": std, **policy_keys(below)})
    if f["swa_start"] is not None:
        if f["swa_start"] > f["epochs"]:
            raise ConfigError(f"--swa-start {f['swa_start']} is not an epoch of this run (1 to --epochs "
                              f"{f['epochs']}).")
        if f["swa_lr"] is None:
            raise ConfigError("--swa-start needs --swa-lr LR > 0, the constant learning rate of the SWA epochs "
                              "(e.g. 0.05 for SGD at batch 256).")
    elif f["swa_lr"] is not None:
        raise ConfigError("--swa-lr is the learning rate of the SWA epochs; give --swa-start EPOCH too.")
    if f["init_from"] and f["weights"]:
        raise ConfigError(f"--init-from {f['init_from']} and --weights {f['weights']} both give initial weights; "
                          f"use one of them.")
    if f["init_ema"] and not f["init_from"]:
        raise ConfigError("--init-ema takes the EMA weights of the --init-from checkpoint; give --init-from PATH.")
    if f["sam_adaptive"] and not f["sam"]:
        raise ConfigError("--sam-adaptive chooses ASAM for --sam RHO; give --sam too (e.g. 0.5).")
    if f["sam"] > 0:
        try:
            check_accum_steps(f["accum_steps"])
        except ValueError as e:
            raise ConfigError(f"--sam with --accum-steps {f['accum_steps']}: {e}") from None
    if fixed_input_size(f["model"]) and policy.crop_size != f["train_crop_size"]:
        raise ConfigError(f"{f['model']} takes inputs of one size only (--train-crop-size {f['train_crop_size']}), "
                          f"but the evaluation crop is {policy.crop_size}. Use --val-crop-size "
                          f"{f['train_crop_size']} (and a resize >= it), or train at the evaluation size.")

    if "none" in f["no_decay_on"]:
        if len(f["no_decay_on"]) > 1:
            raise ConfigError(f"--no-decay-on {' '.join(f['no_decay_on'])}: 'none' decays every parameter; give it "
                              f"alone, or only the categories to exempt.")
        f["no_decay_on"] = ()
    f["no_decay_on"] = tuple(dict.fromkeys(f["no_decay_on"]))
    check_distillation_and_fine_tuning(f, given)

    # Label smoothing in the MixUp/CutMix targets when they are on (every batch, mixed or not), else in the loss.
    mixing = f["mixup"] > 0 or f["cutmix"] > 0
    for key, action in _SETTINGS.items():  # a frozen Config holds tuples
        if action.nargs not in (None, "?", 0) and f[key] is not None:
            f[key] = tuple(f[key])
    for key in EVAL_FLAGS:
        del f[key]
    return Config(**f, world_size=world_size, global_batch_size=total, peak_lr=lr, lr_given=lr_given,
                  opt_given="opt" in given,
                  eval_policy=policy, mixing=mixing, loss_label_smoothing=0.0 if mixing else f["label_smoothing"],
                  mix_label_smoothing=f["label_smoothing"] if mixing else 0.0)


def check_distillation_and_fine_tuning(f: dict, given: dict) -> None:
    """Contradictions among --teacher / --distill*, --layer-decay, --bce* and the model."""
    if f["teacher"] is None:
        if f["teacher_model"] is not None:
            raise ConfigError(f"--teacher-model {f['teacher_model']} names the network of a --teacher state_dict; "
                              f"give --teacher PATH too (or drop --teacher-model).")
        named = ["--" + key.replace("_", "-") for key in ("distill", "distill_alpha", "distill_tau") if key in given]
        if named:
            raise ConfigError(f"{', '.join(named)} set{'s' if len(named) == 1 else ''} how to distil from a "
                              f"teacher, but no --teacher was given: add --teacher PATH|WEIGHTS, or drop "
                              f"{' and '.join(named)}.")
        if f["model"] in DEIT_DISTILLED:
            raise ConfigError(f"{f['model']} without --teacher would evaluate the average of its head and an untrained "
                              f"head. Give --teacher (DeiT: a RegNetY-16GF, --distill hard), or train a model without "
                              f"a distillation token (deit_tiny, deit_small, vit_b_16...).")
    elif f["model"] in DEIT_DISTILLED and f["distill_alpha"] == 0:
        raise ConfigError(f"--distill-alpha 0 gives {f['model']}'s distillation head no loss at all, but its "
                          f"evaluation averages both heads. Use alpha > 0 (DeiT: 0.5), or a model without a "
                          f"distillation token.")
    if f["bce_target_thresh"] is not None and not f["bce"]:
        raise ConfigError(f"--bce-target-thresh {f['bce_target_thresh']} binarises the targets of the binary "
                          f"cross-entropy; add --bce (or drop the threshold).")
    if f["layer_decay"] is not None and not f["no_decay_on"]:
        raise ConfigError(f"--layer-decay {f['layer_decay']} exempts norms, biases and embeddings from weight "
                          f"decay, against --no-decay-on none. Drop --no-decay-on none.")


def check_progressive(f: dict, given: dict) -> None:
    """Check --progressive-res START END / --progressive-epochs FROM TO; set ``f["train_crop_size"]`` to END."""
    res, epochs = f.get("progressive_res"), f.get("progressive_epochs")
    if res is None and epochs is None:
        return
    if res is None or epochs is None:
        raise ConfigError("--progressive-res START END and --progressive-epochs FROM TO go together, e.g. "
                          "--progressive-res 160 192 --progressive-epochs 66 77.")
    (start, end), (first, last) = res, epochs
    m = PROGRESSIVE_MULTIPLE
    if not (m <= start <= end and start % m == 0 and end % m == 0):
        raise ConfigError(f"--progressive-res {start} {end}: START and END must be multiples of {m}, at least {m}, "
                          f"with START <= END, e.g. --progressive-res 160 192.")
    if not 0 <= first < last <= f["epochs"]:
        raise ConfigError(f"--progressive-epochs {first} {last}: need 0 <= FROM < TO <= --epochs ({f['epochs']}), "
                          f"numbered from 1 as printed.")
    if f["fake_data"]:
        raise ConfigError("--progressive-res needs real data, not --fake-data. For a throughput run at a given size "
                          "use --train-crop-size.")
    if fixed_input_size(f["model"]):
        raise ConfigError(f"{f['model']} takes inputs of one size only, so its training crop cannot change with "
                          f"the epoch. Drop --progressive-res or use a convolutional model.")
    if "train_crop_size" in given and given["train_crop_size"] != end:
        raise ConfigError(f"--train-crop-size {given['train_crop_size']} contradicts --progressive-res {start} {end}, "
                          f"which sets it to {end}. Drop --train-crop-size.")
    f["train_crop_size"] = end


def write_config_file(cfg: Config, path: Path) -> None:
    """config.json: the flags that reproduce the run (`Config.flags`) and, for reading, the derived values."""
    d = cfg.to_dict()
    d.update(cfg.flags())
    write_text(path, json.dumps(d, indent=2, sort_keys=False) + "\n")
