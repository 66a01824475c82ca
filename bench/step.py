"""Training-step benchmark: imnet's full training step against a bare PyTorch loop, side by side.

Same model architecture and initial weights, same in-memory uint8 batches (no data loading), same device,
in one process. Each round runs every variant for ``--steps`` optimizer steps, in a rotating order, so a
noisy, shared machine slows them alike; the figures are medians over ``--rounds`` rounds, and the ratio is
the median of the per-round ratios (paired, so drift between rounds cancels). Also shown: the ratio of the
best rounds, and the ratio in CPU time of this process (not inflated by time spent descheduled).

* bare: ``to_device`` (uint8 -> normalized float, the same device-side normalization), forward,
  ``F.cross_entropy``, backward, ``torch.optim.SGD(model.parameters())`` step, ``zero_grad``.
* imnet (train_step): ``train.train_step`` with no recipe (no mixing, EMA, erasing, smoothing), driven as
  train.py's epoch loop drives it: per-step reseeding, LR schedule, parameter groups, device-side meter, NaN
  guard and loss window, a progress line every ``--log-every`` steps.
* imnet (full): the same plus the regularization of the resnet50 recipe: MixUp 0.2 / CutMix 1.0 with label
  smoothing 0.1 folded into soft targets, RandomErasing p 0.25, EMA every ``--ema-every`` steps (32, as in
  the recipe; ``--ema-every 1`` is the worst case), a console/JSONL progress line every ``--log-every``
  steps (written to a temporary folder).

Then each piece the full step adds is timed on its own (ms per step, and as a share of the bare step), so a
ratio under target says where the time goes. Pieces are the best of several repetitions (other processes
only ever add time).

    python bench/step.py [--model resnet18] [--size 64] [--batch-size 32] [--threads 2] [--rounds 9]
                         [--steps 5] [--devices cpu,cuda] [--ema-every 32] [--log-every 5]

The last line printed is a JSON object; ``step_ratio`` = imnet (full) img/s / bare img/s (the lowest over
the devices measured). Target: >= 0.95.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train  # noqa: E402
from imnet.run import config, flags, models, seeds  # noqa: E402
from imnet.run.data import to_device  # noqa: E402
from imnet.ema import ModelEma  # noqa: E402
from imnet.run.log import RunLog, peak_memory_gib, progress_line  # noqa: E402
from imnet.losses import cross_entropy  # noqa: E402
from imnet.metrics import Meter  # noqa: E402
from imnet.mixing import Mixer  # noqa: E402
from imnet.optim import build_optimizer, param_groups  # noqa: E402
from imnet.schedule import set_lr  # noqa: E402
from imnet.transforms import random_erase  # noqa: E402

LR, MOMENTUM, WD = 0.01, 0.9, 5e-5


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(n, batch, size, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, classes, (batch,), generator=g)
        if torch.cuda.is_available():
            images, labels = images.pin_memory(), labels.pin_memory()
        out.append((images, labels, ()))
    return out


def cycle(batches, n):
    for k in range(n):
        yield batches[k % len(batches)]


# ------------------------------------------------------------------------------------------ the variants

class Bare:
    name = "bare"

    def __init__(self, model, args, device):
        self.model, self.device, self.cl = model, device, args.channels_last
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def run(self, batches, steps, round_index):
        self.model.train()
        for images, labels, _ in cycle(batches, steps):
            x, y = to_device(images, labels, self.device, channels_last=self.cl)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


def make_config(args, full: bool, output: str):
    """The resolved Config train.py would build for this benchmark (train.py's own parser and resolver)."""
    below = vars(flags.build_parser().parse_args([]))
    given = dict(model=args.model, train_crop_size=args.size, batch_size=args.batch_size, epochs=1000,
                 num_classes=args.num_classes, channels_last=args.channels_last, opt="sgd", lr=LR, momentum=MOMENTUM,
                 weight_decay=WD, warmup_epochs=1, warmup_start_factor=0.01, data="unused", output=output,
                 log_every=args.log_every, quiet=True, amp=getattr(args, "amp", "none"))
    if full:  # the regularization of the resnet50 recipe
        given.update(mixup=0.2, cutmix=1.0, label_smoothing=0.1, random_erase=args.random_erase, ema=True,
                     ema_decay=0.9998, ema_every=args.ema_every)
    cfg = config.resolve(below, given, world_size=1)
    return cfg.with_data(train_images=100 * cfg.global_batch_size, val_images=1, classes=args.num_classes)


class Imnet:
    """train.py's inner loop: train.train_step, then its per-step bookkeeping on the device (NaN guard, loss
    window) and a progress line every ``log_every`` steps (the only host synchronisation)."""

    def __init__(self, name, model, args, device, full, compiled=False):
        self.name, self.args = name, args
        self.tmp = tempfile.TemporaryDirectory(prefix="imnet-bench-step-")
        self.cfg = cfg = make_config(args, full, self.tmp.name)
        groups = param_groups(model, WD)
        optimizer = build_optimizer("sgd", groups, lr=cfg.peak_lr, weight_decay=WD, momentum=MOMENTUM)
        self.parts = train.Parts(
            model=model, train_model=torch.compile(model) if compiled else model, eval_model=model,
            optimizer=optimizer, device=device,
            mixer=Mixer(args.num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                        switch_prob=cfg.switch_prob, label_smoothing=cfg.mix_label_smoothing) if cfg.mixing else None,
            ema=ModelEma(model, decay=cfg.ema_decay, every=cfg.ema_every) if cfg.ema else None)
        self.meter = Meter(device)
        self.guard = train.NonFiniteGuard(device)
        self.global_step = 0
        self.log = RunLog(self.tmp.name, quiet=True)  # the JSONL line is written; the console echo is not

    def log_step(self, epoch, step, loss, elapsed):  # what train.py's loop does at log time
        self.guard.check()
        img_s = self.args.log_every * self.cfg.global_batch_size / max(elapsed, 1e-9)
        lr, mem = self.cfg.lr_at(self.global_step - 1), peak_memory_gib(self.parts.device)
        self.log.event("train", echo=progress_line(epoch, 1, step, self.args.steps, loss, lr, img_s, 0.0, 0.0, mem),
                       epoch=epoch, step=step, global_step=self.global_step, loss=loss, lr=lr, img_per_s=img_s,
                       data_share=0.0, grad_norm=None, peak_mem_gib=mem)

    def run(self, batches, steps, round_index):
        self.meter.reset()
        self.parts.train_model.train()
        window, t0 = torch.zeros((), device=self.parts.device), time.perf_counter()
        for step, (images, labels, _) in enumerate(cycle(batches, steps)):
            loss, _ = train.train_step(self.cfg, self.parts, [(images, labels)], round_index, step,
                                        self.global_step, self.meter)
            self.guard.update(loss, self.global_step)
            window += loss
            self.global_step += 1
            if (step + 1) % self.args.log_every == 0:
                self.log_step(round_index, step + 1, (window / self.args.log_every).item(), time.perf_counter() - t0)
                window, t0 = torch.zeros((), device=self.parts.device), time.perf_counter()


def timed(fn, device):
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time is the steadier of the
    two: time spent descheduled while other processes run counts in the wall time only."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def compare(args, device, batches):
    torch.manual_seed(0)
    base = models.build_model(args.model, args.num_classes, image_size=args.size).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    variants = [Bare(copy.deepcopy(base), args, device),
                Imnet("imnet (train_step, no recipe)", copy.deepcopy(base), args, device, full=False),
                Imnet("imnet (full recipe)", copy.deepcopy(base), args, device, full=True)]
    for v in variants:  # warm up: allocator, oneDNN/cuDNN kernel choice, lazy optimizer state
        v.run(batches, args.warmup, 10**6)
    sync(device)
    seconds = {v.name: [] for v in variants}
    cpu = {v.name: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            wall, cpu_s = timed(lambda: v.run(batches, args.steps, r), device)
            seconds[v.name].append(wall)
            cpu[v.name].append(cpu_s)
    imgs = args.steps * args.batch_size
    rows = {}
    for v in variants:
        rates = [imgs / s for s in seconds[v.name]]
        rows[v.name] = dict(median=statistics.median(rates), min=min(rates), max=max(rates),
                            ms_per_step=1000 * statistics.median(seconds[v.name]) / args.steps)
    bare = seconds["bare"]
    full = seconds["imnet (full recipe)"]
    eng = seconds["imnet (train_step, no recipe)"]
    step_ratio = statistics.median(b / f for b, f in zip(bare, full))
    step_only_ratio = statistics.median(b / e for b, e in zip(bare, eng))
    extra = {"best_round_ratio": min(bare) / min(full),
             "cpu_time_ratio": statistics.median(b / f for b, f in zip(cpu["bare"], cpu["imnet (full recipe)"])),
             "cpu_ms_per_step": {k: 1000 * statistics.median(v) / args.steps for k, v in cpu.items()}}
    return rows, step_ratio, step_only_ratio, variants, extra


# ------------------------------------------------------------------------------------------ the pieces

def per_call_ms(fn, device, n, reps=7):
    """Best over reps of the mean time of n calls, in ms (the minimum: on a shared machine the other
    processes only ever add time, so the fastest repetition is the closest to the piece's own cost)."""
    fn()
    out = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        out.append(1000 * (time.perf_counter() - t) / n)
    return min(out)


def pieces(args, device, batches, variants):
    """ms per optimizer step of each piece the full imnet step adds to (or does differently from) the bare one."""
    full = variants[2]
    p = full.parts
    images, labels, _ = batches[0]
    x, y = to_device(images, labels, device, channels_last=args.channels_last)
    gen = torch.Generator().manual_seed(1)
    out = {}
    out["seeding (2 x seeds.derive + manual_seed + Generator)"] = per_call_ms(
        lambda: (torch.manual_seed(seeds.derive(seeds.DROPOUT, 0, 1, 2, 0)),
                 torch.Generator().manual_seed(seeds.derive(seeds.MIXING, 0, 1, 2, 0))), device, 200)
    out["  of which seeds.derive (numpy SeedSequence)"] = per_call_ms(lambda: seeds.derive(seeds.DROPOUT, 0, 1, 2, 0),
                                                                      device, 200)
    out["  of which torch.manual_seed"] = per_call_ms(lambda: torch.manual_seed(12345), device, 200)
    out["  of which torch.Generator().manual_seed"] = per_call_ms(lambda: torch.Generator().manual_seed(3), device, 200)
    xe = x.clone()
    out[f"random_erase p={args.random_erase}"] = per_call_ms(lambda: random_erase(xe, args.random_erase, generator=gen),
                                                             device, 20)
    mixer = p.mixer
    out["MixUp/CutMix + smoothed one-hot"] = per_call_ms(lambda: mixer(x, y, generator=gen), device, 20)
    mixed, soft = mixer(x, y, generator=gen)
    out["  (mixed batch keeps channels_last)"] = float(mixed.is_contiguous(memory_format=torch.channels_last))
    logits = torch.randn(args.batch_size, args.num_classes, device=device, requires_grad=True)

    def soft_loss():
        cross_entropy(logits, soft).backward()

    def hard_loss():
        F.cross_entropy(logits, y).backward()
    out["loss fwd+bwd: soft targets minus F.cross_entropy"] = per_call_ms(soft_loss, device, 50) - \
        per_call_ms(hard_loss, device, 50)
    meter = Meter(device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    window = torch.zeros((), device=device)
    loss = torch.tensor(2.0, device=device)
    dl = logits.detach()

    def bookkeeping():
        torch.where((first_bad < 0) & ~torch.isfinite(loss), torch.tensor(3, device=device), first_bad)
        meter.update(loss, dl, y, n=args.batch_size)  # train_step's no-recipe case (top-k counted)
        window.add_(loss)
    out["meter + NaN guard + window (device side)"] = per_call_ms(bookkeeping, device, 100)
    out["LR schedule (lr_at + set_lr)"] = per_call_ms(lambda: set_lr(p.optimizer, full.cfg.lr_at(1000)), device, 200)
    # Optimizer: imnet's two groups with foreach=True vs torch.optim.SGD(model.parameters()) defaults.
    model = copy.deepcopy(p.model)
    for q in model.parameters():
        q.grad = torch.randn_like(q) * 1e-3
    opt_imnet = build_optimizer("sgd", param_groups(model, WD), lr=LR, weight_decay=WD, momentum=MOMENTUM)
    opt_bare = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    out["optimizer.step: imnet groups minus bare SGD"] = per_call_ms(opt_imnet.step, device, 10) - \
        per_call_ms(opt_bare.step, device, 10)
    ema = ModelEma(model, decay=0.9998, every=1)
    ema_ms = per_call_ms(lambda: ema.update(model, 1), device, 10)
    out[f"EMA update (every={args.ema_every}, one update = {ema_ms:.2f} ms)"] = ema_ms / args.ema_every
    log_ms = per_call_ms(lambda: full.log_step(0, 1, 2.0, 1.0), device, 20)
    out[f"log line (every {args.log_every} steps; one = {log_ms:.2f} ms)"] = log_ms / max(args.log_every, 1)
    return out


# ------------------------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4, help="distinct in-memory uint8 batches, cycled")
    ap.add_argument("--ema-every", type=int, default=32,
                    help="EMA update period (32: the resnet50 recipe; 1: train.py's default with --ema)")
    ap.add_argument("--random-erase", type=float, default=0.25)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when not available")
    ap.add_argument("--no-pieces", action="store_true", help="skip the per-piece timings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    batches = make_batches(args.batches, args.batch_size, args.size, args.num_classes)
    result = {"model": args.model, "size": args.size, "batch_size": args.batch_size, "threads": args.threads,
              "channels_last": args.channels_last, "rounds": args.rounds, "steps": args.steps,
              "ema_every": args.ema_every, "random_erase": args.random_erase, "log_every": args.log_every,
              "torch": torch.__version__, "by_device": {}}
    for device in devices:
        rows, ratio, eng_ratio, variants, extra = compare(args, device, batches)
        print(f"\n{device.type}: {args.model} {args.size}px, batch {args.batch_size}, "
              f"{'channels_last' if args.channels_last else 'NCHW'} fp32, {args.threads} threads, "
              f"{args.rounds} rounds x {args.steps} steps, EMA every {args.ema_every}, log every {args.log_every}")
        print(f"  {'variant':<28}{'img/s median':>13}{'min':>9}{'max':>9}{'ms/step':>10}{'CPU ms/step':>13}")
        for name, r in rows.items():
            print(f"  {name:<28}{r['median']:>13.1f}{r['min']:>9.1f}{r['max']:>9.1f}{r['ms_per_step']:>10.1f}"
                  f"{extra['cpu_ms_per_step'][name]:>13.1f}")
        print(f"  step_ratio (full / bare, median of paired rounds)   {ratio:.3f}   target >= 0.95")
        print(f"  step_only_ratio (no recipe / bare)                     {eng_ratio:.3f}")
        print(f"  full / bare: best round {extra['best_round_ratio']:.3f}, CPU time {extra['cpu_time_ratio']:.3f} "
              f"(median of paired rounds)")
        entry = {"step_ratio": round(ratio, 4), "step_only_ratio": round(eng_ratio, 4),
                 "best_round_ratio": round(extra["best_round_ratio"], 4),
                 "cpu_time_ratio": round(extra["cpu_time_ratio"], 4),
                 "img_per_s": {k: round(v["median"], 2) for k, v in rows.items()},
                 "ms_per_step": {k: round(v["ms_per_step"], 2) for k, v in rows.items()}}
        if not args.no_pieces:
            bare_ms = rows["bare"]["ms_per_step"]
            pc = pieces(args, device, batches, variants)
            print(f"  pieces (ms per optimizer step; % of the bare step {bare_ms:.1f} ms):")
            for k, v in pc.items():
                if k.startswith("  (mixed"):
                    print(f"  {k:<60}{'yes' if v else 'NO'}")
                else:
                    print(f"  {k:<60}{v:>8.3f} ms {100 * v / bare_ms:>6.2f}%")
            entry["pieces_ms"] = {k.strip(): round(v, 4) for k, v in pc.items()}
        result["by_device"][device.type] = entry
    result["step_ratio"] = min(e["step_ratio"] for e in result["by_device"].values())
    result["step_only_ratio"] = min(e["step_only_ratio"] for e in result["by_device"].values())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
