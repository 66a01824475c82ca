"""Run train.py as ``python train.py ARGS`` does, and signal its process group at exact moments, as a scheduler
(SIGTERM) or a terminal (Ctrl-C: SIGINT) does:

    python tests/signal_at.py step:3,save:4:SIGINT ARGS...

Each ``POINT:N[:SIGNAL]`` (SIGTERM unless named) fires the N-th time the run reaches POINT:

    startup  torch starts importing (train.py has recorded the signals since its first lines)
    epoch    the loader of epoch N has started: its workers decode the first batches
    step     optimizer step N (counted over the run) is done
    save     a checkpoint write begins (the N-th of this process)
    eval     the evaluation of epoch N begins
    exit     main() has returned: the interpreter tears down

train.py carries no test code: the moments are its own functions, wrapped here between its definitions and its
``if __name__ == "__main__"`` tail. The process must lead its group (start it with start_new_session=True), so that
it never signals whoever started it. Standard library only: torch is imported by train.py."""

import ast
import importlib.abc
import os
import signal
import sys
import types
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
_counts: dict = {}


def reached(moments: list, point: str, count: int | None = None) -> None:
    if count is None:
        count = _counts[point] = _counts.get(point, 0) + 1
    for moment in moments:
        at, n, *name = moment.split(":")
        if (at, int(n)) == (point, count):
            os.killpg(os.getpgrp(), getattr(signal, name[0] if name else "SIGTERM"))


class TorchImport(importlib.abc.MetaPathFinder):
    """``startup``: fires once, as the first ``import torch`` begins."""

    def __init__(self, moments: list):
        self.moments = moments

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            reached(self.moments, "startup")
        return None


def wrap(namespace: dict, moments: list) -> None:
    """Wrap train.py's functions at the moments they mark (train.py calls them by their global names)."""
    start_epoch, train_step, save, evaluate_epoch, main = (
        namespace[name] for name in ("start_epoch", "train_step", "save", "evaluate_epoch", "main"))

    def started_epoch(training):
        batches = start_epoch(training)
        reached(moments, "epoch", training.progress.epoch + 1)
        return batches

    def stepped(cfg, parts, micro_batches, epoch, step, global_step, meter):
        out = train_step(cfg, parts, micro_batches, epoch, step, global_step, meter)
        reached(moments, "step", global_step + 1)
        return out

    def saving(training, name, like=None):
        reached(moments, "save")
        return save(training, name, like)

    def evaluating(training, epoch):
        reached(moments, "eval", epoch + 1)
        return evaluate_epoch(training, epoch)

    def main_then_exit(argv=None):
        code = main(argv)
        reached(moments, "exit")
        return code

    namespace.update(start_epoch=started_epoch, train_step=stepped, save=saving, evaluate_epoch=evaluating,
                     main=main_then_exit)


def run(moments: list, argv: list) -> None:
    if os.getpgrp() != os.getpid():
        sys.exit("signal_at.py must lead its process group: start it with start_new_session=True")
    tree = ast.parse(TRAIN.read_text(), str(TRAIN))
    *body, tail = tree.body
    assert ast.unparse(tail.test) == "__name__ == '__main__'", "train.py's last statement is its __main__ block"
    module = types.ModuleType("__main__")
    module.__file__ = str(TRAIN)
    sys.modules["signal_at"], sys.modules["__main__"] = sys.modules["__main__"], module  # keep this one alive
    sys.argv = [str(TRAIN), *argv]
    sys.path[0] = str(TRAIN.parent)
    sys.meta_path.insert(0, TorchImport(moments))
    exec(compile(ast.Module(body, type_ignores=[]), str(TRAIN), "exec"), module.__dict__)
    wrap(module.__dict__, moments)
    exec(compile(ast.Module([tail], type_ignores=[]), str(TRAIN), "exec"), module.__dict__)


if __name__ == "__main__":
    run(sys.argv[1].split(","), sys.argv[2:])
