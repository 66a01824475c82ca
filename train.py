"""Train an image classifier on ImageNet (or any ImageFolder tree), from one CPU process to many GPU nodes.

    python train.py                                   # the demo recipe on a generated dataset
    python train.py --data /datasets/imagenet --recipe resnet50_classic
    torchrun --nproc_per_node=8 train.py --data /datasets/imagenet --recipe resnet50 --output runs/r50
    python train.py --recipe resnet50 --data /datasets/imagenet --dry-run   # what would this run do?

Read `run` first: it is the table of contents. One optimizer step is `train_step`, `train_one_epoch` the loop
around it, `finish_epoch` the evaluation and the writes of best.pt and last.pt. ``--help`` is the manual.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imnet.run import flags, signals

if __name__ == "__main__":
    # A scheduler's SIGTERM can come while torch is still importing: until main() takes over it is only
    # recorded. --help and flag errors are answered before the seconds that importing torch takes.
    signals.record_early()
    flags.exit_on_bad_flags(sys.argv[1:])

# The imports below come after that block on purpose:
# ruff: noqa: E402

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

import imnet
from imnet.distill import distillation_loss
from imnet.ema import ModelEma
from imnet.lars import LAMB, LARS
from imnet.losses import binary_cross_entropy, cross_entropy
from imnet.metrics import Meter, NonFiniteGuard, NonFiniteLoss
from imnet.mixing import Mixer
from imnet.optim import build_optimizer, layer_decay_groups, param_groups
from imnet.sam import SAM, keep_buffers
from imnet.schedule import progressive_size, set_lr
from imnet.swa import recompute_batchnorm
from imnet.transforms import random_erase, train_transform
from imnet.run import audit, checkpoint, config, data, dist, folders, models, runfolder, seeds
from imnet.run.atomic import NoSpace, link_file
from imnet.run.config import Config, ConfigError
from imnet.run.errors import UsageError, message_of
from imnet.run.evaluation import autocast, evaluate_all
from imnet.run.log import (RunLog, Window, epoch_line, log_window, require_tensorboard, resume_lr_note,
                          summary, train_row, val_row)
from imnet.run.teacher import build_teacher


# ----------------------------------------------------------------------------------------------- one step

@dataclass
class Parts:
    """The objects an optimizer step acts on, built once by `build_parts` (settings are read from the Config)."""
    model: nn.Module              # the plain module that owns the weights
    train_model: nn.Module        # what runs forward/backward: model, or DDP / torch.compile around it
    eval_model: nn.Module         # what evaluates: never DDP (ranks see uneven evaluation shards)
    optimizer: torch.optim.Optimizer
    device: torch.device
    rank: int = 0
    mixer: Mixer | None = None    # MixUp / CutMix, with the label smoothing folded into its targets
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling
    ema: ModelEma | None = None
    sam: SAM | None = None        # the ascent / descent around the optimizer's parameters
    swa: AveragedModel | None = None
    teacher: nn.Module | None = None  # distillation: eval mode, no gradients, never saved (`build_teacher`)


def train_step(cfg: Config, parts: Parts, micro_batches: list, epoch: int, step: int, global_step: int, meter: Meter):
    """Optimizer step ``global_step`` (step ``step`` of ``epoch``) over cfg.accum_steps micro-batches of uint8
    images and labels. -> (the micro-batches' mean loss, a device tensor; the gradient norm before clipping, or
    None). Nothing here reads a value back from the device."""
    set_lr(parts.optimizer, cfg.lr_at(global_step))
    losses = []
    for micro, (images, labels) in enumerate(micro_batches):
        images, labels = data.to_device(images, labels, parts.device, channels_last=cfg.channels_last,
                                        mean=cfg.eval_policy.mean, std=cfg.eval_policy.std)
        # The randomness of a micro-step depends only on where it is in the run, so a resumed run replays it
        # without any RNG history: dropout and stochastic depth from torch's global RNG; erasing and mixing
        # from a CPU generator (their draws are host scalars: nothing waits for the GPU).
        where = (cfg.seed, epoch, step * cfg.accum_steps + micro, parts.rank)
        torch.manual_seed(seeds.derive(seeds.DROPOUT, *where))
        gen = torch.Generator().manual_seed(seeds.derive(seeds.MIXING, *where))
        if cfg.random_erase > 0:
            images = random_erase(images, cfg.random_erase, mode=cfg.random_erase_mode, generator=gen)
        targets = labels
        if parts.mixer is not None:  # soft targets (label smoothing included): the loss adds none
            images, targets = parts.mixer(images, labels, generator=gen)

        # DDP all-reduces the gradients on the last micro-batch only; the others accumulate locally.
        last = micro == len(micro_batches) - 1
        no_sync = getattr(parts.train_model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            teacher_logits = None
            with autocast(parts.device, cfg.amp_dtype):
                outputs = parts.train_model(images)  # a distilled DeiT: (class logits, distillation logits)
                if parts.teacher is not None:  # as DeiT: these very images, after erasing and mixing; eval mode
                    with torch.no_grad():
                        teacher_logits = parts.teacher(images)
            loss = step_loss(cfg, outputs, targets, teacher_logits)  # fp32
            scaled = loss / cfg.accum_steps  # the mean over the whole accumulated batch
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        if parts.sam is not None:  # accum_steps is 1 (the config refuses more): this is the whole batch
            sam_second_pass(cfg, parts, images, targets, teacher_logits)
        hard = parts.mixer is None  # accuracy against mixed targets would mean nothing
        # the accuracy of what evaluation scores: a distilled DeiT's eval mode averages its two heads
        logits = (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
        meter.update(loss.detach(), logits.detach() if hard else None, labels if hard else None, n=labels.shape[0])
        losses.append(loss.detach())

    grad_norm = None
    if cfg.clip_grad > 0:
        if parts.scaler is not None:
            parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.clip_grad)
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)  # skipped when the gradients hold inf/NaN (the scale is lowered)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:
        parts.ema.update(parts.model, global_step + 1)
    return torch.stack(losses).mean(), grad_norm


def step_loss(cfg: Config, outputs, targets, teacher_logits=None) -> torch.Tensor:
    """The loss of one micro-batch (float32): cross-entropy, or with --bce binary cross-entropy, with the label
    smoothing the Config put in the loss (none when MixUp/CutMix carry it in the targets); with a teacher,
    `imnet.distill.distillation_loss` around it (at alpha 0 exactly the label loss)."""
    if cfg.bce:
        base = functools.partial(binary_cross_entropy, label_smoothing=cfg.loss_label_smoothing,
                                 target_threshold=cfg.bce_target_thresh)
    else:
        base = functools.partial(cross_entropy, label_smoothing=cfg.loss_label_smoothing)
    if teacher_logits is None:
        return base(outputs, targets)
    return distillation_loss(outputs, targets, teacher_logits, base, kind=cfg.distill, alpha=cfg.distill_alpha,
                             tau=cfg.distill_tau)


def sam_second_pass(cfg: Config, parts: Parts, images, targets, teacher_logits=None) -> None:
    """SAM (imnet/sam.py): from the first pass's gradient, move to w + e, take the gradient of the same batch there
    (same augmentation and mixing, the first pass's teacher logits), and come back to w with that gradient.
    The first backward was all-reduced, so every DDP rank ascends to the same w + e; under fp16 the gradients
    stay scaled (the ascent direction does not depend on the scale). BatchNorm's running statistics are kept."""
    parts.sam.ascend()
    with keep_buffers(parts.model):
        with autocast(parts.device, cfg.amp_dtype):
            outputs = parts.train_model(images)
        loss = step_loss(cfg, outputs, targets, teacher_logits)
        (parts.scaler.scale(loss) if parts.scaler is not None else loss).backward()
    parts.sam.descend()


# ----------------------------------------------------------------------------------------------- one epoch

@dataclass
class Training:
    """What the epoch loop works with, built once in `run`; ``progress`` is the part that changes."""
    cfg: Config
    info: dist.DistInfo
    parts: Parts
    classes: list
    output: Path
    train_loader: torch.utils.data.DataLoader
    sampler: data.TrainSampler
    val_loader: torch.utils.data.DataLoader
    meter: Meter
    bad_counter: data.BadImageCounter
    log: RunLog
    preemption: signals.PreemptionSignals
    progress: checkpoint.Progress
    nan_guard: NonFiniteGuard
    agree: dist.Flags             # stop / timed save / bad images, agreed by all ranks one step later
    steps_at_start: int           # the global step and time.time() when the training loop (re)started: the ETA
    t_start: float = 0.0
    last_save: float = 0.0        # time.time() of the last write of last.pt


def save(training: Training, name: str, like: str | None = None) -> None:
    """Write OUTPUT/name (every rank takes part: metric sums and RNG states are gathered), or make it a hard link
    of OUTPUT/like, just written from the same state."""
    output, progress = training.output, training.progress
    failure = ""
    try:
        if like is None:
            checkpoint.save(output / name, training.cfg, training.classes, training.parts, progress, training.meter,
                            training.bad_counter, training.info)
        elif training.info.is_main:
            link_file(output / like, output / name)
    except NoSpace as e:
        if (output / "last.pt").exists():
            at = checkpoint.identity(output / "last.pt")
            then = (f"--resume auto --output {output} then continues from last.pt (epoch {at['epoch'] + 1}, "
                    f"step {at['step_in_epoch']})")
        else:
            then = "no last.pt was written yet, so the run starts again from the beginning"
        failure = f"{e} Training stopped at epoch {progress.epoch + 1}, step {progress.step_in_epoch}; {then}."
    if training.info.distributed:  # every rank stops now, none waits for rank 0 at the next collective
        shared = [failure]
        torch.distributed.broadcast_object_list(shared, src=0, group=training.info.control_group)
        failure = shared[0]
    if failure:
        raise NoSpace(failure)


def start_epoch(training: Training):
    """-> the iterator of the rest of epoch ``progress.epoch``: the sampler skips the steps already trained."""
    cfg, progress = training.cfg, training.progress
    training.sampler.set_epoch(progress.epoch)
    training.sampler.set_start(progress.step_in_epoch * cfg.accum_steps * cfg.batch_size)
    if progress.step_in_epoch == 0:
        training.meter.reset()
    training.parts.train_model.train()
    with training.preemption.deferred():  # the workers are forked here (first epoch)
        return iter(training.train_loader)


def train_one_epoch(training: Training) -> tuple[bool, int | None]:
    """The rest of epoch ``progress.epoch``, step by step. -> (stopped early by a signal or --stop-at-step, last.pt
    written; the size the batches had: progressive resolution)."""
    cfg, parts, progress, bad_counter = training.cfg, training.parts, training.progress, training.bad_counter
    batches = start_epoch(training)
    window, train_size = Window(torch.zeros((), device=parts.device)), None
    while progress.step_in_epoch < cfg.steps_per_epoch:
        t = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.accum_steps)]
        train_size = micro[0][0].shape[-1]
        window.data_time += time.perf_counter() - t
        loss, grad_norm = train_step(cfg, parts, [(x, y) for x, y, _ in micro], progress.epoch, progress.step_in_epoch,
                                     progress.global_step, training.meter)
        training.nan_guard.update(loss, progress.global_step)  # bookkeeping on the device: no host sync per step
        window.add(loss)
        progress.global_step += 1
        progress.step_in_epoch += 1

        if progress.step_in_epoch % cfg.log_every == 0 or progress.step_in_epoch == cfg.steps_per_epoch:
            training.nan_guard.check()
            eta = (time.time() - training.t_start) / max(progress.global_step - training.steps_at_start, 1) * \
                (cfg.total_steps - progress.global_step)
            log_window(training.log, cfg, progress, window, grad_norm, eta, parts.device)
            window = Window(torch.zeros((), device=parts.device))
        report_bad_images(training, [path for _, _, bad in micro for path in bad])
        timer_due = training.info.is_main and cfg.save_every_minutes > 0 and \
            time.time() - training.last_save > 60 * cfg.save_every_minutes
        agreed = training.agree.post(stop=training.preemption.requested or progress.global_step == cfg.stop_at_step,
                                     save=timer_due, bad_images=bad_counter.count)
        too_many_bad = agreed.bad_images > bad_counter.max_bad
        if agreed.stop or agreed.save or too_many_bad:
            training.nan_guard.check()  # never overwrite a good checkpoint with NaN weights
            save(training, "last.pt")
            training.last_save = time.time()
            training.log.event("checkpoint", path=str(training.output / "last.pt"), epoch=progress.epoch,
                               step_in_epoch=progress.step_in_epoch,
                               reason="preemption" if agreed.stop else "bad images" if too_many_bad else "timer")
        bad_counter.check(agreed.bad_images)  # the most any rank met: all ranks stop at the same step
        if agreed.stop:
            return True, train_size
    training.nan_guard.check()
    return False, train_size


def report_bad_images(training: Training, paths: list) -> None:
    """Log the unreadable files of this step (each once; they were replaced by other samples)."""
    for path in training.bad_counter.update(paths, check=False):
        shown = folders.display_path(path)
        training.log.event("bad_image", echo=f"skipped unreadable image {shown} (replaced by another sample)",
                           path=shown, epoch=training.progress.epoch, step=training.progress.step_in_epoch)


def end_epoch(training: Training, epoch_t0: float, train_size: int) -> None:
    """The epoch's training is done: average it into SWA, record its row, and secure it in last.pt before the
    evaluation (an evaluation that fails or is interrupted must not throw the epoch's training away). The SWA
    average gets its BatchNorm statistics here, before it is saved: every saved average carries its own."""
    cfg, parts, progress = training.cfg, training.parts, training.progress
    if parts.swa is not None and progress.epoch + 1 >= cfg.swa_start:
        parts.swa.update_parameters(parts.model)
        training.sampler.set_epoch(progress.epoch)  # one pass of this epoch's augmentation, from its first sample
        training.sampler.set_start(0)
        with training.preemption.deferred(), autocast(parts.device, cfg.amp_dtype):  # workers may be forked here
            recompute_batchnorm(parts.swa, data.images_on(training.train_loader, parts.device, cfg.channels_last,
                                                          cfg.eval_policy.mean, cfg.eval_policy.std))
    row = train_row(cfg, training.meter.compute(distributed=True), progress.epoch, parts.mixer is not None,
                    training.bad_counter.count)
    row.update(epoch_time=time.time() - epoch_t0, train_size=train_size)
    progress.history.append(row)
    progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
    done = progress.epoch  # evaluated every --eval-every epochs and after the last
    progress.pending_eval = done == cfg.epochs or bool(cfg.eval_every and done % cfg.eval_every == 0)
    save(training, "last.pt")


def finish_epoch(training: Training, row: dict) -> None:
    """Evaluate the finished epoch if it is due (``progress.pending_eval``), then write best.pt (when the top-1
    improved) BEFORE last.pt: a kill between the two writes leaves last.pt still pending, so the resumed run
    evaluates again and rewrites both; best.pt can never lag behind last.pt's best_top1."""
    progress = training.progress
    if progress.pending_eval:
        t0 = time.time()
        row.update(evaluate_epoch(training, progress.epoch - 1))
        progress.pending_eval = False
        row["epoch_time"] = row.get("epoch_time", 0.0) + time.time() - t0
        improved = row["val_top1"] > progress.best_top1
        if improved:
            progress.best_top1 = row["val_top1"]
            save(training, "best.pt")
        save(training, "last.pt", like="best.pt" if improved else None)  # the same bytes: a link, not a second copy
    training.log.event("epoch", echo=epoch_line(row), **row)
    training.log.write_summary(progress.history)


def evaluate_epoch(training: Training, epoch: int) -> dict:
    """The validation figures of (0-based) ``epoch``'s summary row: the trained weights, and the EMA and SWA
    weights when the run keeps them."""
    cfg, parts = training.cfg, training.parts
    evaluated = {"model": parts.eval_model}
    if parts.ema is not None:
        evaluated["ema"] = parts.ema.module
    if parts.swa is not None and int(parts.swa.n_averaged) > 0:  # its BatchNorm statistics are its own
        evaluated["swa"] = parts.swa.module
    with training.preemption.waiting_for(f"the evaluation of epoch {epoch + 1}"):  # a stop waits for its end
        results = evaluate_all(list(evaluated.values()), training.preemption.forking(training.val_loader),
                               parts.device, cfg.eval_policy, len(training.classes), amp_dtype=cfg.amp_dtype,
                               channels_last=cfg.channels_last)
    for path in results[0].unreadable:
        print(f"warning: validation image {path} could not be read and was replaced by another, so this "
              f"evaluation is not exact; repair or remove the file", file=sys.stderr, flush=True)
    row = {}
    for name, scores in zip(evaluated, results):
        row.update(val_row(name, scores))
    return row


# ----------------------------------------------------------------------------------------------- the run

def main(argv: list[str] | None = None) -> int:
    """-> the exit code: 0 done (or stopped by a scheduler's signal, last.pt written), 1 the loss became NaN (or,
    under torchrun, another process died), 2 bad input or no room on the disk (one paragraph), 130 stopped by
    Ctrl-C (imnet.run.signals.INTERRUPTED)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # A scheduler's SIGTERM or a Ctrl-C during startup only sets a flag: the run stops before training.
    preemption = signals.PreemptionSignals().install().take_early()
    try:
        with contextlib.ExitStack() as cleanup:
            return run(argv, preemption, cleanup)
    except UsageError as e:  # on every rank: each may log on its own node (dist.agree gives them one paragraph)
        print(f"error: {message_of(e)}", file=sys.stderr, flush=True)
        return 2
    except (RuntimeError, torch.distributed.DistError) as e:
        if not peer_lost(e):
            raise
        print(f"error: {peer_lost_message(argv)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # the second Ctrl-C (imnet.run.signals.PreemptionSignals)
        dist.eprint0("stopped at once by a second Ctrl-C, keeping the checkpoints written before it; --resume auto "
                     "continues from last.pt.")
        return signals.INTERRUPTED
    finally:
        dist.cleanup()
        preemption.uninstall()


def peer_lost(error: Exception) -> bool:
    """Whether ``error`` is a collective that failed because another torchrun process is gone."""
    return dist.env_world_size() > 1 and (isinstance(error, torch.distributed.DistError) or
                                          any(w in str(error) for w in ("gloo", "NCCL", "Connection closed")))


def peer_lost_message(argv: list[str]) -> str:
    """A peer's death, said on each surviving rank: which rank (in a pair, the other), the checkpoint, the way on."""
    rank, world = int(os.environ.get("RANK", "0")), dist.env_world_size()
    who = f"rank {1 - rank}" if world == 2 else f"another of the {world} processes"
    below, given = flags.parse_args(argv)
    output = output_folder({**below, **given})
    return (f"rank {rank} stopped: {who} ended (killed, or its node lost) while they trained together. The "
            f"checkpoints in {output} are intact (they are written whole or not at all); run the same torchrun "
            f"command with --resume auto --output {output} to continue from last.pt.")


def run(argv: list[str], preemption: signals.PreemptionSignals, cleanup: contextlib.ExitStack) -> int:
    t_start = time.time()
    # ---- settings: flags -> one frozen Config; the run folder is claimed before any work
    below, given = flags.parse_args(argv)
    info = dist.init({**below, **given}["device"])
    cfg = resolve_config(below, given, info)
    if cfg.tensorboard:
        require_tensorboard()  # installed, or say so before any work
    output = Path(cfg.output)
    # Rank 0 claims the folder and decides what the run resumes; its refusal stops every rank here (dist.agree).
    resume = dist.agree(info, lambda: runfolder.claim(cfg, output, cleanup, dist.print0) if info.is_main else None)[0]
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    dist.set_backends(info.device, deterministic=cfg.deterministic)

    # ---- data
    classes, train_set, val_set = build_datasets(cfg)
    cfg = cfg.with_data(len(train_set), len(val_set), len(classes))
    unreadable_val = data.check_readable(val_set, "validation")  # an unreadable set stops here, not after an epoch
    sampler, train_loader, val_loader = build_loaders(cfg, info, train_set, val_set, cleanup)

    # ---- model and optimizer
    model = build_model(cfg, len(classes), info)
    init_report = None
    if (cfg.init_from or cfg.weights) and resume.path is None:  # a resumed run has its own weights
        init_report = init_weights(cfg, model, classes, info)
    teacher, cfg = build_teacher(cfg, classes, info) if cfg.teacher else (None, cfg)
    groups = build_param_groups(cfg, model)
    if cfg.dry_run:
        if info.is_main:
            print(audit.plan(cfg, groups, getattr(train_set, "transform", None), info.device.type), flush=True)
            print(data.describe_workers({**below, **given}["workers"], cfg.workers), flush=True)
            if cfg.dry_run == "loader":  # seconds: decodes a few dozen training images here
                print(data.describe_rate(train_set, cfg.workers, cfg.train_size_at(0)), flush=True)
            if init_report:
                print(models.describe_init(init_report), flush=True)
        return 0
    parts = build_parts(cfg, model, groups, len(classes), info, teacher)
    meter = Meter(info.device)
    bad_counter = data.BadImageCounter(data.parse_max_bad(cfg.max_bad_images, len(train_set)), len(train_set))
    log = RunLog(output, enabled=info.is_main, quiet=cfg.quiet, tensorboard=cfg.tensorboard)

    # ---- resume, or start (config.json once the checkpoint is accepted: a refused resume leaves the folder as it was)
    train_set_record = train_set.index.record() if hasattr(train_set, "index") else {}
    if resume.path is not None:  # every rank restores rank 0's choice before DDP is wrapped around the model
        progress = checkpoint.restore_agreed(resume.path, resume.checksum, cfg, classes, parts, meter, bad_counter,
                                             info, log, train_set_record)
        progress.train_set = train_set_record
        resume_lr_note(log, cfg, parts.optimizer, progress.global_step)  # a changed schedule's LR jump
        if resume.forks:
            progress.fork()
            log.event("fork", echo=f"note: {resume.path} continues here as a new run", path=str(resume.path),
                      run_id=progress.run_id, forked_from=progress.forked_from)
        if info.is_main and resume.path == output / "last.pt":
            runfolder.repair_best(output, progress, log)
    else:
        progress = checkpoint.Progress(train_set=train_set_record)
        log.event("start", config=cfg.to_dict(), classes=len(classes), train_images=len(train_set),
                  val_images=len(val_set), run_id=progress.run_id)
        if init_report:
            log.event("init", echo=models.describe_init(init_report), **init_report)
    wrap(cfg, parts, info)
    training = Training(cfg=cfg, info=info, parts=parts, classes=classes, output=output, train_loader=train_loader,
                        sampler=sampler, val_loader=val_loader, meter=meter, bad_counter=bad_counter, log=log,
                        preemption=preemption, progress=progress, nan_guard=NonFiniteGuard(info.device),
                        agree=dist.Flags(info, "stop", "save", "bad_images"), steps_at_start=progress.global_step)
    if info.is_main:
        config.write_config_file(cfg, output / "config.json")
    start_notes(training, train_set, val_set, unreadable_val)

    # ---- the epochs
    if progress.pending_eval:  # resumed from an epoch saved before its evaluation
        finish_epoch(training, progress.history[-1])
    if preemption.requested and not info.distributed:  # a signal during startup: nothing trained, nothing to lose
        return stopped(training, f"before training (epoch {progress.epoch + 1}, step {progress.step_in_epoch})",
                       "nothing to save")
    training.t_start = training.last_save = time.time()
    try:
        while progress.epoch < cfg.epochs:
            epoch_t0 = time.time()
            stopped_early, train_size = train_one_epoch(training)
            if stopped_early:
                return stopped(training, f"at epoch {progress.epoch + 1} step {progress.step_in_epoch}",
                               "last.pt written")
            end_epoch(training, epoch_t0, train_size)
            finish_epoch(training, progress.history[-1])
            training.last_save = time.time()
            if training.agree.drain().stop or (not info.distributed and preemption.requested):
                return stopped(training, f"after epoch {progress.epoch}", "last.pt written")
    except NonFiniteLoss as e:
        return nonfinite(training, e.step)

    if resume.forks and not (output / "last.pt").exists():  # the fork trained nothing: no checkpoint to name
        log.event("done", echo=f"nothing left to train: {resume.path} has trained {progress.epoch} epochs (--epochs "
                  f"{cfg.epochs}), so {output} holds no checkpoint. To train on, pass --epochs above {progress.epoch}; "
                  f"to evaluate it, python eval.py --checkpoint {resume.path} --data {cfg.data or 'ROOT'}.",
                  wall_s=time.time() - t_start, nothing_left=True)
        return 0
    summary(log, progress, output, time.time() - t_start)
    return 0


def stopped(training: Training, where: str, saved: str) -> int:
    """The run stops on a signal or at --stop-at-step -> its exit code (0, or 130 after Ctrl-C)."""
    progress, preemption = training.progress, training.preemption
    how = "--stop-at-step" if not preemption.received and progress.global_step == training.cfg.stop_at_step else \
        preemption.name
    training.log.event("preempted", echo=f"stopped by {how} {where}; {saved}. Continue with --resume auto "
                       f"--output {training.output}", epoch=progress.epoch, step_in_epoch=progress.step_in_epoch,
                       signals=preemption.received)
    return preemption.exit_code


def nonfinite(training: Training, step: int) -> int:
    """The loss became NaN or infinite at optimizer ``step``: nothing was saved after it. -> exit code 1."""
    last = training.output / "last.pt"
    training.log.event("nonfinite", step=step)
    fixes = "Lower the learning rate, add warmup or --clip-grad, or use bf16 instead of fp16"
    if last.exists():
        then = f"the last good checkpoint {last} is untouched. {fixes}; then --resume {last}."
    else:
        then = f"no checkpoint was written yet. {fixes}, and start the run again (the same --output takes it)."
    dist.eprint0(f"error: the loss became NaN or infinite at optimizer step {step} (epoch "
                 f"{training.progress.epoch + 1}); {then}")
    return 1


# ----------------------------------------------------------------------------------------------- setup

@contextlib.contextmanager
def refused(prefix: str = ""):
    """A ValueError of the block becomes the ConfigError of bad settings (one paragraph, exit 2)."""
    try:
        yield
    except ValueError as e:
        raise ConfigError(f"{prefix}{e}") from None


def resolve_config(below: dict, given: dict, info) -> Config:
    """The run's Config, with what depends on this machine filled in first: a bare --amp, --workers within the
    cores, the demo's generated data, the default output folder."""
    given, flags_now = dict(given), {**below, **given}
    given["workers"], note = data.cap_workers(flags_now["workers"])
    if note:
        dist.print0(f"note: {note}")
    if flags_now["amp"] == "auto":
        given["amp"] = dist.auto_amp(info.device)
        if given["amp"] == "none":
            dist.print0(f"note: --amp on {info.device.type}: no autocast (fp32), as bf16 autocast is many times "
                        f"slower on CPUs without native bf16; --amp bf16 forces it.")
    if flags_now["data"] is None and flags_now["recipe"] == "demo" and not flags_now["fake_data"]:
        from imnet.tools.demo import ensure_dataset
        given["data"] = str(ensure_dataset())
    if given.get("data", flags_now["data"]) is None and not flags_now["fake_data"]:
        raise ConfigError("No data: pass --data ROOT, where ROOT holds train/<class>/*.JPEG and val/<class>/*.JPEG "
                          "(the ImageNet layout), or --fake-data for a throughput run, or run with no arguments "
                          "for the demo.")
    given["output"] = output_folder(flags_now)
    return config.resolve(below, given, info.world_size)


def output_folder(flags_now: dict) -> str:
    return flags_now["output"] or str(Path("runs") / (flags_now["recipe"] or flags_now["model"]))


def build_datasets(cfg: Config):
    """-> (classes, train set, val set)."""
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
    with refused():
        train_tf = train_transform(crop_size=cfg.train_crop_size, scale=cfg.crop_scale,
                                   interpolation=cfg.train_interpolation or cfg.interpolation,
                                   auto_augment=cfg.auto_augment, ra_num_ops=cfg.ra_num_ops,
                                   ra_magnitude=cfg.ra_magnitude)
    return (classes, data.ImageFolder(train_dir, classes, train_tf, seed=cfg.seed, crop_size_at=size_at),
            data.ImageFolder(val_dir, classes, cfg.eval_policy.transform(), seed=cfg.seed))


def build_loaders(cfg: Config, info, train_set, val_set, cleanup: contextlib.ExitStack):
    """-> (train sampler, train loader, val loader). The workers ignore the stop signals (this process decides), so
    ``cleanup`` shuts them down however the run ends."""
    sampler = data.TrainSampler(len(train_set), info.world_size, info.rank, seed=cfg.seed, drop_last=True,
                                repeats=cfg.ra_reps)
    if cfg.steps_per_epoch < 1:
        raise ConfigError(f"One epoch has fewer than one optimizer step: {len(sampler)} images per process, batch "
                          f"{cfg.batch_size} x accum {cfg.accum_steps}. Lower the batch or accumulation.")
    pin = info.device.type == "cuda"
    train_loader = data.build_loader(train_set, sampler, cfg.batch_size, cfg.workers, pin_memory=pin, drop_last=True,
                                     preemptible=True)
    val_loader = data.build_loader(val_set, data.EvalSampler(len(val_set), info.world_size, info.rank),
                                   cfg.batch_size, cfg.workers, pin_memory=pin, preemptible=True)
    cleanup.callback(data.shutdown_workers, val_loader)
    cleanup.callback(data.shutdown_workers, train_loader)
    return sampler, train_loader, val_loader


def build_model(cfg: Config, num_classes: int, info) -> nn.Module:
    if cfg.sync_bn and info.distributed and info.device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA (torch's SyncBatchNorm refuses CPU tensors). On the CPU, drop "
                          "--sync-bn or use a BatchNorm-free model such as convnext_tiny.")
    with refused():
        model = models.build_model(cfg.model, num_classes, drop_path=cfg.drop_path, image_size=cfg.train_crop_size)
    if cfg.sync_bn and info.distributed:  # SyncBatchNorm normalises over the batches of all processes
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:  # at the smallest training crop, epoch 0's
        check_batchnorm_batch(model, cfg.model, cfg.batch_size, cfg.train_size_at(0))
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def check_batchnorm_batch(model: nn.Module, name: str, batch: int, size: int) -> None:
    """Refuse a batch whose training forward gives a BatchNorm one value per channel (torch's ValueError): batch x
    height x width = 1, so batch 1 only, tried on a copy of the fresh model (its buffers and the RNG untouched)."""
    if batch > 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            copy.deepcopy(model).train()(torch.zeros(batch, 3, size, size))
        except ValueError as e:
            if "more than 1 value per channel" not in str(e):
                raise
            raise ConfigError(f"{name} at {size} px with --batch-size {batch} leaves a BatchNorm layer one value "
                              f"per channel, which it cannot normalise in training. Use a larger --batch-size or "
                              f"training crop.") from None


def init_weights(cfg: Config, model: nn.Module, classes: list, info) -> dict:
    """--init-from / --weights into the fresh model (`models.load_init`) -> what the log says. Under torchrun, rank 0
    downloads --weights into torchvision's cache first; the others then read that file."""
    with dist.main_rank_first(info, needed=cfg.weights is not None), refused():
        state, source_classes, source = models.init_source(cfg.init_from, cfg.weights, cfg.model, cfg.init_ema,
                                                           progress=not cfg.quiet)
        done = models.load_init(models.unwrap(model), cfg.model, state, cfg.train_crop_size, source_classes, classes)
    return {"source": source, **done}


def build_param_groups(cfg: Config, model: nn.Module) -> list[dict]:
    """The optimizer's parameter groups (`imnet.optim`); with --layer-decay one per (layer, decay or not)."""
    if cfg.layer_decay is not None:
        with refused(f"--layer-decay {cfg.layer_decay} with {cfg.model}: "):  # a model without numbered blocks
            return layer_decay_groups(models.unwrap(model), cfg.weight_decay, cfg.layer_decay, cfg.no_decay_on)
    return param_groups(model, cfg.weight_decay, cfg.no_decay_on)


def build_parts(cfg: Config, model: nn.Module, groups: list[dict], num_classes: int, info,
                teacher: nn.Module | None = None) -> Parts:
    """The objects the steps act on, the model not wrapped yet (`wrap`); the teacher never is (it takes no
    gradient)."""
    if cfg.opt in ("lars", "lamb"):  # over the same groups: no decay and no trust ratio where wd is 0 (lars.py)
        with refused(f"--opt {cfg.opt}: "):
            optimizer = LARS(groups, lr=cfg.peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             nesterov=cfg.nesterov) if cfg.opt == "lars" else \
                LAMB(groups, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = build_optimizer(cfg.opt, groups, lr=cfg.peak_lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, nesterov=cfg.nesterov, eps=cfg.opt_eps)
    return Parts(
        model=model, train_model=model, eval_model=model, optimizer=optimizer, device=info.device,
        rank=info.rank, scaler=torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None,
        sam=SAM(optimizer, rho=cfg.sam, adaptive=cfg.sam_adaptive) if cfg.sam > 0 else None,
        ema=ModelEma(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup, every=cfg.ema_every,
                     copy_steps=cfg.warmup_steps if cfg.ema_copy_warmup else None) if cfg.ema else None,
        mixer=Mixer(num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                    switch_prob=cfg.switch_prob, label_smoothing=cfg.mix_label_smoothing) if cfg.mixing else None,
        swa=AveragedModel(model) if cfg.swa_start is not None else None,  # a copy on the model's device
        teacher=teacher)


def wrap(cfg: Config, parts: Parts, info) -> None:
    """DDP (which broadcasts rank 0's weights: every rank has restored the same ones before) and torch.compile
    around the model, once its state is restored."""
    if info.distributed:
        parts.train_model = nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    if cfg.compile:
        parts.train_model, parts.eval_model = torch.compile(parts.train_model), torch.compile(parts.model)


def start_notes(training: Training, train_set, val_set, unreadable_val: list) -> None:
    """What the run says before its first step: skipped folder entries, the validation files found unreadable at
    setup, the audit's notes, the one-line plan."""
    cfg, log = training.cfg, training.log
    for split, dataset in (("train", train_set), ("val", val_set)):
        if getattr(dataset, "skipped", None):
            log.event("skipped_files", echo=f"note: {split}/: {folders.describe_skipped(dataset.skipped)}",
                      split=split, count=len(dataset.skipped))
    for path, why in unreadable_val:
        shown = folders.display_path(path)
        log.event("bad_val_image", echo=f"warning: validation image {shown} cannot be read ({why}), so no evaluation "
                  f"is exact; repair or remove the file", path=shown)
    for note in audit.notes(cfg):
        log.print(f"note: {note}")
    log.print(f"imnet {imnet.__version__}: {cfg.model} on {cfg.world_size} x {training.info.device.type}, global "
              f"batch {cfg.global_batch_size}, lr {cfg.peak_lr:.4g}, {cfg.epochs} epochs x {cfg.steps_per_epoch} "
              f"steps -> {training.output}")


if __name__ == "__main__":
    sys.exit(main())
