"""Checkpoints that survive kills, load safely, and resume a run exactly; preemption signals.

- Atomic: the file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed
  over the old one (``os.replace`` is atomic on POSIX), and the folder is fsync'ed. A kill at any moment
  leaves either the old complete file or the new complete file, never a torn one.
- Safe: every load uses ``torch.load(..., weights_only=True)``, which unpickles only tensors and plain
  Python containers, so a checkpoint from elsewhere cannot run code. Hence everything saved here is
  tensors, numbers, strings, lists, tuples and dicts (RNG states included).
- Exact: together with the per-sample and per-step seeding in data.py and engine.py, model, EMA, optimizer,
  scaler, meter and RNG states make a resumed run bitwise equal to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


def write_atomic(path: str | os.PathLike, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, flush and fsync it, rename it over ``path``, then
    fsync the folder: a kill at any moment leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Check the path (train.py writes last.pt "
                              f"and best.pt into its --output folder).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated files and foreign pickles
        first_line = (str(e).splitlines() or ["(no message)"])[0][:300]  # an empty file gives an empty message
        raise CheckpointError(f"Cannot read checkpoint '{path}': {type(e).__name__}: {first_line}. "
                              f"The file is corrupt, truncated, or holds objects other than tensors and plain "
                              f"Python types (which imnet refuses to unpickle for safety).") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict.")
    return ckpt


# ------------------------------------------------------------------------------------------ the schema

VERSION = 2  # bump when a key changes meaning; read_state refuses other versions with a message

# What every train.py checkpoint holds. "model" is a plain state_dict that loads strictly into the torchvision
# constructor; "config" is the run's resolved imnet.config.Config as a dict (with its "eval_policy").
# "ema" is imnet.ema.ModelEma's state_dict, "swa" torch's AveragedModel's ("module."-prefixed weights with
# the recomputed BatchNorm statistics, and "n_averaged"); both None when the run keeps none.
REQUIRED = ("version", "model", "optimizer", "config", "classes", "epoch", "step_in_epoch", "global_step")


@dataclass
class Progress:
    """Where a run is: the epoch in progress (0-based), optimizer steps done in it and in the whole run, one
    summary row per finished epoch, and the best validation top-1 so far (-1 before any evaluation).

    ``pending_eval``: the last finished epoch's training is saved but its evaluation is not done yet (train.py
    checkpoints an epoch before evaluating it, so that a failed or interrupted evaluation loses nothing); a
    resumed run evaluates first."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    pending_eval: bool = False


def make_state(*, model: dict, optimizer: dict, progress: Progress, config: dict, classes: list,
               ema: dict | None = None, swa: dict | None = None, scaler: dict | None = None, meter: dict | None = None,
               rngs: list | None = None, bad_images: dict | None = None, imnet_version: str = "") -> dict:
    """The one place that builds a checkpoint (state_dicts in, a plain dict out)."""
    return {"version": VERSION, "imnet_version": imnet_version, "model": model, "ema": ema, "swa": swa,
            "optimizer": optimizer, "scaler": scaler, "epoch": progress.epoch, "step_in_epoch": progress.step_in_epoch,
            "global_step": progress.global_step, "history": list(progress.history), "best_top1": progress.best_top1,
            "pending_eval": progress.pending_eval,
            "metrics": progress.history[-1] if progress.history else None, "meter": meter, "rng": rngs or [],
            "bad_images": bad_images, "config": config, "classes": list(classes)}


def read_state(path: str | os.PathLike) -> dict:
    """The one place that reads a checkpoint: `load`, then check that it is a train.py checkpoint of this
    schema version. Raises CheckpointError with the fix otherwise."""
    return check_state(load(path), path)


def check_state(state: dict, path) -> dict:
    """``state`` (a loaded file) if it is a train.py checkpoint of this schema version, else CheckpointError."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        hint = (" It looks like a plain state_dict: use --model NAME --weights-file FILE."
                if state and all(torch.is_tensor(v) for v in state.values()) else "")
        raise CheckpointError(f"'{path}' is not a train.py checkpoint (it has no {', '.join(missing)} entries).{hint}")
    if state["version"] != VERSION:
        raise CheckpointError(f"'{path}' was written with checkpoint format {state['version']}; this imnet reads "
                              f"format {VERSION}. Its weights are the plain state_dict under 'model'.")
    return state


def progress_of(state: dict) -> Progress:
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    [dict(r) for r in state.get("history") or []], state.get("best_top1", -1.0),
                    bool(state.get("pending_eval", False)))


def rng_state() -> dict:
    """This process's RNG states as plain types (weights_only-loadable)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    version, s, gauss = state["python"]
    random.setstate((version, tuple(s), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _signals(*names: str) -> tuple:
    """The named signals this platform has (Windows has SIGTERM but no SIGUSR1)."""
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


class PreemptionSignals:
    """SIGTERM / SIGUSR1 set a flag instead of killing the process.

    Clusters (SLURM, Kubernetes) send one of these before they kill a job, usually to the whole process group,
    DataLoader workers included (`imnet.data` makes the workers ignore them: the main process decides). The
    training loop reads ``requested`` after each step, writes ``last.pt`` and exits 0; ``--resume auto`` then
    continues exactly. train.py installs the handler first thing, so a signal during startup is not lost.

    ``deferred()`` blocks the signals for a stretch (kept pending, delivered at its end) where worker
    processes are forked: a child starts with the blocked mask and stays immune until its worker init has
    set the signals to "ignore" - otherwise a signal in that instant would kill a just-forked worker.
    """

    SIGNALS = _signals("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.requested = False
        self.signum = None
        self._old = {}

    def _handler(self, signum, frame):
        self.requested = True
        self.signum = signum

    def install(self) -> "PreemptionSignals":
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self):
        if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks (and no fork)
            yield
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------------------------------ the run folder

def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie or another user's process counts). On Windows
    os.kill(pid, 0) would terminate the process, so there every pid counts as alive."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class RunLock:
    """``OUTPUT/.lock``: one run writes into a run folder at a time.

    The lock is an ``fcntl.flock`` on the file, which the kernel releases when the process dies however it
    dies (kill -9 included), so a crashed run never leaves it stuck; the file's text (pid, host) only names
    the owner in the refusal message. Where fcntl is absent (Windows) there is no lock (a note says so).
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fh = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            print(f"note: no run-folder lock on this platform; do not start two runs into {self.path.parent}",
                  flush=True)
            return self
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise CheckpointError(f"Another run is writing into {self.path.parent} ({owner}). Two runs in one "
                                  f"folder would interleave log.jsonl and overwrite each other's checkpoints. "
                                  f"Wait for it to finish (or stop it), or pass another --output.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the flock
            self._fh = None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files (from `save_atomic`) whose writer process is gone (a kill -9 mid-save
    leaves one, tens of MB each). Those of live processes are left alone. Returns the removed paths."""
    removed = []
    for p in Path(folder).glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
