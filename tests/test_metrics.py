import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from imnet.metrics import Meter, topk_correct


def _brute_force(logits, target, ks):
    """Same rule, one sample at a time: correct at k iff fewer than k other classes score >= target."""
    counts = [0] * len(ks)
    for row, t in zip(logits.tolist(), target.tolist()):
        at_least_as_high = sum(1 for j, z in enumerate(row) if j != t and not z < row[t])
        for i, k in enumerate(ks):
            counts[i] += at_least_as_high < k
    return torch.tensor(counts)


def test_equals_topk_without_ties():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(200, 20, generator=g), torch.randint(20, (200,), generator=g)
    ks = (1, 3, 5)
    top = logits.topk(5, dim=1).indices
    canonical = torch.tensor([(top[:, :k] == target[:, None]).any(1).sum() for k in ks])
    got = topk_correct(logits, target, ks)
    assert got.dtype == torch.int64 and got.shape == (3,)
    assert torch.equal(got, canonical)
    assert torch.equal(got, _brute_force(logits, target, ks))


def test_ties_count_against_the_target():
    logits = torch.tensor([
        [1.0, 2.0, 2.0, 0.0],   # target 1 tied with class 2 for first: top-1 wrong, top-2 right
        [0.0, 0.0, 0.0, 0.0],   # constant logits: wrong at k < 4, right at k = 4
        [5.0, 1.0, 1.0, 1.0],   # target 3 tied with 1 and 2 behind class 0: rank 3
        [3.0, 3.0, 1.0, 0.0],   # target 0 tied with class 1
        [0.0, float("nan"), 1.0, 0.0],  # target 2: the NaN counts against it (rank 1)
        [float("nan"), 0.0, 1.0, 2.0],  # NaN target logit: always wrong below k = 4
    ])
    target = torch.tensor([1, 0, 3, 0, 2, 0])
    ks = (1, 2, 3, 4)
    expected = torch.tensor([0, 3, 3, 6])  # ranks by hand: 1, 3, 3, 1, 1, 3
    assert torch.equal(topk_correct(logits, target, ks), expected)
    assert torch.equal(_brute_force(logits, target, ks), expected)


def test_random_ties_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(4, (300, 12), generator=g).float()  # many ties
    target = torch.randint(12, (300,), generator=g)
    ks = (1, 2, 5, 12)
    assert torch.equal(topk_correct(logits, target, ks), _brute_force(logits, target, ks))


def test_soft_target_rejected():
    with pytest.raises(TypeError):
        topk_correct(torch.randn(2, 3), torch.rand(2, 3))


def _batches():
    g = torch.Generator().manual_seed(2)
    return [(torch.rand((), generator=g), torch.randn(n, 10, generator=g), torch.randint(10, (n,), generator=g))
            for n in (7, 5, 9, 3)]


def _reference(batches):
    n = sum(len(t) for _, _, t in batches)
    loss = sum(float(l) * len(t) for l, _, t in batches) / n
    correct = sum(_brute_force(z, t, (1, 5)) for _, z, t in batches)
    return dict(loss=loss, top1=100 * correct[0].item() / n, top5=100 * correct[1].item() / n, count=n)


def _assert_result(got, expected):
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-12), k


def test_meter_single_process_and_state():
    batches = _batches()
    meter = Meter("cpu")
    for loss, logits, target in batches[:2]:
        meter.update(loss, logits, target)
    resumed = Meter("cpu")
    resumed.load_state_dict(meter.state_dict())
    for loss, logits, target in batches[2:]:
        resumed.update(loss, logits, target)
    _assert_result(resumed.compute(), _reference(batches))
    meter.reset()
    result = meter.compute()
    assert result["count"] == 0 and math.isnan(result["loss"]) and math.isnan(result["top1"])
    meter.update(torch.tensor(2.0), n=4)  # loss only: no top-k counted
    assert meter.compute()["loss"] == 2.0 and math.isnan(meter.compute()["top5"])


def _worker(rank, world_size, tmp, batches):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size)
    try:
        meter = Meter("cpu")
        for loss, logits, target in batches[rank::world_size]:
            meter.update(loss, logits, target)
        torch.save((meter.compute(distributed=True), meter.compute(distributed=False)), f"{tmp}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_meter_reduces_across_two_ranks(tmp_path):
    batches = _batches()
    # fork starts in well under a second; spawn re-imports torch in each child (tens of seconds on 2 cores)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, str(tmp_path), batches), nprocs=2, join=True, start_method=method)
    for rank in range(2):
        reduced, local = torch.load(tmp_path / f"{rank}.pt")
        _assert_result(reduced, _reference(batches))
        _assert_result(local, _reference(batches[rank::2]))
