"""The run folder (``--output``): one run at a time, only its own run continued there, stale temporaries removed,
and a best.pt that never lags behind last.pt (nor blocks a resume when unreadable)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imnet.run.atomic import link_file
from imnet.run.checkpoint import CheckpointError, identity, load


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs here (a zombie or another user's counts; on Windows, where os.kill ends it, any)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except OSError as e:  # PermissionError: another user's
        return not isinstance(e, ProcessLookupError)
    return True


def lock(folder: Path, cleanup: contextlib.ExitStack) -> None:
    """``OUTPUT/.lock``, an flock until ``cleanup`` closes it (or the process dies); its text names the owner."""
    try:
        import fcntl
    except ImportError:
        print(f"note: no run-folder lock on this platform; do not start two runs into {folder}", flush=True)
        return
    fh = open(folder / ".lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = fh.read().strip() or "unknown"
        fh.close()
        raise CheckpointError(f"Another run is writing into {folder} ({owner}). Wait for it to finish (or stop it), "
                              f"or pass another --output.") from None
    cleanup.callback(fh.close)
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    fh.flush()


def remove_stale_temporaries(folder: Path, note) -> None:
    for p in Path(folder).glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            note(f"note: removed {p.name}, left by a save that was killed midway")


def check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"--output {output} is an existing file, not a folder; pass a folder path (new or an "
                              f"earlier run's).")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        raise CheckpointError(f"Cannot write into --output {output}: {e.strerror or e}. Pass a folder you can "
                              f"write to.") from None


@dataclass
class Resume:
    """What rank 0 decided the run starts from, told to every rank: ``path`` None is a fresh start."""
    path: Path | None = None
    checksum: str = ""    # the checkpoint's content digest: another rank reads its own view of path only if equal
    forks: bool = False   # it continues another folder's checkpoint here, as a run of its own


def claim(cfg, output: Path, cleanup: contextlib.ExitStack, note) -> Resume:
    """Rank 0 takes the run folder (lock, `check_continues`, stale temporaries removed) and decides the resume
    (with --dry-run it only decides)."""
    path = find_resume(cfg)
    if cfg.dry_run:
        return Resume(path)
    check_output(output)
    lock(output, cleanup)
    forks = check_continues(cfg, output, path)
    remove_stale_temporaries(output, note)
    return Resume(path, identity(path)["checksum"] if path else "", forks)


def first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0]


def check_continues(cfg, output: Path, resume: Path | None) -> bool:
    """Refuse a new run over the folder's run, another run's checkpoint, and the checkpoint the folder already
    continues; -> whether ``resume``, from elsewhere, forks into an empty folder. "The same run": the run id."""
    held = next((output / name for name in ("last.pt", "best.pt") if (output / name).exists()), None)
    if held is None:
        return resume is not None and resume.resolve().parent != output.resolve()
    if resume is None:
        # A bare `python train.py` is the demo; with any flag it is not, so the demo's commands name --recipe demo.
        demo = " (for the demo: python train.py --recipe demo --resume auto)" if cfg.recipe == "demo" else ""
        how = f"pass --resume auto{demo}" if held.name == "last.pt" else f"pass --resume {held}"
        raise CheckpointError(f"{output} already holds a run ({held.name}), which a new run would overwrite. To "
                              f"continue it {how}; to start a new one pass another --output (or delete the folder).")
    if resume.resolve().parent == output.resolve():
        check_not_behind(output, resume)
        return False
    try:
        here = identity(held)
    except CheckpointError as e:
        raise CheckpointError(f"{output} holds {held.name}, which cannot be read ({first_sentence(e)}), so {resume} "
                              f"is not continued there. Pass another --output (or repair or remove {held}).") from None
    theirs = identity(resume)
    if here["run_id"] and here["run_id"] == theirs["run_id"]:
        check_not_behind(output, resume)
        return False
    where = f"its {held.name}, at epoch {here['epoch'] + 1}, step {here['step_in_epoch']}"
    if here["forked_from"] and here["forked_from"] == theirs["run_id"]:
        raise CheckpointError(f"{output} already holds a continuation of {resume} ({where}). Continue it with "
                              f"--resume auto --output {output}, or pass a new --output for another continuation.")
    raise CheckpointError(f"{output} holds another run ({where}), whose checkpoints and log.jsonl resuming {resume} "
                          f"would overwrite. Pass a new --output or --output {resume.parent}; --resume auto --output "
                          f"{output} continues that run.")


def check_not_behind(output: Path, resume: Path) -> None:
    """Refuse a resume into ``output`` from a checkpoint of its run that is behind its last.pt (best.pt, a backup),
    which the resumed run would overwrite (and log.jsonl would hold two trajectories)."""
    last = output / "last.pt"
    if not last.is_file() or resume.resolve() == last.resolve():
        return
    ahead, behind = identity(last), identity(resume)
    if behind["global_step"] >= ahead["global_step"]:
        return
    at = lambda ident: f"epoch {ident['epoch'] + 1}, step {ident['step_in_epoch']}"
    raise CheckpointError(f"{resume} is behind {last} ({at(behind)} vs {at(ahead)}), which resuming it in {output} "
                          f"would overwrite. Continue from last.pt with --resume auto --output {output}, or fork "
                          f"{resume.name} into a new folder with --resume {resume} --output NEW.")


def find_resume(cfg) -> Path | None:
    if cfg.resume == "auto":
        last = Path(cfg.output) / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume) if cfg.resume else None


def repair_best(output: Path, progress, log) -> None:
    """On resume: an unreadable best.pt is set aside (never deleted); it, or a best.pt that lags behind last.pt
    (a run killed between the two writes), is rebuilt from last.pt when last.pt's epoch is the run's best."""
    best_path, last_path = output / "best.pt", output / "last.pt"
    if not best_path.exists():
        return
    evaluated = not progress.pending_eval and progress.best_top1 >= 0
    rebuilt = evaluated and bool(progress.history) and progress.history[-1].get("val_top1") == progress.best_top1
    try:
        best = load(best_path).get("best_top1", -1.0)
    except CheckpointError as e:
        aside = set_aside(best_path)
        if rebuilt:
            link_file(last_path, best_path)
        then = ("best.pt now holds last.pt's epoch, the run's best" if rebuilt else
                "the evaluation still due writes best.pt if it improves on the run's best" if progress.pending_eval
                else "the next epoch that improves on the run's best writes best.pt again")
        log.event("best_unreadable", echo=f"note: {first_sentence(e)}; it was moved to {aside.name} and {then}.",
                  path=str(best_path), moved_to=str(aside), rebuilt=rebuilt)
        return
    if not evaluated or best >= progress.best_top1:
        return
    if rebuilt:
        link_file(last_path, best_path)
        log.event("best_repaired", old=best, new=progress.best_top1, echo=f"note: best.pt (top-1 {best:.2f}) lagged "
                  f"behind last.pt (the run's best, {progress.best_top1:.2f}); best.pt now holds last.pt's epoch")
    else:
        log.event("best_stale", old=best, new=progress.best_top1, echo=f"warning: best.pt holds top-1 {best:.2f}, "
                  f"but the run's best, {progress.best_top1:.2f}, was an epoch whose weights were not saved; it stays")


def set_aside(path: Path) -> Path:
    for n in range(1, 1000):
        aside = path.with_name(path.name + ".unreadable" + (f".{n}" if n > 1 else ""))
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise CheckpointError(f"{path} cannot be read and 999 earlier copies were set aside beside it; remove them.")
