"""imnet.run.atomic's second names: `link_file` makes best.pt and last.pt one file on the disk, and no later write of
either name may change the other (the full-disk paths are in test_faults.py)."""

from __future__ import annotations

import errno
import os

from imnet.run import atomic


def test_link_file_gives_a_second_name_and_a_later_write_gives_it_a_new_file(tmp_path):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    atomic.write_atomic(best, lambda f: f.write(b"epoch 3"))
    atomic.write_atomic(last, lambda f: f.write(b"epoch 3, pending"))
    atomic.link_file(best, last)
    assert os.path.samefile(best, last) and best.stat().st_nlink == 2
    atomic.link_file(best, last)  # already one file: rename(2) of two names of one file does nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    atomic.write_atomic(last, lambda f: f.write(b"epoch 4"))
    assert best.read_bytes() == b"epoch 3" and last.read_bytes() == b"epoch 4"
    assert best.stat().st_nlink == 1 and not os.path.samefile(best, last)


def test_a_stale_temporary_that_is_a_link_is_not_written_through(tmp_path):
    """A kill between link_file's link and its rename leaves ``.last.pt.tmp-PID``, a second name of best.pt; a
    later writer with the same pid (pids repeat in containers) must not open it and truncate best.pt."""
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    best.write_bytes(b"the best epoch")
    os.link(best, atomic.temporary_name(last))
    atomic.write_atomic(last, lambda f: f.write(b"a later epoch"))
    assert best.read_bytes() == b"the best epoch" and last.read_bytes() == b"a later epoch"
    assert not atomic.temporary_name(last).exists()


def test_without_hard_links_the_file_is_copied(tmp_path, monkeypatch):
    """File systems without hard links (EPERM, ENOTSUP: some network and FUSE mounts) get an atomic copy."""
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(atomic.os, "link", no_links)
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    best.write_bytes(b"x" * 3_000_000)
    last.write_bytes(b"old")
    atomic.link_file(best, last)
    assert last.read_bytes() == best.read_bytes() and not os.path.samefile(best, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
