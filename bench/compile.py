"""torch.compile for training, measured: compile time and steady-state step time against eager, side by side.

Two copies of the same model (same initial weights), each trained by ``train.train_step`` the way
train.py drives it (bench/step.py's ``Imnet`` variant, full recipe: MixUp/CutMix + label smoothing,
RandomErasing, EMA), one eager and one through ``torch.compile`` (what ``train.py --compile`` does), on the
same in-memory uint8 batches, in one process.

* compile time: the first compiled step at each size of ``--sizes`` minus the eager step time at that size
  (the first size compiles the graph; a second size recompiles, after which torch marks the spatial
  dimensions dynamic: what a progressive-resolution run meets at each new size);
* steady state: ``--rounds`` rounds of ``--steps`` steps of each, in alternating order, at the last size;
  ``speedup`` = median over rounds of eager time / compiled time (paired, so drift between rounds cancels);
* ``break_even_steps``: compile time / time saved per step (None when compiled steps are not faster).

    python bench/compile.py [--model resnet18] [--sizes 64] [--batch-size 32] [--threads 2] [--rounds 5]

The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import step  # noqa: E402  (bench/step.py: the batches, the timing helper and train.py's loop)
from imnet.run import models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64], help="image sizes, in order (the last is timed)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per variant per round")
    ap.add_argument("--ema-every", type=int, default=32)
    ap.add_argument("--random-erase", type=float, default=0.25)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    args.size = args.sizes[-1]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    base = models.build_model(args.model, args.num_classes, image_size=args.size).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    eager = step.Imnet("eager", copy.deepcopy(base), args, device, full=True)
    compiled = step.Imnet("compiled", copy.deepcopy(base), args, device, full=True, compiled=True)

    first_steps = []
    for size in args.sizes:
        batches = step.make_batches(2, args.batch_size, size, args.num_classes)
        eager_s = min(step.timed(lambda: eager.run(batches, 1, 0), device)[0] for _ in range(3))
        compile_s = step.timed(lambda: compiled.run(batches, 1, 0), device)[0]
        compiled.run(batches, 2, 0)  # settle (a second call may still specialise)
        first_steps.append({"size": size, "first_compiled_step_s": round(compile_s, 2),
                            "eager_step_s": round(eager_s, 3), "compile_s": round(compile_s - eager_s, 2)})
        print(f"size {size}: first compiled step {compile_s:.1f} s, eager step {eager_s:.3f} s -> compile "
              f"~{compile_s - eager_s:.1f} s", flush=True)

    times = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for v in ((eager, compiled) if r % 2 == 0 else (compiled, eager)):
            times[v.name].append(step.timed(lambda: v.run(batches, args.steps, r), device)[0])
    ms = {k: 1000 * statistics.median(v) / args.steps for k, v in times.items()}
    speedup = statistics.median(e / c for e, c in zip(times["eager"], times["compiled"]))
    saved_s = (ms["eager"] - ms["compiled"]) / 1000
    compile_total = sum(f["compile_s"] for f in first_steps)
    result = {"model": args.model, "sizes": args.sizes, "amp": args.amp, "batch_size": args.batch_size, "threads": args.threads,
              "device": device.type, "channels_last": args.channels_last, "torch": torch.__version__,
              "rounds": args.rounds, "steps": args.steps, "first_steps": first_steps,
              "compile_s": round(compile_total, 2),
              "eager_ms_per_step": round(ms["eager"], 2), "compiled_ms_per_step": round(ms["compiled"], 2),
              "speedup": round(speedup, 4),
              "break_even_steps": round(compile_total / saved_s) if saved_s > 0 else None}
    print(f"{args.model} {args.size}px batch {args.batch_size} on {device.type} ({args.threads} threads): eager "
          f"{ms['eager']:.1f} ms/step, compiled {ms['compiled']:.1f} ms/step, speedup {speedup:.3f} (median of "
          f"{args.rounds} paired rounds); compile {compile_total:.1f} s; break-even after "
          f"{result['break_even_steps']} steps")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
