"""Stop signals: a scheduler's SIGTERM / SIGUSR1 and the user's Ctrl-C (SIGINT) ask a run to save and stop, from
its first line to interpreter exit.

Clusters (SLURM, Kubernetes) send SIGTERM (SLURM's ``--signal`` also SIGUSR1) before they kill a job, usually
to the whole process group, DataLoader workers included; a terminal sends Ctrl-C as SIGINT to its whole
foreground process group, workers included too. A run should then finish its current step, write ``last.pt``
and exit, so that ``--resume auto`` continues exactly: with 0 after a scheduler's signal (the job did what was
asked and is requeued), with 130 after Ctrl-C (128 + SIGINT, what a shell reports for a command the user
interrupted, so that ``train.py && eval.py`` stops there). A second Ctrl-C stops at once (KeyboardInterrupt,
exit 130): every checkpoint is written atomically, so a save it cuts short leaves the previous file. Under
torchrun, which forwards the Ctrl-C it receives to every rank (each rank sees it twice), every SIGINT only
asks for the stop; torchrun kills the ranks itself after its ``--shutdown_timeout`` (30 s by default).

Three pieces make that hold at every moment of a run:

- `record_early`: installed by train.py before it imports torch. A signal that arrives while the program is
  still starting (imports take seconds) or already shutting down (after the run, while the interpreter joins
  its workers) is only recorded in `EARLY` instead of killing the process (exit -15); a second Ctrl-C then
  exits at once (130).
- `PreemptionSignals`: while the run is alive, a signal sets ``requested``; the training loop reads it after
  every step. ``deferred()`` blocks the signals (kept pending, delivered at its end) while worker processes are
  forked, so a child cannot be killed in the instant before its worker init makes it ignore them
  (`imnet.run.data`: the main process decides, the workers ignore the signals).
- `test_hook`: deterministic signals for the test suite (inert unless ``IMNET_TEST_SIGTERM`` is set).

Standard library only (this module is imported before torch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def _signals(*names: str) -> tuple:
    """The named signals this platform has (Windows has SIGTERM but no SIGUSR1)."""
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


# Every signal that asks a run to save and stop: the schedulers' two, then Ctrl-C.
PREEMPTION_SIGNALS = _signals("SIGTERM", "SIGUSR1", "SIGINT")

INTERRUPTED = 128 + signal.SIGINT  # 130: the exit code after Ctrl-C (the shells' code for it)

EARLY: list[int] = []  # signals received while no PreemptionSignals was installed


def under_torchrun() -> bool:
    """torchrun forwards a SIGINT it receives to its workers, which also get the terminal's own."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_code(signums) -> int:
    """The exit code of a run stopped by these signals: `INTERRUPTED` once Ctrl-C was among them, else 0."""
    return INTERRUPTED if signal.SIGINT in signums else 0


def _record(signum, frame) -> None:
    if signum == signal.SIGINT and signal.SIGINT in EARLY and not under_torchrun():
        print("stopped by a second Ctrl-C", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED)
    EARLY.append(signum)


def record_early() -> None:
    """Until `PreemptionSignals.install` (and again after `uninstall`), a stop signal is only recorded in
    `EARLY`, so that neither startup nor teardown turns it into a kill (a second Ctrl-C exits, 130)."""
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, _record)


_counts: dict[str, int] = {}


def test_hook(point: str, count: int | None = None) -> None:
    """Deterministic signals for the test suite: with ``IMNET_TEST_SIGTERM=POINT:N`` in the environment, the
    N-th time this process reaches the named point (startup, epoch, step, eval, save, exit; ``count`` overrides the
    process's own tally) it sends SIGTERM to its whole process group, exactly as a scheduler does - only when it
    leads its group (started with setsid), so that it can never signal the shell or test runner that started it.
    ``POINT:N:SIGINT`` sends that signal instead (Ctrl-C, as a terminal sends it to its foreground group);
    several, comma-separated, each at its point. Unset (always, outside tests): nothing."""
    wanted = os.environ.get("IMNET_TEST_SIGTERM")
    if not wanted:
        return
    if count is None:
        count = _counts[point] = _counts.get(point, 0) + 1
    for item in wanted.split(","):
        at, n, *name = item.split(":")
        if (at, n) == (point, str(count)) and os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), getattr(signal, name[0] if name else "SIGTERM"))


class PreemptionSignals:
    """SIGTERM / SIGUSR1 / SIGINT set ``requested`` instead of killing the process; a second SIGINT raises
    KeyboardInterrupt (not under torchrun). See the module docstring."""

    SIGNALS = PREEMPTION_SIGNALS

    def __init__(self):
        self.requested = False
        self.received: list[int] = []  # in order, those recorded by `record_early` first
        self._old = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in self.received and not under_torchrun():
            raise KeyboardInterrupt
        self.requested = True
        self.received.append(signum)

    def take_early(self) -> "PreemptionSignals":
        """Adopt the signals `record_early` recorded before `install` (a stop asked during startup)."""
        self.received.extend(EARLY)
        self.requested = self.requested or bool(EARLY)
        EARLY.clear()  # what arrives during teardown counts afresh
        return self

    @property
    def exit_code(self) -> int:
        """`exit_code` of the signals received (0, or 130 after Ctrl-C)."""
        return exit_code(self.received)

    @property
    def name(self) -> str:
        """How the stop was asked, for messages: "Ctrl-C" or the signal's name."""
        if signal.SIGINT in self.received:
            return "Ctrl-C"
        return signal.Signals(self.received[-1]).name if self.received else "signal"

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
