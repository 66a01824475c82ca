"""Distributed plumbing: torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) -> process group (NCCL on CUDA, gloo
on the CPU; none for one process), reductions, rank-0 printing."""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imnet.run.errors import UsageError, message_of


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    control_group: object = None  # a gloo group for small host-side agreements (stop / save flags)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class DeviceError(UsageError):
    """The requested device does not exist here."""


def init(device: str | None = None, timeout_minutes: int = 30) -> DistInfo:
    """Pick the device and start the process group when WORLD_SIZE > 1. ``auto`` and ``cuda`` mean this process's
    GPU under torchrun (cuda:LOCAL_RANK), so ranks never share one; ``auto`` falls back to the CPU."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = env_world_size()
    if device in (None, "auto"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available here; use --device cpu (or auto).")
    elif device.startswith("mps") and not mps_available():
        raise DeviceError(f"--device {device}: Apple's MPS is not available here; use --device cpu (or auto).")
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"--device {device}: {e}. Use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(rank, local_rank, world_size, dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                    device_id=dev if dev.type == "cuda" else None)
            # Host-side flags (stop, timed saves) are agreed on over gloo: checking them never waits for the GPU.
            info.control_group = dist.new_group(backend="gloo")
        except RuntimeError as e:
            if "gloo" not in str(e).lower():
                raise
            reason = str(e).splitlines()[0].split("] ")[-1]  # without gloo's source location
            raise UsageError(f"The processes could not connect over gloo ({reason}). Set GLOO_SOCKET_IFNAME (and "
                             f"NCCL_SOCKET_IFNAME on GPUs) to the network interface the nodes reach each other on, "
                             f"as docs/multinode.md shows.") from None
    return info


def mps_available() -> bool:
    """Apple's Metal GPU (torch.backends.mps is absent from some builds; single-process only)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_amp(device: torch.device) -> str:
    """What a bare ``--amp`` means on ``device``: bf16 on CUDA GPUs that support it, fp16 on older ones, and "none"
    elsewhere (bf16 autocast is many times slower than fp32 on CPUs without native bf16; MPS support varies)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "none"


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (flushed, so logs interleave sensibly under torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def eprint0(*args) -> None:
    print0(*args, file=sys.stderr)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_object(obj, group=None) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out


def agree(info: DistInfo, decide) -> list:
    """``decide()`` on every rank, then one exchange over the control group: a UsageError on any rank is raised on
    every rank, with the paragraph of the lowest rank that refused; otherwise -> every rank's result, in rank order.
    A refusal decided on one rank (rank 0 claims the run folder) thus stops every rank at once, none left waiting
    in a later collective."""
    try:
        outcome = (None, decide())
    except UsageError as e:
        outcome = (message_of(e), None)
    outcomes = gather_object(outcome, info.control_group) if info.distributed else [outcome]
    refusal = next((message for message, _ in outcomes if message is not None), None)
    if refusal is not None:
        raise UsageError(refusal)
    return [result for _, result in outcomes]


def broadcast_bytes(data: bytes | None, info: DistInfo) -> bytes:
    """Rank 0's ``data`` on every rank (over the control group: host memory, no GPU)."""
    box = [data]
    dist.broadcast_object_list(box, src=0, group=info.control_group)
    return box[0]


class Flags:
    """Named host-side values (stop, save, a count) that all ranks agree on, their maximum, without a per-step wait:
    ``post`` starts an asynchronous all-reduce and returns the values agreed one ``post`` earlier, so every rank acts
    on the same step and nothing blocks the GPU. One process: ``post`` returns what it is given."""

    def __init__(self, info: DistInfo, *names: str):
        self.info = info
        self.Agreed = collections.namedtuple("Agreed", names)
        self._pending = self._buf = None

    def post(self, **values):
        if not self.info.distributed:
            return self.Agreed(**values)
        agreed = self.drain()
        self._buf = torch.tensor([int(values[name]) for name in self.Agreed._fields], dtype=torch.int32)
        self._pending = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=self.info.control_group, async_op=True)
        return agreed

    def drain(self):
        """Wait for the last posted values and return them (all 0 when none is pending)."""
        if self._pending is None:
            return self.Agreed(*[0] * len(self.Agreed._fields))
        self._pending.wait()
        self._pending = None
        return self.Agreed(*self._buf.tolist())


@contextlib.contextmanager
def main_rank_first(info: DistInfo, needed: bool = True):
    """Under torchrun, rank 0 runs the block first and the other ranks after it (when ``needed``): a download into
    a cache that every rank then reads happens once. Rank 0 releases the others however its block ends."""
    needed = needed and info.distributed
    if needed and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if needed and info.is_main:
            dist.barrier()


def set_backends(device: torch.device, deterministic: bool = False) -> None:
    """--deterministic: torch's deterministic algorithms (a warning where an op has none) and no cuDNN autotuning;
    otherwise cuDNN picks the fastest convolution for each shape on CUDA."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
