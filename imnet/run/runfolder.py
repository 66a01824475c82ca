"""The run folder (``--output``): one run at a time, only the folder's own run continued there (never another
run's checkpoint over it), the leftovers of killed saves removed, the checkpoint a run continues from, and a
best.pt that never lags behind last.pt (nor blocks a resume when it cannot be read).

What a run folder holds: config.json, last.pt (every epoch, every --save-every-minutes, at preemption), best.pt
(the epoch with the best validation top-1), log.jsonl, summary.csv, curves.svg and ``.lock``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path

from imnet.run.atomic import link_file
from imnet.run.checkpoint import CheckpointError, identity, load


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


def claim(cfg, output: Path, cleanup: contextlib.ExitStack, note) -> bool:
    """Rank 0 takes the run folder: refuses a second live run (OUTPUT/.lock, released by ``cleanup``), refuses any
    run there but the folder's own (`check_continues`), and removes the temporary files of saves killed midway
    (``note`` says which). -> whether this run forks: it continues a checkpoint of another folder in this one,
    which then holds a run of its own (`imnet.run.checkpoint.Progress.fork`)."""
    check_output(output)
    lock = RunLock(output).acquire()
    cleanup.callback(lock.release)
    forks = check_continues(cfg, output, find_resume(cfg))
    for path in remove_stale_temporaries(output):
        note(f"note: removed {path.name}, left by a save that was killed midway")
    return forks


def held_checkpoint(output: Path) -> Path | None:
    """The checkpoint that says which run a folder holds: last.pt, else best.pt; None when it holds neither."""
    for name in ("last.pt", "best.pt"):
        if (output / name).exists():
            return output / name
    return None


def check_continues(cfg, output: Path, resume: Path | None) -> bool:
    """A folder that holds a run only continues that run: refuse a new run there, and a checkpoint of another run
    (it would overwrite the folder's checkpoints and mix both runs in its log.jsonl). "The same run" is the run
    id every checkpoint carries (made when the run started; a checkpoint continued into another folder starts
    a new run there, remembering where it came from). -> whether the resume forks into this folder.

    - no checkpoint in the folder: a new run, or the fork of ``resume`` (from elsewhere) into it;
    - ``resume`` lies in the folder (--resume auto, OUTPUT/best.pt): the folder's own run continues;
    - ``resume`` from elsewhere with the folder's run id (a backup of its own checkpoint): it continues too;
    - anything else is refused: a new run over a run, another run's checkpoint, and the checkpoint this folder
      already continues (the folder is ahead of it: --resume auto continues it)."""
    held = held_checkpoint(output)
    if held is None:
        return resume is not None and resume.resolve().parent != output.resolve()
    if resume is None:
        # A bare `python train.py` is the demo; with any flag it is not, so the demo's commands name --recipe demo.
        demo = " (for the demo: python train.py --recipe demo --resume auto)" if cfg.recipe == "demo" else ""
        how = (f"pass --resume auto{demo}" if held.name == "last.pt" else f"pass --resume {held}")
        raise CheckpointError(f"{output} already holds a run ({held.name}). A new run there would overwrite its "
                              f"checkpoints, best.pt included. To continue that run {how}; to start a new one pass "
                              f"another --output (or delete the folder).")
    if resume.resolve().parent == output.resolve():
        return False
    try:
        here = identity(held)
    except CheckpointError as e:
        raise CheckpointError(f"{output} holds {held.name}, which cannot be read ({e}), so nothing tells whether it "
                              f"is a run of its own: {resume} is not continued there. Pass another --output for "
                              f"the continuation of {resume} (or repair or remove {held}).") from None
    theirs = identity(resume)
    if here["run_id"] and here["run_id"] == theirs["run_id"]:
        return False
    where = f"epoch {here['epoch'] + 1}, step {here['step_in_epoch']}"
    if here["forked_from"] and here["forked_from"] == theirs["run_id"]:
        raise CheckpointError(f"{output} already holds a continuation of {resume} (its {held.name}, at {where}, "
                              f"continues that checkpoint's run). Resuming from {resume} again would throw that "
                              f"progress away. To continue it pass --resume auto --output {output}; for another "
                              f"continuation of {resume} pass a new --output.")
    raise CheckpointError(f"{output} holds another run (its {held.name}, at {where}, is not of the run of {resume}). "
                          f"Continuing {resume} there would overwrite that run's checkpoints, best.pt included, and "
                          f"mix both runs in its log.jsonl. Pass an empty or new --output for the continuation (or "
                          f"--output {resume.parent} to continue it in its own folder); --resume auto --output "
                          f"{output} continues the run that folder holds.")


def find_resume(cfg) -> Path | None:
    """The checkpoint this run continues from: --resume PATH, or OUTPUT/last.pt under --resume auto, else None
    (a new run). Nothing is implied after a torchrun --max-restarts restart: in our trials the restarted gloo
    workers hung; a requeued job with --resume auto is the tested path."""
    if cfg.resume == "auto":
        last = Path(cfg.output) / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume) if cfg.resume else None


def repair_best(output: Path, progress, log) -> None:
    """On resume: best.pt must hold the run's best top-1. A best.pt that cannot be read (0 bytes, corrupt) is set
    aside as best.pt.unreadable (kept for inspection, never deleted) so that it blocks nothing; such a best.pt,
    or one that lags behind last.pt (a run written before best.pt was saved ahead of last.pt could be killed
    between the two writes), is rebuilt from last.pt when last.pt's own epoch is that best; otherwise a note
    says what best.pt holds now."""
    best_path, last_path = output / "best.pt", output / "last.pt"
    if not best_path.exists():
        return
    try:
        best = load(best_path).get("best_top1", -1.0)
    except CheckpointError as e:
        aside = set_aside(best_path)
        rebuilt = not progress.pending_eval and progress.best_top1 >= 0 and own_epoch_is_best(progress)
        if rebuilt:
            link_file(last_path, best_path)
        then = ("best.pt now holds last.pt's epoch, the run's best" if rebuilt else
                "the evaluation still due writes best.pt if it improves on the run's best" if progress.pending_eval
                else "the next epoch that improves on the run's best writes best.pt again")
        why = str(e).split(". ")[0]  # the first sentence: what is wrong with it
        log.event("best_unreadable", echo=f"note: {why}; it was moved to {aside.name} and {then}.",
                  path=str(best_path), moved_to=str(aside), rebuilt=rebuilt)
        return
    if progress.pending_eval or progress.best_top1 < 0 or best >= progress.best_top1:
        return
    if own_epoch_is_best(progress):
        link_file(last_path, best_path)
        log.event("best_repaired", echo=f"note: best.pt (top-1 {best:.2f}) lagged behind last.pt (best top-1 "
                  f"{progress.best_top1:.2f}, its own epoch); best.pt now holds that epoch", old=best,
                  new=progress.best_top1)
    else:
        log.event("best_stale", echo=f"warning: best.pt holds top-1 {best:.2f} but the run's best was "
                  f"{progress.best_top1:.2f}, an epoch whose weights were not saved; best.pt is kept as it is",
                  old=best, new=progress.best_top1)


def own_epoch_is_best(progress) -> bool:
    """Whether last.pt's own (last finished) epoch is the run's best: then last.pt is what best.pt must hold."""
    return bool(progress.history) and progress.history[-1].get("val_top1") == progress.best_top1


def set_aside(path: Path) -> Path:
    """Rename ``path`` to PATH.unreadable (then .unreadable.2, ...: an earlier one is never overwritten)."""
    for n in range(1, 1000):
        aside = path.with_name(path.name + ".unreadable" + (f".{n}" if n > 1 else ""))
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise CheckpointError(f"{path} cannot be read and 999 earlier copies were set aside beside it; remove them.")
