"""BatchNorm statistics for an SWA average (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization", Sec. 3.2).

The running means and variances of the averaged snapshots do not describe the activations of their average, so
they are recomputed for the averaged weights: torch's ``update_bn`` runs one pass over training images with the
average in train mode and momentum None, which makes each running statistic the plain mean over the pass's
batches. Do it right after each update of the average (``AveragedModel.update_parameters``) and before the
average is saved or evaluated, so every saved average carries statistics computed for its own weights.

Across DDP ranks, each rank passes its own shard and the ranks' statistics are then averaged. That is not the
one-process result: the first BatchNorm's mean is exact (equal shards), but its variance lacks the spread of the
ranks' batch means, and later layers see activations normalised by the per-rank batch, as in DDP training
without SyncBatchNorm. A model without BatchNorm needs no pass.
"""

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import update_bn


def batchnorm_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recompute_batchnorm(average: nn.Module, images: Iterable[torch.Tensor]) -> bool:
    """Recompute ``average``'s BatchNorm statistics over one pass of ``images`` (not iterated without BatchNorm),
    averaged over the ranks of an initialised process group. -> whether there was anything to recompute."""
    norms = batchnorm_layers(average)
    if not norms:
        return False
    update_bn(images, average)
    if dist.is_initialized() and dist.get_world_size() > 1:
        for m in norms:
            for t in (m.running_mean, m.running_var):
                total = t.clone()
                dist.all_reduce(total, op=dist.ReduceOp.SUM)
                t.copy_(total / dist.get_world_size())
    return True
