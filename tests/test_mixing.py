import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from imnet.mixing import Mixer, cutmix_box, one_hot, sample_beta

C = 10


def _batch(n=6, h=16, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    # constant per-sample images with distinct values: any pasted pixel differs from the original
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone() + 1
    images += 0.01 * torch.rand(n, 3, h, w, generator=g)
    labels = torch.randperm(C, generator=g)[:n]
    return images, labels


def _ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                         - np.searchsorted(b, grid, side="right") / len(b)))


def test_one_hot_smoothing_values():
    t = one_hot(torch.tensor([2, 0]), 4, smoothing=0.2)
    expected = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]])
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-7)
    assert t.dtype == torch.float32


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_targets_sum_to_one_and_mix_the_right_classes(mode, smoothing):
    mixer = Mixer(C, mixup_alpha=0.0 if mode == "cutmix" else 0.8,
                  cutmix_alpha=0.0 if mode == "mixup" else 1.0, label_smoothing=smoothing)
    images, labels = _batch()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        state = g.get_state()
        params = mixer.sample(images.shape[-2], images.shape[-1], generator=g)
        g.set_state(state)
        mixed, targets = mixer(images, labels, generator=g)
        assert mixed.shape == images.shape and targets.shape == (len(labels), C)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)), rtol=0, atol=1e-6)
        lam, off = params["lam"], smoothing / C
        partner = labels.flip(0)
        rows = torch.arange(len(labels))
        # target of own class = lam*(1-eps) + eps/C, of partner class = (1-lam)*(1-eps) + eps/C
        torch.testing.assert_close(targets[rows, labels], torch.full((6,), lam * (1 - smoothing) + off),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(targets[rows, partner],
                                   torch.full((6,), (1 - lam) * (1 - smoothing) + off), rtol=0, atol=1e-6)


def test_cutmix_lambda_equals_pasted_area_exactly():
    mixer = Mixer(C, cutmix_alpha=1.0)
    images, labels = _batch(h=17, w=13)
    g = torch.Generator().manual_seed(3)
    clipped = 0
    for _ in range(200):
        state = g.get_state()
        params = mixer.sample(17, 13, generator=g)
        g.set_state(state)
        mixed, targets = mixer(images, labels, generator=g)
        pasted = (mixed != images).all(dim=1)  # (N, H, W): every channel replaced
        kept_fraction = 1.0 - pasted[0].double().mean().item()
        assert (pasted == pasted[0]).all()  # one box per batch
        assert params["lam"] == pytest.approx(kept_fraction, abs=1e-12)
        # own-class target is lam itself (float32), exactly
        assert (targets[torch.arange(6), labels] == torch.tensor(kept_fraction, dtype=torch.float32)).all()
        y1, y2, x1, x2 = params["box"]
        clipped += y1 == 0 or x1 == 0 or y2 == 17 or x2 == 13
    assert clipped > 20  # the clipped case was exercised


def test_cutmix_box_nominal_area_when_not_clipped():
    # centre in the middle and a lambda giving integer half-sides: no clipping, no flooring
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        (y1, y2, x1, x2), lam = cutmix_box(0.75, 40, 40, generator=g)  # r = 0.5*sqrt(0.25) -> 10 px
        if 0 < y1 and 0 < x1 and y2 < 40 and x2 < 40:
            assert (y2 - y1, x2 - x1) == (20, 20) and lam == 0.75


def test_lambda_follows_beta():
    alpha, n = 0.4, 3000
    mixer = Mixer(C, mixup_alpha=alpha)
    images, labels = _batch(n=2, h=2, w=2)
    g = torch.Generator().manual_seed(123)
    lams = np.array([mixer(images, labels, generator=g)[1][0, labels[0]].item() for _ in range(n)])
    reference = np.random.default_rng(0).beta(alpha, alpha, n)
    critical = 1.95 * np.sqrt(2.0 / n)  # KS two-sample critical value at significance 0.001
    assert _ks_statistic(lams, reference) < critical
    assert abs(lams.mean() - 0.5) < 4 * np.sqrt(1 / (4 * (2 * alpha + 1)) / n)
    assert np.var(lams) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)  # Var Beta(a, a)
    # the test has power: a wrong alpha or a uniform lambda is rejected
    assert _ks_statistic(lams, np.random.default_rng(1).beta(2 * alpha, 2 * alpha, n)) > critical
    assert _ks_statistic(lams, np.random.default_rng(2).uniform(size=n)) > critical


def test_sample_beta_equals_torch_distributions_beta():
    for seed in range(5):
        torch.manual_seed(seed)
        expected = float(torch.distributions.Beta(torch.tensor([0.3]), torch.tensor([0.3])).sample(()))
        assert sample_beta(0.3, torch.Generator().manual_seed(seed)) == expected


def test_apply_and_switch_probabilities():
    mixer = Mixer(C, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, switch_prob=0.25)
    g = torch.Generator().manual_seed(0)
    modes = [mixer.sample(8, 8, generator=g)["mode"] for _ in range(4000)]
    applied = 1 - modes.count("none") / 4000
    cut = modes.count("cutmix") / max(1, 4000 - modes.count("none"))
    assert abs(applied - 0.6) < 4 * np.sqrt(0.24 / 4000)
    assert abs(cut - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 2400)


def test_not_applied_keeps_images_and_smooths():
    mixer = Mixer(C, mixup_alpha=1.0, prob=0.0, label_smoothing=0.1)
    images, labels = _batch()
    mixed, targets = mixer(images, labels)
    assert mixed is images
    torch.testing.assert_close(targets, one_hot(labels, C, 0.1))
    assert not Mixer(C).enabled and Mixer(C, cutmix_alpha=0.5).enabled


def _torchvision_after_our_draws(tv_transform, images, labels, seed):
    """Run torchvision with its global RNG in the state our generator has after u_apply, u_switch."""
    g = torch.Generator().manual_seed(seed)
    torch.rand(2, generator=g)
    saved = torch.get_rng_state()
    torch.set_rng_state(g.get_state())
    try:
        return tv_transform(images, labels)
    finally:
        torch.set_rng_state(saved)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_matches_torchvision_v2_exactly(mode):
    # torchvision pairs sample i with i-1 (roll), we pair i with N-1-i (flip); the two coincide for a
    # pair, so each of our samples is compared with torchvision run on (sample, partner).
    alpha = 0.7
    tv = (v2.MixUp if mode == "mixup" else v2.CutMix)(alpha=alpha, num_classes=C)
    ours = Mixer(C, **{f"{mode}_alpha": alpha})
    images, labels = _batch(n=5, h=15, w=11)
    for seed in range(10):
        mixed, targets = ours(images, labels, generator=torch.Generator().manual_seed(seed))
        for i in range(5):
            j = 4 - i
            tv_images, tv_targets = _torchvision_after_our_draws(
                tv, images[[i, j]], labels[[i, j]], seed)
            assert torch.equal(mixed[i], tv_images[0])
            assert torch.equal(targets[i], tv_targets[0])
    # label smoothing folded in: (1 - eps) * mixed one-hot + eps / C
    smooth = Mixer(C, label_smoothing=0.1, **{f"{mode}_alpha": alpha})
    _, targets = smooth(images[:2], labels[:2], generator=torch.Generator().manual_seed(0))
    _, tv_targets = _torchvision_after_our_draws(tv, images[:2], labels[:2], 0)
    torch.testing.assert_close(targets, 0.9 * tv_targets + 0.01, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(mixup_alpha=1.0), dict(cutmix_alpha=1.0)])
def test_batch_size_one(kw):
    images, labels = _batch(n=1)
    mixed, targets = Mixer(C, label_smoothing=0.1, **kw)(images, labels, generator=torch.Generator())
    torch.testing.assert_close(mixed, images)  # mixed with itself
    torch.testing.assert_close(targets, one_hot(labels, C, 0.1))


def test_same_generator_seed_same_output():
    mixer = Mixer(C, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8)
    images, labels = _batch()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    different = 0
    for _ in range(10):
        a, b = mixer(images, labels, generator=g1), mixer(images, labels, generator=g2)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        c = mixer(images, labels, generator=torch.Generator().manual_seed(8 + _))
        different += not torch.equal(a[1], c[1])
    assert different > 0
