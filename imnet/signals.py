"""Preemption signals: SIGTERM / SIGUSR1 ask a run to save and stop, from its first line to interpreter exit.

Clusters (SLURM, Kubernetes) send SIGTERM (SLURM's ``--signal`` also SIGUSR1) before they kill a job, usually
to the whole process group, DataLoader workers included. A run should then finish its current step, write
``last.pt`` and exit 0, so that ``--resume auto`` continues exactly. Three pieces make that hold at every
moment of a run:

- `record_early`: installed by train.py before it imports torch. A signal that arrives while the program is
  still starting (imports take seconds) or already shutting down (after the run, while the interpreter joins
  its workers) is only recorded in `EARLY` instead of killing the process (exit -15).
- `PreemptionSignals`: while the run is alive, a signal sets ``requested``; the training loop reads it after
  every step. ``deferred()`` blocks the signals (kept pending, delivered at its end) while worker processes are
  forked, so a child cannot be killed in the instant before its worker init makes it ignore them
  (`imnet.data`: the main process decides, the workers ignore the signals).
- `test_hook`: deterministic preemption for the test suite (inert unless ``IMNET_TEST_SIGTERM`` is set).

Standard library only (this module is imported before torch).
"""

from __future__ import annotations

import contextlib
import os
import signal


def _signals(*names: str) -> tuple:
    """The named signals this platform has (Windows has SIGTERM but no SIGUSR1)."""
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


PREEMPTION_SIGNALS = _signals("SIGTERM", "SIGUSR1")

EARLY: list[int] = []  # signals received while no PreemptionSignals was installed


def record_early() -> None:
    """Until `PreemptionSignals.install` (and again after `uninstall`), a preemption signal is only recorded in
    `EARLY`, so that neither startup nor teardown turns it into a kill."""
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, lambda signum, frame: EARLY.append(signum))


_counts: dict[str, int] = {}


def test_hook(point: str, count: int | None = None) -> None:
    """Deterministic preemption for the test suite: with ``IMNET_TEST_SIGTERM=POINT:N`` in the environment, the
    N-th time this process reaches the named point (startup, step, eval, save, exit; ``count`` overrides the
    process's own tally) it sends SIGTERM to its whole process group, exactly as a scheduler does - only when it
    leads its group (started with setsid), so that it can never signal the shell or test runner that started it.
    Unset (always, outside tests): nothing."""
    wanted = os.environ.get("IMNET_TEST_SIGTERM")
    if not wanted:
        return
    if count is None:
        count = _counts[point] = _counts.get(point, 0) + 1
    if wanted == f"{point}:{count}" and os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGTERM)


class PreemptionSignals:
    """SIGTERM / SIGUSR1 set ``requested`` instead of killing the process (see the module docstring)."""

    SIGNALS = PREEMPTION_SIGNALS

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
        """Block the signals for the block's duration; one that arrives is delivered when the block ends."""
        if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks (and no fork)
            yield
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
