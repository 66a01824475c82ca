"""Stop signals: a scheduler's SIGTERM / SIGUSR1 and the user's Ctrl-C (SIGINT) ask a run to save and stop, from
its first line to interpreter exit (docs/design.md, "Faults"): `record_early` only records them until the run's
`PreemptionSignals` are installed, and again after. Standard library only: imported before torch."""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def _signals(*names: str) -> tuple:
    """The named signals this platform has (Windows has SIGTERM but no SIGUSR1)."""
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


PREEMPTION_SIGNALS = _signals("SIGTERM", "SIGUSR1", "SIGINT")  # the schedulers' two, then Ctrl-C

INTERRUPTED = 128 + signal.SIGINT  # 130: the exit code after Ctrl-C (the shells' code for it)

EARLY: list[int] = []  # signals received while no PreemptionSignals was installed


def under_torchrun() -> bool:
    """torchrun forwards a SIGINT it receives to its workers, which also get the terminal's own."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_code(signums) -> int:
    """`INTERRUPTED` once Ctrl-C was among the signals, else 0."""
    return INTERRUPTED if signal.SIGINT in signums else 0


def _record(signum, frame) -> None:
    if signum == signal.SIGINT and signal.SIGINT in EARLY and not under_torchrun():
        print("stopped by a second Ctrl-C", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED)
    EARLY.append(signum)


def record_early() -> None:
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, _record)


class PreemptionSignals:
    """SIGTERM / SIGUSR1 / SIGINT set ``requested`` instead of killing the process; a second SIGINT raises
    KeyboardInterrupt (not under torchrun: each rank gets every Ctrl-C twice there)."""

    SIGNALS = PREEMPTION_SIGNALS

    def __init__(self):
        self.requested = False
        self.received: list[int] = []  # in order, those recorded by `record_early` first
        self.waiting = ""  # what a stop waits for, said as the signal arrives (`waiting_for`)
        self._old = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in self.received and not under_torchrun():
            raise KeyboardInterrupt
        self.requested = True
        self.received.append(signum)
        if self.waiting and os.environ.get("RANK", "0") == "0":
            again = "; a second Ctrl-C stops at once" if signum == signal.SIGINT and not under_torchrun() else ""
            print(f"{self.name}: the run stops after {self.waiting} and its checkpoint writes{again}.",
                  file=sys.stderr, flush=True)

    def take_early(self) -> "PreemptionSignals":
        """Adopt the signals `record_early` recorded before `install` (a stop asked during startup)."""
        self.received.extend(EARLY)
        self.requested = self.requested or bool(EARLY)
        EARLY.clear()  # what arrives during teardown counts afresh
        return self

    @property
    def exit_code(self) -> int:
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
    def waiting_for(self, what: str):
        """A stop asked during the block is acknowledged at once, naming ``what`` it waits for."""
        self.waiting = what
        try:
            yield
        finally:
            self.waiting = ""

    def forking(self, loader) -> "Forking":
        return Forking(loader, self)

    @contextlib.contextmanager
    def deferred(self):
        """Block the signals for the block's duration; one that arrives is delivered when the block ends. A worker
        forked here cannot be killed in the instant before its worker init makes it ignore them."""
        if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks (and no fork)
            yield
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Forking:
    """``loader``, its iterators made under `PreemptionSignals.deferred` (a DataLoader forks its workers there):
    the signals stay deliverable while it is read."""

    def __init__(self, loader, preemption: PreemptionSignals):
        self.loader, self.preemption = loader, preemption

    def __iter__(self):
        with self.preemption.deferred():
            return iter(self.loader)
