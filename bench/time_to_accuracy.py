"""Time to accuracy: the plain recipe against the fast one (progressive resolution, optionally --compile),
trained one after the other by train.py on a real ImageFolder dataset.

Both runs are the same recipe (model, optimizer, schedule, epochs unless ``--plain-epochs``, augmentation,
evaluation policy, seed) except that the fast one trains at a low resolution first and ramps up to the plain
run's size (``--progressive-res START SIZE --progressive-epochs FROM TO``, FFCV's schedule; imnet.schedule),
and with ``--compile`` also compiles the model. Both evaluate once, after the last epoch, with the same centre crop
(``--val-size``, by default 1.25x the final training size: evaluating above the training size is what
RandomResizedCrop training calls for, Touvron et al. 2019, and applies to both runs alike).

Wall time is the whole train.py process, start-up and the final evaluation included (``plain_s``,
``fast_s``); ``epochs_s`` is the sum of the epochs' training times, ``cpu_s`` the CPU seconds of train.py and
its loader workers (steadier than wall time when other processes share the machine). The runs are
sequential, so on a shared machine a change of load between them shows in the ratio: run it on a quiet
machine, and read the ratio with the top-1 difference, which itself has a sampling noise of about
100 * sqrt(p (1 - p) / val images) points (0.8 points on Imagenette's 3,925 val images at p = 0.6).

    python bench/time_to_accuracy.py --data /data/imagenette [--epochs 10] [--size 112] [--start 64]
        [--progressive-epochs 4 9] [--val-size 144] [--train-per-class 200] [--seeds 0 1 2] [--compile]

The JSON's ``epoch_time_share_by_size`` gives, for each size of the ramp, the time of a training epoch at that
size over one of the plain run, beside the FLOPs share (size / END)^2: what the clock really saves. On a CPU a
small step is dominated by per-layer overheads, so tiny sizes save less time than FLOPs; with a 32 -> 64 ramp
(ResNet-18, batch 64, 2 threads) an epoch at 32 px took 0.40 of a 64 px epoch for 0.25 of the FLOPs, one at
48 px 0.82 for 0.56. Hence the defaults 64 -> 112 (an epoch at 64 px: about 0.47 of a 112 px one for 0.33 of
the FLOPs).

``--plain-epochs N`` shortens the plain run (default: as many epochs as the fast one), which asks the practical
question the other way round: with about the fast run's time, which of the two should one run?

``--train-per-class N`` trains on a class-balanced subset (the first N files of every class, by name,
linked into a temporary tree) so that a CPU run takes minutes; the validation set is used whole unless
``--val-per-class`` is given. ``--seeds 0 1 2`` repeats the pair with each seed (plain, fast, plain, fast,
...): the seed draws the initial weights, the crops and the batch order, and between seeds a short run's
top-1 moves by more than the 0.5-point target, so one pair alone does not settle it. The figures reported are
means over the seeds (the per-seed ones are in the JSON); time_ratio is the total fast time over the total
plain time. The last line printed is a JSON object with plain_top1, fast_top1, plain_s, fast_s and
time_ratio = fast_s / plain_s. Target: fast_top1 >= plain_top1 - 0.5 at time_ratio <= 0.75.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from imnet.run.folders import check_data_root, list_images  # noqa: E402
from imnet.schedule import progressive_size  # noqa: E402


def subset_tree(root: Path, out: Path, train_per_class: int | None, val_per_class: int | None) -> Path:
    """A tree of symbolic links to the first N images of every class of train/ (and val/), by file name."""
    _, _, classes = check_data_root(root)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            files = [root / split / c / rel for rel in list_images(root / split / c)]
            if n is not None:
                files = files[:n]
            d = out / split / c
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                (d / f.name).symlink_to(os.path.abspath(f))
    return out


def run(name: str, argv: list[str], output: Path, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(REPO / "train.py"), *argv, "--output", str(output)]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of train.py and its loader workers: steadier than wall time on a shared machine.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if r.returncode != 0:
        sys.exit(f"{name} run failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    with open(output / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    top1 = float(rows[-1]["val_top1"])
    train_s = sum(float(r["epoch_time"]) for r in rows)
    sizes = [int(r["train_size"]) for r in rows]
    by_size: dict[int, list[float]] = {}  # epoch times without an evaluation in them
    for r in rows:
        if not r["val_top1"]:
            by_size.setdefault(int(r["train_size"]), []).append(float(r["epoch_time"]))
    print(f"[{name}] top-1 {top1:.2f}%  wall {wall:.1f} s  (epochs {train_s:.1f} s)  CPU {cpu:.1f} s  "
          f"train sizes {sizes}", flush=True)
    return {"top1": top1, "wall_s": wall, "epochs_s": train_s, "cpu_s": cpu, "train_sizes": sizes,
            "epoch_s_by_size": {k: sum(v) / len(v) for k, v in by_size.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--plain-epochs", type=int, default=None,
                    help="the plain run's epochs (default --epochs); fewer compare the two at about equal time")
    ap.add_argument("--size", type=int, default=112, help="the plain run's training size = the fast run's END")
    ap.add_argument("--start", type=int, default=64, help="the fast run's START size")
    ap.add_argument("--progressive-epochs", type=int, nargs=2, default=None, metavar=("FROM", "TO"),
                    help="the fast run's ramp (default: from 40%% to 90%% of the epochs)")
    ap.add_argument("--val-size", type=int, default=None, help="evaluation centre crop (default 1.25 x --size)")
    ap.add_argument("--compile", action="store_true", help="the fast run also uses --compile")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=None, help="class-balanced training subset")
    ap.add_argument("--val-per-class", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each train.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one plain/fast pair per seed")
    ap.add_argument("--keep", default=None, help="folder for the runs' outputs (default: a temporary one)")
    args = ap.parse_args(argv)

    plain_epochs = args.plain_epochs or args.epochs
    first, last = args.progressive_epochs or (round(0.4 * args.epochs), round(0.9 * args.epochs))
    val_crop = args.val_size or 16 * round(1.25 * args.size / 16)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="imnet-tta-"))
    data = Path(args.data)
    if args.train_per_class is not None or args.val_per_class is not None:
        data = subset_tree(Path(args.data), work / "data", args.train_per_class, args.val_per_class)
    recipe = ["--data", str(data), "--model", args.model,
              "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--opt", "sgd", "--momentum", "0.9",
              "--weight-decay", "5e-5", "--label-smoothing", "0.1", "--warmup-epochs", str(args.warmup_epochs),
              "--crop-scale", "0.25", "1", "--channels-last", "--val-crop-size", str(val_crop),
              "--val-resize-size", str(int(val_crop / 0.875)), "--eval-every", "0", "--workers", str(args.workers),
              "--quiet", "--log-every", "1000"]
    fast_flags = ["--epochs", str(args.epochs), "--progressive-res", str(args.start), str(args.size),
                  "--progressive-epochs", str(first), str(last)]
    if args.compile:
        fast_flags.append("--compile")
    sizes = [progressive_size(e, args.start, args.size, first, last) for e in range(args.epochs)]
    flops = sum(s * s for s in sizes) / (plain_epochs * args.size ** 2)
    print(f"fast run: train sizes {sizes}, ~{100 * flops:.1f}% of the plain run's training FLOPs", flush=True)

    plain, fast = [], []
    for seed in args.seeds:
        seeded = recipe + ["--seed", str(seed)]
        plain_flags = ["--epochs", str(plain_epochs), "--train-crop-size", str(args.size)]
        plain.append(run(f"plain seed {seed}", seeded + plain_flags, work / f"seed{seed}" / "plain", args.threads))
        fast.append(run(f"fast seed {seed}", seeded + fast_flags, work / f"seed{seed}" / "fast", args.threads))

    def mean(runs, key):
        return sum(r[key] for r in runs) / len(runs)

    def total(runs, key):
        return sum(r[key] for r in runs)

    def epoch_s(runs, size):  # mean time of an epoch at ``size`` (None if no run has one without evaluation)
        times = [r["epoch_s_by_size"][size] for r in runs if size in r["epoch_s_by_size"]]
        return sum(times) / len(times) if times else None

    result = {"data": args.data, "train_per_class": args.train_per_class, "val_per_class": args.val_per_class,
              "model": args.model, "epochs": args.epochs, "plain_epochs": plain_epochs, "size": args.size,
              "start": args.start, "progressive_epochs": [first, last], "val_crop": val_crop, "compile": args.compile,
              "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": args.warmup_epochs,
              "threads": args.threads, "workers": args.workers, "seeds": args.seeds, "flops_share": round(flops, 4),
              "plain_top1": round(mean(plain, "top1"), 3), "fast_top1": round(mean(fast, "top1"), 3),
              "plain_s": round(mean(plain, "wall_s"), 1), "fast_s": round(mean(fast, "wall_s"), 1),
              "plain_epochs_s": round(mean(plain, "epochs_s"), 1), "fast_epochs_s": round(mean(fast, "epochs_s"), 1),
              "time_ratio": round(total(fast, "wall_s") / total(plain, "wall_s"), 4),
              "plain_cpu_s": round(mean(plain, "cpu_s"), 1), "fast_cpu_s": round(mean(fast, "cpu_s"), 1),
              "cpu_time_ratio": round(total(fast, "cpu_s") / total(plain, "cpu_s"), 4),
              "plain_top1_per_seed": [r["top1"] for r in plain], "fast_top1_per_seed": [r["top1"] for r in fast],
              "time_ratio_per_seed": [round(f["wall_s"] / p["wall_s"], 4) for p, f in zip(plain, fast)]}
    result["top1_diff"] = round(result["fast_top1"] - result["plain_top1"], 2)
    # What an epoch at each size of the ramp costs on the clock against a plain epoch, beside its FLOPs share.
    end_s = epoch_s(plain, args.size)
    if end_s is not None:
        result["epoch_time_share_by_size"] = {
            str(k): {"clock": round(epoch_s(fast, k) / end_s, 3), "flops": round((k / args.size) ** 2, 3)}
            for k in sorted({k for r in fast for k in r["epoch_s_by_size"]})}
    result["target_met"] = result["top1_diff"] >= -0.5 and result["time_ratio"] <= 0.75
    over = f" (means over {len(args.seeds)} seeds)" if len(args.seeds) > 1 else ""
    print(f"plain: top-1 {result['plain_top1']:.2f}% in {result['plain_s']:.1f} s; fast: top-1 "
          f"{result['fast_top1']:.2f}% in {result['fast_s']:.1f} s{over}; time ratio {result['time_ratio']:.3f} "
          f"(target <= 0.75 within 0.5 points)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
