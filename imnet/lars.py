"""LARS and LAMB: layer-wise trust ratios for large-batch training.

Both rescale each parameter tensor's ("layer's") step by a trust ratio built from the norm of its weights, so
that no layer's update is large relative to its weights, whatever the global LR.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", Algorithm 1), with
momentum m, weight decay beta, trust coefficient eta and global LR lr, for each tensor w with gradient g:

    ratio = eta * ||w|| / (||g|| + beta * ||w|| + eps)
    d     = ratio * (g + beta * w)
    b     = m * b + d                       (b = d on the first step)
    w     = w - lr * b                      (Nesterov: w - lr * (d + m * b))

The paper writes the LR inside the momentum (v = m v + lr * ratio * (g + beta w)); here it is outside, as in
torch.optim.SGD, NVIDIA apex's LARC and timm's Lars: the same steps at a constant LR, and no jump in the buffer
when a schedule changes the LR. (TensorFlow's contrib LARSOptimizer, used by the MLPerf TF references, scales
the whole momentum buffer by the current ratio.)

LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR,
Algorithm 2), with Adam moments and bias correction at step t, decoupled weight decay lambda:

    m = b1 * m + (1 - b1) * g,   v = b2 * v + (1 - b2) * g^2
    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u = r + lambda * w
    w = w - lr * (||w|| / ||u||) * u

The weight decay is added to the Adam direction (as in AdamW, not to the gradient) and so sits inside the trust
ratio, as in the paper, NVIDIA's FusedLAMB and timm's Lamb (its default, decoupled_decay=False). FusedLAMB and
timm's Lamb also divide every gradient by max(1, global grad norm) inside the step (max_grad_norm=1.0); here
that is the training loop's job (clip_grad_norm_ at 1.0 gives the same gradients up to its 1e-6).

Zero norms: when ||w|| = 0 (a tensor initialised to zero) or the step's norm is 0, the ratio is 1, as in all
the reference implementations: it would otherwise be 0 (the tensor never moves) or 0/0.

Which tensors get a trust ratio (the "exclusions"): by default, exactly those in a param group with
weight_decay != 0 (a group may set ``"trust_ratio": True`` or ``False``), so the usual two groups
(imnet.optim.param_groups) give the published behaviour: no decay and no trust ratio for norms, biases, tokens
and position embeddings; those groups take plain momentum SGD / Adam(W) steps. As the references: the MLPerf
ResNet-50 references skip both for batch-norm parameters and biases (TensorFlow's LARSOptimizer
``skip_list=['batch_normalization', 'bias']``), timm's Lars and Lamb adapt only when weight_decay != 0 (unless
``always_adapt``), apex's FusedLAMB likewise (unless ``use_nvlamb``), and tensorflow_addons' LAMB defaults
``exclude_from_layer_adaptation`` to ``exclude_from_weight_decay``.

Trust clipping (off by default): LARS with ``trust_clip`` is LARC (apex's, clip=True): the per-layer LR
lr * ratio is capped at lr, i.e. ratio <- min(ratio / lr, 1). LAMB's caps the ratio at 1 (timm's, "LAMBC").

The step loops over tensors with a few kernels each and never reads a value back to the host.
"""

import torch

__all__ = ["LARS", "LAMB"]


def _check(name, value, low=0.0, high=None):
    if not (value >= low and (high is None or value < high)):
        span = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, got {value!r}.")


def _ratio(ratio, w_norm, u_norm):
    """The trust ratio, or 1 where the weight norm or the step's norm is 0 (tensors, no host sync)."""
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


def _adapts(group):
    wants = group["trust_ratio"]
    return group["weight_decay"] != 0 if wants is None else bool(wants)


class LARS(torch.optim.Optimizer):
    """LARS. Defaults: eta 0.001 (the paper's), momentum 0.9, eps 0 (the paper's and TensorFlow's; timm: 1e-8)."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=0.0,
                 nesterov=False, trust_clip=False, trust_ratio=None):
        _check("lr", lr)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay)
        _check("trust_coefficient", trust_coefficient)
        _check("eps", eps)
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0; set momentum (e.g. 0.9) or nesterov=False.")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, nesterov=nesterov,
                                      trust_clip=trust_clip, trust_ratio=trust_ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()
                if _adapts(group):
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(p.grad)
                    ratio = _ratio(group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"]),
                                   w_norm, g_norm)
                    if group["trust_clip"]:
                        # the layer's LR lr * ratio may not exceed lr (LARC); lr = 0 gives ratio 1
                        ratio = torch.clamp(ratio / lr, max=1.0) if lr > 0 else torch.ones_like(ratio)
                    d.mul_(ratio)
                if mom != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d  # a fresh tensor, never written again below
                    else:
                        state["momentum_buffer"].mul_(mom).add_(d)
                    buf = state["momentum_buffer"]
                    d = d.add(buf, alpha=mom) if group["nesterov"] else buf
                p.add_(d, alpha=-lr)
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB. Defaults as the paper's BERT code and timm: betas (0.9, 0.999), eps 1e-6."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust_clip=False,
                 trust_ratio=None):
        _check("lr", lr)
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        _check("eps", eps)
        _check("weight_decay", weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      trust_clip=trust_clip, trust_ratio=trust_ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), wd = group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(group["eps"])
                u = (m / (1 - b1 ** t)).div_(denom)
                if wd != 0:
                    u.add_(p, alpha=wd)
                if _adapts(group):
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                    ratio = _ratio(w_norm / u_norm, w_norm, u_norm)
                    if group["trust_clip"]:
                        ratio = torch.clamp(ratio, max=1.0)
                    u.mul_(ratio)
                p.add_(u, alpha=-group["lr"])
        return loss
