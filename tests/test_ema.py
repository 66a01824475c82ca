import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imnet.ema import ModelEma, unwrap


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))


def _train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(5, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _float_state(module):
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}


def test_equals_averaged_model_step_by_step():
    model, decay = _model(), 0.9
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    reference.update_parameters(model)  # AveragedModel's first update copies: our EMA starts as a copy
    ema = ModelEma(model, decay=decay)
    for step in range(1, 11):
        _train_step(model, opt, step)
        reference.update_parameters(model)
        ema.update(model, step)
        expected = _float_state(reference.module)
        got = _float_state(ema.module)
        assert expected.keys() == got.keys() and len(got) == 8  # conv w/b, bn w/b/mean/var, linear w/b
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
    # integer buffers are copied (AveragedModel truncates a float average into them instead)
    assert ema.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 10
    # and the EMA is really behind the model
    assert not torch.allclose(ema.module[4].weight, model[4].weight, atol=1e-3)


def test_every_k_uses_decay_power_k():
    model, decay, k = _model(), 0.8, 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEma(model, decay=decay, every=k)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(1, 13):
        _train_step(model, opt, step)
        ema.update(model, step)
        if step % k == 0:
            for n, p in model.named_parameters():
                expected[n] = decay ** k * expected[n] + (1 - decay ** k) * p.detach()
        for n, p in ema.module.named_parameters():
            torch.testing.assert_close(p, expected[n], rtol=1e-6, atol=1e-7)
    assert ema.num_updates == 4


def test_warmup_formula():
    model = nn.Linear(3, 1, bias=False)
    ema = ModelEma(model, decay=0.99, warmup=True)
    ema_w = model.weight.detach().clone()
    for n in range(200):
        with torch.no_grad():
            model.weight.add_(1.0)
        d = min(0.99, (1 + n) / (10 + n))
        ema_w = d * ema_w + (1 - d) * model.weight.detach()
        ema.update(model, n)
        torch.testing.assert_close(ema.module.weight, ema_w, rtol=1e-6, atol=1e-5)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.99


def test_fp32_copy_eval_no_grad():
    model = _model().to(torch.bfloat16).train()
    ema = ModelEma(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training and model.training
    ema.update(model, 0)  # bf16 weights are averaged into the fp32 copy
    assert ema.module[4].weight.dtype == torch.float32


def test_state_dict_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEma(model, decay=0.5, warmup=True)
    for step in range(3):
        _train_step(model, opt, step)
        ema.update(model, step)
    state = ema.state_dict()
    assert state["module"].keys() == model.state_dict().keys() and state["num_updates"] == 3
    torch.save(state, tmp_path / "ema.pt")
    restored = ModelEma(_model(), decay=0.5, warmup=True)
    restored.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    for (k, a), b in zip(ema.module.state_dict().items(), restored.module.state_dict().values()):
        assert torch.equal(a, b), k
    # continuing gives bitwise the same average
    _train_step(model, opt, 3)
    ema.update(model, 3)
    restored.update(model, 3)
    for a, b in zip(ema.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)
    # the plain state_dict loads into a fresh model
    _model().load_state_dict(state["module"])


def test_unwraps_ddp_and_compile(tmp_path):
    model = _model()
    compiled = torch.compile(model)  # never called: only the wrapper is needed
    assert unwrap(compiled) is model
    ema = ModelEma(compiled, decay=0.5)
    assert ema.state_dict()["module"].keys() == model.state_dict().keys()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model and unwrap(torch.compile(ddp)) is model
        ema = ModelEma(ddp, decay=0.5)
        assert ema.state_dict()["module"].keys() == model.state_dict().keys()
        before = copy.deepcopy(ema.module[4].weight)
        with torch.no_grad():
            model[4].weight.add_(2.0)
        ema.update(ddp, 0)
        torch.testing.assert_close(ema.module[4].weight, before + 1.0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("every, copy_steps", [(2, 5), (3, 6), (1, 0), (4, 0)])
def test_copy_warmup_is_torchvisions_reset_of_averaged_model(every, copy_steps):
    """torchvision's reference (train.py): after each EMA update, ``if epoch < lr_warmup_epochs:
    model_ema.n_averaged.fill_(0)``, so AveragedModel's next update copies. Here the same loop, with the update
    after optimizer step s in the warmup when s <= copy_steps (the warmup's steps), against ModelEma(copy_steps)."""
    model, decay = _model(), 0.7
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay ** every), use_buffers=True)
    ema = ModelEma(model, decay=decay, every=every, copy_steps=copy_steps)
    copies = []
    for step in range(1, 25):
        _train_step(model, opt, step)
        ema.update(model, step)
        if step % every:
            continue
        reference.update_parameters(model)
        if step <= copy_steps:  # this update came during the warmup
            reference.n_averaged.fill_(0)
        expected, got = _float_state(reference.module), _float_state(ema.module)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7, msg=(step, k))
        copies.append(all(torch.equal(v, model.state_dict()[k]) for k, v in got.items()))
    # the copies: every update up to the first one after the warmup; then averages
    n_copies = copy_steps // every + 1
    assert copies == [True] * n_copies + [False] * (len(copies) - n_copies)


def test_default_start_keeps_the_initial_weights_in_the_average():
    """timm's ModelEma (DeiT): the average starts from the model at construction, whose weight is decay**t."""
    model = nn.Linear(3, 1, bias=False)
    w0 = model.weight.detach().clone()
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    for step in range(1, 4):
        ema.update(model, step)
    torch.testing.assert_close(ema.module.weight, 0.9 ** 3 * w0 + (1 - 0.9 ** 3) * model.weight.detach())


@pytest.mark.parametrize("every", [1, 3])
def test_train_step_updates_the_ema_once_per_optimizer_step_under_accumulation(every):
    """train.py's train_step with 3 micro-batches per optimizer step: one EMA update after each optimizer step,
    of the weights that step produced (an update per micro-step would average the unchanged weights 3 times);
    with --ema-every N, after optimizer steps N, 2N, ... (ModelEma's ``step`` = optimizer steps done), with the
    decay to the power N."""
    from types import SimpleNamespace

    import train
    from imnet.metrics import Meter
    from imnet.run.config import EvalPolicy
    model, decay, accum = _model(), 0.5, 3
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    cfg = SimpleNamespace(lr_at=lambda s: 0.2, accum_steps=accum, clip_grad=0.0, channels_last=False, seed=0,
                          random_erase=0.0, loss_label_smoothing=0.0, amp_dtype=None, bce=False,
                          eval_policy=EvalPolicy(32, 32))
    parts = train.Parts(model=model, train_model=model, eval_model=model, optimizer=opt, device=torch.device("cpu"),
                        ema=ModelEma(model, decay=decay, every=every))
    g = torch.Generator().manual_seed(2)
    expected = {k: v.clone() for k, v in _float_state(model).items()}
    for step in range(6):
        micro = [(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g),
                  torch.randint(0, 5, (4,), generator=g)) for _ in range(accum)]
        train.train_step(cfg, parts, micro, 0, step, step, Meter("cpu"))
        if (step + 1) % every == 0:
            for k, v in _float_state(model).items():
                expected[k] = decay ** every * expected[k] + (1 - decay ** every) * v
        assert parts.ema.num_updates == (step + 1) // every
        for k, v in _float_state(parts.ema.module).items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7, msg=f"step {step + 1}: {k}")
