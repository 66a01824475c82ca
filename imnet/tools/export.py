"""Export a train.py checkpoint as plain weights for others: ``python -m imnet.tools.export RUN/best.pt -o model.pth``.

eval.py and imnet.tools.predict read checkpoints (`load_weights`) and exports' sidecars (`read_sidecar`) here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision

from imnet.run import checkpoint, models
from imnet.run.atomic import write_atomic, write_text
from imnet.run.config import EvalPolicy
from imnet.run.errors import UsageError

SIDECAR_FORMAT = "imnet-export-1"  # the sidecar's "format" entry: a JSON without it is not one


def load_weights(ckpt_path=None, weights_file=None, kind: str = "model", model: str | None = None, flag=None):
    """-> (model name, state_dict, classes, stored EvalPolicy, info) of a checkpoint's ``kind`` weights (``flag``
    chose them), or of a weights file: its sidecar's, or (``model``, state_dict, None, None, info) without one."""
    if ckpt_path:
        if Path(ckpt_path).exists() and not Path(ckpt_path).is_file():
            raise UsageError(f"'{ckpt_path}' is not a file. Give a checkpoint written by train.py, e.g. RUN/best.pt.")
        ckpt = checkpoint.read_state(ckpt_path)
        run = ckpt["config"]
        if model and model != run["model"]:
            raise UsageError(f"--model {model} contradicts the checkpoint, which holds a {run['model']}.")
        try:
            state = checkpoint.weights_of(ckpt, kind, ckpt_path)
        except checkpoint.CheckpointError as e:
            raise UsageError(f"{e} Drop {flag or '--use-' + kind}.") from None
        try:
            with torch.device("meta"):  # the shapes its own config implies (no memory): the same refusal as a resume
                expected = models.build_model(run["model"], len(ckpt["classes"]),
                                              image_size=run.get("train_crop_size") or 224).state_dict()
        except ValueError:
            raise UsageError(f"The checkpoint's model '{run['model']}' is not a model of torchvision "
                             f"{torchvision.__version__} nor imnet's; use the run's torchvision version.") from None
        checkpoint.check_fits(expected, state, ckpt_path, {"model": "model"}.get(kind, kind.upper()), run["model"])
        info = {"checkpoint": os.path.abspath(ckpt_path), "weights": kind,
                "recorded": ckpt.get("metrics"), "image_size": run.get("train_crop_size")}
        return run["model"], state, list(ckpt["classes"]), EvalPolicy.from_dict(run.get("eval_policy")), info
    side = read_sidecar(weights_file)
    state = checkpoint.load(weights_file)
    for key in ("model", "state_dict"):  # a checkpoint from train.py or another codebase
        if isinstance(state.get(key), dict):
            state = state[key]
    info = {"weights_file": os.path.abspath(weights_file), "weights": "file"}
    if side is None:
        return model, state, None, None, info
    if model and model != side["model"]:
        raise UsageError(f"--model {model} contradicts {side['path']}, which says {weights_file} holds "
                         f"a {side['model']}; drop --model.")
    info.update(weights=side["weights"], sidecar=str(side["path"]), recorded=side.get("recorded"),
                image_size=side["image_size"])
    return side["model"], state, side["classes"], side["policy"], info


def build_model(name: str, state, num_classes: int, policy: EvalPolicy, trained_size: int | None):
    """-> (``name`` in eval mode, built at the evaluation crop for a ViT/DeiT and at ``trained_size`` otherwise,
    with ``state`` loaded by `models.load_init`; its report, None without ``state``)."""
    image_size = policy.crop_size if models.fixed_input_size(name) else trained_size or policy.crop_size
    try:
        model = models.build_model(name, num_classes, image_size=image_size)
        done = models.load_init(model, name, state, image_size, what="The weights") if state is not None else None
    except ValueError as e:
        raise UsageError(f"{e} (the model has {num_classes} classes)") from None
    if done and done["reinitialised"]:  # for evaluation the head must be the trained one
        raise UsageError(f"the weights do not fit {name} with {num_classes} classes: its classifier head "
                         f"({', '.join(done['reinitialised'])}) has another shape in the weights.")
    return model.eval(), done


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export(src: Path, out: Path, ema: bool) -> None:
    """Write the plain state_dict, the class file and the sidecar; print how to load them."""
    name, state, classes, policy, info = load_weights(src, kind="ema" if ema else "model", flag="--ema")
    classes = [str(c) for c in classes]
    if any(("\n" in c or "\r" in c) for c in classes):
        raise UsageError("A class name contains a line break, which the class file cannot hold; rename its folder.")

    image_size = int(info["image_size"] or 224)
    fn_name, fn, kwargs = models.constructor(name, len(classes), image_size)  # load_weights checked the name
    # Own contiguous copies: the file then holds these tensors only, not storages shared with anything else.
    weights = OrderedDict((k, v.detach().clone(memory_format=torch.contiguous_format) if torch.is_tensor(v) else v)
                          for k, v in state.items())
    if hasattr(state, "_metadata"):  # per-module versions, read by load_state_dict (e.g. BatchNorm's)
        weights._metadata = state._metadata
    module = "torchvision.models" if fn.__module__.startswith("torchvision.") else fn.__module__.split(".")[-1]
    imports = ("import torch, torchvision" if module == "torchvision.models" else f"import torch, {module}  # "
               f"{module}.py: imnet/{module}.py copied beside this code (it needs only torchvision)")
    call = f"{module}.{fn_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        fn(**kwargs).load_state_dict(weights, strict=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:400]
        raise UsageError(f"The {'EMA' if ema else 'model'} weights in '{src}' do not load into {call} "
                         f"({type(e).__name__}: {first}). Export another checkpoint of the run.") from None

    classes_path, side_path = out.with_suffix(".classes.txt"), sidecar_path(out)
    for p in (out, classes_path, side_path):
        if p.exists() and p.resolve() == src.resolve():
            raise UsageError(f"The output '{p}' is the checkpoint itself; choose another -o.")
        if p.is_dir():
            raise UsageError(f"The output '{p}' is a folder; give a file name, e.g. -o {p / 'model.pth'}.")
    try:
        write_atomic(out, lambda f: torch.save(weights, f))
        write_text(classes_path, "".join(c + "\n" for c in classes))
        digest = sha256(out)
        side = {
            "format": SIDECAR_FORMAT, "weights_file": out.name, "sha256": digest, "model": name,
            "constructor": f"{module}.{fn_name}", "kwargs": kwargs, "image_size": image_size,
            "num_classes": len(classes), "classes_file": classes_path.name, "weights": "ema" if ema else "model",
            "eval_policy": policy.to_dict() if policy else None, "recorded": info["recorded"],
            "checkpoint": str(src)}
        write_text(side_path, json.dumps(side, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"Cannot write '{e.filename or out}': {e.strerror or e}. Check that the folder "
                         f"'{out.parent}' exists and is writable, or choose another -o.") from None
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print(f"wrote {out} ({mb(out.stat().st_size)}; the checkpoint is {mb(src.stat().st_size)}): the "
          f"{'EMA' if ema else 'regular'} weights of {name}, {len(classes)} classes")
    print(f"class names, line i = output i: {classes_path}")
    described = policy.describe() if policy else "none recorded in the checkpoint"
    print(f"how to feed it (eval.py and imnet.tools.predict --weights-file read it): {side_path}; policy: {described}")
    print(f"sha256: {digest}")
    load = f"torch.load({json.dumps(str(out))}, weights_only=True)"
    print("load it with:", imports, f"model = {call}; model.load_state_dict({load})", sep="\n")


def sidecar_path(weights) -> Path:
    return Path(weights).with_suffix(".json")


def read_sidecar(weights) -> dict | None:
    """The sidecar of the weights file ``weights``, checked against it (sha256, number of class names), with
    "path", "classes" and "policy" (an EvalPolicy or None) added; None when there is no sidecar of ours."""
    weights, path = Path(weights), sidecar_path(weights)
    if not path.is_file():
        return None
    again = f"export again: python -m imnet.tools.export RUN/best.pt -o {weights}"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise UsageError(f"Cannot read the sidecar '{path}' of '{weights}': {e}. Fix it or {again}.") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        return None
    actual = sha256(weights)
    if actual != d.get("sha256"):
        raise UsageError(f"'{weights}' does not match its sidecar '{path}': sha256 {actual}, the sidecar records "
                         f"{d.get('sha256')}. Keep the files of one export together, or {again}.")
    kinds = {"model": str, "weights": str, "classes_file": str, "num_classes": int, "image_size": int,
             "eval_policy": (dict, type(None))}
    wrong = [key for key, kind in kinds.items() if not isinstance(d.get(key), kind)]
    if wrong:
        raise UsageError(f"The sidecar '{path}' of '{weights}' lacks valid {', '.join(wrong)} entries. Fix it or "
                         f"{again}.")
    classes_path = path.parent / d["classes_file"]
    try:
        classes = classes_path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:  # ValueError: not UTF-8
        raise UsageError(f"Cannot read the class file '{classes_path}' that '{path}' names: "
                         f"{getattr(e, 'strerror', None) or e}. Keep the .pth, .json and .classes.txt of one "
                         f"export together.") from None
    if len(classes) != d["num_classes"]:
        raise UsageError(f"'{classes_path}' holds {len(classes)} class names, but the model of '{path}' has "
                         f"{d['num_classes']} outputs. Keep the files of one export together, or {again}.")
    try:
        policy = EvalPolicy.from_dict(d["eval_policy"])
    except (TypeError, ValueError) as e:
        raise UsageError(f"The sidecar '{path}' of '{weights}' holds an invalid eval_policy ({e}). Fix it or "
                         f"{again}.") from None
    return {**d, "path": path, "classes": classes, "policy": policy}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m imnet.tools.export",
        description="Write a train.py checkpoint's weights as a plain state_dict, with its class names "
                    "(<output stem>.classes.txt) and its policy and architecture (<output stem>.json).")
    p.add_argument("checkpoint", type=Path, help="a train.py checkpoint, e.g. RUN/best.pt")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the regular ones")
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write, e.g. model.pth")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        export(args.checkpoint, args.output, args.ema)
    except UsageError as e:
        print(f"imnet.tools.export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
