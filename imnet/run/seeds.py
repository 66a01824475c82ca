"""Seeds: every random stream of a run, derived in one place from (purpose, run seed, where in the run).

A run needs several independent streams: the order of an epoch, the augmentation of each sample, and, for each
micro-step, torch's global RNG (dropout, stochastic depth) and a CPU generator (RandomErasing, MixUp/CutMix).
Each is seeded from a tuple of integers, never from the state left by the previous draw, so that a resumed run
(or another number of workers or ranks) draws the same numbers without replaying any RNG history.

    derive(purpose, *words) = SeedSequence([purpose, len(words), *words]).generate_state(1, uint64)[0] >> 1

numpy's SeedSequence hashes the whole tuple into well-mixed state words (the seed-derivation scheme of O'Neill's
PCG work), so neighbouring tuples give unrelated streams. It pads short entropy with zeros, so [1, 2] and
[1, 2, 0] would be the same seed; the purpose word and the length word in front make every purpose, and every
length within a purpose, a disjoint part of the input space: two streams that should be independent can never
receive the same seed (tests/test_seeds.py checks a grid of arguments). 63 bits are kept so that the result is
a valid non-negative seed for any RNG. Cost: ~30 us per call.
"""

from __future__ import annotations

import numpy as np

# The purposes, one per stream.
SHUFFLE = 1     # (seed, epoch): the epoch's permutation of the training set (data.TrainSampler)
AUGMENT = 2     # (seed, epoch, index, attempt, repeat): one sample's augmentation (data.ImageFolder)
DROPOUT = 3     # (seed, epoch, micro_step, rank): torch's global RNG in a micro-step (train.train_step)
MIXING = 4      # (seed, epoch, micro_step, rank): the CPU generator of erasing and mixing (train.train_step)
PURPOSES = {"shuffle": SHUFFLE, "augment": AUGMENT, "dropout": DROPOUT, "mixing": MIXING}


def derive(purpose: int, *words: int) -> int:
    """A 63-bit seed from ``purpose`` (one of the constants above) and non-negative integers (see the module
    docstring)."""
    if any(int(w) < 0 for w in words):
        raise ValueError(f"seed words must be non-negative integers, got {words}")
    entropy = [int(purpose), len(words), *(int(w) for w in words)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) >> 1
