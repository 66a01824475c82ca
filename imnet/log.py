"""Run logs: a console progress line, ``log.jsonl`` (every event), ``summary.csv`` (one row per epoch)
and ``curves.svg``. Only rank 0 writes; the other ranks get a logger that does nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

SUMMARY_COLUMNS = ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "epoch_time",
                   "ema_val_loss", "ema_val_top1", "ema_val_top5", "swa_val_loss", "swa_val_top1", "swa_val_top5",
                   "bad_images", "train_size"]


try:
    import resource  # POSIX only
except ImportError:  # Windows: no peak resident set size; the figure is reported as NaN ("nan GiB")
    resource = None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU; on the CPU (and MPS) the max resident set
    size, which getrusage reports in kB on Linux but in bytes on macOS; NaN where unknown (Windows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if resource is None:
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunLog:
    def __init__(self, output: Path | None, enabled: bool = True, quiet: bool = False):
        self.output = Path(output) if output is not None else None
        self.enabled = enabled and output is not None
        self.quiet = quiet or not enabled
        if self.enabled:
            self.output.mkdir(parents=True, exist_ok=True)

    def print(self, *args) -> None:
        if not self.quiet:
            print(*args, flush=True)

    def event(self, kind: str, echo: str | None = None, **fields) -> None:
        """Append one JSON line ``{"time", "event", ...fields}`` to log.jsonl; print ``echo`` if given."""
        if echo is not None:
            self.print(echo)
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), "event": kind, **fields}
        with open(self.output / "log.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def write_summary(self, history: list[dict]) -> None:
        """Rewrite summary.csv and curves.svg from the full per-epoch history (kept in the checkpoint,
        so that a resumed run's files hold exactly the epochs the weights went through)."""
        if not self.enabled:
            return
        tmp = self.output / ".summary.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: _fmt(row.get(k)) for k in SUMMARY_COLUMNS})
        os.replace(tmp, self.output / "summary.csv")
        try:
            from imnet.plot import write_curves_svg
        except ImportError:  # plotting is optional; the CSV is the record
            return
        write_curves_svg(history, self.output / "curves.svg", title=self.output.name)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def progress_line(epoch: int, epochs: int, step: int, steps: int, loss: float, lr: float, img_s: float,
                  data_share: float, eta_s: float, mem_gib: float) -> str:
    return (f"epoch {epoch + 1}/{epochs}  step {step}/{steps}  loss {loss:.4f}  lr {lr:.3e}  "
            f"{img_s:,.0f} img/s  data {100 * data_share:.0f}%  eta {format_duration(eta_s)}  mem {mem_gib:.2f} GiB")
