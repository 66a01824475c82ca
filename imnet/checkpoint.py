"""Checkpoints: the schema (built and read here only), atomic saving, safe loading, and the save and restore of a
run's every stateful piece, so that a resumed run continues exactly.

- Atomic: written by `imnet.atomic.write_atomic` (temporary file, fsync, rename, fsync of the folder). A kill at
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

import hashlib
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imnet import dist
from imnet.atomic import write_atomic
from imnet.errors import UsageError


class CheckpointError(UsageError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` and verify its content checksum when it has one; a clear
    CheckpointError if it is missing, empty, corrupt, or not a plain checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Check the path (train.py writes last.pt "
                              f"and best.pt into its --output folder).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint '{path}' is empty (0 bytes): it was truncated or created elsewhere "
                              f"(train.py writes checkpoints atomically). Use another checkpoint of the run.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
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
    if "checksum" in ckpt and ckpt["checksum"] != content_digest(ckpt):
        raise CheckpointError(f"Checkpoint '{path}' is corrupt: its content does not match the checksum written "
                              f"with it (bytes changed on the disk or in a copy). Use another checkpoint of the run "
                              f"(best.pt or last.pt, or a backup); a file edited on purpose must drop its "
                              f"'checksum' entry.")
    return ckpt


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
# constructor; "config" is the run's resolved imnet.config.Config as a dict (with its "eval_policy").
# The EMA weights, when the run keeps them (else None): "model_ema" in torchvision's reference format (an
# AveragedModel state_dict: "n_averaged", the number of EMA updates, and "module."-prefixed keys), which
# `model_ema.load_state_dict(ckpt["model_ema"])` loads there; "state_dict_ema", the same tensors as a plain
# state_dict, which timm's validate.py --use-ema reads (it looks for state_dict_ema first). "swa" is torch's
# AveragedModel of the SWA weights, None without SWA. "checksum": `content_digest` of everything else.
REQUIRED = ("version", "model", "optimizer", "config", "classes", "epoch", "step_in_epoch", "global_step")


@dataclass
class Progress:
    """Where a run is: the epoch in progress (0-based), optimizer steps done in it and in the whole run, one
    summary row per finished epoch, and the best validation top-1 so far (-1 before any evaluation).

    ``pending_eval``: the last finished epoch's training is saved but its evaluation is not done yet (train.py
    checkpoints an epoch before evaluating it, so that a failed or interrupted evaluation loses nothing); a
    resumed run evaluates first."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    pending_eval: bool = False


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
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    [dict(r) for r in state.get("history") or []], state.get("best_top1", -1.0),
                    bool(state.get("pending_eval", False)))


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
                     "save_every_minutes", "stop_at_step")


def check_compatible(state: dict, cfg, classes: list, path) -> list[str]:
    """Refuse a resume that cannot continue the same run (another model, global batch, seed or class list);
    return the other settings that changed, "name: then -> now"."""
    then = state["config"]
    problems = [f"{label} {then.get(key)} vs {getattr(cfg, key)}" for key, label in
                (("model", "model"), ("global_batch_size", "global batch"), ("seed", "seed"))
                if then.get(key) != getattr(cfg, key)]
    if list(state["classes"]) != list(classes):
        problems.append(f"classes differ ({len(state['classes'])} in the checkpoint, {len(classes)} in the data)")
    if problems:
        raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ". Resume with the settings "
                              f"of the original run, or start a new run with another --output.")
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # config.json and checkpoints hold lists
    return [f"{k}: {then[k]} -> {v}" for k, v in cfg.flags().items()
            if k in then and k not in IGNORED_ON_RESUME and plain(then[k]) != plain(v)]


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
    run was. Settings that changed since are noted in the log."""
    state = read_state(path)
    for change in check_compatible(state, cfg, classes, path):
        log.event("setting_changed", echo=f"note: setting changed since the checkpoint: {change}", change=change)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.ema is not None and has_weights(state, "ema"):
        parts.ema.load_state_dict({"module": state["state_dict_ema"],
                                   "num_updates": int(state["model_ema"]["n_averaged"])})
    if parts.swa is not None and state.get("swa") is not None:
        parts.swa.load_state_dict(state["swa"])
    if parts.scaler is not None and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    progress = progress_of(state)
    if progress.step_in_epoch and info.is_main and state.get("meter") is not None:
        meter.load_state_dict(state["meter"])  # rank 0 carries the epoch's partial sums of all ranks
    if info.rank < len(state["rng"]):
        set_rng_state(state["rng"][info.rank])
    if state.get("bad_images"):
        bad_counter.load_state_dict(state["bad_images"])
    log.event("resume", echo=f"resumed from {path} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}",
              path=str(path), epoch=progress.epoch, step_in_epoch=progress.step_in_epoch)
    return progress
