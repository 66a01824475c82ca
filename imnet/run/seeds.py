"""Seeds: every random stream of a run, from a tuple of integers (purpose, run seed, where in the run), never from
the state of a previous draw, so a resumed run replays no RNG history. numpy's SeedSequence pads short entropy
with zeros ([1, 2] = [1, 2, 0]): the purpose and length words in front keep every stream apart. 63 bits make a
seed valid for any RNG.
"""

from __future__ import annotations

import numpy as np

# The purposes, one per stream.
SHUFFLE = 1     # (seed, epoch): the epoch's permutation of the training set (data.TrainSampler)
AUGMENT = 2     # (seed, epoch, index, attempt, repeat): one sample's augmentation (data.ImageFolder)
DROPOUT = 3     # (seed, epoch, micro_step, rank): torch's global RNG in a micro-step (train.train_step)
MIXING = 4      # (seed, epoch, micro_step, rank): the CPU generator of erasing and mixing (train.train_step)


def derive(purpose: int, *words: int) -> int:
    if any(int(w) < 0 for w in words):
        raise ValueError(f"seed words must be non-negative integers, got {words}")
    entropy = [int(purpose), len(words), *(int(w) for w in words)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) >> 1
