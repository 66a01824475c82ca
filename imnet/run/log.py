"""Run logs, written by rank 0: the console, log.jsonl, summary.csv (its columns defined here once), curves.svg and,
with --tensorboard, TensorBoard scalars. Imports no torch (imnet.tools.plot and the --help path read this module)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from imnet.run.atomic import NoSpace, no_space, write_text
from imnet.run.errors import UsageError

WEIGHTS = ("model", "ema", "swa")   # the weights a run evaluates: trained, EMA, SWA average
VAL_METRICS = ("loss", "top1", "top5")


def val_key(weights: str, metric: str) -> str:
    return f"val_{metric}" if weights == "model" else f"{weights}_val_{metric}"


def val_row(weights: str, result) -> dict:
    row = {val_key(weights, m): getattr(result, m) for m in VAL_METRICS}
    if weights == "model":
        row["val_count"] = result.count
    return row


SUMMARY_COLUMNS = (["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "epoch_time"]
                   + [val_key(w, m) for w in WEIGHTS[1:] for m in VAL_METRICS] + ["bad_images", "train_size"])


try:
    import resource
except ImportError:  # Windows: the peak memory is NaN
    resource = None


def peak_memory_gib(device) -> float:
    """The CUDA allocator's peak on a GPU, else the max resident set size (kB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.max_memory_allocated(device) / 2**30
    if resource is None:
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# The events whose numbers are TensorBoard scalars, each with its step's field; the events that end a run.
SCALAR_EVENTS = {"train": "global_step", "epoch": "epoch"}
POSITION_FIELDS = ("epoch", "step", "global_step")
FINAL_EVENTS = ("done", "preempted", "nonfinite")


def require_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UsageError(f"--tensorboard needs the tensorboard package ({e}). Install it (pip install tensorboard; in "
                         f"a clone of imnet, pip install -e \".[tensorboard]\"), or drop --tensorboard.") from None
    return SummaryWriter


def scalars(kind: str, fields: dict) -> tuple[int, dict] | None:
    """(step, {tag: number}) of an event TensorBoard shows, else None."""
    if kind not in SCALAR_EVENTS or fields.get(SCALAR_EVENTS[kind]) is None:
        return None
    numbers = {f"{kind}/{k}": float(v) for k, v in fields.items() if k not in POSITION_FIELDS
               and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return int(fields[SCALAR_EVENTS[kind]]), numbers


class RunLog:
    def __init__(self, output: Path | None, enabled: bool = True, quiet: bool = False, tensorboard: bool = False):
        self.output = Path(output) if output is not None else None
        self.enabled = enabled and output is not None
        self.quiet = quiet or not enabled
        self.writer = None  # TensorBoard's, with --tensorboard
        if self.enabled:
            self.output.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self.writer = require_tensorboard()(log_dir=str(self.output))

    def print(self, *args) -> None:
        if not self.quiet:
            print(*args, flush=True)

    def event(self, kind: str, echo: str | None = None, **fields) -> None:
        if echo is not None:
            self.print(echo)
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), "event": kind, **fields}
        try:
            with open(self.output / "log.jsonl", "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
        except OSError as e:
            if not no_space(e):
                raise
            raise NoSpace(f"Cannot append to {self.output / 'log.jsonl'}: the disk is full (or the quota spent). "
                          f"The checkpoints written so far are intact; free some space (or write to another disk) "
                          f"and continue with --resume auto --output {self.output}.") from None
        if self.writer is not None:
            found = scalars(kind, fields)
            if found:
                step, numbers = found
                for tag, value in numbers.items():
                    self.writer.add_scalar(tag, value, step, walltime=rec["time"])
                self.writer.flush()  # a killed run keeps what it logged, as log.jsonl does
            if kind in FINAL_EVENTS:
                self.writer.close()
                self.writer = None

    def write_summary(self, history: list[dict]) -> None:
        """Rewrite summary.csv and curves.svg from the whole history: a resumed run's hold its weights' epochs."""
        if not self.enabled:
            return
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
        w.writeheader()
        w.writerows({k: _fmt(row.get(k)) for k in SUMMARY_COLUMNS} for row in history)
        write_text(self.output / "summary.csv", text.getvalue())
        from imnet.tools.plot import write_curves_svg
        write_curves_svg(history, self.output / "curves.svg", title=self.output.name)


def _fmt(v):
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else v


# ------------------------------------------------------------------------------------ what a run reports

class Window:
    """The steps since the last log line; their loss is summed on the device (no host sync per step)."""

    def __init__(self, zero):
        self.loss, self.steps, self.data_time, self.t0 = zero, 0, 0.0, time.perf_counter()

    def add(self, loss) -> None:
        self.loss = self.loss + loss
        self.steps += 1


def progress_line(epoch: int, epochs: int, step: int, steps: int, loss: float, lr: float, img_s: float,
                  data_share: float, eta_s: float, mem_gib: float) -> str:
    return (f"epoch {epoch + 1}/{epochs}  step {step}/{steps}  loss {loss:.4f}  lr {lr:.3e}  "
            f"{img_s:,.0f} img/s  data {100 * data_share:.0f}%  eta {format_duration(eta_s)}  mem {mem_gib:.2f} GiB")


def log_window(log: RunLog, cfg, progress, window: Window, grad_norm, eta: float, device) -> None:
    elapsed = max(time.perf_counter() - window.t0, 1e-9)
    img_s, data_share = window.steps * cfg.global_batch_size / elapsed, window.data_time / elapsed
    loss, lr, mem = float(window.loss / window.steps), cfg.lr_at(progress.global_step - 1), peak_memory_gib(device)
    log.event("train", echo=progress_line(progress.epoch, cfg.epochs, progress.step_in_epoch, cfg.steps_per_epoch,
                                          loss, lr, img_s, data_share, eta, mem),
              epoch=progress.epoch, step=progress.step_in_epoch, global_step=progress.global_step, loss=loss, lr=lr,
              img_per_s=img_s, data_share=data_share, grad_norm=float(grad_norm) if grad_norm is not None else None,
              peak_mem_gib=mem)


def resume_lr_note(log: RunLog, cfg, optimizer, global_step: int) -> None:
    """After a resume: a note when this command's schedule does not continue the checkpoint's last LR."""
    if global_step == 0 or global_step >= cfg.total_steps:
        return
    group = optimizer.param_groups[0]
    last, nxt = group["lr"] / group.get("lr_scale", 1.0), cfg.lr_at(global_step)
    if math.isclose(last, cfg.lr_at(global_step - 1), rel_tol=1e-6, abs_tol=1e-12):
        return
    log.event("lr_jump", last_lr=last, next_lr=nxt, global_step=global_step, echo=(
        f"note: the LR jumps {'up' if nxt > last else 'down'} from {last:.4g} (the checkpoint's last step, "
        f"{global_step}) to {nxt:.4g} (step {global_step + 1} of {cfg.total_steps}) under this command's schedule "
        f"({cfg.epochs} epochs, {cfg.sched}); to go on at a low LR instead, start a new run with --init-from."))


def train_row(cfg, train: dict, epoch: int, mixing: bool, bad_images: int) -> dict:
    """The training figures of the finished (0-based) ``epoch``'s summary row (no top-1 against mixed labels)."""
    return {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": None if mixing else train["top1"],
            "lr": cfg.lr_at((epoch + 1) * cfg.steps_per_epoch), "bad_images": bad_images}


def epoch_line(row: dict) -> str:
    s = f"epoch {row['epoch']} done in {row['epoch_time']:.1f}s: train loss {row['train_loss']:.4f}"
    if row.get("val_top1") is not None:
        s += f"  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f} top-5 {row['val_top5']:.2f}"
    for weights in WEIGHTS[1:]:
        if row.get(val_key(weights, "top1")) is not None:
            s += f"  {weights.upper()} top-1 {row[val_key(weights, 'top1')]:.2f}"
    return s


def summary(log: RunLog, progress, output: Path, wall: float) -> None:
    last = progress.history[-1] if progress.history else {}
    top1 = last.get("val_top1")
    lines = [f"done in {wall / 60:.1f} min.",
             f"final val top-1 {top1:.2f}%  top-5 {last.get('val_top5'):.2f}%" if top1 is not None else "no evaluation",
             f"best val top-1 {progress.best_top1:.2f}%" if progress.best_top1 >= 0 else "",
             f"checkpoints: {output / 'last.pt'}, {output / 'best.pt'}",
             f"logs: {output / 'log.jsonl'}, {output / 'summary.csv'}; plot: {output / 'curves.svg'}"]
    log.event("done", echo="\n".join(x for x in lines if x), wall_s=wall, final=last, best_top1=progress.best_top1)
