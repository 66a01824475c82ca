"""What a run will do and the classic mistakes in it: the ``train.py --dry-run`` plan (`plan`) and its warnings.

``audit(cfg)`` looks only at the resolved `imnet.run.config.Config`; it never builds a model or reads data. Each warning
says what is wrong, why it matters and how to fix it. The checks:

1. Weight decay on norms and biases with AdamW. Decoupled weight decay (Loshchilov & Hutter 2019) pulls every
   decayed parameter towards zero by ``lr * wd * w`` per step; for LayerNorm/BatchNorm scales that means
   shrinking the features the next layer sees, and biases and position embeddings have no scale invariance
   to excuse it. DeiT/Swin/ConvNeXt recipes exclude them (0.05 is a large decay). Not warned when the run's
   recipe decays them itself, as its source did (torchvision's vit_b_16 command).
2. No warmup with a large global batch: the linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch
   SGD: Training ImageNet in 1 Hour") breaks in the first epochs, when the weights change fastest; they needed
   a gradual 5-epoch warmup from batch 1024 up (8k in the paper) to match the small-batch accuracy.
3. Eval policy (resize, crop, interpolation) different from the recipe's: published accuracies depend on it
   by several tenths of a point (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"), so the
   run is not comparable with the expected number.
4. LR not rescaled after changing the global batch (GPUs, per-GPU batch or accumulation): an explicit
   ``--lr`` equal to the recipe's LR at its reference batch, while the global batch differs.
5. A requested global batch that world size x accumulation steps does not divide: the per-process batch is
   rounded, so the run silently uses a different global batch (and LR scaling) than requested.
6. bf16 autocast on a CPU without native bf16 instructions (AVX512-BF16 or AMX-BF16): every bf16 matmul and
   convolution is emulated, many times slower than fp32 (10-20x was measured elsewhere;
   even with AVX512-BF16, ResNet-18 steps were 1.2-1.8x slower than fp32 on this repository's CPU).

7. LARS / LAMB with weight decay on norms or biases (--no-decay-on without norm and bias, or 1d): the papers and
   every reference implementation give norms and biases neither weight decay nor a trust ratio (You et al. 2017,
   2020; the MLPerf references skip batch-norm parameters and biases); decayed, both apply to them.
8. A distillation teacher at another input policy than the student: it sees the student's training batches,
   so a teacher trained at another resolution than the student's training crop (a train.py checkpoint says
   which) predicts less well on them (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"), and
   a teacher normalised with another mean / std than ImageNet's sees inputs it was never trained on. The
   teacher's evaluation resize and interpolation do not matter here: it never sees evaluation images. (Other
   classes, or a ViT teacher built for another size, are refused when the teacher is loaded.)

Layer-wise LR decay on a model without numbered blocks is not a warning: train.py refuses it at setup.

`notes(cfg)` holds what is worth knowing but not a mistake: a recipe run at a global batch other than its
reference, whose LR the linear scaling rule has rescaled (from what to what); a teacher whose training
resolution and normalisation are unknown (a plain state_dict).

(Label smoothing cannot be applied twice: imnet.run.config decides once where it goes, the MixUp/CutMix targets or
the loss.)
"""

from __future__ import annotations

import math
import sys

import torch

from imnet.run import dist
from imnet.run.config import Config, EvalPolicy, policy_keys, policy_mismatch, resolve_eval_policy
from imnet.optim import count_param_groups
from imnet.run.recipes import META, RECIPES, reference_global_batch, reference_lr
from imnet.schedule import scale_lr

REFERENCE_GPUS = 8
LARGE_BATCH = 1024


def recipe_policy(recipe: dict):
    """The evaluation policy a recipe's own settings resolve to (same resolver as train.py and eval.py)."""
    return resolve_eval_policy({}, policy_keys(recipe))


def device_type(cfg: Config) -> str:
    """The device type a run of cfg gets (as `imnet.run.dist.init` picks it), without starting anything."""
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
    teacher = cfg.teacher_info or {}
    out = []
    if teacher and teacher.get("eval_policy") is None:
        out.append(f"the teacher {teacher['spec']} is a plain state_dict: the resolution it was trained at and "
                   f"its normalisation are unknown, so they cannot be checked against the student's "
                   f"{cfg.train_crop_size} px ImageNet-normalised training crops, which it sees.")
    name = cfg.recipe
    if recipe is None and name in RECIPES:
        recipe = RECIPES[name]
    if recipe is None or name not in META or "lr_base" not in recipe or cfg.lr_given:
        return out
    ref_batch = reference_global_batch(name)
    if cfg.global_batch_size == ref_batch:
        return out
    ref_lr = reference_lr(name)
    return out + [f"recipe '{name}' is tuned for a global batch of {ref_batch} ({META[name]['gpus']} process(es) x "
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
    norms_spared = lambda categories: bool({"norm", "1d"} & set(categories))  # noqa: E731
    source_decays_norms = recipe is not None and not norms_spared(recipe.get("no_decay_on", ()))
    if cfg.opt == "adamw" and not norms_spared(cfg.no_decay_on) and wd > 0 and not source_decays_norms:
        warnings.append(
            f"Weight decay {wd:g} also applies to norm weights and biases with AdamW (--no-decay-on "
            f"{' '.join(cfg.no_decay_on) or 'none'}). Decoupled decay shrinks these towards zero every step, which "
            f"removes normalisation scales and offsets the network needs; transformer and ConvNeXt recipes exclude "
            f"them and their accuracies assume it. Fix: --no-decay-on norm (or drop the flag: the default "
            f"exempts them).")

    exempt = set(cfg.no_decay_on)
    if cfg.opt in ("lars", "lamb") and wd > 0 and not (exempt & {"norm", "1d"} and exempt & {"bias", "1d"}):
        warnings.append(
            f"--opt {cfg.opt} with --no-decay-on {' '.join(cfg.no_decay_on) or 'none'}: norm weights or biases get "
            f"weight decay {wd:g} and a trust ratio of their own. LARS and LAMB exclude them from both (You et al. "
            f"2017 and 2020, the MLPerf references, timm, NVIDIA's apex): a bias or BatchNorm shift near zero has a "
            f"tiny norm, so its trust ratio freezes or blows up its update. Fix: --no-decay-on norm bias (or 1d).")

    warnings += teacher_warnings(cfg)

    global_batch = cfg.global_batch_size
    if global_batch >= LARGE_BATCH and not cfg.warmup_epochs:
        warnings.append(
            f"No LR warmup with a global batch of {global_batch}. With the linearly scaled LR, the first "
            f"updates are large while the weights change fastest; Goyal et al. 2017 needed a gradual warmup "
            f"(5 epochs) for batches of 1024 and more to match small-batch accuracy, and without it training "
            f"can diverge or lose accuracy. Fix: --warmup-epochs 5 (or a smaller global batch).")

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

    for mismatch in policy_mismatch(cfg.eval_policy, recipe_policy(recipe), f"recipe '{name}'"):
        if mismatch.startswith("resize"):
            warnings.append(
                f"Eval policy differs from recipe '{name}': {mismatch} Fix: drop --val-resize-size / "
                f"--val-crop-size / --crop-pct / --interpolation, or compare against a baseline evaluated the same way.")

    if "lr_base" in recipe and "batch_size" in recipe:
        ref_batch = recipe["batch_size"] * gpus * recipe.get("accum_steps", 1)
        ref_lr = scale_lr(recipe["lr_base"], ref_batch)
        lr = cfg.peak_lr
        if cfg.lr_given and math.isclose(lr, ref_lr, rel_tol=1e-9) and global_batch != ref_batch:
            scaled = scale_lr(recipe["lr_base"], global_batch)
            warnings.append(
                f"--lr {lr:g} is recipe '{name}''s LR for its global batch of {ref_batch}, but this run's "
                f"global batch is {global_batch} (world size x batch size x accumulation steps). By the "
                f"linear scaling rule (Goyal et al. 2017) the LR should follow the batch: {scaled:g}; an "
                f"unscaled LR under- or over-shoots the recipe's schedule. Fix: drop --lr (the recipe's "
                f"--lr-base is scaled automatically) or pass --lr {scaled:g}.")
    return warnings


def teacher_warnings(cfg: Config) -> list[str]:
    """Check 8: the teacher's training resolution and normalisation against the student's training batches."""
    t = cfg.teacher_info
    if not t:
        return []
    out = []
    size = t.get("image_size")
    if size is not None and size != cfg.train_crop_size:
        out.append(
            f"The teacher {t['spec']} was trained at {size} px but sees the student's {cfg.train_crop_size} px "
            f"training crops: a network's predictions degrade away from its training resolution (Touvron et al. "
            f"2019), so the distillation targets are worse than the teacher. Fix: train the student at "
            f"--train-crop-size {size}, or distil from a teacher trained at {cfg.train_crop_size} px.")
    if t.get("eval_policy"):
        theirs = EvalPolicy.from_dict(t["eval_policy"])
        for sentence in policy_mismatch(cfg.eval_policy, theirs, f"the teacher {t['spec']}"):
            if sentence.startswith("normalization"):
                out.append(f"Teacher {sentence} Fix: a teacher trained with the student's (ImageNet) "
                           f"normalisation.")
    return out


def loss_line(cfg: Config) -> str:
    """The loss, as train.py's step_loss computes it."""
    base = "binary cross-entropy" if cfg.bce else "cross-entropy"
    if cfg.bce_target_thresh is not None:
        base += f" on targets > {cfg.bce_target_thresh:g} set to 1"
    where = (f"label smoothing {cfg.mix_label_smoothing:g} in the MixUp/CutMix targets" if cfg.mix_label_smoothing
             else f"label smoothing {cfg.loss_label_smoothing:g} in the loss" if cfg.loss_label_smoothing
             else "no label smoothing")
    line = f"loss: {base}, {where}"
    t = cfg.teacher_info
    if t:
        kind = (f"soft (tau^2 KL at tau {cfg.distill_tau:g})" if cfg.distill == "soft"
                else "hard (CE to the teacher's top-1)")
        line += (f"; x (1 - {cfg.distill_alpha:g}) + {cfg.distill_alpha:g} x {kind} distillation from "
                 f"{t['model']} ({t['source']} {t['file']}, sha256 {t['sha256'][:16]}...), which sees the "
                 f"student's batch after erasing and MixUp/CutMix, in eval mode, without gradients, under the "
                 f"same autocast")
    return line


def group_lines(cfg: Config, groups: list[dict]) -> list[str]:
    """Under --layer-decay, the parameter groups one per line with their LR scales (else none)."""
    if cfg.layer_decay is None:
        return []
    counts = count_param_groups(groups)
    return [f"parameter groups: {len(counts)}, layer-wise LR decay {cfg.layer_decay:g} (LR x scale):"] + [
        f"  {name}: {c['tensors']} tensors, {c['elements']:,} elements, weight decay {c['weight_decay']:g}, "
        f"LR x {c['lr_scale']:.6g}" for name, c in counts.items()]


def plan(cfg: Config, groups: list[dict], train_tf, device: str | None = None) -> str:
    """What --dry-run prints: the resolved Config, the derived numbers, the transforms, and the notes and warnings."""
    lines = ["resolved configuration:"]
    lines += [f"  {k:<22} {v}" for k, v in sorted(cfg.to_dict().items()) if k != "eval_policy"]
    total, spe = cfg.total_steps, cfg.steps_per_epoch
    lines += [f"processes {cfg.world_size} x batch {cfg.batch_size} x accum {cfg.accum_steps} = global batch "
              f"{cfg.global_batch_size}",
              f"learning rate {cfg.peak_lr:.6g}" + ("" if cfg.lr_given else
                                                     f" (= {cfg.lr_base} x {cfg.global_batch_size} / 256, linear scaling)"),
              f"data: {cfg.train_images} train / {cfg.val_images} val images, {cfg.classes} classes; {spe} steps/epoch, "
              f"{total} steps",
              *(group_lines(cfg, groups) or [f"parameter groups: {count_param_groups(groups)}"]), loss_line(cfg)]
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
