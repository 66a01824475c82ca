"""Checkpoints: the schema (built and read here only), atomic saving, weights_only loading with a checksum, and a
run's save and restore. Everything saved is tensors and plain data (RNG states included), so weights_only loads it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import random
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from imnet.run import dist
from imnet.run.atomic import write_atomic
from imnet.run.errors import UsageError


class CheckpointError(UsageError):
    pass


def save_atomic(obj, path: str | os.PathLike) -> None:
    """The size told to `write_atomic`: the bytes of the distinct tensor storages (shared ones once, as torch.save)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors(obj)}
    write_atomic(path, lambda f: torch.save(obj, f), size=sum(storages.values()))


def tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (dict, list, tuple)):
        for x in obj.values() if isinstance(obj, dict) else obj:
            yield from tensors(x)


def load(path: str | os.PathLike, data: bytes | None = None) -> dict:
    """``data``: the file's bytes, when they came from rank 0 (a rank that does not see ``path``)."""
    ckpt = _torch_load(Path(path)) if data is None else \
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if "checksum" in ckpt and ckpt["checksum"] != content_digest(ckpt):
        raise CheckpointError(f"Checkpoint '{path}' is corrupt: its content does not match the checksum; {ANOTHER}")
    return ckpt


def _torch_load(path: Path, mmap: bool = False) -> dict:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Check the path (train.py writes last.pt "
                              f"and best.pt into its --output folder).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint '{path}' is empty (0 bytes): {ANOTHER}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():  # a refused global
            raise CheckpointError(f"Refused '{path}': it is not a plain checkpoint (its Python objects can run code "
                                  f"when loaded). Use a train.py checkpoint, or a state_dict you trust.") from None
        first_line = (str(e).splitlines() or ["(no message)"])[0][:300]
        raise CheckpointError(f"Cannot read checkpoint '{path}' with torch.load ({type(e).__name__}: {first_line}); "
                              f"it is corrupt, truncated, or not a checkpoint.") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict.")
    return ckpt


def identity(path: str | os.PathLike) -> dict:
    """A checkpoint's ids, position and checksum, its tensors only memory-mapped ("" for ids written before run
    ids)."""
    path = Path(path)
    try:
        ckpt = _torch_load(path, mmap=True)
    except CheckpointError:
        ckpt = _torch_load(path)  # the older, non-zip format cannot be mapped (or the message is the same)
    defaults = {"run_id": "", "forked_from": "", "epoch": 0, "step_in_epoch": 0, "global_step": 0, "checksum": ""}
    return {k: ckpt[k] if isinstance(ckpt.get(k), type(d)) else d for k, d in defaults.items()}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def content_digest(state: dict) -> str:
    """The sha256 of every key and value but "checksum", in order, each tensor by dtype, shape and bytes: it
    depends on what loads, not on how torch lays the file out."""
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

VERSION = 3  # bump when a key changes meaning; check_state upgrades format 2 and refuses others

# The EMA (else None) twice, the tensors shared: "model_ema" for torchvision's reference scripts (an AveragedModel
# state_dict), "state_dict_ema" for timm's validate.py. "swa": the SWA AveragedModel's state_dict or None.
REQUIRED = ("version", "model", "optimizer", "config", "classes", "epoch", "step_in_epoch", "global_step")


@dataclass
class Progress:
    """Where a run is. ``epoch``: the epoch in progress (0-based); ``best_top1``: -1 before any evaluation;
    ``pending_eval``: the last finished epoch is saved but not evaluated yet (a resumed run evaluates first)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    pending_eval: bool = False
    run_id: str = field(default_factory=new_run_id)
    forked_from: str = ""
    train_set: dict = field(default_factory=dict)  # data.SampleIndex.record(); {} for --fake-data and old files

    def fork(self) -> None:
        self.run_id, self.forked_from = new_run_id(), self.run_id


def make_state(*, model: dict, optimizer: dict, progress: Progress, config: dict, classes: list,
               ema: dict | None = None, swa: dict | None = None, scaler: dict | None = None, meter: dict | None = None,
               rngs: list | None = None, bad_images: dict | None = None, imnet_version: str = "") -> dict:
    """The one place that builds a checkpoint; ``ema``: imnet.ema.ModelEma.state_dict()."""
    model_ema = state_dict_ema = None
    if ema is not None:
        state_dict_ema = dict(ema["module"])
        model_ema = {"n_averaged": torch.tensor(int(ema["num_updates"]), dtype=torch.long),
                     **{f"module.{k}": v for k, v in state_dict_ema.items()}}
    state = {"version": VERSION, "imnet_version": imnet_version, "model": model, "model_ema": model_ema,
             "state_dict_ema": state_dict_ema, "swa": swa, "optimizer": optimizer, "scaler": scaler,
             **asdict(progress), "metrics": progress.history[-1] if progress.history else None,
             "meter": meter, "rng": rngs or [], "bad_images": bad_images, "config": config, "classes": list(classes)}
    state["checksum"] = content_digest(state)
    return state


def read_state(path: str | os.PathLike, data: bytes | None = None) -> dict:
    return check_state(load(path, data), path)


def check_state(state: dict, path) -> dict:
    """``state`` (a loaded file) if it is a train.py checkpoint, format 2 (one "ema" entry) brought to this one."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        hint = (" It looks like a plain state_dict: use --model NAME --weights-file FILE."
                if state and all(torch.is_tensor(v) for v in state.values()) else "")
        raise CheckpointError(f"'{path}' is not a train.py checkpoint (it has no {', '.join(missing)} entries).{hint}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"Cannot use {path}: its config entry is a {type(state['config']).__name__}, not the "
                              f"run's settings. {PIECED}")
    if state["version"] == 2:
        kept = {key: state.get(key) for key in ("swa", "scaler", "meter", "bad_images")}
        upgraded = make_state(model=state["model"], optimizer=state["optimizer"], progress=progress_of(state),
                              config=state["config"], classes=state["classes"], ema=state.pop("ema", None),
                              rngs=state.get("rng"), imnet_version=state.get("imnet_version", ""), **kept)
        state = {**state, **upgraded}
    if state["version"] != VERSION:
        raise CheckpointError(f"'{path}' was written with checkpoint format {state['version']}; this imnet reads "
                              f"formats 2 and {VERSION}. Its weights are the plain state_dict under 'model'.")
    return state


def progress_of(state: dict) -> Progress:
    return Progress(**{f.name: state[f.name] for f in fields(Progress) if state.get(f.name) not in (None, "")})


def rng_state() -> dict:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {"python": [version, list(state), gauss], "torch": torch.get_rng_state(),
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
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
    """Whether a checkpoint holds ``which`` ("model", "ema", "swa": once an epoch was averaged) weights."""
    if which == "ema":
        return bool(state.get("state_dict_ema"))
    if which == "swa":
        return bool(state.get("swa")) and int(state["swa"]["n_averaged"]) > 0
    return which == "model"


def weights_of(state: dict, which: str = "model", path="the checkpoint") -> dict:
    if which not in ("model", "ema", "swa"):
        raise ValueError(f"unknown weights {which!r}; expected 'model', 'ema' or 'swa'")
    if not has_weights(state, which):
        raise CheckpointError(f"{path} has no {which.upper()} weights (its run was trained without "
                              f"{'--ema' if which == 'ema' else '--swa-start, or had not reached it'}).")
    if which == "swa":
        return {k[len("module."):]: v for k, v in state["swa"].items() if k.startswith("module.")}
    return state["state_dict_ema" if which == "ema" else "model"]


# ------------------------------------------------------------------------------------------ a run's state

# Settings whose change does not change what the run computes: a resume notes nothing about them.
IGNORED_ON_RESUME = ("resume", "config", "dry_run", "quiet", "workers", "device", "output", "data", "log_every",
                     "save_every_minutes", "stop_at_step", "tensorboard")

ANOTHER = "use another checkpoint of the run (best.pt or last.pt, or a backup)."
PIECED = f"It was edited or pieced together: {ANOTHER}"


def refuse_resume(path, problems: list[str], advice: str = PIECED) -> None:
    if problems:
        raise CheckpointError(f"Cannot resume from {path}: {'; '.join(problems)}. {advice}") from None


def check_compatible(state: dict, cfg, classes: list, path) -> list[str]:
    """Refuse a resume of another model, global batch, optimizer, seed or class list; -> the other changes."""
    then = state["config"]  # a dict (check_state)
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
    refuse_resume(path, problems, "Resume with the settings of the original run, or start a new run with another "
                                  "--output.")
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # config.json and checkpoints hold lists
    changes = [f"{k}: {then[k]} -> {v}" for k, v in cfg.flags().items()
               if k in then and k not in IGNORED_ON_RESUME and plain(then[k]) != plain(v)]
    if then.get("world_size", cfg.world_size) != cfg.world_size:
        changes.insert(0, f"processes: {then['world_size']} -> {cfg.world_size}, global batch "
                          f"{cfg.global_batch_size} kept ({split(then)} -> {split(now)})")
    return changes


def weights_mismatch(expected: dict, weights) -> str | None:
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
    """Refuse ``which`` ("model", "EMA", "SWA") weights that are not those of ``name``, the model of the config."""
    problem = weights_mismatch(expected, weights)
    if problem:
        raise CheckpointError(f"Checkpoint '{path}' does not fit its own settings: its {which} weights are not those "
                              f"of {name}, the model its config names ({problem}). {PIECED}")


def save(path: Path, cfg, classes: list, parts, progress: Progress, meter, bad_counter, info) -> None:
    """Every rank takes part (the meter's sums are summed, the RNG states gathered); rank 0 writes ``path``."""
    meter_state = meter.state_dict()
    if info.distributed:
        meter_state = {k: dist.all_reduce_sum(v.to(info.device)).cpu() if torch.is_tensor(v) else v
                       for k, v in meter_state.items()}
    rngs = dist.gather_object(rng_state())
    if not info.is_main:
        return
    import imnet
    state_of = lambda piece: piece.state_dict() if piece is not None else None
    save_atomic(make_state(
        model=parts.model.state_dict(), optimizer=parts.optimizer.state_dict(), progress=progress,
        config=cfg.to_dict(), classes=classes, ema=state_of(parts.ema), swa=state_of(parts.swa),
        scaler=state_of(parts.scaler), meter=meter_state, rngs=rngs, bad_images=bad_counter.state_dict(),
        imnet_version=imnet.__version__), path)


def restore_agreed(path: Path, checksum: str, cfg, classes: list, parts, meter, bad_counter, info, log,
                   train_set: dict | None = None) -> Progress:
    """Every rank restores the checkpoint rank 0 chose (``path``, whose content digest is ``checksum``): from its
    own view of ``path`` when that holds the same content, else from the bytes rank 0 sends (a node that does not
    see rank 0's --output); a refusal on any rank stops every rank with its paragraph (`dist.agree`)."""
    data = None
    if info.distributed:
        seen = dist.gather_object(info.is_main or holds(path, checksum), info.control_group)
        if not all(seen):
            log.event("checkpoint_sent", echo=f"note: {seen.count(False)} of {info.world_size} processes do not see "
                      f"{path} (or see another file there); rank 0 sent it to them", path=str(path))
            data = dist.broadcast_bytes(Path(path).read_bytes() if info.is_main else None, info)
            data = None if seen[info.rank] else data
    return dist.agree(info, lambda: restore(path, cfg, classes, parts, meter, bad_counter, info, log, data,
                                            train_set))[info.rank]


def holds(path: Path, checksum: str) -> bool:
    """Whether ``path`` is here and holds the checkpoint whose content digest is ``checksum``."""
    try:
        return bool(checksum) and identity(path)["checksum"] == checksum
    except CheckpointError:
        return False


def restore(path: Path, cfg, classes: list, parts, meter, bad_counter, info, log,
            data: bytes | None = None, train_set: dict | None = None) -> Progress:
    """`save`'s counterpart: every check before the first load, the changes logged only once all is accepted.
    ``train_set``: this run's data.SampleIndex.record() (`check_train_set`)."""
    state = read_state(path, data)
    changes = check_compatible(state, cfg, classes, path)
    progress = check_progress(state, cfg, path)
    data_change = check_train_set(progress, path, train_set or {})
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
    meter_due = progress.step_in_epoch and info.is_main  # rank 0 carries the epoch's partial sums of all ranks
    for what, piece, key in (("SWA average", parts.swa, "swa"), ("fp16 loss-scaler state", parts.scaler, "scaler"),
                             ("partial metric sums of the epoch", meter if meter_due else None, "meter"),
                             ("list of unreadable images", bad_counter, "bad_images")):
        if piece is not None and state.get(key):
            with _restoring(path, what):
                piece.load_state_dict(state[key])
    with _restoring(path, "RNG state"):
        rngs = state["rng"]
        if not isinstance(rngs, list):
            raise TypeError(f"a {type(rngs).__name__}, not a list of one state per process")
        if info.rank < len(rngs):  # a rank added since the save keeps its own
            set_rng_state(rngs[info.rank])
    for change in changes:
        log.event("setting_changed", echo=f"note: setting changed since the checkpoint: {change}", change=change)
    if data_change:
        log.event("train_set_changed", echo=f"note: {data_change}", change=data_change)
    log.event("resume", echo=f"resumed from {path} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}",
              path=str(path), epoch=progress.epoch, step_in_epoch=progress.step_in_epoch, run_id=progress.run_id)
    return progress


@contextlib.contextmanager
def _restoring(path, what: str, into: str = ""):
    """Any failure of loading ``what`` (torch raises many types) as the refusal of pieces that do not fit."""
    try:
        yield
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[0][:300] or type(e).__name__
        refuse_resume(path, [f"its {what} cannot be restored{f' into {into}' if into else ''} "
                             f"({type(e).__name__}: {detail})"])


def check_train_set(progress: Progress, path, now: dict) -> str | None:
    """A resume (``progress``: the restored one) on another training-set file list (``now``:
    data.SampleIndex.record()): refused mid-epoch, where the rest of the epoch's permutation would index other
    images; -> a note at an epoch boundary. A checkpoint without the record (older, or --fake-data) resumes: no
    refusal without evidence."""
    then = progress.train_set
    if not then or not now or then == now:
        return None
    change = (f"the training set's file list changed since the checkpoint ({then.get('images')} images then, "
              f"{now['images']} now)")
    if progress.step_in_epoch:
        refuse_resume(path, [f"{change}, in the middle of epoch {progress.epoch + 1}, whose order of images would "
                             f"then mean other images"], f"Restore the data as they were to finish the epoch, or "
                                                         f"start a new run from these weights with --init-from {path}.")
    return change


def check_progress(state: dict, cfg, path) -> Progress:
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
    refuse_resume(path, problems)
    return progress_of(state)
