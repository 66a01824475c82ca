"""Atomic writes: ``.NAME.tmp-PID`` beside the target, fsync, rename, fsync of the folder. Standard library only."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from imnet.run.errors import UsageError

NO_SPACE = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


class NoSpace(UsageError):
    """A write that did not fit on its file system; the file it was to replace is untouched."""


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Up front, before the work: the output ``path`` (given as ``flag``) can be created (and is removed again)."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file path inside it.")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write {flag} {path}: {e.strerror or e}. Give a file path in an existing folder "
                         f"that you can write to.") from None
    if not existed:
        os.remove(path)


def temporary_name(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: str | os.PathLike, write, size: int | None = None) -> None:
    """``write(file)`` (binary) into the temporary file, then renamed over ``path``; on any error ``path`` is
    untouched. ``size``: the bytes the file will have, for `NoSpace`'s message, when known."""
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
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # Windows cannot open folders
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def no_space(error: BaseException) -> bool:
    """Whether ``error`` is ENOSPC/EDQUOT or was raised while handling one (torch.save raises a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_message(path: Path, written: int, size: int | None) -> str:
    before = path.stat().st_size if path.exists() else None
    need = (f"; it needs about {human(size)}" if size is not None else
            f"; it needs about {human(before)}, the size of the {path.name} it replaces" if before else "")
    try:
        free = f"{human(shutil.disk_usage(path.parent).free)} are free there now"
    except OSError:
        free = "the free space there is unknown"
    intact = (f"The previous {path.name} is intact" if before is not None
              else f"No earlier {path.name} was there; nothing was replaced")
    return (f"Cannot write {path}: the disk is full (or the quota spent) after {human(written)} of it were "
            f"written{need}, and {free}. {intact}; free some space (or write to another disk) and run again.")


def human(n: int) -> str:
    """512 bytes, 3.4 MB, 1.2 GB (powers of 1000, as df -H)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def link_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a hard link of ``src``, renamed over it: one copy on the disk, and a later write of either
    name (a new file renamed over it) leaves the other as it was."""
    src, dst = Path(src), Path(dst)
    tmp = temporary_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links (some network and FUSE mounts): an atomic copy
        with open(src, "rb") as s:
            write_atomic(dst, lambda f: shutil.copyfileobj(s, f))
        return
    try:
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(dst.parent)
