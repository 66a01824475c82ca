"""The run folder (``--output``): one run at a time, a finished run never overwritten, the leftovers of killed
saves removed, the checkpoint a run continues from, and a best.pt that never lags behind last.pt.

What a run folder holds: config.json, last.pt (every epoch, every --save-every-minutes, at preemption), best.pt
(the epoch with the best validation top-1), log.jsonl, summary.csv, curves.svg and ``.lock``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path

from imnet.atomic import copy_file
from imnet.checkpoint import CheckpointError, load


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


def check_output(output: Path) -> None:
    """--output must be a folder this process can create and write into (checked before any work)."""
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"--output {output} is an existing file, not a folder. The run folder holds last.pt, "
                              f"best.pt and the logs; pass a folder path (new or an earlier run's).")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        raise CheckpointError(f"Cannot write into --output {output}: {e.strerror or e}. Pass a folder you can "
                              f"write to (check the path and its permissions).") from None


def claim(cfg, output: Path, cleanup: contextlib.ExitStack, note) -> None:
    """Rank 0 takes the run folder: refuses a second live run (OUTPUT/.lock, released by ``cleanup``), refuses to
    start a new run over an earlier one without --resume, and removes the temporary files of saves killed
    midway (``note`` says which)."""
    check_output(output)
    lock = RunLock(output).acquire()
    cleanup.callback(lock.release)
    if cfg.resume is None and (output / "last.pt").exists():
        # A bare `python train.py` is the demo; with any flag it is not, so the demo's commands name --recipe demo.
        demo = " (for the demo: python train.py --recipe demo --resume auto)" if cfg.recipe == "demo" else ""
        raise CheckpointError(f"{output} already holds a run (last.pt). A new run there would overwrite its "
                              f"checkpoints, best.pt included. To continue that run pass --resume auto{demo}; to "
                              f"start a new one pass another --output (or delete the folder).")
    for path in remove_stale_temporaries(output):
        note(f"note: removed {path.name}, left by a save that was killed midway")


def find_resume(cfg) -> Path | None:
    """The checkpoint this run continues from: --resume PATH, or OUTPUT/last.pt under --resume auto, else None
    (a new run). Nothing is implied after a torchrun --max-restarts restart: in our trials the restarted gloo
    workers hung; a requeued job with --resume auto is the tested path."""
    if cfg.resume == "auto":
        last = Path(cfg.output) / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume) if cfg.resume else None


def repair_best(output: Path, progress, log) -> None:
    """On resume: best.pt must hold the run's best top-1. A run written before best.pt was saved ahead of last.pt
    could be killed between the two writes (last.pt knowing a newer best than best.pt); if last.pt's own epoch
    is that best, it becomes best.pt; otherwise the stale best.pt is reported."""
    best_path, last_path = output / "best.pt", output / "last.pt"
    if progress.pending_eval or progress.best_top1 < 0 or not best_path.exists():
        return
    best = load(best_path).get("best_top1", -1.0)
    if best >= progress.best_top1:
        return
    newest = progress.history[-1].get("val_top1") if progress.history else None
    if newest == progress.best_top1:
        copy_file(last_path, best_path)
        log.event("best_repaired", echo=f"note: best.pt (top-1 {best:.2f}) lagged behind last.pt (best top-1 "
                  f"{progress.best_top1:.2f}, its own epoch); best.pt now holds that epoch", old=best,
                  new=progress.best_top1)
    else:
        log.event("best_stale", echo=f"warning: best.pt holds top-1 {best:.2f} but the run's best was "
                  f"{progress.best_top1:.2f}, an epoch whose weights were not saved; best.pt is kept as it is",
                  old=best, new=progress.best_top1)
