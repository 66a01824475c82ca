"""imnet.run.seeds: one derivation for every random stream; no two purposes (or two places of one purpose) share a
seed, and a seed depends only on its arguments."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from conftest import REPO
from imnet.run import seeds
from imnet.run.data import augment_seed


def grid() -> dict:
    """Every stream's seed over a grid of arguments, as train.py and data.py ask for them."""
    out = {}
    small = range(4)
    for seed, epoch in itertools.product(small, small):
        out[("shuffle", seed, epoch)] = seeds.derive(seeds.SHUFFLE, seed, epoch)
        for a, b in itertools.product(range(6), range(3)):  # (micro-step, rank) or (index, attempt)
            out[("dropout", seed, epoch, a, b)] = seeds.derive(seeds.DROPOUT, seed, epoch, a, b)
            out[("mixing", seed, epoch, a, b)] = seeds.derive(seeds.MIXING, seed, epoch, a, b)
            for repeat in range(2):
                out[("augment", seed, epoch, a, b, repeat)] = augment_seed(seed, epoch, a, b, repeat)
    return out


def test_no_two_streams_share_a_seed():
    values = grid()
    assert len(set(values.values())) == len(values)
    assert all(0 <= v < 2**63 for v in values.values())
    # The collision of the former derivations: a micro-step's seed of (seed 2, epoch 2, step 5, rank 1) was the
    # augmentation seed of (seed 2, epoch 5, index 1, attempt 1).
    assert seeds.derive(seeds.DROPOUT, 2, 2, 5, 1) != augment_seed(2, 5, 1, attempt=1)
    assert seeds.derive(seeds.MIXING, 2, 2, 5, 1) != augment_seed(2, 5, 1, attempt=1)


def test_the_length_is_part_of_the_input():
    """SeedSequence pads short entropy with zeros; the derivation must not."""
    import numpy as np
    pad = lambda words: int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
    assert pad([1, 2]) == pad([1, 2, 0])  # why the length word is there
    assert seeds.derive(seeds.SHUFFLE, 1, 2) != seeds.derive(seeds.SHUFFLE, 1, 2, 0)
    purposes = (seeds.SHUFFLE, seeds.AUGMENT, seeds.DROPOUT, seeds.MIXING)
    assert len(set(purposes)) == len(purposes)
    with pytest.raises(ValueError):
        seeds.derive(seeds.SHUFFLE, -1, 0)


def test_a_seed_depends_only_on_its_arguments():
    """The same arguments give the same seed in another interpreter (no hidden state: hash randomisation,
    global RNGs)."""
    code = ("from imnet.run import seeds; from imnet.run.data import augment_seed; "
            "print(seeds.derive(seeds.DROPOUT, 3, 1, 7, 1), augment_seed(3, 1, 7, 2, 1))")
    here = f"{seeds.derive(seeds.DROPOUT, 3, 1, 7, 1)} {augment_seed(3, 1, 7, 2, 1)}"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == here.split()
