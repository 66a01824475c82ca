"""Checkpoints: the schema (built and read here only), atomic saving, safe loading, and the save and restore of a
run's every stateful piece, so that a resumed run continues exactly.

- Atomic: written by `imnet.run.atomic.write_atomic` (temporary file, fsync, rename, fsync of the folder). A kill at
  any moment leaves either the old complete file or the new complete file, never a torn one.
- Safe: every load uses ``torch.load(..., weights_only=True)``, which unpickles only tensors and plain
  Python containers, so a checkpoint from elsewhere cannot run code. Hence everything saved here is
  tensors, numbers, strings, lists, tuples and dicts (RNG states included). A file that holds anything else
  is refused as what it is: not a plain checkpoint, possibly code.
- Checked: every checkpoint carries the sha256 of its content (`content_digest`: every key, value and tensor
  byte), computed when it is built and verified whenever it is loaded, in memory (no second read of the
  file). Flipped bytes on a disk or in a copy are found instead of silently changing weights.
- Read by others: the EMA weights are stored under the keys torchvision's reference scripts ("model_ema",
  an AveragedModel state_dict) and timm's validate.py ("state_dict_ema", a plain state_dict) read; the
  tensors are shared, so the file is no larger.
- Exact: together with the per-sample and per-step seeding in data.py and train.py, model, EMA, optimizer,
  scaler, meter and RNG states make a resumed run bitwise equal to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imnet.run import dist
from imnet.run.atomic import write_atomic
from imnet.run.errors import UsageError


class CheckpointError(UsageError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (`write_atomic`; a full disk raises its `imnet.run.atomic.NoSpace`, which names the
    size the checkpoint needs)."""
    write_atomic(path, lambda f: torch.save(obj, f), size=payload_bytes(obj))


def payload_bytes(obj) -> int:
    """The bytes of the distinct tensor storages in ``obj`` (shared ones once, as torch.save writes them): the
    size of its file but for the small pickle of everything else."""
    seen, total = set(), 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if torch.is_tensor(x):
            storage = x.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` and verify its content checksum when it has one; a clear
    CheckpointError if it is missing, empty, corrupt, or not a plain checkpoint."""
    ckpt = _torch_load(Path(path))
    if "checksum" in ckpt and ckpt["checksum"] != content_digest(ckpt):
        raise CheckpointError(f"Checkpoint '{path}' is corrupt: its content does not match the checksum written "
                              f"with it (bytes changed on the disk or in a copy). Use another checkpoint of the run "
                              f"(best.pt or last.pt, or a backup); a file edited on purpose must drop its "
                              f"'checksum' entry.")
    return ckpt


def _torch_load(path: Path, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` with its failures as CheckpointErrors (``mmap``: tensors are mapped,
    not read: what a look at the plain entries needs)."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Check the path (train.py writes last.pt "
                              f"and best.pt into its --output folder).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint '{path}' is empty (0 bytes): it was truncated or created elsewhere "
                              f"(train.py writes checkpoints atomically). Use another checkpoint of the run.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"Cannot read checkpoint '{path}': it cannot be read with torch.load "
                                  f"({type(e).__name__}). The file is corrupt or truncated.") from None
        # A refused global: the file holds Python objects (classes, functions) besides tensors and plain types.
        raise CheckpointError(f"Refused '{path}': it is not a plain checkpoint. It holds Python objects other than "
                              f"tensors, numbers, strings, lists and dicts, and unpickling such a file can run code "
                              f"from it, so imnet does not load it. Use a checkpoint written by train.py, or weights "
                              f"saved as a plain state_dict by a source you trust.") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        first_line = (str(e).splitlines() or ["(no message)"])[0][:300]
        raise CheckpointError(f"Cannot read checkpoint '{path}': it cannot be read with torch.load "
                              f"({type(e).__name__}: {first_line}). The file is corrupt, truncated, or not a "
                              f"checkpoint.") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict.")
    return ckpt


def identity(path: str | os.PathLike) -> dict:
    """Which run a checkpoint belongs to and where it is, read without reading its tensors (memory-mapped):
    {"run_id", "forked_from" ("" when unknown: a checkpoint written before run ids), "epoch", "step_in_epoch",
    "global_step"}. CheckpointError when it cannot be read."""
    path = Path(path)
    try:
        ckpt = _torch_load(path, mmap=True)
    except CheckpointError:
        ckpt = _torch_load(path)  # the older, non-zip format cannot be mapped (or the message is the same)
    get = lambda key, default: ckpt.get(key, default) if isinstance(ckpt.get(key, default), type(default)) else default
    return {"run_id": get("run_id", ""), "forked_from": get("forked_from", ""), "epoch": get("epoch", 0),
            "step_in_epoch": get("step_in_epoch", 0), "global_step": get("global_step", 0)}


def new_run_id() -> str:
    """A fresh run id: made when a run starts in its folder (or a checkpoint is continued in a new one)."""
    return uuid.uuid4().hex[:12]


def content_digest(state: dict) -> str:
    """The sha256 of a checkpoint's content, its "checksum" entry aside: every key and value in order, each
    tensor by dtype, shape and bytes. It does not depend on how torch lays the file out, only on what loads."""
    h = hashlib.sha256()

    def feed(obj):
        if torch.is_tensor(obj):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for k, v in obj.items():
                feed(k)
                feed(v)
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for v in obj:
                feed(v)
        else:
            h.update(repr((type(obj).__name__, obj)).encode())

    feed({k: v for k, v in state.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------------ the schema

VERSION = 3  # bump when a key changes meaning; read_state upgrades format 2 and refuses others with a message

# What every train.py checkpoint holds. "model" is a plain state_dict that loads strictly into the torchvision
# constructor; "config" is the run's resolved imnet.run.config.Config as a dict (with its "eval_policy").
# The EMA weights, when the run keeps them (else None): "model_ema" in torchvision's reference format (an
# AveragedModel state_dict: "n_averaged", the number of EMA updates, and "module."-prefixed keys), which
# `model_ema.load_state_dict(ckpt["model_ema"])` loads there; "state_dict_ema", the same tensors as a plain
# state_dict, which timm's validate.py --use-ema reads (it looks for state_dict_ema first). "swa" is torch's
# AveragedModel of the SWA weights, None without SWA. "run_id": the run the checkpoint belongs to (one per run
# folder; `imnet.run.runfolder.claim` lets a folder continue only its own run), "forked_from": the run it continues
# from another folder ("" for a run started from scratch). "checksum": `content_digest` of everything else.
REQUIRED = ("version", "model", "optimizer", "config", "classes", "epoch", "step_in_epoch", "global_step")


@dataclass
class Progress:
    """Where a run is: the epoch in progress (0-based), optimizer steps done in it and in the whole run, one
    summary row per finished epoch, and the best validation top-1 so far (-1 before any evaluation).

    ``pending_eval``: the last finished epoch's training is saved but its evaluation is not done yet (train.py
    checkpoints an epoch before evaluating it, so that a failed or interrupted evaluation loses nothing); a
    resumed run evaluates first. ``run_id`` names the run (`new_run_id`), ``forked_from`` the run it was
    continued from when it was continued into another folder (`fork`)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    pending_eval: bool = False
    run_id: str = field(default_factory=new_run_id)
    forked_from: str = ""

    def fork(self) -> None:
        """This run continues in a folder of its own: a new run id, the old one kept as its origin."""
        self.run_id, self.forked_from = new_run_id(), self.run_id


def make_state(*, model: dict, optimizer: dict, progress: Progress, config: dict, classes: list,
               ema: dict | None = None, swa: dict | None = None, scaler: dict | None = None, meter: dict | None = None,
               rngs: list | None = None, bad_images: dict | None = None, imnet_version: str = "") -> dict:
    """The one place that builds a checkpoint (state_dicts in, a plain dict out). ``ema`` is
    imnet.ema.ModelEma.state_dict() ({"module", "num_updates", ...}); it is stored in the ecosystem's layouts."""
    model_ema = state_dict_ema = None
    if ema is not None:
        state_dict_ema = dict(ema["module"])
        model_ema = {"n_averaged": torch.tensor(int(ema["num_updates"]), dtype=torch.long),
                     **{f"module.{k}": v for k, v in state_dict_ema.items()}}
    state = {"version": VERSION, "imnet_version": imnet_version, "model": model, "model_ema": model_ema,
             "state_dict_ema": state_dict_ema, "swa": swa, "optimizer": optimizer, "scaler": scaler,
             "epoch": progress.epoch, "step_in_epoch": progress.step_in_epoch, "global_step": progress.global_step,
             "history": list(progress.history), "best_top1": progress.best_top1,
             "pending_eval": progress.pending_eval, "metrics": progress.history[-1] if progress.history else None,
             "run_id": progress.run_id, "forked_from": progress.forked_from,
             "meter": meter, "rng": rngs or [], "bad_images": bad_images, "config": config, "classes": list(classes)}
    state["checksum"] = content_digest(state)
    return state


def read_state(path: str | os.PathLike) -> dict:
    """The one place that reads a checkpoint: `load` (with its checksum), then check that it is a train.py
    checkpoint and bring format 2 to this one. Raises CheckpointError with the fix otherwise."""
    return check_state(load(path), path)


def check_state(state: dict, path) -> dict:
    """``state`` (a loaded file) if it is a train.py checkpoint, in this schema version (format 2, whose EMA was
    one "ema" entry, is converted), else CheckpointError."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        hint = (" It looks like a plain state_dict: use --model NAME --weights-file FILE."
                if state and all(torch.is_tensor(v) for v in state.values()) else "")
        raise CheckpointError(f"'{path}' is not a train.py checkpoint (it has no {', '.join(missing)} entries).{hint}")
    if state["version"] == 2:
        ema = state.pop("ema", None)
        upgraded = make_state(model=state["model"], optimizer=state["optimizer"], progress=progress_of(state),
                              config=state["config"], classes=state["classes"], ema=ema, swa=state.get("swa"),
                              scaler=state.get("scaler"), meter=state.get("meter"), rngs=state.get("rng"),
                              bad_images=state.get("bad_images"), imnet_version=state.get("imnet_version", ""))
        state = {**state, **upgraded}
    if state["version"] != VERSION:
        raise CheckpointError(f"'{path}' was written with checkpoint format {state['version']}; this imnet reads "
                              f"formats 2 and {VERSION}. Its weights are the plain state_dict under 'model'.")
    return state


def progress_of(state: dict) -> Progress:
    """A checkpoint's Progress (one written before run ids gets a new one)."""
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    [dict(r) for r in state.get("history") or []], state.get("best_top1", -1.0),
                    bool(state.get("pending_eval", False)), state.get("run_id") or new_run_id(),
                    state.get("forked_from") or "")


def rng_state() -> dict:
    """This process's RNG states as plain types (weights_only-loadable)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    version, s, gauss = state["python"]
    random.setstate((version, tuple(s), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])



def has_weights(state: dict, which: str) -> bool:
    """Whether a (read_state) checkpoint holds ``which`` weights: "model" always; "ema" and "swa" when its run
    kept them (the SWA average once at least one epoch was averaged)."""
    if which == "ema":
        return bool(state.get("state_dict_ema"))
    if which == "swa":
        return bool(state.get("swa")) and int(state["swa"]["n_averaged"]) > 0
    return which == "model"


def weights_of(state: dict, which: str = "model", path="the checkpoint") -> dict:
    """The plain state_dict of a train.py checkpoint's ``which`` weights: "model" (the trained weights), "ema"
    (their exponential moving average) or "swa" (the SWA average, whose AveragedModel keys lose their "module."
    prefix). CheckpointError when the run kept no such weights."""
    if which not in ("model", "ema", "swa"):
        raise ValueError(f"unknown weights {which!r}; expected 'model', 'ema' or 'swa'")
    if not has_weights(state, which):
        raise CheckpointError(f"{path} has no {which.upper()} weights (its run was trained without "
                              f"{'--ema' if which == 'ema' else '--swa-start, or had not reached it'}).")
    if which == "model":
        return state["model"]
    if which == "ema":
        return state["state_dict_ema"]
    return {k[len("module."):]: v for k, v in state["swa"].items() if k.startswith("module.")}


# ------------------------------------------------------------------------------------------ a run's state

# Settings whose change does not change what the run computes: a resume notes nothing about them.
IGNORED_ON_RESUME = ("resume", "config", "dry_run", "quiet", "workers", "device", "output", "data", "log_every",
                     "save_every_minutes", "stop_at_step", "tensorboard")


def check_compatible(state: dict, cfg, classes: list, path) -> list[str]:
    """Refuse a resume that cannot continue the same run (another model, global batch, optimizer, seed or class
    list); return the other settings that changed, "name: then -> now" (a change of the number of processes
    first, with the global batch it keeps)."""
    then = state["config"]
    if not isinstance(then, dict):
        raise CheckpointError(f"Cannot resume from {path}: its config entry is a {type(then).__name__}, not the "
                              f"run's settings. {PIECED}")
    split = lambda c: (f"{c.get('world_size', '?')} process{'' if c.get('world_size') == 1 else 'es'} x batch "
                       f"{c.get('batch_size', '?')} x accum {c.get('accum_steps', '?')}")
    now = cfg.to_dict()
    problems = [f"{label} {then.get(key)} vs {now[key]}" for key, label in
                (("model", "model"), ("opt", "optimizer"), ("seed", "seed")) if then.get(key) != now[key]]
    if then.get("global_batch_size") != cfg.global_batch_size:
        problems.append(f"global batch {then.get('global_batch_size')} ({split(then)}) vs {cfg.global_batch_size} "
                        f"({split(now)}): --global-batch {then.get('global_batch_size')} keeps it with any number "
                        f"of processes")
    if list(state["classes"]) != list(classes):
        problems.append(f"classes differ ({len(state['classes'])} in the checkpoint, {len(classes)} in the data)")
    if problems:
        raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ". Resume with the settings "
                              "of the original run, or start a new run with another --output.")
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # config.json and checkpoints hold lists
    changes = [f"{k}: {then[k]} -> {v}" for k, v in cfg.flags().items()
               if k in then and k not in IGNORED_ON_RESUME and plain(then[k]) != plain(v)]
    if then.get("world_size", cfg.world_size) != cfg.world_size:
        changes.insert(0, f"processes: {then['world_size']} -> {cfg.world_size}, global batch "
                          f"{cfg.global_batch_size} kept ({split(then)} -> {split(now)}; per-process statistics "
                          f"such as BatchNorm's now see batches of {cfg.batch_size})")
    return changes


# The advice of every "the pieces do not fit" message.
PIECED = ("The file was edited, or put together from pieces of other checkpoints; use another checkpoint of the "
          "run (best.pt or last.pt, or a backup).")


def weights_mismatch(expected: dict, weights) -> str | None:
    """How ``weights`` differ from ``expected`` (a model's state_dict) in keys and shapes, in a few words, or None
    when every key is there with its shape."""
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        return f"they are a {type(weights).__name__} holding other things than tensors, not a state_dict"
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    listed = lambda keys: f"{len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
    parts = [f"{label} {listed(keys)}" for label, keys in (("missing tensors", missing),
                                                           ("unexpected tensors", unexpected),
                                                           ("tensors of another shape", shapes)) if keys]
    return "; ".join(parts) or None


def check_fits(expected: dict, weights, path, which: str, name: str) -> None:
    """The one refusal of a train.py checkpoint whose ``which`` weights ("model", "EMA", "SWA") are not those of
    ``name``, the model its own config names (`restore`, eval.py): CheckpointError naming the differences."""
    problem = weights_mismatch(expected, weights)
    if problem:
        raise CheckpointError(f"Checkpoint '{path}' does not fit its own settings: its {which} weights are not those "
                              f"of {name}, the model its config names ({problem}). {PIECED}")


def save(path: Path, cfg, classes: list, parts, progress: Progress, meter, bad_counter, info) -> None:
    """Write the run's checkpoint to ``path``. Every rank takes part (the epoch's partial metric sums are summed
    over the ranks and every rank's RNG state is gathered); rank 0 writes."""
    meter_state = meter.state_dict()
    if info.distributed:  # one copy of the epoch's partial sums: the sum over ranks
        meter_state = {k: dist.all_reduce_sum(v.to(info.device)).cpu() if torch.is_tensor(v) else v
                       for k, v in meter_state.items()}
    rngs = dist.gather_object(rng_state())
    if not info.is_main:
        return
    import imnet
    save_atomic(make_state(
        model=parts.model.state_dict(), optimizer=parts.optimizer.state_dict(), progress=progress,
        config=cfg.to_dict(), classes=classes, ema=parts.ema.state_dict() if parts.ema else None,
        swa=parts.swa.state_dict() if parts.swa is not None else None,
        scaler=parts.scaler.state_dict() if parts.scaler else None, meter=meter_state, rngs=rngs,
        bad_images=bad_counter.state_dict(), imnet_version=imnet.__version__), path)


def restore(path: Path, cfg, classes: list, parts, meter, bad_counter, info, log) -> Progress:
    """Load the checkpoint at ``path`` of this run into every stateful piece (`save`'s counterpart); -> where the
    run was. Settings that changed since are noted in the log. A checkpoint whose entries are all there but
    whose contents do not fit this run (another model's weights under its config, a missing optimizer or RNG
    state, an epoch that is not a whole number, a step beyond the epoch) is refused with one CheckpointError
    (`check_progress`, `check_fits`, `_restoring`); the run then stops before it saves anything."""
    state = read_state(path)
    changes = check_compatible(state, cfg, classes, path)
    progress = check_progress(state, cfg, path)
    check_fits(parts.model.state_dict(), state["model"], path, "model", cfg.model)
    ema = parts.ema is not None and has_weights(state, "ema")
    if ema:
        check_fits(parts.ema.module.state_dict(), state["state_dict_ema"], path, "EMA", cfg.model)
    parts.model.load_state_dict(state["model"])
    with _restoring(path, "optimizer state", f"{cfg.opt} with {len(parts.optimizer.param_groups)} parameter groups"):
        parts.optimizer.load_state_dict(state["optimizer"])
    if ema:
        with _restoring(path, "EMA state"):
            parts.ema.load_state_dict({"module": state["state_dict_ema"],
                                       "num_updates": int(state["model_ema"]["n_averaged"])})
    if parts.swa is not None and state.get("swa") is not None:
        with _restoring(path, "SWA average"):
            parts.swa.load_state_dict(state["swa"])
    if parts.scaler is not None and state.get("scaler"):
        with _restoring(path, "fp16 loss-scaler state"):
            parts.scaler.load_state_dict(state["scaler"])
    if progress.step_in_epoch and info.is_main and state.get("meter") is not None:
        with _restoring(path, "partial metric sums of the epoch"):
            meter.load_state_dict(state["meter"])  # rank 0 carries the epoch's partial sums of all ranks
    with _restoring(path, "RNG state"):
        rngs = state["rng"]
        if not isinstance(rngs, list):
            raise TypeError(f"a {type(rngs).__name__}, not a list of one state per process")
        if info.rank < len(rngs):  # a rank added since the save keeps its own
            set_rng_state(rngs[info.rank])
    if state.get("bad_images"):
        with _restoring(path, "list of unreadable images"):
            bad_counter.load_state_dict(state["bad_images"])
    for change in changes:  # logged once the checkpoint is accepted: a refused resume leaves log.jsonl as it was
        log.event("setting_changed", echo=f"note: setting changed since the checkpoint: {change}", change=change)
    log.event("resume", echo=f"resumed from {path} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}",
              path=str(path), epoch=progress.epoch, step_in_epoch=progress.step_in_epoch, run_id=progress.run_id)
    return progress


@contextlib.contextmanager
def _restoring(path, what: str, into: str = ""):
    """Turn any failure of loading ``what`` into the one-paragraph CheckpointError of a checkpoint whose pieces do
    not fit (torch's load_state_dict raises KeyError, ValueError, RuntimeError, TypeError...)."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[0][:300] or type(e).__name__
        raise CheckpointError(f"Cannot resume from {path}: its {what} cannot be restored"
                              f"{f' into {into}' if into else ''} ({type(e).__name__}: {detail}). {PIECED}") from None


def check_progress(state: dict, cfg, path) -> Progress:
    """The checkpoint's Progress, if its numbers make sense for this run: whole numbers >= 0 for the epoch and
    the steps, a step within an epoch of this run's length, a list of summary rows, a number for the best
    top-1; else CheckpointError."""
    problems = [f"its {key} is {state[key]!r}, not a whole number >= 0"
                for key in ("epoch", "step_in_epoch", "global_step")
                if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0]
    if not problems and state["step_in_epoch"] > cfg.steps_per_epoch:
        then = state["config"].get("train_images")
        data = (f"; the training set had {then} images then and has {cfg.train_images} now"
                if then not in (None, cfg.train_images) else "")
        problems.append(f"it is at step {state['step_in_epoch']} of epoch {state['epoch'] + 1}, beyond the "
                        f"{cfg.steps_per_epoch} steps an epoch of this run has{data}")
    history = state.get("history") or []
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        problems.append("its history is not a list of summary rows")
    best = state.get("best_top1", -1.0)
    if isinstance(best, bool) or not isinstance(best, (int, float)):
        problems.append(f"its best_top1 is {best!r}, not a number")
    if problems:
        raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + f". {PIECED}")
    return progress_of(state)
