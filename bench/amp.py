"""Mixed precision on this device: train.py's training step in fp32 against the same step under bf16 autocast.

Same model and initial weights, same in-memory uint8 batches, one process, driven as train.py drives its step
(`bench/step.py`'s ``Imnet`` variant with no recipe: ``train.train_step``, reseeding, LR schedule, meter, NaN
guard, a log line every ``--log-every`` steps); the only difference is ``--amp none`` against ``--amp bf16``.
Each round runs both for ``--steps`` steps, alternating which goes first; the ratio is the median of the
per-round ratios (paired, so drift between rounds cancels).

    python bench/amp.py [--sizes 32 64 112] [--model resnet18] [--batch-size 32] [--threads 2] [--rounds 5]
                        [--steps 4] [--device cpu]

Prints img/s of each and ``bf16_speedup`` = bf16 img/s / fp32 img/s per size; the last line is a JSON object.
It is the measurement behind the CPU default (`imnet.run.dist.auto_amp`): a speed-up below 1 on a CPU says fp32
is the faster choice there, above 1 that bf16 autocast pays (CPUs with native bf16: AVX512-BF16, AMX).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step import Imnet, make_batches, sync  # noqa: E402  (bench/step.py: train.py's loop around train_step)

from imnet.run import models  # noqa: E402


def measure(args, size: int, device: torch.device) -> dict:
    batches = make_batches(args.batches, args.batch_size, size, args.num_classes)
    torch.manual_seed(0)
    base = models.build_model(args.model, args.num_classes, image_size=size).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    variants = {}
    for amp in ("none", "bf16"):
        run_args = argparse.Namespace(**{**vars(args), "size": size, "amp": amp})
        variants[amp] = Imnet(amp, copy.deepcopy(base), run_args, device, full=False)
    for v in variants.values():  # warm up: allocator, oneDNN kernel choice, lazy optimizer state
        v.run(batches, args.warmup, 10**6)
    seconds = {amp: [] for amp in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for amp in order:
            sync(device)
            t = time.perf_counter()
            variants[amp].run(batches, args.steps, r)
            sync(device)
            seconds[amp].append(time.perf_counter() - t)
    imgs = args.steps * args.batch_size
    return {"fp32_img_per_s": round(statistics.median(imgs / s for s in seconds["none"]), 1),
            "bf16_img_per_s": round(statistics.median(imgs / s for s in seconds["bf16"]), 1),
            "bf16_speedup": round(statistics.median(f / b for f, b in zip(seconds["none"], seconds["bf16"])), 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 112])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per variant per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2, help="distinct in-memory uint8 batches, cycled")
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    args.ema_every, args.random_erase = 1, 0.0  # (no recipe: unused, but the shared driver reads them)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"{device.type} ({capability}): {args.model}, batch {args.batch_size}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"  {'size':>5}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16 speed-up':>15}")
    result = {"model": args.model, "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
              "capability": capability, "torch": torch.__version__, "by_size": {}}
    for size in args.sizes:
        r = measure(args, size, device)
        result["by_size"][size] = r
        print(f"  {size:>5}{r['fp32_img_per_s']:>12.1f}{r['bf16_img_per_s']:>12.1f}{r['bf16_speedup']:>14.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
