"""Atomic file writes: a reader, or a run killed at any moment, sees the old file or the new one, never a torn one.

``write(file)`` goes into a temporary file beside the target (``.NAME.tmp-PID``: same folder, same file system),
which is flushed and fsync'ed, renamed over the target (``os.replace`` is atomic on POSIX), and then the folder
is fsync'ed so that the rename itself survives a power cut. A temporary file left by a killed writer carries the
writer's pid, so the next run can tell it is stale (`imnet.run.runfolder.remove_stale_temporaries`).

A full disk (or quota) makes the write fail with `NoSpace`, one paragraph (a UsageError: exit 2, no traceback):
which file, how much had been written when the disk filled, how large it was to be (``size``, when the writer
knows it, else the size of the file it replaces), the space left, and that the file it was to replace is intact.

`link_file(src, dst)` makes ``dst`` a second name of the file ``src`` (a hard link, renamed over ``dst``): best.pt
and last.pt of an epoch that improved the best are one file on the disk, not two copies of every tensor. Every
write is a rename of a new file, so rewriting either name later leaves the other as it was.

Standard library only. Used for every file imnet writes into a run folder or an export: checkpoints,
config.json, summary.csv, curves.svg, exported weights and their side files.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from imnet.run.errors import UsageError

# The errors that mean "no room": the file system is full, the user's quota is spent.
NO_SPACE = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


class NoSpace(UsageError):
    """A write that did not fit on its file system; the file it was to replace is untouched."""


class NotWritable(UsageError):
    """An output file that cannot be created, found before the work that would fill it."""


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Up front, before minutes of work: the output ``path`` (given as ``flag``) can be created; a file that did
    not exist is removed again. A folder, a missing folder or no permission -> NotWritable, one paragraph."""
    if os.path.isdir(path):
        raise NotWritable(f"{flag} {path} is a folder; give a file path inside it.")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise NotWritable(f"cannot write {flag} {path}: {e.strerror or e}. Give a file path in an existing folder "
                          f"that you can write to.") from None
    if not existed:
        os.remove(path)


def temporary_name(path: str | os.PathLike) -> Path:
    """Where `write_atomic` writes ``path`` before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: str | os.PathLike, write, size: int | None = None) -> None:
    """``write(file)`` (a binary file object) into a temporary file beside ``path``, flush and fsync it, rename it
    over ``path``, then fsync the folder. On any error the temporary file is removed and ``path`` is untouched;
    a full disk raises `NoSpace` (``size``: the bytes the file will have, for its message, when known)."""
    path = Path(path)
    tmp = temporary_name(path)
    tmp.unlink(missing_ok=True)  # a stale one may be a hard link (`link_file`): opening it would truncate its twin
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if no_space(e):
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)  # first: the space it took counts as free in the message
            raise NoSpace(no_space_message(path, written, size)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (a no-op on Windows, where folders cannot be
    opened)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def no_space(error: BaseException) -> bool:
    """Whether ``error`` comes from a full disk: an OSError ENOSPC/EDQUOT itself, or any error raised while
    handling one (torch.save reports the failed write as a RuntimeError about the zip file's position)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_message(path: Path, written: int, size: int | None) -> str:
    """The paragraph of `NoSpace`: the file, the bytes written and needed, the space left, what is intact."""
    before = path.stat().st_size if path.exists() else None
    if size is None and before:
        need = f"; it needs about {human(before)}, the size of the {path.name} it replaces"
    elif size is not None:
        need = f"; it needs about {human(size)}"
    else:
        need = ""
    try:
        free = f"{human(shutil.disk_usage(path.parent).free)} are free there now"
    except OSError:
        free = "the free space there is unknown"
    intact = (f"The previous {path.name} is intact (the write went to a temporary file, now removed)"
              if before is not None else f"No earlier {path.name} was there; nothing was replaced")
    return (f"Cannot write {path}: the disk is full (no space left on the device, or the quota is spent) after "
            f"{human(written)} of it were written{need}, and {free}. {intact}. Free some space (or write to another "
            f"disk) and run again.")


def human(n: int) -> str:
    """A byte count for people: 512 bytes, 3.4 MB, 1.2 GB (powers of 1000, as df -H)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def write_text(path: str | os.PathLike, text: str) -> None:
    """`write_atomic` for a UTF-8 text file."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, chunk: int = 1 << 20) -> None:
    """Copy ``src`` over ``dst`` atomically (`write_atomic`)."""
    def write(f):
        with open(src, "rb") as s:
            for block in iter(lambda: s.read(chunk), b""):
                f.write(block)
    write_atomic(dst, write)


def link_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same file as ``src``, atomically: a hard link beside ``dst``, renamed over it. No byte is
    copied and no space is taken; a later `write_atomic` of either name gives that name a new file and leaves the
    other untouched. Where the file system has no hard links (some network and FUSE mounts), `copy_file`."""
    src, dst = Path(src), Path(dst)
    tmp = temporary_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        copy_file(src, dst)
        return
    try:
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(dst.parent)
