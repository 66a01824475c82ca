"""Export a train.py checkpoint as plain weights for others: ``python -m imnet.tools.export RUN/best.pt -o model.pth``.

A checkpoint carries the optimizer state, RNG states, history and so on (a ResNet-18 best.pt is about
90 MB, its weights 45 MB). The export is the model's state_dict alone (``--ema``: the EMA weights), written
atomically (temporary file + os.replace), plus its class names, one per line, in ``<output stem>.classes.txt``
next to it. The class file is always written: without it output i of the model means nothing, and a plain
state_dict cannot carry the names (an extra key would break ``load_state_dict(strict=True)``).

Beside them, ``<output stem>.json`` (the sidecar, `write_sidecar`) records how to feed the model: the evaluation
policy the run validated with (resize, crop, interpolation, mean/std, decode), the architecture (model name,
constructor and keyword arguments), the training image size, the class file and the sha256 of the weights file.
``eval.py --weights-file model.pth`` and ``python -m imnet.tools.predict --weights-file model.pth`` read it
(`read_sidecar`, which checks the sha256), so the exported model is evaluated as its checkpoint was; the .pth
itself stays a plain state_dict that any torchvision code loads.

Before writing, the weights are loaded with ``strict=True`` into the very constructor the printed line uses,
so the printed line is known to work. Then the file's sha256 and that line are printed, e.g.::

    model = torchvision.models.resnet18(num_classes=10); model.load_state_dict(torch.load("model.pth", weights_only=True))

DeiT models are torchvision's ``VisionTransformer`` at the DeiT widths (Touvron et al. 2021, Table 1), so
their line names that class; ViT/DeiT lines carry ``image_size`` (the training crop), on which the position
embedding's shape depends. A distilled DeiT (``deit_*_distilled``) is not a torchvision class: its line builds
``deit.DistilledVisionTransformer`` from imnet/deit.py, a copyable file (it imports only torch and torchvision)
to put beside the loading code; the import line printed says so.

Every load uses ``torch.load(..., weights_only=True)`` (imnet.run.checkpoint reads the file). Bad input (a missing,
empty or foreign file, ``--ema`` without EMA weights, an output that cannot be written) prints one paragraph to
stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision

from imnet.run import checkpoint, models
from imnet.run.atomic import write_atomic
from imnet.run.config import EvalPolicy
from imnet.run.errors import UsageError

SIDECAR_FORMAT = "imnet-export-1"  # the sidecar's "format" entry: a JSON without it is not one


class ExportError(UsageError):
    """Bad input; the message says what is wrong and what to do."""


def load_checkpoint(path: Path) -> dict:
    """The train.py checkpoint at ``path`` (`imnet.run.checkpoint.read_state`: weights_only, schema checked)."""
    if path.exists() and not path.is_file():
        raise ExportError(f"'{path}' is not a file. Give a checkpoint written by train.py, e.g. RUN/best.pt.")
    return checkpoint.read_state(path)


def constructor(name: str, num_classes: int, image_size: int) -> tuple[str, object, dict]:
    """(the expression's callable name, the callable, keyword arguments) that build ``name`` as train.py did
    (`imnet.run.models.constructor`)."""
    try:
        return models.constructor(name, num_classes, image_size)
    except ValueError:
        raise ExportError(f"The checkpoint's model '{name}' is not a classification model of this torchvision "
                          f"({torchvision.__version__}) nor one of imnet's DeiTs, so no loading line can be "
                          f"written for it. Export with the torchvision version the run was trained with.") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export(src: Path, out: Path, ema: bool) -> dict:
    """Write the plain state_dict and the class file; return what to print."""
    ckpt = load_checkpoint(src)
    config = ckpt["config"]
    name, classes = config["model"], [str(c) for c in ckpt["classes"]]
    if ema and not checkpoint.has_weights(ckpt, "ema"):
        raise ExportError(f"'{src}' has no EMA weights (its run was trained without --ema). Export the "
                          f"regular weights: drop --ema.")
    state = checkpoint.weights_of(ckpt, "ema" if ema else "model", src)
    if any(("\n" in c or "\r" in c) for c in classes):
        raise ExportError("A class name contains a line break, so the class file (one name per line) cannot "
                          "hold it. Rename that class folder.")

    image_size = int(config.get("train_crop_size") or 224)
    fn_name, fn, kwargs = constructor(name, len(classes), image_size)
    # Own contiguous copies: the file then holds these tensors only, not storages shared with anything else.
    weights = OrderedDict((k, v.detach().clone(memory_format=torch.contiguous_format) if torch.is_tensor(v) else v)
                          for k, v in state.items())
    if hasattr(state, "_metadata"):  # per-module versions, read by load_state_dict (e.g. BatchNorm's)
        weights._metadata = state._metadata
    # torchvision's classes, or imnet/deit.py's (copied beside the loading code) for a distilled DeiT
    module = "torchvision.models" if fn.__module__.startswith("torchvision.") else "deit"
    imports = ("import torch, torchvision" if module == "torchvision.models" else
               "import torch, deit  # deit.py: imnet/deit.py copied beside this code (it needs only torch and "
               "torchvision)")
    call = f"{module}.{fn_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        fn(**kwargs).load_state_dict(weights, strict=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:400]
        raise ExportError(f"The {'EMA' if ema else 'model'} weights in '{src}' do not load into {call} "
                          f"({type(e).__name__}: {first}). The checkpoint's model name, class list and weights "
                          f"disagree.") from None

    classes_path, side_path = out.with_suffix(".classes.txt"), sidecar_path(out)
    for p in (out, classes_path, side_path):
        if p.exists() and p.resolve() == src.resolve():
            raise ExportError(f"The output '{p}' is the checkpoint itself; choose another -o.")
        if p.is_dir():
            raise ExportError(f"The output '{p}' is a folder; give a file name, e.g. -o {p / 'model.pth'}.")
    try:
        write_atomic(out, lambda f: torch.save(weights, f))
        write_atomic(classes_path, lambda f: f.write("".join(c + "\n" for c in classes).encode("utf-8")))
        digest = sha256(out)
        policy = EvalPolicy.from_dict(config.get("eval_policy"))
        write_sidecar(side_path, {
            "format": SIDECAR_FORMAT, "weights_file": out.name, "sha256": digest, "model": name,
            "constructor": f"torchvision.models.{fn_name}", "kwargs": kwargs, "image_size": image_size,
            "num_classes": len(classes), "classes_file": classes_path.name, "weights": "ema" if ema else "model",
            "eval_policy": policy.to_dict() if policy else None, "recorded": ckpt.get("metrics"),
            "checkpoint": str(src)})
    except OSError as e:
        raise ExportError(f"Cannot write '{e.filename or out}': {e.strerror or e}. Check that the folder "
                          f"'{out.parent}' exists and is writable, or choose another -o.") from None
    load = f"torch.load({json.dumps(str(out))}, weights_only=True)"
    return {"out": out, "classes_path": classes_path, "sidecar": side_path, "name": name, "num_classes": len(classes),
            "sha256": digest, "size": out.stat().st_size, "src_size": src.stat().st_size,
            "line": f"model = {call}; model.load_state_dict({load})", "imports": imports, "ema": ema,
            "policy": policy}


# ------------------------------------------------------------------------------------------ the sidecar

def sidecar_path(weights) -> Path:
    """``model.pth`` -> ``model.json``: where the sidecar of a weights file is."""
    return Path(weights).with_suffix(".json")


def write_sidecar(path: Path, d: dict) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(d, indent=2) + "\n").encode("utf-8")))


def read_sidecar(weights) -> dict | None:
    """The sidecar beside the weights file ``weights`` (None when there is none, or the JSON there is not one:
    no "format" entry of ours), checked: the file's sha256 must be the one recorded, and the class file must
    hold ``num_classes`` names. -> the JSON's entries, with "path" (the sidecar), "classes" (the names, in output
    order) and "policy" (an EvalPolicy, or None when the run recorded none). ExportError otherwise."""
    weights, path = Path(weights), sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"Cannot read the sidecar '{path}' of '{weights}': {e}. Export the checkpoint again "
                          f"(python -m imnet.tools.export RUN/best.pt -o {weights}).") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        return None
    actual = sha256(weights)
    if actual != d.get("sha256"):
        raise ExportError(f"'{weights}' does not match its sidecar '{path}': the file's sha256 is {actual}, the "
                          f"sidecar records {d.get('sha256')} (the weights were replaced or changed, or the two files "
                          f"come from different exports). Keep the .pth, .json and .classes.txt of one export "
                          f"together, or export again: python -m imnet.tools.export RUN/best.pt -o {weights}.")
    classes_path = path.parent / d["classes_file"]
    try:
        classes = classes_path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ExportError(f"Cannot read the class file '{classes_path}' that '{path}' names: {e.strerror or e}. "
                          f"Keep the .pth, .json and .classes.txt of one export together.") from None
    if len(classes) != d["num_classes"]:
        raise ExportError(f"'{classes_path}' holds {len(classes)} class names, but the model of '{path}' has "
                          f"{d['num_classes']} outputs. Keep the files of one export together, or export again.")
    return {**d, "path": path, "classes": classes, "policy": EvalPolicy.from_dict(d.get("eval_policy"))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m imnet.tools.export",
        description="Write a train.py checkpoint's weights as a plain state_dict (no optimizer state), print its "
                    "sha256 and the torchvision line that loads it. The class names go to <output stem>.classes.txt, "
                    "the evaluation policy and architecture to <output stem>.json.")
    p.add_argument("checkpoint", type=Path, help="a train.py checkpoint, e.g. RUN/best.pt")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the regular ones")
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write, e.g. model.pth")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        r = export(args.checkpoint, args.output, args.ema)
    except UsageError as e:
        print(f"imnet.tools.export: {e}", file=sys.stderr)
        return 2
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print(f"wrote {r['out']} ({mb(r['size'])}; the checkpoint is {mb(r['src_size'])}): the "
          f"{'EMA' if r['ema'] else 'regular'} weights of {r['name']}, {r['num_classes']} classes")
    print(f"class names, line i = output i: {r['classes_path']}")
    policy = r["policy"].describe() if r["policy"] else "none recorded in the checkpoint"
    print(f"how to feed it (eval.py and imnet.tools.predict --weights-file read it): {r['sidecar']}; policy: {policy}")
    print(f"sha256: {r['sha256']}")
    print("load it with:")
    print(r["imports"])
    print(r["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
