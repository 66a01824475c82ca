"""Atomic file writes: a reader, or a run killed at any moment, sees the old file or the new one, never a torn one.

``write(file)`` goes into a temporary file beside the target (``.NAME.tmp-PID``: same folder, same file system),
which is flushed and fsync'ed, renamed over the target (``os.replace`` is atomic on POSIX), and then the folder
is fsync'ed so that the rename itself survives a power cut. A temporary file left by a killed writer carries the
writer's pid, so the next run can tell it is stale (`imnet.runfolder.remove_stale_temporaries`).

Standard library only. Used for every file imnet writes into a run folder or an export: checkpoints,
config.json, summary.csv, curves.svg, exported weights and their side files.
"""

from __future__ import annotations

import os
from pathlib import Path


def temporary_name(path: str | os.PathLike) -> Path:
    """Where `write_atomic` writes ``path`` before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: str | os.PathLike, write) -> None:
    """``write(file)`` (a binary file object) into a temporary file beside ``path``, flush and fsync it, rename it
    over ``path``, then fsync the folder. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if hasattr(os, "O_DIRECTORY"):  # folders cannot be opened (or fsync'ed) on Windows
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
