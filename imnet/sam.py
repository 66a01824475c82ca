"""Sharpness-Aware Minimization (SAM) and its adaptive variant (ASAM), wrapping any base optimizer.

SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR)
minimizes the worst loss in a ball of radius rho around the weights, max_{||e|| <= rho} L(w + e). A
first-order solution of the inner maximum gives the update, with g = grad L(w):

    e   = rho * g / ||g||_2                       (one global 2-norm over all parameters)
    g'  = grad L(w + e)
    w  <- base_optimizer_step(w, g')              (the step is taken from w, not from w + e)

ASAM (Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
Deep Neural Networks", ICML) measures the ball in the coordinates T_w^-1 w, which makes the sharpness
invariant to rescaling weights that leaves the function unchanged (e.g. before a BatchNorm):

    T_w = |w| + eta                               (elementwise)
    e   = rho * T_w^2 g / ||T_w g||_2

Kwon et al. use rho about 10x larger than SAM's (0.5 vs 0.05 for their CIFAR runs) and eta = 0.01. Their
code applies T_w only to tensors named "weight" (T = 1 for biases); here T_w applies to every parameter given
(a parameter list carries no names): pass the biases to a second SAM(adaptive=False) for the exact reference.

A zero first-pass gradient gives e = 0 (no NaN). A non-finite one (an fp16 overflow) gives e = NaN for every
parameter on purpose: the second pass then produces NaN gradients, which GradScaler.step() detects, so the
step is skipped and the scale lowered, as for an overflow without SAM. ``descend`` restores the saved weights
by copy, so no NaN survives the step, and ``keep_buffers`` keeps it out of BatchNorm's running statistics.

The loop stays visible; ``SAM`` only moves the weights out and back.

One step, fp16 with ``scaler = torch.amp.GradScaler()`` (in fp32, or bf16 autocast, which needs no scaler, drop
the scaler: ``loss.backward()``, no ``unscale_``, ``optimizer.step()``)::

    sam = SAM(optimizer, rho=0.05)              # or SAM(model.parameters(), ...)
    with torch.autocast("cuda", torch.float16):
        loss = criterion(model(x), y)           # first pass at w (log this loss)
    scaler.scale(loss).backward()               # p.grad = s * g
    sam.ascend()                                # w -> w + e; clears p.grad; NO unscale_ before it (see below)
    with keep_buffers(model), torch.autocast("cuda", torch.float16):   # BatchNorm statistics not updated at w + e
        loss2 = criterion(model(x), y)          # second pass: same x, y (same augmentation, same mixup)
    scaler.scale(loss2).backward()              # p.grad = s * g'
    sam.descend()                               # w + e -> w; p.grad is g'
    scaler.unscale_(optimizer)                  # the one unscale_ of this step, on g'
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)   # optional: clips g'
    scaler.step(optimizer)                      # skipped if g' (or, through NaN, g) overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

Why no unscale_ before ``ascend``: GradScaler allows one ``unscale_`` per ``step()``; calling it on the first
pass would leave the second pass's gradients scaled while the scaler believes them unscaled, and ``step``
would apply s * g'. The ascent direction is invariant to the scale, rho * (s g) / ||s g|| = rho * g / ||g||
(also for ASAM, T_w s g is linear in s), bitwise so with s a power of two. Only the norm ``ascend`` returns is
s * ||g||: divide it by ``scaler.get_scale()`` to log it.

Gradient clipping acts on g' only (as above): global-norm clipping only rescales g, which the ascent ignores.

DDP: the first backward must NOT run under ``model.no_sync()``: its all-reduce gives every rank the same global
gradient, so every rank moves to the same w + e; the second backward is all-reduced as usual, and ``descend``
restores the same w everywhere. (Under no_sync each rank ascends along its own gradient: per-replica
"m-sharpness" (Foret et al., Sec. 4.1), consistent across ranks but not the SAM step on the global batch.)

Gradient accumulation is refused (``check_accum_steps``): the ascent needs the gradient of the whole (global)
batch before any second pass, so every micro-batch (with its augmentation and mixing) would have to be kept or
recomputed until the ascent, which an accumulating loop does not do. Ascending per micro-batch is m-sharpness
with m = the micro-batch, again not SAM on the batch.

Costs: two forward/backward passes per step and one copy of the parameters (the saved w). Dropout and stochastic
depth draw new masks in the second pass, the usual practice.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["SAM", "keep_buffers", "check_accum_steps"]


class SAM:
    """Moves the weights to w + e(w) and back. ``params``: an optimizer (its param_groups' parameters) or an
    iterable of parameters; ``adaptive``: ASAM with T_w = |w| + ``eta``."""

    def __init__(self, params, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01):
        if rho < 0 or eta < 0:
            raise ValueError(f"SAM needs rho >= 0 and eta >= 0, got rho={rho}, eta={eta}")
        if isinstance(params, torch.optim.Optimizer):
            params = [p for group in params.param_groups for p in group["params"]]
        self.params = list(params)
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self._saved = None  # [(parameter, its value w)] between ascend and descend

    @torch.no_grad()
    def ascend(self) -> torch.Tensor:
        """w -> w + e from p.grad (parameters without one are skipped); sets p.grad to None so that the second
        backward starts from zero. Returns ||g|| (ASAM: ||T_w g||), as a tensor."""
        if self._saved is not None:
            raise RuntimeError("SAM.ascend() called twice without descend() in between")
        params = [p for p in self.params if p.grad is not None]
        if not params:
            self._saved = []
            return torch.zeros(())
        device = params[0].device  # model parallelism: reduce the per-tensor norms on one device
        if self.adaptive:
            t = [p.abs().add_(self.eta) for p in params]
            tg = [ti * p.grad for ti, p in zip(t, params)]
        else:
            tg = [p.grad for p in params]
        # Per-tensor norms in at least float32 (fp16 squares overflow above 256), combined in float64.
        norm = torch.linalg.vector_norm(torch.stack([
            torch.linalg.vector_norm(x, dtype=torch.promote_types(x.dtype, torch.float32)).to(device, torch.float64)
            for x in tg]))
        # No .item(): no host sync. rho / 0 = inf is computed but not selected when g = 0.
        scale = torch.where(norm == 0, 0.0, self.rho / norm)
        scale = torch.where(torch.isfinite(norm), scale, math.nan)  # see the module docstring (fp16 overflow)
        self._saved = []
        for i, p in enumerate(params):
            # ASAM's T_w^2 g is T_w * (T_w g), reusing the product already formed for the norm.
            e = (t[i] * tg[i] if self.adaptive else tg[i]) * scale.to(p.device)
            self._saved.append((p, p.detach().clone()))
            p.add_(e.to(p.dtype))
            p.grad = None
        return norm

    @torch.no_grad()
    def descend(self) -> None:
        """w + e -> w, by copy: (w + e) - e would round and keep NaN."""
        if self._saved is None:
            raise RuntimeError("SAM.descend() called without ascend() before it")
        for p, w in self._saved:
            p.copy_(w)
        self._saved = None


@contextlib.contextmanager
def keep_buffers(model: torch.nn.Module):
    """Restore every buffer of ``model`` on exit (BatchNorm's running statistics and batch count). Around the
    second forward, at perturbed weights, it keeps every batch from counting twice (or writing NaN after an fp16
    overflow); that forward still normalizes with the batch statistics, so g' is unchanged."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def check_accum_steps(accum_steps: int) -> None:
    """Raise ValueError for accum_steps > 1 (module docstring)."""
    if accum_steps > 1:
        raise ValueError(f"SAM does not support gradient accumulation (accum_steps={accum_steps}): SAM's ascent "
                         f"needs the gradient of the whole batch. Use accum_steps=1 with a batch that fits, or more "
                         f"processes.")
