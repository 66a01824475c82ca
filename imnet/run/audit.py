"""What a run will do and the classic mistakes in it: the ``train.py --dry-run`` plan (`plan`), its warnings
(`audit`) and notes (`notes`), from the resolved Config alone (no model, no data); docs/tricks.md and docs/usage.md
say why each warning matters.
"""

from __future__ import annotations

import math
import sys

import torch

from imnet.run import dist
from imnet.run.config import Config, EvalPolicy, policy_keys, policy_mismatch, resolve_eval_policy
from imnet.run.models import normalization
from imnet.optim import count_param_groups
from imnet.run.recipes import META, RECIPES, reference_global_batch, reference_lr
from imnet.schedule import scale_lr

LARGE_BATCH = 1024


def recipe_policy(recipe: dict):
    mean, std, _ = normalization(recipe.get("model", ""))
    return resolve_eval_policy({}, {"mean": mean, "std": std, **policy_keys(recipe)})


def device_type(cfg: Config) -> str:
    """The device type a run of cfg gets (as `imnet.run.dist.init` picks it)."""
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if dist.mps_available() else "cpu"
    return cfg.device.split(":")[0]


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16); None where the platform does not say."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def reference(cfg: Config, recipe: dict | None) -> tuple[dict | None, int | None, float | None]:
    """-> (the recipe cfg is checked against: ``recipe`` or cfg's own, its reference global batch, its LR there)."""
    recipe = RECIPES.get(cfg.recipe) if recipe is None else recipe
    if recipe is None or "lr_base" not in recipe or "batch_size" not in recipe:
        return recipe, None, None
    return recipe, reference_global_batch(cfg.recipe, recipe), reference_lr(cfg.recipe, recipe)


def notes(cfg: Config, recipe: dict | None = None) -> list[str]:
    """Facts worth knowing that are not mistakes (the dry run's and the log's NOTE lines)."""
    teacher = cfg.teacher_info or {}
    out = []
    if cfg.opt == "sgd" and cfg.opt_given and not cfg.nesterov:
        out.append("--opt sgd is plain momentum SGD here (torchvision's), while timm's --opt sgd is Nesterov: add "
                   "--nesterov for timm's.")
    if teacher and teacher.get("eval_policy") is None:
        out.append(f"the teacher {teacher['spec']} is a plain state_dict: its training resolution and normalisation "
                   f"are unknown, so they cannot be checked against the student's {cfg.train_crop_size} px crops.")
    name = cfg.recipe
    recipe, ref_batch, ref_lr = reference(cfg, recipe)
    if ref_batch is None or name not in META or cfg.lr_given or cfg.global_batch_size == ref_batch:
        return out
    return out + [f"recipe '{name}' is tuned for a global batch of {ref_batch} ({META[name]['gpus']} process(es) x "
            f"{recipe['batch_size']} x {recipe.get('accum_steps', 1)} accumulation steps); this run's is "
            f"{cfg.global_batch_size}, so its LR is rescaled linearly from {ref_lr:g} to {cfg.peak_lr:g}."]


def audit(cfg: Config, recipe: dict | None = None, device: str | None = None) -> list[str]:
    """Warnings for a resolved Config; the checks against a recipe (``RECIPES[cfg.recipe]`` by default) are skipped
    without one. ``device``: the run's device type (default: what ``cfg.device`` resolves to here)."""
    name = cfg.recipe
    recipe, ref_batch, ref_lr = reference(cfg, recipe)
    warnings = []

    wd = cfg.weight_decay or 0.0
    norms_spared = lambda categories: bool({"norm", "1d"} & set(categories))  # noqa: E731
    source_decays_norms = recipe is not None and not norms_spared(recipe.get("no_decay_on", ()))
    if cfg.opt == "adamw" and not norms_spared(cfg.no_decay_on) and wd > 0 and not source_decays_norms:
        warnings.append(
            f"Weight decay {wd:g} also applies to norm weights and biases with AdamW (--no-decay-on "
            f"{' '.join(cfg.no_decay_on) or 'none'}), which transformer and ConvNeXt recipes exclude. Fix: "
            f"--no-decay-on norm (or drop the flag: the default exempts them).")

    exempt = set(cfg.no_decay_on)
    if cfg.opt in ("lars", "lamb") and wd > 0 and not (exempt & {"norm", "1d"} and exempt & {"bias", "1d"}):
        warnings.append(
            f"--opt {cfg.opt} with --no-decay-on {' '.join(cfg.no_decay_on) or 'none'}: norm weights or biases get "
            f"weight decay {wd:g} and a trust ratio, which LARS and LAMB exclude. Fix: --no-decay-on norm bias "
            f"(or 1d).")

    warnings += teacher_warnings(cfg)

    global_batch = cfg.global_batch_size
    source_without_warmup = bool(ref_batch) and not recipe.get("warmup_epochs") and global_batch <= ref_batch
    if global_batch >= LARGE_BATCH and not cfg.warmup_epochs and not source_without_warmup:
        warnings.append(
            f"No LR warmup with a global batch of {global_batch}: the linearly scaled LR can diverge or lose "
            f"accuracy in the first epochs. Fix: --warmup-epochs 5 (or a smaller global batch).")

    if cfg.amp == "bf16" and (device or device_type(cfg)) == "cpu" and cpu_has_native_bf16() is False:
        warnings.append(
            "--amp bf16 on a CPU without native bf16 instructions (avx512_bf16 or amx_bf16) is many times slower "
            "than fp32. Fix: --amp none on this machine.")

    requested = cfg.global_batch
    divisor = cfg.world_size * cfg.accum_steps
    if requested is not None and requested % divisor:
        per_process = requested // divisor
        warnings.append(
            f"--global-batch {requested} is not divisible by world size x accumulation steps = {divisor}, so the "
            f"real global batch is {per_process * divisor}. Fix: a multiple of {divisor}, or another --accum-steps "
            f"or number of GPUs.")

    if recipe is None:
        return warnings

    for mismatch in policy_mismatch(cfg.eval_policy, recipe_policy(recipe), f"recipe '{name}'"):
        if mismatch.startswith("resize"):
            warnings.append(
                f"Eval policy differs from recipe '{name}': {mismatch} Fix: drop --val-resize-size / "
                f"--val-crop-size / --crop-pct / --interpolation.")

    lr = cfg.peak_lr
    if ref_batch and cfg.lr_given and math.isclose(lr, ref_lr, rel_tol=1e-9) and global_batch != ref_batch:
        warnings.append(
            f"--lr {lr:g} is recipe '{name}''s LR for its global batch of {ref_batch}, but this run's is "
            f"{global_batch}. Fix: drop --lr (the recipe's --lr-base is scaled) or pass "
            f"--lr {scale_lr(recipe['lr_base'], global_batch):g}.")
    return warnings


def teacher_warnings(cfg: Config) -> list[str]:
    """The teacher's training resolution and normalisation against the student's training batches."""
    t = cfg.teacher_info
    if not t:
        return []
    out = []
    size = t.get("image_size")
    if size is not None and size != cfg.train_crop_size:
        out.append(
            f"The teacher {t['spec']} was trained at {size} px but sees the student's {cfg.train_crop_size} px "
            f"training crops. Fix: --train-crop-size {size}, or a teacher trained at {cfg.train_crop_size} px.")
    if t.get("eval_policy"):
        theirs = EvalPolicy.from_dict(t["eval_policy"])
        for sentence in policy_mismatch(cfg.eval_policy, theirs, f"the teacher {t['spec']}"):
            if sentence.startswith("normalization"):
                out.append(f"Teacher {sentence} Fix: a teacher trained with the student's normalisation.")
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
    """What --dry-run prints."""
    lines = ["resolved configuration:"]
    lines += [f"  {k:<22} {v}" for k, v in sorted(cfg.to_dict().items()) if k != "eval_policy"]
    total, spe = cfg.total_steps, cfg.steps_per_epoch
    lines += [f"processes {cfg.world_size} x batch {cfg.batch_size} x accum {cfg.accum_steps} = global batch "
              f"{cfg.global_batch_size}",
              f"learning rate {cfg.peak_lr:.6g}"
              + ("" if cfg.lr_given else f" (= {cfg.lr_base} x {cfg.global_batch_size} / 256, linear scaling)"),
              f"data: {cfg.train_images} train / {cfg.val_images} val images, {cfg.classes} classes; "
              f"{spe} steps/epoch, {total} steps",
              *(group_lines(cfg, groups) or [f"parameter groups: {count_param_groups(groups)}"]), loss_line(cfg)]
    first_decay = math.ceil(cfg.lr_decay_epochs * spe) if cfg.sched == "exp" else 0
    keys = sorted({0, 1, round(cfg.warmup_epochs * spe), first_decay, total // 2, total - 1})
    lines.append("LR at steps: " + ", ".join(f"{s}: {cfg.lr_at(s):.6g}" for s in keys if 0 <= s < total))
    if cfg.progressive_res is not None:
        lines += progressive_plan(cfg)
    p = cfg.eval_policy
    lines += [f"train transform: {train_tf}", f"eval transform: {p.transform()}",
              f"eval policy: {p.describe()}",
              f"normalisation (training and evaluation) of {cfg.model}: {normalization(cfg.model)[2]}"]
    lines += [f"NOTE: {n}" for n in notes(cfg)]
    lines += [f"WARNING: {w}" for w in audit(cfg, device=device)]
    return "\n".join(lines)


def progressive_plan(cfg: Config) -> list[str]:
    """The training size of every epoch and the training FLOPs against training at END throughout (~ size^2)."""
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
