"""Real multi-process runs on the CPU (gloo): DDP equivalence, accumulation, multi-node launch, exact
distributed evaluation, SWA, and the --sync-bn refusal. Each run is a few SGD steps of a BatchNorm-free model
(the SWA test also resumes a ResNet-18 to compare the BatchNorm statistics of the average).

torch's SyncBatchNorm refuses CPU tensors, so the equivalence is proven with convnext_tiny (LayerNorm) and
--drop-path 0 (docs/guarantees.md, "What the tests prove"): plain DDP over 2 processes with batch b must then equal one
process with batch 2b, because the sampler hands rank r the samples r, r+2, ... of each global batch and
each sample's augmentation depends only on (seed, epoch, index). "Equal" is measured on the weight updates
(`assert_same_updates`), tightly enough that a 0.5% error in the gradient's scale fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_imagefolder
from imnet.run import data as imdata
from imnet.run import config as imconfig
from imnet.run import evaluation, models
from imnet.run.config import EvalPolicy

COMMON = ["--model", "convnext_tiny", "--drop-path", "0", "--epochs", "1", "--train-crop-size", "32",
          "--val-crop-size", "32", "--val-resize-size", "36", "--opt", "sgd", "--lr", "0.01", "--momentum", "0.9",
          "--weight-decay", "1e-4", "--workers", "0", "--log-every", "3", "--seed", "5", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(extra: list[str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *extra, str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def two_processes(*args: str) -> subprocess.CompletedProcess:
    """train.py under torchrun, 2 processes on this machine (loopback); it must succeed."""
    r = torchrun(["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                  "--master_port", str(free_port())], *args)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ddata(tmp_path_factory) -> Path:
    # 48 train images -> 6 optimizer steps at global batch 8; 15 val images: odd, so 2 ranks get 8 and 7.
    return make_imagefolder(tmp_path_factory.mktemp("ddp_data"), num_classes=3, train_per_class=16,
                            val_per_class=5)


@pytest.fixture(scope="module")
def single(ddata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    r = python(*COMMON, "--data", str(ddata), "--batch-size", "8", "--output", str(out))
    assert r.returncode == 0, r.stderr
    return out


def weights(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]


def initial_weights(seed: int = 5, model: str = "convnext_tiny") -> dict:
    """train.py's initial weights: torch.manual_seed(--seed), then the model (nothing draws in between)."""
    torch.manual_seed(seed)
    return models.build_model(model, 3, **({"drop_path": 0.0} if model == "convnext_tiny" else {})).state_dict()


# What "2 processes = 1 process" means here: the two runs' weight updates (weights - initial weights) agree
# within REL of the update's norm, over all tensors together; each tensor within 10 x REL, plus the rounding of
# its fp32 weights (2^-24 of their norm: a tensor that barely moves cannot agree better than that). Over these 6
# SGD steps the summation orders (a sum over 8 samples vs two sums over 4 all-reduced) give updates that agree to
# ~1e-5 overall; a bug that scales the gradient of one path by 1 + 0.5% shows as 5e-3. (Weights compared
# directly would hide it: in 6 steps the weights move by well under 1% of their norm.)
REL = 1e-4


def assert_same_updates(a: dict, b: dict, init: dict, rel: float = REL) -> None:
    assert a.keys() == b.keys() == init.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    norm = lambda tensors: sum(t.double().norm().item() ** 2 for t in tensors) ** 0.5  # noqa: E731
    total_step = norm(b[k] - init[k] for k in floats)
    assert 0 < total_step < 0.5 * norm(init[k] for k in floats), "the weights moved, from these initial weights"
    total_diff = norm(a[k] - b[k] for k in floats)
    print(f"the updates differ by {total_diff / total_step:.2e} of their norm")
    assert total_diff <= rel * total_step, f"the updates differ by {total_diff / total_step:.2e} of their norm"
    moved = 0
    for k in floats:
        step, diff = (b[k] - init[k]).norm().item(), (a[k] - b[k]).norm().item()
        assert diff <= 10 * rel * step + 2 ** -24 * b[k].norm().item(), \
            f"{k}: the updates differ by {diff / max(step, 1e-30):.2e} of their norm"
        moved += step > 0
    assert moved > 100, "the weights actually moved: equality is not the trivial kind"


def assert_two_equal_one_with(extra: list[str], single: Path, ddata: Path, tmp_path: Path) -> None:
    """COMMON + ``extra`` on 1 process x 8 and on 2 processes x 4: the same updates. And the flags change the run:
    ``single`` is the 1-process run without them, and its updates differ by more than 10%."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = python(*COMMON, *extra, "--data", str(ddata), "--batch-size", "8", "--output", str(one))
    assert r.returncode == 0, r.stderr
    two_processes(*COMMON, *extra, "--data", str(ddata), "--batch-size", "4", "--output", str(two))
    assert_same_updates(weights(one), weights(two), initial_weights())
    with pytest.raises(AssertionError, match="the updates differ"):
        assert_same_updates(weights(single), weights(one), initial_weights(), rel=0.1)


def test_two_processes_equal_one_process_with_twice_the_batch(single, ddata, tmp_path):
    out = tmp_path / "ddp"
    two_processes(*COMMON, "--data", str(ddata), "--batch-size", "4", "--output", str(out))
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    run = state["config"]
    assert state["global_step"] == 6 and run["global_batch_size"] == 8 and run["world_size"] == 2
    assert_same_updates(weights(single), state["model"], initial_weights())

    # Exact distributed evaluation: 2 ranks on 15 images count each once and agree with one process.
    metrics = state["metrics"]
    assert metrics["val_count"] == 15
    model = models.build_model("convnext_tiny", 3, drop_path=0.0)
    model.load_state_dict(state["model"])
    policy = EvalPolicy(36, 32)
    val = imdata.ImageFolder(ddata / "val", state["classes"], policy.transform())
    loader = imdata.build_loader(val, imdata.EvalSampler(len(val)), batch_size=4, workers=0)
    ref = evaluation.evaluate(model, loader, torch.device("cpu"), policy, 3)
    assert ref.count == 15
    assert metrics["val_top1"] == ref.top1 and metrics["val_top5"] == ref.top5
    assert metrics["val_loss"] == pytest.approx(ref.loss, rel=1e-5)


def test_accumulation_equals_the_full_batch(single, ddata, tmp_path):
    out = tmp_path / "accum"
    r = python(*COMMON, "--data", str(ddata), "--batch-size", "4", "--accum-steps", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert_same_updates(weights(single), weights(out), initial_weights())


def test_progressive_resolution_two_processes_equal_one_process(ddata, tmp_path):
    """Epoch 1 at 32 px, epoch 2 at 48 px (--progressive-res): the size is derived from the epoch in each
    sample's key, in whichever process decodes it, so the equivalence above still holds across the change."""
    i = COMMON.index("--train-crop-size")
    ramp = [*COMMON[:i], *COMMON[i + 2:], "--epochs", "2", "--progressive-res", "32", "48",
            "--progressive-epochs", "1", "2", "--data", str(ddata)]
    one, two = tmp_path / "one", tmp_path / "two"
    r = python(*ramp, "--batch-size", "8", "--output", str(one))
    assert r.returncode == 0, r.stderr[-3000:]
    two_processes(*ramp, "--batch-size", "4", "--output", str(two))
    for out in (one, two):
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        assert state["global_step"] == 12
        assert [row["train_size"] for row in state["history"]] == [32, 48]  # from the batches received
    assert_same_updates(weights(one), weights(two), initial_weights())


def test_two_node_launch_on_loopback(single, ddata, tmp_path):
    """Two torchrun launches, one per 'node', meeting at 127.0.0.1: the multi-node path end to end."""
    out, port = tmp_path / "nodes", str(free_port())
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
               str(REPO / "train.py"), *COMMON, "--data", str(ddata), "--batch-size", "4", "--output", str(out)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["world_size"] == 2 and state["global_step"] == 6
    assert_same_updates(weights(single), state["model"], initial_weights())


def test_sync_bn_on_cpu_is_refused_up_front(ddata, tmp_path):
    r = torchrun(["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                  "--master_port", str(free_port())],
                 "--model", "resnet18", "--sync-bn", "--data", str(ddata), "--batch-size", "4",
                 "--output", str(tmp_path / "o"), "--workers", "0", timeout=300)
    assert r.returncode != 0
    assert "--sync-bn needs CUDA" in r.stderr
    assert not (tmp_path / "o" / "last.pt").exists()


def test_sam_and_repeated_augmentation_two_processes_equal_one(single, ddata, tmp_path):
    """--sam under DDP ascends along the all-reduced gradient of the global batch, and --ra-reps spreads the
    copies of an image over the ranks: 2 processes x 4 still equal 1 process x 8."""
    assert_two_equal_one_with(["--sam", "0.05", "--ra-reps", "2"], single, ddata, tmp_path)


def test_swa_two_processes_and_one(ddata, tmp_path):
    """SWA under DDP, and what of the 2 processes = 1 process equivalence it keeps.

    - BatchNorm-free (convnext_tiny), 2 epochs averaged from epoch 1: the average of 2 x 4 equals the average of
      1 x 8 within REL, like the weights (every rank averages its identical copy; rank 0 saves it).
    - BatchNorm (resnet18): training itself differs between 2 x 4 and 1 x 8 (each rank normalises its own 4
      images; --sync-bn is CUDA only), so the recomputed statistics are compared on one average: a 1-process
      run stopped at the last step of epoch 1, resumed once by 1 process and once by 2 (same global batch).
      The average's weights are then bitwise equal. Its statistics are what update_bn gives on each rank's shard,
      averaged over the ranks (checked against that computation here), not the 1-process ones: the first
      BatchNorm's mean is exact (equal shards: the mean of the ranks' means is the global mean), but each
      variance lacks the between-rank term of its batches, (m0 - m1)^2 / 4 for rank batch means m0 and m1, and
      every later layer sees activations normalised by batches of 4, as in DDP training without SyncBatchNorm.
      The gap depends on the data and the per-rank batch (the values per channel per batch); at 2 x 4 images of
      32 px a layer's statistics move by 3% (the first) to 28% (the last, 1 x 1 pixels)."""
    swa = ["--epochs", "2", "--swa-start", "1", "--swa-lr", "0.005", "--data", str(ddata)]
    one, two = tmp_path / "one", tmp_path / "two"
    r = python(*COMMON, *swa, "--batch-size", "8", "--output", str(one))
    assert r.returncode == 0, r.stderr[-3000:]
    two_processes(*COMMON, *swa, "--batch-size", "4", "--output", str(two))
    a, b = (torch.load(out / "last.pt", map_location="cpu", weights_only=True) for out in (one, two))
    assert int(a["swa"]["n_averaged"]) == int(b["swa"]["n_averaged"]) == 2
    swa_of = lambda s: {k[len("module."):]: v for k, v in s["swa"].items() if k.startswith("module.")}  # noqa: E731
    assert_same_updates(a["model"], b["model"], initial_weights())
    assert_same_updates(swa_of(a), swa_of(b), initial_weights())

    bn = ["--model", "resnet18", "--epochs", "1", "--train-crop-size", "32", "--val-crop-size", "32",
          "--val-resize-size", "36", "--lr", "0.01", "--workers", "0", "--seed", "5", "--quiet", "--swa-start", "1",
          "--swa-lr", "0.01", "--data", str(ddata)]
    base = tmp_path / "bn"
    r = python(*bn, "--batch-size", "8", "--output", str(base), "--stop-at-step", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    for out in (tmp_path / "bn1", tmp_path / "bn2"):
        shutil.copytree(base, out)
    r = python(*bn, "--batch-size", "8", "--output", str(tmp_path / "bn1"), "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    two_processes(*bn, "--batch-size", "4", "--output", str(tmp_path / "bn2"), "--resume", "auto")
    s1, s2 = (swa_of(torch.load(tmp_path / n / "last.pt", map_location="cpu", weights_only=True))
              for n in ("bn1", "bn2"))
    expected = ranks_statistics(ddata, s1, epoch=0)
    gaps = {"running_mean": [], "running_var": []}
    for k in s1:
        kind = k.rsplit(".", 1)[1]
        if kind in gaps:
            torch.testing.assert_close(s2[k], expected[k], rtol=1e-4, atol=1e-5, msg=k)
            gaps[kind].append(((s2[k] - s1[k]).norm() / s1[k].norm()).item())
        elif kind != "num_batches_tracked":
            assert torch.equal(s1[k], s2[k]), k
    torch.testing.assert_close(s2["bn1.running_mean"], s1["bn1.running_mean"], rtol=1e-5, atol=1e-6)
    print(f"2 x 4 vs 1 x 8, relative gap of a layer's statistics: mean {gaps['running_mean']}, variance "
          f"{gaps['running_var']}")
    # measured: bn1 variance 2.7%, deeper layers 2-11% (means) and 5-28% (variances), the largest in layer4,
    # where a 32 px image is 1 x 1 and a channel has 4 values per rank batch
    assert 0 < gaps["running_var"][0] < 0.1 and max(gaps["running_mean"] + gaps["running_var"]) < 0.5


def ranks_statistics(root: Path, weights: dict, epoch: int) -> dict:
    """The statistics 2 ranks give the average: torch's update_bn on each rank's shard (batch 4, the training
    sampler's positions r, r + 2, ...), averaged over the ranks; computed here in one process. (update_bn runs the
    net in training mode: each BatchNorm normalises by its batch of 4, so every layer after the first sees other
    activations than at batch 8.)"""
    from torch.optim.swa_utils import update_bn
    import train
    from imnet.run import flags
    below, given = flags.parse_args(["--model", "resnet18", "--train-crop-size", "32", "--seed", "5",
                                     "--data", str(root), "--output", "unused"])
    _, train_set, _ = train.build_datasets(imconfig.resolve(below, given, 1))
    per_rank = []
    for rank in (0, 1):
        sampler = imdata.TrainSampler(len(train_set), 2, rank, seed=5, drop_last=True)
        sampler.set_epoch(epoch)
        model = models.build_model("resnet18", 3)
        model.load_state_dict(weights)
        update_bn((imdata.to_device(x, y, "cpu")[0] for x, y, _ in imdata.build_loader(train_set, sampler, 4, 0,
                                                                                        drop_last=True)), model)
        per_rank.append(model.state_dict())
    return {k: (per_rank[0][k] + per_rank[1][k]) / 2 for k in per_rank[0] if k.endswith(("running_mean", "running_var"))}


def test_distillation_lars_and_layer_decay_two_processes_equal_one(single, ddata, tmp_path):
    """A teacher (soft distillation; a BatchNorm net in eval mode: nothing to synchronise), LARS and layer-wise LR
    decay under DDP: each rank's teacher sees that rank's share of the global batch, so 2 processes x 4 still
    equal 1 process x 8."""
    from imnet.run.checkpoint import Progress, make_state
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(7)
    torch.save(make_state(model=models.build_model("resnet18", 3).state_dict(), optimizer={}, progress=Progress(),
                          classes=["class_0", "class_1", "class_2"],
                          config={"model": "resnet18", "train_crop_size": 32,
                                  "eval_policy": EvalPolicy(36, 32).to_dict()}), teacher)
    # LARS steps each tensor by lr x 0.001 x its norm: its LRs are large (MLPerf's are tens)
    assert_two_equal_one_with(["--teacher", str(teacher), "--distill", "soft", "--distill-tau", "2", "--opt", "lars",
                               "--lr", "10", "--layer-decay", "0.8"], single, ddata, tmp_path)


MAIN_RANK_FIRST = r"""
import os, sys, time
from imnet.run import dist
info = dist.init("cpu", timeout_minutes=1)
marker, failing = sys.argv[1], sys.argv[2] == "fail"
try:
    with dist.main_rank_first(info):
        if info.is_main:
            time.sleep(1.0)  # the others would be here by now if they did not wait
            open(marker, "w").write("downloaded")
            if failing:
                raise ValueError("the download failed")
        else:
            assert os.path.exists(marker), "rank 1 ran its block before rank 0 finished"
    print(f"rank {info.rank} done")
except ValueError:
    print(f"rank {info.rank} failed as asked")
dist.cleanup()
"""


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_main_rank_first_orders_the_ranks_and_always_releases_them(outcome, tmp_path):
    """dist.main_rank_first (a --weights or --teacher download): rank 1 enters its block only after rank 0 left
    its own, also when rank 0's block raised (the others are released rather than left waiting)."""
    script = tmp_path / "first.py"
    script.write_text(MAIN_RANK_FIRST)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
           str(tmp_path / "marker"), outcome]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1 done" in r.stdout
    assert ("rank 0 failed as asked" if outcome == "fail" else "rank 0 done") in r.stdout
