"""Models: any torchvision classifier by name, plus DeiT-Ti/S and DeiT's distilled variants, with stochastic depth
where it fits; initial weights from a checkpoint, a state_dict or torchvision's published weights (`load_init`).

torchvision's classifiers are those of ``torchvision.models.list_models(module=torchvision.models)``;
EfficientNet-Lite, for one, is not among them (timm has it).

Every model here is a plain torchvision module, so a checkpoint's ``"model"`` state_dict loads into
``torchvision.models.<name>(num_classes=K)`` with ``strict=True``. DeiT (Touvron et al. 2021, "Training
data-efficient image transformers") is torchvision's ``VisionTransformer`` at the DeiT widths, and loads
into that class the same way. ``deit_tiny_distilled``, ``deit_small_distilled`` and ``deit_base_distilled`` are
``imnet.deit.DistilledVisionTransformer`` (a subclass with DeiT's distillation token and second head; deit.py is
copyable, so their weights load wherever that file is copied): in training they return (class logits,
distillation logits), in eval mode the mean of the two.
"""

from __future__ import annotations

import difflib
import types

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
from torchvision.ops import StochasticDepth, stochastic_depth

from imnet.deit import DEIT_DISTILLED, DistilledVisionTransformer, interpolate_pos_embedding
from imnet.ema import unwrap  # noqa: F401  (DDP / torch.compile -> the plain module; re-exported)

# DeiT widths (Touvron et al. 2021, Table 1): patch 16, depth 12, MLP ratio 4.
DEIT = {
    "deit_tiny": dict(num_heads=3, hidden_dim=192),
    "deit_small": dict(num_heads=6, hidden_dim=384),
}

# torchvision families whose constructors take ``stochastic_depth_prob``.
_DROP_PATH_FAMILIES = ("convnext", "efficientnet", "swin", "maxvit")
# ... of which these builders set it themselves (swin_t passes 0.2, maxvit_t 0.2), so passing it again is a
# TypeError ("got multiple values"): they are built with their own rate and rescaled (`set_drop_path`).
_FIXED_DROP_PATH = ("swin", "maxvit")


def fixed_input_size(name: str) -> bool:
    """Models whose input size is fixed when they are built: torchvision's ViT (and DeiT, built on it), whose
    position embedding has one entry per patch of the ``image_size`` given to the constructor."""
    return name.startswith("vit_") or name in DEIT or name in DEIT_DISTILLED


def model_names() -> list[str]:
    """All names ``build_model`` accepts."""
    return sorted(torchvision.models.list_models(module=torchvision.models)) + sorted(DEIT) + sorted(DEIT_DISTILLED)


def check_name(name: str) -> None:
    """ValueError (with the closest names) unless ``build_model`` knows ``name``."""
    if name in model_names():
        return
    close = difflib.get_close_matches(name, model_names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if "lite" in name.lower() and "efficientnet" in name.lower():
        hint = (" EfficientNet-Lite is not in torchvision (timm has it); torchvision has efficientnet_b0 to "
                "efficientnet_b7 and efficientnet_v2_s/m/l.")
    raise ValueError(f"Unknown model '{name}'.{hint} Any torchvision classification model works "
                     f"(torchvision.models.list_models(module=torchvision.models)), plus deit_tiny and deit_small, "
                     f"and DeiT's distilled {', '.join(sorted(DEIT_DISTILLED))} (trained with --teacher).")


def constructor(name: str, num_classes: int, image_size: int = 224) -> tuple[str, object, dict]:
    """How ``name`` is built, as (the callable's name in torchvision.models, the callable, its keyword arguments):
    the one recipe for building a model by name, used by `build_model` and by imnet.tools.export's loading line.
    DeiT is torchvision's ``VisionTransformer`` at the DeiT widths, a distilled DeiT imnet.deit's
    ``DistilledVisionTransformer`` (the callable is then not torchvision's); ViT/DeiT take ``image_size`` (their
    position embedding has one entry per patch); googlenet and inception_v3 are built without their auxiliary
    heads."""
    check_name(name)
    if name in DEIT_DISTILLED:
        hidden_dim, num_heads = DEIT_DISTILLED[name]
        return "DistilledVisionTransformer", DistilledVisionTransformer, dict(
            image_size=image_size, patch_size=16, num_layers=12, num_heads=num_heads, hidden_dim=hidden_dim,
            mlp_dim=4 * hidden_dim, num_classes=num_classes)
    if name in DEIT:
        d = DEIT[name]
        return "VisionTransformer", VisionTransformer, dict(
            image_size=image_size, patch_size=16, num_layers=12, num_heads=d["num_heads"], hidden_dim=d["hidden_dim"],
            mlp_dim=4 * d["hidden_dim"], num_classes=num_classes)
    kwargs: dict = {"num_classes": num_classes}
    if fixed_input_size(name):
        kwargs["image_size"] = image_size
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return name, getattr(torchvision.models, name), kwargs


def build_model(name: str, num_classes: int, drop_path: float | None = None, image_size: int = 224) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs and random weights (`constructor`).

    ``drop_path``: stochastic depth rate (Huang et al. 2016, "Deep Networks with Stochastic Depth"). None
    keeps the model's own default (e.g. 0.1 for convnext_tiny); a number is passed explicitly (0 disables
    it). For ViT/DeiT, which torchvision builds without stochastic depth, it is added to the residual
    branches with the linear depth rule of DeiT (rate i/(L-1) * drop_path for block i).
    ``image_size`` only matters for ViT/DeiT, whose position embedding has a fixed size.
    """
    _, build, kwargs = constructor(name, num_classes, image_size)
    is_vit = fixed_input_size(name)
    if drop_path is not None and name.startswith(_DROP_PATH_FAMILIES):
        if not name.startswith(_FIXED_DROP_PATH):
            kwargs["stochastic_depth_prob"] = drop_path
    elif drop_path and not is_vit:
        raise ValueError(f"--drop-path {drop_path}: model '{name}' has no stochastic depth in torchvision. "
                         f"Use --drop-path 0, or a ConvNeXt, EfficientNet, Swin, MaxViT or ViT/DeiT model.")
    model = build(**kwargs)
    if is_vit and drop_path:
        add_vit_drop_path(model, drop_path)
    if drop_path is not None and name.startswith(_FIXED_DROP_PATH):
        set_drop_path(model, drop_path)
    return model


def set_drop_path(model: nn.Module, drop_path: float) -> None:
    """Rescale every StochasticDepth rate so that the deepest block's rate is ``drop_path``.

    Swin (p_i = rate * i / (N - 1) over the N blocks) and MaxViT (p = linspace(0, rate, layers)) both use
    rules linear in the rate whose largest value is the rate itself, so multiplying every p_i by
    drop_path / max p_i gives exactly the model their builders would make with ``stochastic_depth_prob =
    drop_path``."""
    layers = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    top = max((m.p for m in layers), default=0.0)
    for m in layers:
        m.p = m.p * drop_path / top if top > 0 else 0.0


def _forward_with_drop_path(self: EncoderBlock, inp: torch.Tensor) -> torch.Tensor:
    """EncoderBlock.forward with stochastic depth on both residual branches (pre-norm ViT)."""
    x = self.ln_1(inp)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = inp + stochastic_depth(self.dropout(x), self.drop_path_rate, "row", self.training)
    y = self.mlp(self.ln_2(x))
    return x + stochastic_depth(y, self.drop_path_rate, "row", self.training)


def add_vit_drop_path(model: VisionTransformer, drop_path: float) -> None:
    """Give a torchvision ViT stochastic depth, rate growing linearly with depth (DeiT's rule).

    Only each block's ``forward`` changes, bound as a method so that ``copy.deepcopy`` (the EMA copy)
    binds it to the copied block; parameters and state_dict keys stay torchvision's.
    """
    blocks = [m for m in model.encoder.layers if isinstance(m, EncoderBlock)]
    for i, block in enumerate(blocks):
        block.drop_path_rate = drop_path * i / max(len(blocks) - 1, 1)
        block.forward = types.MethodType(_forward_with_drop_path, block)


# --------------------------------------------------------------------------------------- initial weights
#
# Starting a run from weights trained elsewhere (train.py --init-from / --weights, eval.py at another size):
# every tensor is copied with its exact key and shape, except two that legitimately change with the task:
# the classifier head (its shape follows the number of classes) and a ViT's position embedding (its length
# follows the image size).

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile prefix every key with these


def head_keys(name: str, image_size: int = 224) -> set[str]:
    """The state_dict keys of ``name``'s classifier head: the tensors whose shape depends on the number of
    classes. Found by building the model for 1 and for 2 classes on the meta device (no memory, no
    initialisation work) and comparing shapes, which holds for every torchvision family without a table of
    head names (``fc``, ``classifier.1``, ``heads.head``, ``head``, squeezenet's ``classifier.1`` conv...)."""
    try:
        with torch.device("meta"):
            one, two = (build_model(name, k, image_size=image_size).state_dict() for k in (1, 2))
    except (NotImplementedError, RuntimeError):  # a builder that computes its widths with tensors (regnet)
        one, two = (build_model(name, k, image_size=image_size).state_dict() for k in (1, 2))
    return {k for k in one if one[k].shape != two[k].shape}


def _strip(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k[len(prefix):] if k.startswith(prefix) else k
        out[k] = v
    return out


def init_source(path: str | None = None, weights: str | None = None, model: str | None = None,
                use_ema: bool = False, progress: bool = True,
                file_flag: str = "--init-from") -> tuple[dict, list | None, str]:
    """-> (state_dict, its class names or None, a description) from ``path`` (an imnet checkpoint, a plain
    state_dict such as torchvision's ``.pth``, or a dict holding one under "model"/"state_dict") or from
    ``weights``, a torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V2``, fetched by
    torchvision's own download and cache (`download_weights`; ``file_flag`` is the caller's flag for a file,
    named by the offline message). ValueError when unusable."""
    from imnet.run import checkpoint
    if weights is not None:
        w = torchvision_weights(weights, model)
        return download_weights(w, weights, progress, file_flag), None, f"torchvision weights {weights}"
    ckpt = checkpoint.load(path)  # weights_only=True; CheckpointError when missing or corrupt
    if "version" in ckpt and "config" in ckpt:  # a train.py checkpoint: read_state's schema check
        ckpt = checkpoint.check_state(ckpt, path)
        if use_ema and not checkpoint.has_weights(ckpt, "ema"):
            raise ValueError(f"--init-ema: {path} has no EMA weights (its run had no --ema); drop --init-ema.")
        state = checkpoint.weights_of(ckpt, "ema" if use_ema else "model", path)
        return state, list(ckpt["classes"]), f"{'EMA weights' if use_ema else 'weights'} of {path}"
    if use_ema:
        raise ValueError(f"--init-ema reads the EMA weights of a train.py checkpoint, but {path} is a plain "
                         f"state_dict; drop --init-ema.")
    for key in ("model", "state_dict"):  # checkpoints of other codebases
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    return ckpt, None, f"state_dict {path}"


def download_weights(w, name: str, progress: bool = True, file_flag: str = "--init-from") -> dict:
    """The state_dict of torchvision weights ``w`` (called ``name``): from torchvision's cache,
    ``torch.hub.get_dir()/checkpoints/<the file name of w.url>``, downloaded there first when absent (hash
    checked). Without a network (compute nodes often have none) ValueError says where to put the file by hand,
    or which flag (``file_flag``) loads it from anywhere."""
    import http.client
    import os
    import urllib.error
    import urllib.parse
    file = os.path.basename(urllib.parse.urlparse(w.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return w.get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise ValueError(f"--weights {name}: cannot download {w.url} ({reason}): this machine seems to have no "
                         f"internet access. Download the file on a machine that has it and put it where torchvision "
                         f"looks first, {os.path.join(folder, file)} (the folder is torch.hub.get_dir()/checkpoints; "
                         f"set TORCH_HOME to move it), then run the same command again; or give the file itself "
                         f"with {file_flag} PATH/{file}.") from None
    except OSError as e:  # the cache folder cannot be written (permissions, a full disk)
        raise ValueError(f"--weights {name}: cannot store torchvision's download in {folder} "
                         f"({e.strerror or e}). Set TORCH_HOME to a writable folder, or download {w.url} yourself "
                         f"and give the file with {file_flag} PATH/{file}.") from None


def torchvision_weights(name: str, model: str | None = None):
    """The torchvision weights enum called ``name`` (checked to belong to ``model`` when given)."""
    try:
        w = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"--weights {name}: not a torchvision weights name. Names look like "
                         f"ResNet50_Weights.IMAGENET1K_V2; torchvision.models.get_model_weights('resnet50') "
                         f"lists a model's.") from None
    if model is not None:
        try:
            own = torchvision.models.get_model_weights(model)
        except (ValueError, KeyError):
            own = None
        if type(w) is not own:
            raise ValueError(f"--weights {name} are weights of another network than --model {model}; use "
                             f"--model with the weights' own network (e.g. {type(w).__name__} -> "
                             f"{type(w).__name__.replace('_Weights', '').lower()}).")
    return w


def weights_model(weights) -> str | None:
    """The torchvision model name whose weights enum ``weights`` belongs to (None if no classifier's)."""
    for name in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(name) is type(weights):
            return name
    return None


def load_init(model: nn.Module, name: str, state: dict, image_size: int = 224, source_classes: list | None = None,
              classes: list | None = None, what: str = "The initial weights") -> dict:
    """Copy ``state`` into ``model`` (built by `build_model` for ``classes``): every key must exist on both
    sides with the same shape, except

    - the classifier head (`head_keys`): loaded when its shape fits and the classes are the same ones (when
      both lists are known); otherwise the model keeps its freshly initialised head;
    - a ViT/DeiT position embedding of another length (weights trained at another image size): interpolated
      bicubically on its 2-D grid by torchvision's ``interpolate_embeddings`` (the class token is kept;
      ``align_corners=True``), the 2-D interpolation of Dosovitskiy et al. 2021 ("An Image is Worth 16x16
      Words", Sec. 3.2). DeiT's fine-tuning code (main.py ``--finetune``) and timm resize with
      ``align_corners=False``, so the embedding interpolated here differs slightly from DeiT's (recipes.md,
      known differences); a distilled DeiT's goes through `imnet.deit.interpolate_pos_embedding`, which keeps
      both token rows (class and distillation) and resizes as DeiT does (align_corners=False).

    Returns {"loaded", "reinitialised", "interpolated"} key lists. Raises ValueError naming the keys when the
    weights do not fit (missing or unexpected keys, or a shape mismatch outside the head); ``what`` names the
    weights in that message. (eval.py loads its weights with it too, and refuses a re-initialised head.)"""
    from torchvision.models.vision_transformer import interpolate_embeddings
    state = _strip(state)
    own = model.state_dict()
    head = head_keys(name, image_size)
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what} do not fit {name}: " + "; ".join(
            f"{label} {len(keys)} tensors ({', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''})"
            for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
            + ". Are they weights of another model? Pass the --model they were trained as.")
    interpolated = []
    pos = "encoder.pos_embedding"
    if isinstance(model, VisionTransformer) and state[pos].shape != own[pos].shape:
        try:
            if isinstance(model, DistilledVisionTransformer):
                grid = model.image_size // model.patch_size
                state = {**state, pos: interpolate_pos_embedding(state[pos], grid, num_tokens=2)}
            else:
                state = interpolate_embeddings(model.image_size, model.patch_size, dict(state))
        except ValueError as e:
            raise ValueError(f"Cannot interpolate the position embedding of {what.lower()}: {e}") from None
        interpolated = [pos]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)} here" for k in sorted(own)
             if k not in head and state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{what} do not fit {name}: {len(wrong)} tensors outside the classifier head "
                         f"have other shapes: {'; '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}. Are they "
                         f"weights of another variant of the model?")
    same_classes = source_classes is None or classes is None or list(source_classes) == list(classes)
    keep_head = same_classes and all(k in state and state[k].shape == own[k].shape for k in head)
    take = [k for k in own if k not in head or keep_head]
    model.load_state_dict({**own, **{k: state[k] for k in take}}, strict=True)
    return {"loaded": take, "reinitialised": sorted(set(own) - set(take)), "interpolated": interpolated}


def describe_init(report: dict) -> str:
    """The log's line for `load_init`'s report (with its "source")."""
    s = f"initial weights: {report['source']}: {len(report['loaded'])} tensors loaded"
    if report["interpolated"]:
        s += f"; interpolated to this image size: {', '.join(report['interpolated'])}"
    if report["reinitialised"]:
        s += (f"; classifier head re-initialised (other classes): {', '.join(report['reinitialised'])} (the "
              f"initial weights' head was not used)")
    return s
