"""The training sampler's epoch start: time to the first index of an epoch, numpy order against lists.

ImageNet size by default (1,281,167 images, 8 ranks, --ra-reps 4): imnet's ``TrainSampler`` (a permutation and
this rank's positions in numpy) against the same order built as Python lists of (index, repeat) tuples, checked
equal on their first 1,000 items. Best of ``--rounds``, rank 0.

    python bench/epoch_order.py [--samples 1281167 --ranks 8 --reps 4 --rounds 3]

The last line printed is a JSON object with the figures.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imnet.run import seeds  # noqa: E402
from imnet.run.data import TrainSampler  # noqa: E402


def list_order(n, replicas, rank, seed, epoch, reps):
    """The order as Python lists (drop_last), what the sampler built before the numpy one."""
    generator = torch.Generator().manual_seed(seeds.derive(seeds.SHUFFLE, seed, epoch))
    order = [(i, k) for i in torch.randperm(n, generator=generator).tolist() for k in range(reps)]
    return iter((order * 2)[:n // replicas * replicas][rank::replicas])


def best_time(first_item, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        item = first_item()
        times.append(time.perf_counter() - t)
    return min(times), item


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1281167)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sampler = TrainSampler(args.samples, args.ranks, 0, seed=0, repeats=args.reps)
    sampler.set_epoch(1)
    numpy_s, _ = best_time(lambda: next(iter(sampler)), args.rounds)
    lists_s, _ = best_time(lambda: next(list_order(args.samples, args.ranks, 0, 0, 1, args.reps)), args.rounds)
    head = [(key[0], key[-1] if args.reps > 1 else 0) for _, key in zip(range(1000), sampler)]
    same = head == [key for _, key in zip(range(1000), list_order(args.samples, args.ranks, 0, 0, 1, args.reps))]
    print(f"first index of an epoch, {args.samples:,} images, {args.ranks} ranks, --ra-reps {args.reps}: "
          f"numpy {numpy_s:.3f} s, lists {lists_s:.3f} s ({lists_s / numpy_s:.0f}x); same order: {same}")
    print(json.dumps({"numpy_s": round(numpy_s, 4), "lists_s": round(lists_s, 4), "same_order": same,
                      "samples": args.samples, "ranks": args.ranks, "reps": args.reps}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
