"""Models: any torchvision classifier by name, DeiT-Ti/S and the distilled DeiTs, EfficientNet-Lite0-4, with
stochastic depth where it fits; their input normalisation (`normalization`); their initial weights (`load_init`)."""

from __future__ import annotations

import difflib
import http.client
import os
import types
import urllib.error
import urllib.parse

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer, interpolate_embeddings
from torchvision.ops import StochasticDepth, stochastic_depth

from imnet.deit import DEIT_DISTILLED, DistilledVisionTransformer, interpolate_pos_embedding
from imnet.efficientnet_lite import LITE, LITE_MEAN, LITE_STD, efficientnet_lite
from imnet.ema import unwrap  # noqa: F401  (DDP / torch.compile -> the plain module; re-exported)
from imnet.transforms import IMAGENET_MEAN, IMAGENET_STD

# DeiT widths (Touvron et al. 2021, Table 1) as (hidden_dim, num_heads), like DEIT_DISTILLED: patch 16, depth 12.
DEIT = {"deit_tiny": (192, 3), "deit_small": (384, 6)}

# EfficientNet-Lite by timm's names: efficientnet_lite* pads as PyTorch does (symmetric), tf_efficientnet_lite*
# as TensorFlow's "SAME" (the reference's own weights, converted, evaluate exactly only with it).
LITE_PADDING = {**{name: "symmetric" for name in LITE}, **{"tf_" + name: "same" for name in LITE}}

# torchvision families whose constructors take ``stochastic_depth_prob``; the builders of the second set pass
# it themselves (a second one is a TypeError), so they are built with their own rate and rescaled.
_DROP_PATH_FAMILIES = ("convnext", "efficientnet", "swin", "maxvit")
_FIXED_DROP_PATH = ("swin", "maxvit")


def fixed_input_size(name: str) -> bool:
    """ViT and DeiT: their position embedding has one entry per patch of the constructor's ``image_size``."""
    return name.startswith("vit_") or name in DEIT or name in DEIT_DISTILLED


def model_names() -> list[str]:
    return (sorted(torchvision.models.list_models(module=torchvision.models)) + sorted(DEIT) + sorted(DEIT_DISTILLED)
            + sorted(LITE_PADDING))


def normalization(name: str) -> tuple[tuple, tuple, str]:
    """-> (mean, std, why) of the pixels ``name`` takes, on [0, 1]: its source's."""
    if name in LITE_PADDING:
        return LITE_MEAN, LITE_STD, "(x - 127) / 128 on 0-255, as TensorFlow's EfficientNet-Lite takes"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's mean and std, as torchvision's and timm's models take"


def check_name(name: str) -> None:
    if name in model_names():
        return
    close = difflib.get_close_matches(name, model_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"Unknown model '{name}'{hint}. Use a torchvision classifier "
                     f"(torchvision.models.list_models(module=torchvision.models)), deit_tiny, deit_small, "
                     f"efficientnet_lite0-4, tf_efficientnet_lite0-4, or with --teacher "
                     f"{', '.join(sorted(DEIT_DISTILLED))}.")


def constructor(name: str, num_classes: int, image_size: int = 224) -> tuple[str, object, dict]:
    """-> (the callable's name, the callable, its kwargs), also for export; googlenet, inception_v3: no aux heads."""
    check_name(name)
    if name in DEIT or name in DEIT_DISTILLED:
        hidden_dim, num_heads = {**DEIT, **DEIT_DISTILLED}[name]
        cls = DistilledVisionTransformer if name in DEIT_DISTILLED else VisionTransformer
        return cls.__name__, cls, dict(image_size=image_size, patch_size=16, num_layers=12, num_heads=num_heads,
                                       hidden_dim=hidden_dim, mlp_dim=4 * hidden_dim, num_classes=num_classes)
    if name in LITE_PADDING:
        return "efficientnet_lite", efficientnet_lite, dict(name=name.removeprefix("tf_"), num_classes=num_classes,
                                                            padding=LITE_PADDING[name])
    kwargs: dict = {"num_classes": num_classes}
    if fixed_input_size(name):
        kwargs["image_size"] = image_size
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return name, getattr(torchvision.models, name), kwargs


def build_model(name: str, num_classes: int, drop_path: float | None = None, image_size: int = 224) -> nn.Module:
    """``name`` with random weights. ``drop_path``: the stochastic depth rate (Huang et al. 2016); None keeps the
    model's own default. ViT/DeiT get it on their residual branches with DeiT's linear depth rule."""
    _, build, kwargs = constructor(name, num_classes, image_size)
    is_vit = fixed_input_size(name)
    if drop_path is not None and (name.startswith(_DROP_PATH_FAMILIES) or name in LITE_PADDING):
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
    """Rescale every StochasticDepth rate so that the largest is ``drop_path`` (Swin's and MaxViT's rules are
    linear in the rate and peak at it)."""
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
    """Block i of L gets rate drop_path * i / (L - 1). Only ``forward`` changes (state_dict keys stay
    torchvision's), bound as a method so that ``copy.deepcopy`` (the EMA) binds it to the copy."""
    blocks = [m for m in model.encoder.layers if isinstance(m, EncoderBlock)]
    for i, block in enumerate(blocks):
        block.drop_path_rate = drop_path * i / max(len(blocks) - 1, 1)
        block.forward = types.MethodType(_forward_with_drop_path, block)


# --------------------------------------------------------------------------------------- initial weights

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile prefix every key with these


def head_keys(name: str, image_size: int = 224) -> set[str]:
    """The state_dict keys whose shape depends on the number of classes (``name`` built for 1 and 2, compared)."""
    try:
        with torch.device("meta"):
            one, two = (build_model(name, k, image_size=image_size).state_dict() for k in (1, 2))
    except (NotImplementedError, RuntimeError):  # a builder that computes its widths with tensors (regnet)
        one, two = (build_model(name, k, image_size=image_size).state_dict() for k in (1, 2))
    return {k for k in one if one[k].shape != two[k].shape}


def _strip(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def init_source(path: str | None = None, weights: str | None = None, model: str | None = None,
                use_ema: bool = False, progress: bool = True,
                file_flag: str = "--init-from") -> tuple[dict, list | None, str]:
    """-> (state_dict, its class names or None, a description) from ``path`` (an imnet checkpoint, a state_dict,
    or a dict holding one under "model"/"state_dict") or the torchvision ``weights``. ValueError when unusable."""
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


def download_weights(w, name: str, progress: bool = True, file_flag: str = "--init-from",
                     flag: str = "--weights") -> dict:
    """The state_dict of torchvision weights ``w`` (called ``name``), through torchvision's cache and download."""
    file = os.path.basename(urllib.parse.urlparse(w.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return w.get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise ValueError(f"{flag} {name}: cannot download {w.url} ({reason}). Put the file, downloaded "
                         f"elsewhere, at {os.path.join(folder, file)} (torch.hub.get_dir()/checkpoints; TORCH_HOME "
                         f"moves it) and run again, or give it with {file_flag} PATH/{file}.") from None
    except OSError as e:  # the cache folder cannot be written (permissions, a full disk)
        raise ValueError(f"{flag} {name}: cannot store torchvision's download in {folder} "
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


def _some(items: list, sep: str) -> str:
    return sep.join(items[:8]) + (" ..." if len(items) > 8 else "")


def load_init(model: nn.Module, name: str, state: dict, image_size: int = 224, source_classes: list | None = None,
              classes: list | None = None, what: str = "The initial weights") -> dict:
    """Copy ``state`` into ``model``, every key with its shape, except the classifier head (kept fresh unless it
    fits and the classes, when known, are the same) and a ViT position embedding of another length (interpolated
    bicubic on its 2-D grid, Dosovitskiy et al. 2021, Sec. 3.2: torchvision's way, or DeiT's for a distilled DeiT).
    -> {"loaded", "reinitialised", "interpolated"} key lists; ValueError (naming ``what``) when it does not fit."""
    state = _strip(state)
    own = model.state_dict()
    head = head_keys(name, image_size)
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what} do not fit {name}: " + "; ".join(
            f"{label} {len(keys)} tensors ({_some(keys, ', ')})"
            for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
            + ". Pass the --model they were trained as.")
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
                         f"have other shapes: {_some(wrong, '; ')}. Pass the --model variant they were trained as.")
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
        s += f"; classifier head re-initialised (other classes): {', '.join(report['reinitialised'])}"
    return s
