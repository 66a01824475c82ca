"""The distillation teacher (train.py ``--teacher``): where its weights come from, the checks that it can teach
this student, and the record of it that the run keeps.

A teacher is one of

- a train.py checkpoint: its ``"model"`` weights, its model name, class list, training crop and evaluation
  policy are all in the file;
- a plain state_dict (``.pth``, or a dict holding one under ``"model"`` / ``"state_dict"``, as DeiT's released
  teacher is), with ``--teacher-model NAME`` saying which network it is;
- torchvision's published weights by name (``RegNet_Y_16GF_Weights.IMAGENET1K_V2``), downloaded once into
  torchvision's cache; their card says the network, the classes and the evaluation policy.

Checked before any training (each failure is one paragraph, exit 2): the teacher's weights fit its network
(strict keys and shapes, `imnet.run.models.load_init`); its classes are the student's (the same names in the same
order when the file lists them, else the same number: the teacher's output c must mean the student's class c);
a teacher of fixed input size (ViT/DeiT) was built for the student's training crop. What cannot be checked is
recorded for the audit (`imnet.run.audit`): the resolution the teacher was trained at and its normalisation.

The record (`Config.with_teacher`): source, the name given, the file read, its sha256, the network, the number
of classes, the teacher's training image size and evaluation policy (None where unknown). It is written to
config.json and into every checkpoint; the teacher's weights are never saved with the student.
"""

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
from imnet.tools.export import sha256

WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")


class TeacherError(UsageError):
    """A teacher that cannot teach this student; the message says why and what to do."""


def _listing(names, show=5):
    names = list(names)
    return ", ".join(map(str, names[:show])) + (f" (and {len(names) - show} more)" if len(names) > show else "")


def read_source(spec: str, model_name: str | None, num_classes: int, progress: bool = True) -> tuple[dict, dict]:
    """-> (the teacher's state_dict, its record without the checks' results) for ``--teacher spec``; published
    weights for another number of classes than ``num_classes`` are refused before they are downloaded."""
    path = Path(spec)
    if path.is_file():
        ckpt = checkpoint.load(path)  # weights_only=True; CheckpointError when corrupt
        record = {"file": str(path.resolve()), "sha256": sha256(path), "spec": spec}
        if "version" in ckpt and "config" in ckpt:  # a train.py checkpoint
            ckpt = checkpoint.check_state(ckpt, path)
            run = ckpt["config"]
            if model_name is not None and model_name != run["model"]:
                raise TeacherError(f"--teacher-model {model_name} contradicts --teacher {spec}, a train.py "
                                   f"checkpoint of a {run['model']}: drop --teacher-model.")
            return checkpoint.weights_of(ckpt, "model", path), {
                **record, "source": "checkpoint", "model": run["model"], "class_names": list(ckpt["classes"]),
                "image_size": run.get("train_crop_size"), "eval_policy": run.get("eval_policy")}
        if model_name is None:
            raise TeacherError(f"--teacher {spec} is a plain state_dict, which does not say which network it is: "
                               f"add --teacher-model NAME (e.g. regnet_y_16gf), or pass a train.py checkpoint.")
        for key in ("model", "state_dict"):  # checkpoints of other codebases (DeiT's teacher file has "model")
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
        return ckpt, {**record, "source": "state_dict", "model": model_name, "class_names": None,
                      "image_size": None, "eval_policy": None}
    if not WEIGHTS_NAME.fullmatch(spec):
        raise TeacherError(f"--teacher {spec}: no such file, and not a torchvision weights name (names look like "
                           f"RegNet_Y_16GF_Weights.IMAGENET1K_V2). Give a train.py checkpoint, a state_dict with "
                           f"--teacher-model, or a weights name.")
    try:
        weights = models.torchvision_weights(spec)
    except ValueError:
        raise TeacherError(f"--teacher {spec}: not one of torchvision's weights (names look like "
                           f"RegNet_Y_16GF_Weights.IMAGENET1K_V2; torchvision.models.get_model_weights("
                           f"'regnet_y_16gf') lists a model's).") from None
    name = models.weights_model(weights)
    if name is None or (model_name is not None and model_name != name):
        raise TeacherError(f"--teacher {spec} are weights of {name or 'no torchvision classifier'}"
                           f"{f', not of --teacher-model {model_name}: drop --teacher-model' if model_name else ''}.")
    if len(weights.meta["categories"]) != num_classes:
        raise TeacherError(f"--teacher {spec} predicts {len(weights.meta['categories'])} classes, but the data has "
                           f"{num_classes} class folders. Distil from a teacher trained on exactly these classes (a "
                           f"train.py checkpoint of this data, or ImageNet-1k weights for the 1,000 ImageNet "
                           f"folders).")
    state = weights.get_state_dict(progress=progress, check_hash=True)
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    t = weights.transforms()
    policy = EvalPolicy(t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
    return state, {"source": "torchvision weights", "spec": spec, "file": str(file), "sha256": sha256(file),
                   "model": name, "class_names": None, "eval_policy": policy.to_dict(),
                   # the card gives the evaluation crop only; ViT weights are built for it, convnets' training
                   # size is not known (torchvision's new recipe trained at 176 and evaluates at 224)
                   "image_size": t.crop_size[0] if models.fixed_input_size(name) else None}


def load_teacher(spec: str, model_name: str | None, classes: list, image_size: int, size_changes: bool = False,
                 progress: bool = True) -> tuple[nn.Module, dict]:
    """-> (the teacher, on the CPU, in eval mode, without gradients; its record) for a student trained on
    ``classes`` at crop ``image_size`` (``size_changes``: progressive resolution). TeacherError (one paragraph)
    when it cannot teach this student: see the module docstring."""
    state, record = read_source(spec, model_name, len(classes), progress)
    name, what = record["model"], f"The teacher's weights ({spec})"
    names = record.pop("class_names")
    if names is not None and names != list(classes):
        missing, extra = [c for c in classes if c not in names], [c for c in names if c not in classes]
        detail = (f"{len(missing)} of the data's classes are not the teacher's ({_listing(missing)}); "
                  f"{len(extra)} of the teacher's are not in the data ({_listing(extra)})" if missing or extra
                  else "the same names in another order")
        raise TeacherError(f"--teacher {spec} was trained on other classes than this data's ({len(names)} vs "
                           f"{len(classes)}: {detail}). Its output c must mean the student's class c: distil from a "
                           f"teacher trained on exactly these class folders.")
    try:
        teacher = models.build_model(name, len(classes), image_size=image_size)
    except ValueError as e:
        raise TeacherError(f"--teacher {spec}: {e}") from None
    if models.fixed_input_size(name):
        state = models._strip(state)  # DDP / torch.compile prefixes
        pos = "encoder.pos_embedding"
        own, theirs = teacher.state_dict()[pos].shape, getattr(state.get(pos), "shape", None)
        if size_changes:
            raise TeacherError(f"--teacher {spec} is a {name}, whose input size is fixed, but --progressive-res "
                               f"changes the size of the student's batches: use a convolutional teacher, or train "
                               f"at one size.")
        if theirs is not None and tuple(theirs) != tuple(own):
            grid = round((theirs[1] - (own[1] - (image_size // teacher.patch_size) ** 2)) ** 0.5)
            raise TeacherError(f"--teacher {spec} is a {name} built for another input size (a {grid}x{grid} patch "
                               f"grid, {grid * teacher.patch_size} px), but it would see the student's "
                               f"{image_size} px training crops. Train the student at the teacher's size, or "
                               f"fine-tune the teacher at {image_size} px first.")
    try:
        done = models.load_init(teacher, name, state, image_size, None, None, what=what)
    except ValueError as e:
        raise TeacherError(f"{e} (--teacher {spec})") from None
    if done["reinitialised"]:
        head = max((k for k in done["reinitialised"] if k.endswith("weight")), key=len, default=None)
        outputs = state[head].shape[0] if head in state else "another number of"
        raise TeacherError(f"--teacher {spec} has {outputs} outputs ({', '.join(done['reinitialised'])}), but the "
                           f"data has {len(classes)} classes. Distil from a teacher trained on exactly these "
                           f"classes.")
    record["classes"] = len(classes)
    return teacher.eval().requires_grad_(False), record


def build_teacher(cfg: Config, classes: list, info) -> tuple[nn.Module, Config]:
    """train.py's --teacher: the distillation teacher on info.device (`load_teacher`: checked to have the
    student's classes and, if its input size is fixed, the student's training crop), and the Config with its
    record (file, sha256, network, sizes). Under torchrun rank 0 downloads published weights first."""
    with main_rank_first(info, needed=not Path(cfg.teacher).is_file()):
        teacher, record = load_teacher(cfg.teacher, cfg.teacher_model, classes, cfg.train_crop_size,
                                       size_changes=cfg.progressive_res is not None, progress=not cfg.quiet)
    teacher.to(info.device)
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher, cfg.with_teacher(record)
