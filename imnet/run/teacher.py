"""The distillation teacher (``--teacher``), checked to fit the student; config.json and every checkpoint record
where it came from (`Config.with_teacher`), never its weights."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from imnet.run import checkpoint, models
from imnet.run.config import Config, EvalPolicy
from imnet.run.dist import main_rank_first
from imnet.run.errors import UsageError
from imnet.run.folders import short_list
from imnet.tools.export import sha256


def read_source(spec: str, model_name: str | None, num_classes: int, progress: bool = True) -> tuple[dict, dict]:
    """-> (the teacher's state_dict, its record); published weights are checked before they are downloaded."""
    path = Path(spec)
    if path.is_file():
        ckpt = checkpoint.load(path)  # weights_only=True; CheckpointError when corrupt
        record = {"file": str(path.resolve()), "sha256": sha256(path), "spec": spec}
        if "version" in ckpt and "config" in ckpt:  # a train.py checkpoint
            ckpt = checkpoint.check_state(ckpt, path)
            run = ckpt["config"]
            if model_name is not None and model_name != run["model"]:
                raise UsageError(f"--teacher-model {model_name} contradicts --teacher {spec}, a train.py "
                                 f"checkpoint of a {run['model']}: drop --teacher-model.")
            return checkpoint.weights_of(ckpt, "model", path), {
                **record, "source": "checkpoint", "model": run["model"], "class_names": list(ckpt["classes"]),
                "image_size": run.get("train_crop_size"), "eval_policy": run.get("eval_policy")}
        if model_name is None:
            raise UsageError(f"--teacher {spec} is a plain state_dict: add --teacher-model NAME (e.g. "
                             f"regnet_y_16gf), or pass a train.py checkpoint.")
        for key in ("model", "state_dict"):  # checkpoints of other codebases (DeiT's teacher file has "model")
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
        return ckpt, {**record, "source": "state_dict", "model": model_name, "class_names": None,
                      "image_size": None, "eval_policy": None}
    try:  # the pattern first: torchvision's lookup raises TypeError for some other strings
        weights = models.torchvision_weights(spec) if re.fullmatch(r"\w+_Weights\.\w+", spec, re.ASCII) else None
    except ValueError:
        weights = None
    if weights is None:
        raise UsageError(f"--teacher {spec}: no such file, and not a torchvision weights name. Give a train.py "
                         f"checkpoint, a state_dict with --teacher-model, or RegNet_Y_16GF_Weights.IMAGENET1K_V2.")
    name = models.weights_model(weights)
    if name is None or (model_name is not None and model_name != name):
        raise UsageError(f"--teacher {spec} are weights of {name or 'no torchvision classifier'}"
                         f"{f', not of --teacher-model {model_name}: drop --teacher-model' if model_name else ''}.")
    if len(weights.meta["categories"]) != num_classes:
        raise UsageError(f"--teacher {spec} predicts {len(weights.meta['categories'])} classes, but the data has "
                         f"{num_classes} class folders. Distil from a teacher trained on exactly these classes.")
    try:
        state = models.download_weights(weights, spec, progress, f"--teacher-model {name} --teacher", "--teacher")
    except ValueError as e:
        raise UsageError(str(e)) from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    t = weights.transforms()
    policy = EvalPolicy(t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
    return state, {"source": "torchvision weights", "spec": spec, "file": str(file), "sha256": sha256(file),
                   "model": name, "class_names": None, "eval_policy": policy.to_dict(),
                   # the card gives the evaluation crop only: a ViT's size, not a convnet's training size
                   "image_size": t.crop_size[0] if models.fixed_input_size(name) else None}


def load_teacher(spec: str, model_name: str | None, classes: list, image_size: int, size_changes: bool = False,
                 progress: bool = True) -> tuple[nn.Module, dict]:
    """-> (the frozen teacher on the CPU, its record); ``size_changes``: the student's crop size changes."""
    state, record = read_source(spec, model_name, len(classes), progress)
    name, what = record["model"], f"The teacher's weights ({spec})"
    names = record.pop("class_names")
    if names is not None and names != list(classes):
        missing, extra = [c for c in classes if c not in names], [c for c in names if c not in classes]
        detail = (f"{len(missing)} of the data's classes are not the teacher's ({short_list(missing, 5)}); "
                  f"{len(extra)} of the teacher's are not in the data ({short_list(extra, 5)})" if missing or extra
                  else "the same names in another order")
        raise UsageError(f"--teacher {spec} was trained on other classes than this data's ({len(names)} vs "
                         f"{len(classes)}: {detail}). Distil from a teacher trained on exactly these class folders.")
    try:
        teacher = models.build_model(name, len(classes), image_size=image_size)
    except ValueError as e:
        raise UsageError(f"--teacher {spec}: {e}") from None
    if models.fixed_input_size(name):
        state = models._strip(state)  # DDP / torch.compile prefixes
        pos = "encoder.pos_embedding"
        own, theirs = teacher.state_dict()[pos].shape, getattr(state.get(pos), "shape", None)
        if size_changes:
            raise UsageError(f"--teacher {spec} is a {name}, whose input size is fixed, but --progressive-res "
                             f"changes the student's. Use a convolutional teacher, or train at one size.")
        if theirs is not None and tuple(theirs) != tuple(own):
            grid = round((theirs[1] - (own[1] - (image_size // teacher.patch_size) ** 2)) ** 0.5)
            raise UsageError(f"--teacher {spec} is a {name} built for another input size ({grid * teacher.patch_size} "
                             f"px, {grid}x{grid} patches), not the student's {image_size} px crops. Train the student "
                             f"at the teacher's size, or fine-tune the teacher at {image_size} px first.")
    try:
        done = models.load_init(teacher, name, state, image_size, None, None, what=what)
    except ValueError as e:
        raise UsageError(f"{e} (--teacher {spec})") from None
    if done["reinitialised"]:
        head = max((k for k in done["reinitialised"] if k.endswith("weight")), key=len, default=None)
        outputs = state[head].shape[0] if head in state else "another number of"
        raise UsageError(f"--teacher {spec} has {outputs} outputs ({', '.join(done['reinitialised'])}), but the "
                         f"data has {len(classes)} classes. Distil from a teacher trained on exactly these.")
    record["classes"] = len(classes)
    return teacher.eval().requires_grad_(False), record


def build_teacher(cfg: Config, classes: list, info) -> tuple[nn.Module, Config]:
    """-> (the teacher on info.device, the Config with its record); rank 0 downloads published weights first."""
    with main_rank_first(info, needed=not Path(cfg.teacher).is_file()):
        teacher, record = load_teacher(cfg.teacher, cfg.teacher_model, classes, cfg.train_crop_size,
                                       size_changes=cfg.progressive_res is not None, progress=not cfg.quiet)
    teacher.to(info.device)
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher, cfg.with_teacher(record)
