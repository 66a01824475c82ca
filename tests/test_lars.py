"""LARS and LAMB: the update rules written out by hand, the plain-SGD / Adam(W) limits against torch.optim,
zero norms, trust clipping, exact resume, and timm's Lars / Lamb where timm is installed."""

import copy
import functools
import io
import math

import pytest
import torch
from torch import nn

from imnet.lars import LAMB, LARS
from imnet.optim import param_groups

# the hand-written rules compute the same expressions: a few ulps apart at most
close = functools.partial(torch.testing.assert_close, rtol=1e-6, atol=1e-7)
# torch's Adam(W) and timm's Lamb order the same arithmetic differently (lr / bias correction folded
# together, bias corrections in float32): a few 1e-6 relative, for weights that move by 1e-2 or more a step
near = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)

LRS = [0.4, 0.25, 0.1, 0.05, 0.3]  # a changing LR: LARS's LR sits outside the momentum buffer


def _tiny():
    """Weights with decay and trust ratio; BN weight and bias, a classifier bias without. (A bias right
    before a BN gets only rounding noise as gradient, which Adam's normalisation turns into full steps.)"""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(model, opt, batches, lrs=LRS):
    """Steps with the LR set per step; yields after each step with the gradients it used."""
    for (x, y), lr in zip(batches, lrs):
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        yield lr, grads


def _wd_of(model, groups):
    by_id = {id(p): g for g in groups for p in g["params"]}
    return [by_id[id(p)] for p in model.parameters()]


# ------------------------------------------------------------------------------------------------- LARS

@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_update_by_hand(nesterov):
    """Decay group: ratio = eta ||w|| / (||g|| + wd ||w||), d = ratio (g + wd w), b = m b + d, w -= lr b
    (Nesterov: w -= lr (d + m b)); no-decay group: plain momentum SGD, no ratio."""
    eta, mom, wd = 0.02, 0.9, 0.01
    model = _tiny()
    groups = param_groups(model, wd)
    opt = LARS(groups, lr=LRS[0], momentum=mom, trust_coefficient=eta, nesterov=nesterov)
    ref = [p.detach().clone() for p in model.parameters()]
    bufs = [None] * len(ref)
    kinds = _wd_of(model, groups)
    for lr, grads in _train(model, opt, _batches(len(LRS))):
        for i, (w, g, group) in enumerate(zip(ref, grads, kinds)):
            if group["name"] == "decay":
                ratio = eta * w.norm() / (g.norm() + wd * w.norm())
                d = ratio * (g + wd * w)
            else:
                d = g
            bufs[i] = d if bufs[i] is None else mom * bufs[i] + d
            ref[i] = w - lr * ((d + mom * bufs[i]) if nesterov else bufs[i])
        for p, r in zip(model.parameters(), ref):
            close(p.detach(), r)


def test_lars_without_trust_ratio_is_sgd():
    """trust_ratio False (or weight decay 0) leaves torch.optim.SGD with L2 decay and momentum."""
    model, reference = _tiny(), _tiny()
    opt = LARS([{"params": model.parameters(), "trust_ratio": False}], lr=LRS[0], weight_decay=0.05,
               momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LRS[0], weight_decay=0.05, momentum=0.9)
    for _ in zip(_train(model, opt, _batches(5)), _train(reference, ref_opt, _batches(5))):
        for p, r in zip(model.parameters(), reference.parameters()):
            close(p, r)


def test_lars_explicit_trust_ratio_on_a_group_without_decay():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([0.0, 2.0])
    LARS([{"params": [w], "trust_ratio": True}], lr=0.5, momentum=0.0, trust_coefficient=0.1).step()
    # ratio = 0.1 * 5 / 2 = 0.25; w -= 0.5 * 0.25 * g
    close(w.detach(), torch.tensor([3.0, 4.0 - 0.25]))


def test_lars_zero_norms_and_trust_clip():
    # ||w|| = 0: ratio 1, the step is lr * g
    w = nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([1.0, 2.0, 2.0])
    LARS([w], lr=0.5, momentum=0.0, weight_decay=0.1).step()
    close(w.detach(), torch.tensor([-0.5, -1.0, -1.0]))
    # ||g|| = 0: ratio 1, only the decay moves w
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.zeros(2)
    LARS([w], lr=0.5, momentum=0.0, weight_decay=0.1).step()
    close(w.detach(), torch.tensor([3.0, 4.0]) * (1 - 0.05))
    # LARC: ratio <- min(ratio / lr, 1). ||w|| = 5, ||g|| = 1, wd 0.2: ratio = eta * 5 / 2
    for eta, expected_ratio in [(0.01, 0.025 / 0.5), (1.0, 1.0)]:
        w = nn.Parameter(torch.tensor([3.0, 4.0]))
        w.grad = torch.tensor([0.0, 1.0])
        LARS([w], lr=0.5, momentum=0.0, weight_decay=0.2, trust_coefficient=eta, trust_clip=True).step()
        d = expected_ratio * (torch.tensor([0.0, 1.0]) + 0.2 * torch.tensor([3.0, 4.0]))
        close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * d)


# ------------------------------------------------------------------------------------------------- LAMB

def test_lamb_update_by_hand():
    """m, v with bias correction, r = m_hat / (sqrt(v_hat) + eps), u = r + wd w, w -= lr ||w||/||u|| u;
    the no-decay group takes Adam's step r without a ratio."""
    b1, b2, eps, wd = 0.8, 0.95, 1e-6, 0.02
    model = _tiny()
    groups = param_groups(model, wd)
    opt = LAMB(groups, lr=LRS[0], betas=(b1, b2), eps=eps)
    ref = [p.detach().clone() for p in model.parameters()]
    ms = [torch.zeros_like(p) for p in ref]
    vs = [torch.zeros_like(p) for p in ref]
    kinds = _wd_of(model, groups)
    for t, (lr, grads) in enumerate(_train(model, opt, _batches(len(LRS))), start=1):
        for i, (w, g, group) in enumerate(zip(ref, grads, kinds)):
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            r = (ms[i] / (1 - b1 ** t)) / ((vs[i] / (1 - b2 ** t)).sqrt() + eps)
            if group["name"] == "decay":
                u = r + wd * w
                ref[i] = w - lr * w.norm() / u.norm() * u
            else:
                ref[i] = w - lr * r
        for p, r in zip(model.parameters(), ref):
            close(p.detach(), r)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lamb_without_trust_ratio_is_adam(wd):
    """Without the ratio LAMB is Adam (wd 0) or AdamW (decoupled decay)."""
    model, reference = _tiny(), _tiny()
    opt = LAMB([{"params": model.parameters(), "trust_ratio": False}], lr=LRS[0], weight_decay=wd,
               betas=(0.9, 0.99), eps=1e-6)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=LRS[0], weight_decay=wd, betas=(0.9, 0.99),
                                eps=1e-6, foreach=False)
    for _ in zip(_train(model, opt, _batches(5)), _train(reference, ref_opt, _batches(5))):
        for p, r in zip(model.parameters(), reference.parameters()):
            near(p, r)


def test_lamb_zero_norms_and_trust_clip():
    # ||w|| = 0: ratio 1, the step is Adam's first step, lr * sign(g) (up to eps)
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([2.0, -3.0])
    LAMB([w], lr=0.1, weight_decay=0.1, eps=0.0).step()
    close(w.detach(), torch.tensor([-0.1, 0.1]))
    # first step, eps 0: r = sign(g) = [1, 1], u = r + wd w = [1.3, 1.4], ||u|| = sqrt(3.65) < ||w|| = 5
    for clip, ratio in [(False, 5 / math.sqrt(3.65)), (True, 1.0)]:
        w = nn.Parameter(torch.tensor([3.0, 4.0]))
        w.grad = torch.tensor([1.0, 7.0])
        LAMB([w], lr=0.1, weight_decay=0.1, eps=0.0, trust_clip=clip).step()
        close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * ratio * torch.tensor([1.3, 1.4]))


# ------------------------------------------------------------------------------------------------ both

def _optimizer(kind, model):
    groups = param_groups(model, 0.01)
    if kind == "lars":
        return LARS(groups, lr=LRS[0], momentum=0.9, trust_coefficient=0.02, nesterov=True)
    return LAMB(groups, lr=LRS[0])


@pytest.mark.parametrize("kind", ["lars", "lamb"])
def test_state_dict_resume_is_bitwise(kind):
    """3 steps, state_dict through torch.save / torch.load(weights_only=True) into a fresh optimizer over a
    copy of the model, 2 more steps each: the same weights and state, bit for bit."""
    batches = _batches(5)
    model = _tiny()
    opt = _optimizer(kind, model)
    list(_train(model, opt, batches[:3], LRS[:3]))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = copy.deepcopy(model)
    resumed_opt = _optimizer(kind, resumed)
    buffer.seek(0)
    resumed_opt.load_state_dict(torch.load(buffer, weights_only=True))
    list(_train(model, opt, batches[3:], LRS[3:]))
    list(_train(resumed, resumed_opt, batches[3:], LRS[3:]))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), resumed.parameters()):
        a, b = opt.state[p], resumed_opt.state[q]
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


@pytest.mark.parametrize("kind", ["lars", "lamb"])
def test_grad_is_left_alone_and_bad_settings_refused(kind):
    model = _tiny()
    opt = _optimizer(kind, model)
    next(_train(model, opt, _batches(1)))
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    cls = LARS if kind == "lars" else LAMB
    with pytest.raises(ValueError, match="lr must be"):
        cls(model.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be"):
        cls(model.parameters(), lr=0.1, weight_decay=-0.1)


# ----------------------------------------------------------------------------- against timm (if installed)

@pytest.mark.parametrize("nesterov, clip", [(False, False), (True, False), (False, True)])
def test_lars_matches_timm(nesterov, clip):
    timm_optim = pytest.importorskip("timm.optim")
    model, reference = _tiny(), _tiny()
    settings = dict(momentum=0.9, nesterov=nesterov, trust_clip=clip)
    opt = LARS(param_groups(model, 0.01), lr=LRS[0], trust_coefficient=0.5, eps=1e-8, **settings)
    # timm adapts only groups with weight_decay != 0 (always_adapt=False): the same default as ours
    ref_opt = timm_optim.Lars(param_groups(reference, 0.01), lr=LRS[0], trust_coeff=0.5, eps=1e-8,
                              always_adapt=False, **settings)
    for _ in zip(_train(model, opt, _batches(6)), _train(reference, ref_opt, _batches(6))):
        for p, r in zip(model.parameters(), reference.parameters()):
            close(p, r)


@pytest.mark.parametrize("clip", [False, True])
def test_lamb_matches_timm(clip):
    timm_optim = pytest.importorskip("timm.optim")
    model, reference = _tiny(), _tiny()
    opt = LAMB(param_groups(model, 0.02), lr=0.01, betas=(0.9, 0.99), eps=1e-6, trust_clip=clip)
    # timm's defaults otherwise: bias correction, grad averaging, decay added to the update (not decoupled);
    # its global grad-norm clipping (max_grad_norm=1.0) is off here, as it is outside our optimizer
    ref_opt = timm_optim.Lamb(param_groups(reference, 0.02), lr=0.01, betas=(0.9, 0.99), eps=1e-6,
                              trust_clip=clip, max_grad_norm=None, always_adapt=False, decoupled_decay=False)
    lrs = [0.01, 0.02, 0.005, 0.01, 0.03, 0.01]
    for _ in zip(_train(model, opt, _batches(6), lrs), _train(reference, ref_opt, _batches(6), lrs)):
        for p, r in zip(model.parameters(), reference.parameters()):
            near(p, r)
