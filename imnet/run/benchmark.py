"""Inference benchmark: forward FLOPs, throughput and latency per batch size (``eval.py --bench``)."""

from __future__ import annotations

import math
import time

import torch

from imnet.transforms import normalize


def forward_flops(model, crop_size, device):
    """Forward GFLOPs for one image by ``FlopCounterMode``: 2 per multiply-accumulate, where papers quote MACs
    as "FLOPs" (ResNet-50: 4.1 G), so callers report both (gmacs = gflops / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, crop_size, crop_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def percentile(sorted_values, q):
    """Nearest-rank percentile (no interpolation): the smallest value with at least q% of the data at or below it."""
    return sorted_values[max(math.ceil(q / 100 * len(sorted_values)) - 1, 0)]


@torch.inference_mode()
def benchmark(model, policy, batch_sizes, device, amp_dtype=None, channels_last=False, warmup=5, iters=20):
    """Per batch size: ``warmup`` untimed batches, then ``iters`` timed ones (normalize, forward, synchronise)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward(images):
        x = normalize(images, policy.mean, policy.std, channels_last=channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(x)

    rows = []
    for bs in batch_sizes:
        images = torch.randint(0, 256, (bs, 3, policy.crop_size, policy.crop_size), dtype=torch.uint8, device=device)
        for _ in range(warmup):
            forward(images)
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            forward(images)
            sync()
            times.append(time.perf_counter() - start)
        times.sort()
        rows.append({"batch_size": bs, "img_per_s": bs * iters / sum(times), "p50_ms": 1e3 * percentile(times, 50),
                     "p95_ms": 1e3 * percentile(times, 95), "iters": iters})
    return rows


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
