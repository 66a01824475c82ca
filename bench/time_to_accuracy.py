"""Time to accuracy: the plain recipe against the fast one (progressive resolution, optionally --compile),
trained one after the other by train.py on a real ImageFolder dataset.

Both runs are the same recipe (model, optimizer, schedule, epochs, augmentation, evaluation policy, seed)
except that the fast one trains at a low resolution first and ramps up to the plain run's size
(``--progressive-res START SIZE --progressive-epochs FROM TO``, FFCV's schedule; imnet.schedule), and with
``--compile`` also compiles the model. Both evaluate once, after the last epoch, with the same centre crop
(``--val-size``, by default 1.25x the final training size: evaluating above the training size is what
RandomResizedCrop training calls for, Touvron et al. 2019, and applies to both runs alike).

Wall time is the whole train.py process, start-up and the final evaluation included (``plain_s``,
``fast_s``); ``epochs_s`` is the sum of the epochs' training times, ``cpu_s`` the CPU seconds of train.py and
its loader workers (steadier than wall time when other processes share the machine). The two runs are sequential, so on a
shared machine a change of load between them shows in the ratio: run it on a quiet machine, and read the
ratio with the top-1 difference, which itself has a sampling noise of about
100 * sqrt(p (1 - p) / val images) points (0.7 points on Imagenette's 3,925 val images at p = 0.7).

    python bench/time_to_accuracy.py --data /data/imagenette [--epochs 10] [--size 64] [--start 32]
        [--progressive-epochs 4 9] [--val-size 80] [--train-per-class 500] [--compile]

``--train-per-class N`` trains on a class-balanced subset (the first N files of every class, by name,
linked into a temporary tree) so that a CPU run takes minutes; the validation set is used whole unless
``--val-per-class`` is given. The last line printed is a JSON object with plain_top1, fast_top1, plain_s,
fast_s and time_ratio = fast_s / plain_s. Target: fast_top1 >= plain_top1 - 0.5 at time_ratio <= 0.75.
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
from imnet.folders import check_data_root, list_images  # noqa: E402
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
    print(f"[{name}] top-1 {top1:.2f}%  wall {wall:.1f} s  (epochs {train_s:.1f} s)  CPU {cpu:.1f} s  "
          f"train sizes {sizes}", flush=True)
    return {"top1": top1, "wall_s": wall, "epochs_s": train_s, "cpu_s": cpu, "train_sizes": sizes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=64, help="the plain run's training size = the fast run's END")
    ap.add_argument("--start", type=int, default=32, help="the fast run's START size")
    ap.add_argument("--progressive-epochs", type=int, nargs=2, default=None, metavar=("FROM", "TO"),
                    help="the fast run's ramp (default: from 40%% to 90%% of the epochs)")
    ap.add_argument("--val-size", type=int, default=None, help="evaluation centre crop (default 1.25 x --size)")
    ap.add_argument("--compile", action="store_true", help="the fast run also uses --compile")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--train-per-class", type=int, default=None, help="class-balanced training subset")
    ap.add_argument("--val-per-class", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each train.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="folder for the two runs' outputs (default: a temporary one)")
    args = ap.parse_args(argv)

    first, last = args.progressive_epochs or (round(0.4 * args.epochs), round(0.9 * args.epochs))
    val_crop = args.val_size or 16 * round(1.25 * args.size / 16)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="imnet-tta-"))
    data = Path(args.data)
    if args.train_per_class is not None or args.val_per_class is not None:
        data = subset_tree(Path(args.data), work / "data", args.train_per_class, args.val_per_class)
    recipe = ["--data", str(data), "--model", args.model, "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--opt", "sgd", "--momentum", "0.9",
              "--weight-decay", "5e-5", "--label-smoothing", "0.1", "--warmup-epochs", "1",
              "--crop-scale", "0.25", "1", "--channels-last", "--val-crop-size", str(val_crop),
              "--val-resize-size", str(int(val_crop / 0.875)), "--eval-every", "0", "--workers", str(args.workers),
              "--seed", str(args.seed), "--quiet", "--log-every", "1000"]
    fast_flags = ["--progressive-res", str(args.start), str(args.size), "--progressive-epochs", str(first), str(last)]
    if args.compile:
        fast_flags.append("--compile")
    sizes = [progressive_size(e, args.start, args.size, first, last) for e in range(args.epochs)]
    flops = sum(s * s for s in sizes) / (len(sizes) * args.size ** 2)
    print(f"fast run: train sizes {sizes}, ~{100 * flops:.1f}% of the plain run's training FLOPs", flush=True)

    plain = run("plain", recipe + ["--train-crop-size", str(args.size)], work / "plain", args.threads)
    fast = run("fast", recipe + fast_flags, work / "fast", args.threads)
    result = {"data": args.data, "train_per_class": args.train_per_class, "val_per_class": args.val_per_class,
              "model": args.model, "epochs": args.epochs, "size": args.size, "start": args.start,
              "progressive_epochs": [first, last], "val_crop": val_crop, "compile": args.compile,
              "batch_size": args.batch_size, "threads": args.threads, "workers": args.workers,
              "flops_share": round(flops, 4),
              "plain_top1": plain["top1"], "fast_top1": fast["top1"],
              "plain_s": round(plain["wall_s"], 1), "fast_s": round(fast["wall_s"], 1),
              "plain_epochs_s": round(plain["epochs_s"], 1), "fast_epochs_s": round(fast["epochs_s"], 1),
              "time_ratio": round(fast["wall_s"] / plain["wall_s"], 4),
              "plain_cpu_s": round(plain["cpu_s"], 1), "fast_cpu_s": round(fast["cpu_s"], 1),
              "cpu_time_ratio": round(fast["cpu_s"] / plain["cpu_s"], 4),
              "top1_diff": round(fast["top1"] - plain["top1"], 2)}
    result["target_met"] = result["top1_diff"] >= -0.5 and result["time_ratio"] <= 0.75
    print(f"plain: top-1 {plain['top1']:.2f}% in {plain['wall_s']:.1f} s; fast: top-1 {fast['top1']:.2f}% in "
          f"{fast['wall_s']:.1f} s; time ratio {result['time_ratio']:.3f} (target <= 0.75 within 0.5 points)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
