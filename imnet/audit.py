"""Recipe audit: warnings for the classic ImageNet training mistakes, printed by ``train.py --dry-run``.

``audit(cfg)`` looks only at the resolved `imnet.config.Config`; it never builds a model or reads data. Each warning
says what is wrong, why it matters and how to fix it. The checks:

1. Weight decay on norms and biases with AdamW. Decoupled weight decay (Loshchilov & Hutter 2019) pulls every
   decayed parameter towards zero by ``lr * wd * w`` per step; for LayerNorm/BatchNorm scales that means
   shrinking the features the next layer sees, and biases and position embeddings have no scale invariance
   to excuse it. ViT/DeiT/Swin/ConvNeXt recipes exclude them (0.05 is a large decay).
2. No warmup with a large global batch: the linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch
   SGD: Training ImageNet in 1 Hour") breaks in the first epochs, when the weights change fastest; they needed
   a gradual 5-epoch warmup from batch 1024 up (8k in the paper) to match the small-batch accuracy.
3. Eval policy (resize, crop, interpolation) different from the recipe's: published accuracies depend on it
   by several tenths of a point (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"), so the
   run is not comparable with the expected number.
4. Label smoothing applied twice: once in the soft targets of MixUp/CutMix and again in the loss; the
   effective smoothing is then about 2 eps, and the recipe's tuning no longer holds.
5. LR not rescaled after changing the global batch (GPUs, per-GPU batch or accumulation): an explicit
   ``--lr`` equal to the recipe's LR at its reference batch, while the global batch differs.
6. A requested global batch that world size x accumulation steps does not divide: the per-process batch is
   rounded, so the run silently uses a different global batch (and LR scaling) than requested.
7. bf16 autocast on a CPU without native bf16 instructions (AVX512-BF16 or AMX-BF16): every bf16 matmul and
   convolution is emulated, many times slower than fp32 (the issue that asked for this check measured 10-20x;
   even with AVX512-BF16, ResNet-18 steps were 1.2-1.8x slower than fp32 on this repository's CPU).

`notes(cfg)` holds what is worth knowing but not a mistake: a recipe run at a global batch other than its
reference, whose LR the linear scaling rule has rescaled (from what to what).
"""

from __future__ import annotations

import math
import sys

import torch

from imnet import dist
from imnet.config import Config, resolve_eval_policy
from imnet.recipes import META, RECIPES, reference_global_batch

REFERENCE_GPUS = 8
LARGE_BATCH = 1024


def recipe_policy(recipe: dict):
    """The evaluation policy a recipe's own settings resolve to (same resolver as train.py and eval.py)."""
    return resolve_eval_policy({}, {"crop_size": recipe.get("val_crop_size"), "resize_size": recipe.get("val_resize_size"),
                                    "crop_pct": recipe.get("crop_pct"), "interpolation": recipe.get("interpolation")})


def device_type(cfg: Config) -> str:
    """The device type a run of cfg gets (as `imnet.dist.init` picks it), without starting anything."""
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if dist.mps_available() else "cpu"
    return cfg.device.split(":")[0]


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), from the kernel's CPU flags; None where
    the platform does not say (not Linux), so that no warning is given on a guess."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def notes(cfg: Config, recipe: dict | None = None) -> list[str]:
    """Facts worth knowing that are not mistakes. Now one: a recipe run at a global batch other than its
    reference, with the LR rescaled linearly (Goyal et al. 2017) from the recipe's to this run's."""
    name = cfg.recipe
    if recipe is None and name in RECIPES:
        recipe = RECIPES[name]
    if recipe is None or name not in META or "lr_base" not in recipe or cfg.lr_given:
        return []
    ref_batch = reference_global_batch(name)
    if cfg.global_batch_size == ref_batch:
        return []
    ref_lr = recipe["lr_base"] * ref_batch / 256
    return [f"recipe '{name}' is tuned for a global batch of {ref_batch} ({META[name]['gpus']} process(es) x "
            f"{recipe['batch_size']} x {recipe.get('accum_steps', 1)} accumulation steps); this run's is "
            f"{cfg.global_batch_size}, so its LR is rescaled linearly from {ref_lr:g} to {cfg.peak_lr:g} "
            f"(Goyal et al. 2017). Accuracy usually holds for moderate changes, but the recipe's expected top-1 "
            f"was measured at {ref_batch}."]


def audit(cfg: Config, recipe: dict | None = None, device: str | None = None) -> list[str]:
    """Warnings (one paragraph each) for a resolved run configuration.

    ``recipe`` defaults to ``RECIPES[cfg.recipe]`` when cfg names one; the recipe-relative checks (eval
    policy, LR rescaling) are skipped without a recipe. ``device`` is the run's device type (default: what
    ``cfg.device`` resolves to here).
    """
    name = cfg.recipe
    if recipe is None and name in RECIPES:
        recipe = RECIPES[name]
    gpus = META[name]["gpus"] if name in META else REFERENCE_GPUS
    warnings = []

    wd = cfg.weight_decay or 0.0
    if cfg.opt == "adamw" and cfg.decay_norm_bias and wd > 0:
        warnings.append(
            f"Weight decay {wd:g} also applies to norm weights, biases and embeddings with AdamW "
            f"(--decay-norm-bias). Decoupled decay shrinks these towards zero every step, which removes "
            f"normalisation scales and offsets the network needs; transformer and ConvNeXt recipes exclude "
            f"them and their accuracies assume it. Fix: drop --decay-norm-bias.")

    global_batch = cfg.global_batch_size
    if global_batch >= LARGE_BATCH and not cfg.warmup_epochs:
        warnings.append(
            f"No LR warmup with a global batch of {global_batch}. With the linearly scaled LR, the first "
            f"updates are large while the weights change fastest; Goyal et al. 2017 needed a gradual warmup "
            f"(5 epochs) for batches of 1024 and more to match small-batch accuracy, and without it training "
            f"can diverge or lose accuracy. Fix: --warmup-epochs 5 (or a smaller global batch).")

    if cfg.loss_label_smoothing > 0 and cfg.mix_label_smoothing > 0:
        warnings.append(
            f"Label smoothing is applied twice: {cfg.mix_label_smoothing:g} in the MixUp/CutMix soft "
            f"targets and {cfg.loss_label_smoothing:g} again in the loss, so the effective smoothing is "
            f"about their sum and the recipe's tuning no longer holds. Fix: smooth in one place only (the "
            f"mixer's targets when mixing is on).")

    if cfg.amp == "bf16" and (device or device_type(cfg)) == "cpu" and cpu_has_native_bf16() is False:
        warnings.append(
            "--amp bf16 on a CPU without native bf16 instructions (no avx512_bf16 or amx_bf16 among its flags): "
            "every bf16 matmul and convolution is emulated, many times slower than fp32 (10-20x was measured), "
            "and the CPU gains no memory bandwidth worth it. Fix: --amp none on this machine (bf16 is for GPUs "
            "and CPUs with AMX).")

    requested = cfg.global_batch
    divisor = cfg.world_size * cfg.accum_steps
    if requested is not None and requested % divisor:
        per_process = requested // divisor
        warnings.append(
            f"--global-batch {requested} is not divisible by world size x accumulation steps = {divisor}: "
            f"each process gets {per_process} images per micro-step and the real global batch is "
            f"{per_process * divisor}, so the run and its LR scaling differ from what was asked. Fix: pick a "
            f"global batch that is a multiple of {divisor}, or change --accum-steps or the number of GPUs.")

    if recipe is None:
        return warnings

    p, q = cfg.eval_policy, recipe_policy(recipe)
    mine, theirs = (p.resize_size, p.crop_size, p.interpolation), (q.resize_size, q.crop_size, q.interpolation)
    if mine != theirs:
        warnings.append(
            f"Eval policy resize {mine[0]} / crop {mine[1]} / {mine[2]} differs from recipe '{name}': resize "
            f"{theirs[0]} / crop {theirs[1]} / {theirs[2]}. Accuracy depends on the eval resize, crop and "
            f"interpolation by several tenths of a point, so this run is not comparable with the recipe's "
            f"expected top-1. Fix: drop --val-resize-size / --val-crop-size / --crop-pct / --interpolation, "
            f"or compare against a baseline evaluated the same way.")

    if "lr_base" in recipe and "batch_size" in recipe:
        ref_batch = recipe["batch_size"] * gpus * recipe.get("accum_steps", 1)
        ref_lr = recipe["lr_base"] * ref_batch / 256
        lr = cfg.peak_lr
        if cfg.lr_given and math.isclose(lr, ref_lr, rel_tol=1e-9) and global_batch != ref_batch:
            scaled = ref_lr * global_batch / ref_batch
            warnings.append(
                f"--lr {lr:g} is recipe '{name}''s LR for its global batch of {ref_batch}, but this run's "
                f"global batch is {global_batch} (world size x batch size x accumulation steps). By the "
                f"linear scaling rule (Goyal et al. 2017) the LR should follow the batch: {scaled:g}; an "
                f"unscaled LR under- or over-shoots the recipe's schedule. Fix: drop --lr (the recipe's "
                f"--lr-base is scaled automatically) or pass --lr {scaled:g}.")
    return warnings
