"""Shared fixtures: small generated ImageFolder trees with a learnable signal."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def signal_at(moments: str) -> list:
    """The command line that runs train.py and signals its own process group at ``moments`` (tests/signal_at.py;
    start it with start_new_session=True)."""
    return [sys.executable, str(REPO / "tests" / "signal_at.py"), moments]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # train.py and eval.py live at the repository root

# A few threads per test process: the machine has 2 cores and tests also start subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40), (160, 60, 200)]


def make_imagefolder(root: Path, num_classes: int = 3, train_per_class: int = 24, val_per_class: int = 7,
                     size: int = 40, seed: int = 0) -> Path:
    """train/ and val/ of JPEGs whose class is a colour blob on noise: a tiny CNN learns it in a few epochs."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = size + int(rng.integers(-4, 9)), size + int(rng.integers(-4, 9))
                img = rng.integers(0, 120, size=(h, w, 3)).astype(np.float32)
                cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
                yy, xx = np.mgrid[:h, :w]
                blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(h, w) * 0.35) ** 2
                img[blob] = 0.3 * img[blob] + 0.7 * np.array(COLOURS[c % len(COLOURS)], np.float32)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes, 72 train / 21 val images (val is odd-sized on purpose)."""
    return make_imagefolder(tmp_path_factory.mktemp("tiny_data"))


def random_resnet(seed):
    """A resnet18 for 3 classes with random weights and non-trivial BatchNorm statistics.

    Fresh BatchNorm running stats (mean 0, var 1) with random convolutions make nearly constant outputs;
    random statistics make the predictions vary from image to image, so comparisons of predictions mean something.
    """
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def parse_table(md: str, after: str | None = None) -> dict[str, dict[str, str]]:
    """The first markdown table whose header starts with "| recipe |" (after the line ``after``, if given):
    {recipe: {column: cell}}; every row must have the header's number of cells."""
    lines = md[md.index(after):].splitlines() if after else md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def assert_same_state(a: dict, b: dict) -> None:
    """Two train.py checkpoints hold bitwise the same weights, EMA (weights and update count, or none in
    both), optimizer state and step."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model.{k} differs"
    assert (a["state_dict_ema"] is None) == (b["state_dict_ema"] is None)
    if a["state_dict_ema"] is not None:
        assert a["state_dict_ema"].keys() == b["state_dict_ema"].keys()
        for k in a["state_dict_ema"]:
            assert torch.equal(a["state_dict_ema"][k], b["state_dict_ema"][k]), f"ema.{k} differs"
        assert int(a["model_ema"]["n_averaged"]) == int(b["model_ema"]["n_averaged"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer state {i}.{k} differs"
    assert a["global_step"] == b["global_step"]
