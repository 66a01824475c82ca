"""SAM / ASAM (imnet/sam.py): closed forms on a quadratic, rho = 0 equals the base optimizer, learning, fp16
GradScaler composition (including a first-pass overflow), clipping, DDP over 2 gloo processes, zero
gradients, the accumulation refusal, and the module working when copied alone."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from imnet.sam import SAM, check_accum_steps, keep_buffers

SAM_FILE = Path(__file__).resolve().parents[1] / "imnet" / "sam.py"


# --- a quadratic with a closed-form gradient -------------------------------------------------------------

def quadratic(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = m @ m.T + n * torch.eye(n, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(n, generator=g, dtype=torch.float64)
    w0 = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, w0


def split_params(w0):
    """Two parameters, so that a per-tensor norm instead of the global one would fail the closed form."""
    return [nn.Parameter(w0[:3].clone()), nn.Parameter(w0[3:].clone())]


def loss_of(params, a, b):
    w = torch.cat(params)
    return 0.5 * w @ a @ w - b @ w


def sam_step(params, closure, optimizer, sam, clip=None):
    """The documented order for fp32 / bf16."""
    closure().backward()
    sam.ascend()
    closure().backward()
    sam.descend()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_sam_step_matches_closed_form():
    a, b, w0 = quadratic()
    lr, rho = 0.05, 0.3
    params = split_params(w0)
    sam_step(params, lambda: loss_of(params, a, b), torch.optim.SGD(params, lr=lr), SAM(params, rho=rho))

    grad = lambda w: a @ w - b  # noqa: E731
    g = grad(w0)
    expected = w0 - lr * grad(w0 + rho * g / torch.linalg.vector_norm(g))
    got = torch.cat([p.detach() for p in params])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got - (w0 - lr * g)).abs().max() > 1e-3  # not the plain gradient step


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5])
def test_asam_step_matches_closed_form(eta):
    a, b, w0 = quadratic(seed=1)
    lr, rho = 0.05, 0.5
    params = split_params(w0)
    sam_step(params, lambda: loss_of(params, a, b), torch.optim.SGD(params, lr=lr),
             SAM(params, rho=rho, adaptive=True, eta=eta))

    grad = lambda w: a @ w - b  # noqa: E731
    g = grad(w0)
    t = w0.abs() + eta
    e = rho * t * t * g / torch.linalg.vector_norm(t * g)
    expected = w0 - lr * grad(w0 + e)
    got = torch.cat([p.detach() for p in params])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    sam_e = rho * g / torch.linalg.vector_norm(g)
    assert (got - (w0 - lr * grad(w0 + sam_e))).abs().max() > 1e-4  # not plain SAM


def test_clipping_clips_the_second_gradient():
    a, b, w0 = quadratic(seed=2)
    lr, rho, clip = 0.1, 0.2, 0.05
    params = split_params(w0)
    sam_step(params, lambda: loss_of(params, a, b), torch.optim.SGD(params, lr=lr), SAM(params, rho=rho),
             clip=clip)

    g = a @ w0 - b
    g2 = a @ (w0 + rho * g / torch.linalg.vector_norm(g)) - b
    assert torch.linalg.vector_norm(g2) > 10 * clip  # the clip is active
    expected = w0 - lr * g2 * clip / (torch.linalg.vector_norm(g2) + 1e-6)  # clip_grad_norm_'s formula
    torch.testing.assert_close(torch.cat([p.detach() for p in params]), expected, rtol=0, atol=1e-12)


# --- rho = 0 is the base optimizer -------------------------------------------------------------------------

def mlp(seed, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
], ids=["sgd_momentum", "adamw"])
def test_rho_zero_equals_base_optimizer(make_opt):
    base, with_sam = mlp(0), mlp(0)
    opt_base, opt_sam = make_opt(base.parameters()), make_opt(with_sam.parameters())
    sam = SAM(opt_sam, rho=0.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        nn.functional.cross_entropy(base(x), y).backward()
        opt_base.step()
        opt_base.zero_grad(set_to_none=True)
        sam_step(list(with_sam.parameters()), lambda: nn.functional.cross_entropy(with_sam(x), y), opt_sam, sam)
        for p, q in zip(base.parameters(), with_sam.parameters()):
            assert torch.equal(p, q)


# --- it learns ---------------------------------------------------------------------------------------------

def test_tiny_mlp_learns_with_sam():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(512, 2, generator=gen) * 2 - 1
    y = (x.norm(dim=1) < 0.65).long()  # a disc inside a square: ~ 1/3 positives, not linearly separable
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sam = SAM(opt, rho=0.05)
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    for _ in range(300):
        sam_step(list(model.parameters()), closure, opt, sam)
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    majority = max(y.float().mean().item(), 1 - y.float().mean().item())
    assert accuracy > 0.95 > majority + 0.2, (accuracy, majority)


# --- fp16 and GradScaler -----------------------------------------------------------------------------------

def scaler_step(model, x, y, opt, sam, scaler, amp_dtype=None, clip=1.0):
    """The documented fp16 order: no unscale_ before ascend; one unscale_ after the second backward."""
    def loss():
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            return nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss()).backward()
    sam.ascend()
    with keep_buffers(model):
        scaler.scale(loss()).backward()
    sam.descend()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def plain_step(model, x, y, opt, sam, clip=1.0):
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    closure().backward()
    sam.ascend()
    with keep_buffers(model):
        closure().backward()
    sam.descend()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_grad_scaler_is_bitwise_neutral_in_fp32(adaptive):
    """With a power-of-two scale and no overflow, scaling is exact: the first pass needs no unscale_."""
    ref, scaled = mlp(3, bn=True), mlp(3, bn=True)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_scaled = torch.optim.SGD(scaled.parameters(), lr=0.1, momentum=0.9)
    sam_ref, sam_scaled = SAM(opt_ref, rho=0.1, adaptive=adaptive), SAM(opt_scaled, rho=0.1, adaptive=adaptive)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        before = [p.detach().clone() for p in ref.parameters()]
        plain_step(ref, x, y, opt_ref, sam_ref)
        scaler_step(scaled, x, y, opt_scaled, sam_scaled, scaler)
        assert scaler.get_scale() == 2.0 ** 16  # no step was skipped
        assert any(not torch.equal(p, q) for p, q in zip(before, ref.parameters()))
        for p, q in zip(ref.state_dict().values(), scaled.state_dict().values()):
            assert torch.equal(p, q)


def test_fp16_autocast_with_scaler_matches_fp32():
    ref, half = mlp(5), mlp(5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_half = torch.optim.SGD(half.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    gen = torch.Generator().manual_seed(6)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    w0 = [p.detach().clone() for p in ref.parameters()]
    plain_step(ref, x, y, opt_ref, SAM(opt_ref, rho=0.5), clip=1e9)
    scaler_step(half, x, y, opt_half, SAM(opt_half, rho=0.5), scaler, amp_dtype=torch.float16, clip=1e9)
    assert scaler.get_scale() == 2.0 ** 12  # not skipped
    for w, p, q in zip(w0, ref.parameters(), half.parameters()):
        update_ref, update_half = p.detach() - w, q.detach() - w
        assert torch.linalg.vector_norm(update_ref) > 1e-3
        rel = torch.linalg.vector_norm(update_half - update_ref) / torch.linalg.vector_norm(update_ref)
        assert rel < 1e-2, rel


def test_first_pass_overflow_skips_the_step_and_keeps_everything_finite():
    model = mlp(7, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(opt, rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # after the first forward's BN update
    scaler.scale(loss).backward()
    model[0].weight.grad[0, 0] = float("inf")  # what an fp16 overflow in the first backward leaves
    assert not torch.isfinite(sam.ascend())
    assert all(torch.isnan(p).all() for p in model.parameters())  # deliberately: the second pass must see it
    with keep_buffers(model):
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    sam.descend()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()

    assert scaler.get_scale() == 2.0 ** 9  # the scaler saw the overflow and backed off
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # weights and BatchNorm statistics untouched, no NaN
        assert torch.isfinite(v).all(), k
    assert not opt.state  # no momentum buffer was created: the step was skipped


def test_keep_buffers_is_needed_for_batchnorm():
    model = mlp(8, bn=True)
    bn = model[1]
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    with keep_buffers(model):
        model(torch.randn(8, 4))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    model(torch.randn(8, 4))
    assert not torch.equal(bn.running_mean, before[0])  # the forward does update them without it


# --- edge cases --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_zero_gradient_gives_no_nan(adaptive):
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    unused = nn.Parameter(torch.tensor([3.0]))  # grad stays None: skipped
    opt = torch.optim.SGD([w, unused], lr=0.1)
    sam = SAM(opt, rho=0.05, adaptive=adaptive)
    (w * 0).sum().backward()
    assert sam.ascend().item() == 0.0
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    assert w.grad is None and unused.grad is None
    (w * 0).sum().backward()
    sam.descend()
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0])) and torch.equal(unused.detach(), torch.tensor([3.0]))


def test_call_order_is_checked():
    w = nn.Parameter(torch.ones(2))
    sam = SAM([w])
    with pytest.raises(RuntimeError, match="without ascend"):
        sam.descend()
    w.sum().backward()
    sam.ascend()
    with pytest.raises(RuntimeError, match="twice"):
        sam.ascend()
    with pytest.raises(ValueError):
        SAM([w], rho=-1.0)


def test_gradient_accumulation_is_refused_with_the_reason():
    check_accum_steps(1)
    with pytest.raises(ValueError, match="whole batch"):
        check_accum_steps(4)


# --- DDP ---------------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from torch import nn
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sam import SAM

def data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
            for _ in range(3)]

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

def train(net, params, batches, rank, world):
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    sam = SAM(opt, rho=0.2)
    for x, y in batches:
        x, y = x[rank::world], y[rank::world]
        nn.functional.cross_entropy(net(x), y).backward()   # synchronized: all ranks get the global g
        sam.ascend()
        nn.functional.cross_entropy(net(x), y).backward()
        sam.descend()
        opt.step()
        opt.zero_grad(set_to_none=True)

def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = model()
    ddp = nn.parallel.DistributedDataParallel(net)
    train(ddp, ddp.parameters(), data(), rank, 2)
    torch.save(net.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()

if __name__ == "__main__":
    port, out = int(sys.argv[1]), sys.argv[2]
    torch.multiprocessing.spawn(worker, args=(port, out), nprocs=2)
    single = model()
    train(single, single.parameters(), data(), 0, 1)
    torch.save(single.state_dict(), f"{out}/single.pt")
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    shutil.copy(SAM_FILE, tmp_path / "sam.py")
    (tmp_path / "ddp_sam.py").write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, str(tmp_path / "ddp_sam.py"), str(port), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    r0, r1, single = load("rank0.pt"), load("rank1.pt"), load("single.pt")
    for k in single:
        assert torch.equal(r0[k], r1[k]), k  # every rank ascended to the same w + e
        torch.testing.assert_close(r0[k], single[k], rtol=0, atol=1e-12)
    assert any(not torch.equal(single[k], model_k) for k, model_k in _initial_double_mlp().items())


def _initial_double_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().state_dict()


# --- copyable ----------------------------------------------------------------------------------------------

def test_imports_only_the_standard_library_and_torch():
    allowed = {"torch", "torchvision", "numpy", "PIL", "__future__"} | set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(SAM_FILE.read_text())):
        if isinstance(node, ast.Import):
            names = [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "", node.level)]
        else:
            continue
        for name, level in names:
            assert level == 0 and name.split(".")[0] in allowed, name


def test_works_when_copied_alone(tmp_path):
    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(SAM_FILE, folder / "sam.py")
    code = textwrap.dedent("""
        import sys
        sys.modules["imnet"] = None  # the installed imnet must not be reachable
        import torch
        import sam
        assert sam.__file__.startswith(sys.argv[1]), sam.__file__
        w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        opt = torch.optim.SGD([w], lr=0.1)
        s = sam.SAM(opt, rho=0.5)
        loss = lambda: 0.5 * (w ** 2).sum()
        loss().backward()
        s.ascend()
        loss().backward()
        s.descend()
        opt.step()
        g = torch.tensor([1.0, 2.0])
        expected = g - 0.1 * (g + 0.5 * g / g.norm())
        assert torch.allclose(w.detach(), expected), w
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=folder, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- train.py --sam ---------------------------------------------------------------------------------------

def test_train_py_sam_learns_resumes_bitwise_and_refuses_accumulation(tmp_path, capsys):
    import train
    from conftest import make_imagefolder
    data = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=16, val_per_class=5)
    base = ["--data", str(data), "--model", "deit_tiny", "--epochs", "3", "--batch-size", "8",
            "--train-crop-size", "32", "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "1e-3",
            "--warmup-epochs", "1", "--opt", "adamw", "--weight-decay", "0.05", "--quiet", "--seed", "3",
            "--drop-path", "0.1", "--workers", "0", "--sam", "0.01"]
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)
    ref, cut, plain = tmp_path / "ref", tmp_path / "cut", tmp_path / "plain"
    assert train.main(base + ["--output", str(ref)]) == 0
    rows = load(ref / "last.pt")["history"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_top1"] >= 60.0, rows  # chance 33%
    # stopped mid-epoch (step 8 of 18: the 2nd of epoch 2) and resumed: bitwise the uninterrupted run
    assert train.main(base + ["--output", str(cut), "--stop-at-step", "8"]) == 0
    assert train.main(base + ["--output", str(cut), "--resume", "auto"]) == 0
    a, b = load(ref / "last.pt"), load(cut / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # SAM is in the step: one step without it gives other weights. (rho 0.01: at 0.05 this zero-head DeiT on
    # 48 images barely moves in 18 steps; rho -> 0 gives the plain run, as test_rho_zero_equals_base_optimizer)
    assert train.main([x for x in base if x not in ("--sam", "0.01")] + ["--output", str(plain),
                                                                        "--stop-at-step", "1"]) == 0
    assert train.main(base + ["--output", str(tmp_path / "one"), "--stop-at-step", "1"]) == 0
    w1, w2 = load(plain / "last.pt")["model"], load(tmp_path / "one" / "last.pt")["model"]
    assert not torch.equal(w1["conv_proj.weight"], w2["conv_proj.weight"])
    capsys.readouterr()
    assert train.main(base + ["--output", str(tmp_path / "x"), "--accum-steps", "2"]) == 2
    assert "SAM's ascent needs the gradient of the whole batch" in capsys.readouterr().err


def test_train_step_second_pass_leaves_batchnorm_statistics_alone():
    """train.py's train_step with SAM on a BatchNorm net: the running statistics after the step are those of the
    first pass alone (one momentum update from the batch at w), not also of the second pass at w + e."""
    import copy
    from types import SimpleNamespace

    import train
    from imnet.run.config import EvalPolicy
    from imnet.run.data import to_device
    from imnet.metrics import Meter
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=g), torch.randint(0, 3, (8,))
    first_pass = copy.deepcopy(model).train()
    first_pass(to_device(images, labels, "cpu")[0])  # the statistics one forward at w gives
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = SimpleNamespace(lr_at=lambda s: 0.1, accum_steps=1, clip_grad=0.0, channels_last=False, seed=0,
                          random_erase=0.0, loss_label_smoothing=0.0, amp_dtype=None, bce=False,
                          eval_policy=EvalPolicy(32, 32))
    parts = train.Parts(model=model, train_model=model, eval_model=model, optimizer=opt, device=torch.device("cpu"),
                        sam=SAM(opt, rho=0.5))
    train.train_step(cfg, parts, [(images, labels)], 0, 0, 0, Meter("cpu"))
    bn, expected = model[1], first_pass[1]
    assert int(bn.num_batches_tracked) == 1
    for name in ("running_mean", "running_var"):
        assert torch.equal(getattr(bn, name), getattr(expected, name)), name


def test_train_py_sam_with_batchnorm_counts_one_batch_per_step(tmp_path):
    """End to end: train.py --sam on a ResNet-18, 3 optimizer steps: every BatchNorm has seen 3 batches."""
    import train
    from conftest import make_imagefolder
    data = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=2)
    assert train.main(["--data", str(data), "--model", "resnet18", "--epochs", "1", "--batch-size", "8",
                       "--train-crop-size", "32", "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "0.01",
                       "--workers", "0", "--quiet", "--sam", "0.05", "--output", str(tmp_path / "o")]) == 0
    state = torch.load(tmp_path / "o" / "last.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    counts = {int(v) for k, v in state["model"].items() if k.endswith("num_batches_tracked")}
    assert counts == {3}
