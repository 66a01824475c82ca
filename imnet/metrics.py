"""Top-k correct counts; a meter that sums on the device and reduces across ranks only when asked; the NaN guard.

Top-k accuracy (as reported for ImageNet since Krizhevsky et al. 2012): a prediction is correct at k
when the true class is among the k highest logits. With ties that is ambiguous (``torch.topk`` picks
among equal values in an unspecified order), so the rule here is the conservative one:

    rank = #{ j != y : not (z_j < z_y) }          (classes scoring at least as high as the target)
    correct@k  <=>  rank < k.

A tie with the target counts against it, so accuracy is never overstated: constant logits (a dead
network) score 0, not 100% top-1, and a NaN logit counts against the target (a NaN target logit makes
the sample wrong). Without ties this equals the ``torch.topk`` count.

The meter keeps one float64 vector on the device ([loss*n, n, n_topk, correct@k...]; float64 holds
integers exactly up to 2**53), so updates never synchronise with the host, and ``compute`` sends it
through a single all_reduce when a process group is initialised and ``distributed=True``.
"""

import torch
import torch.distributed as dist

__all__ = ["topk_correct", "Meter"]


def topk_correct(logits, target, ks=(1, 5)):
    """Number of samples whose integer ``target`` is correct at each k: int64 (len(ks),), no host sync."""
    if target.dtype.is_floating_point:
        raise TypeError("topk_correct needs integer class targets; pass soft_targets.argmax(1) if needed")
    target_logit = logits.gather(1, target.view(-1, 1).long())
    rank = (~(logits < target_logit)).sum(dim=1) - 1  # the target itself is never < itself: remove it
    # Python-int comparisons: no small host-to-device copy (and wait) on every call.
    return torch.stack([(rank < k).sum() for k in ks])


class Meter:
    """Running mean loss and top-k accuracy over an epoch, accumulated on ``device``.

    ``update``: ``loss`` is the batch-mean loss tensor, ``n`` the batch size (default ``logits.shape[0]``);
    top-k is counted only with logits and an integer target. ``compute`` -> dict(loss, top1, top5, count),
    accuracies in percent (NaN when nothing was counted), count = samples behind the loss.
    """

    def __init__(self, device, ks=(1, 5)):
        self.device = torch.device(device)
        self.ks = tuple(ks)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(3 + len(self.ks), dtype=dtype, device=self.device)

    def reset(self):
        self.sums.zero_()

    @torch.no_grad()
    def update(self, loss, logits=None, target=None, n=None):
        if n is None:
            if logits is None:
                raise ValueError("Meter.update needs n (the batch size) when no logits are given")
            n = logits.shape[0]
        self.sums[0] += loss.detach().to(self.sums.dtype) * n
        self.sums[1] += n
        if logits is not None and target is not None and not target.dtype.is_floating_point:
            self.sums[2] += logits.shape[0]
            self.sums[3:] += topk_correct(logits.detach(), target, self.ks).to(self.sums.dtype)

    def compute(self, distributed=True):
        sums = self.sums.clone()
        if distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        loss_sum, n, n_topk, *correct = sums.tolist()
        result = dict(loss=loss_sum / n if n else float("nan"))
        for k, c in zip(self.ks, correct):
            result[f"top{k}"] = 100.0 * c / n_topk if n_topk else float("nan")
        result["count"] = int(n)
        return result

    def state_dict(self):
        return {"sums": self.sums.cpu(), "ks": list(self.ks)}

    def load_state_dict(self, state):
        self.sums.copy_(state["sums"].to(self.sums.device, self.sums.dtype))


class NonFiniteLoss(Exception):
    """The loss of optimizer step ``step`` was NaN or infinite."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class NonFiniteGuard:
    """The first optimizer step whose loss was NaN or infinite, kept on the device: ``update`` is a masked fill
    (no host sync per step); ``check`` reads it back and raises NonFiniteLoss (at log time and before every save,
    so no checkpoint is written after a NaN)."""

    def __init__(self, device):
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.first_bad.masked_fill_((self.first_bad < 0) & ~torch.isfinite(loss), step)

    def check(self) -> None:
        step = int(self.first_bad)
        if step >= 0:
            raise NonFiniteLoss(step)
