"""Training recipes as data: ``RECIPES[NAME]`` (flag dest -> value: ``train.py --recipe NAME``'s defaults) and
``META[NAME]`` (what it should reach, and the source of that number); recipes.md explains each choice.
"""

from __future__ import annotations

from imnet.schedule import scale_lr

IMAGENET_TRAIN_IMAGES = 1_281_167

# What `python train.py` (no arguments) must reach on the demo dataset: final val top-1 in percent (recipes.md).
DEMO_MIN_TOP1 = 55.0


def torchvision_ema_decay(global_batch: int, epochs: int, decay: float = 0.99998, steps: int = 32) -> float:
    """Per-step EMA decay equivalent to torchvision's ``--model-ema`` settings: torchvision updates every ``steps``
    iterations with ``alpha = min(1, (1 - decay) * global_batch * steps / epochs)``; ``(1 - alpha) ** (1 / steps)``
    per step, applied ``steps`` at a time (--ema-every), is exactly its ``1 - alpha`` per update."""
    alpha = min(1.0, (1.0 - decay) * global_batch * steps / epochs)
    return (1.0 - alpha) ** (1.0 / steps)


# torchvision's "new recipe" (V. Vryniotis, 2021, "How to Train State-Of-The-Art Models Using TorchVision's Latest
# Primitives"; references/classification/README.md).
_NEW_RECIPE = dict(
    epochs=600, batch_size=128, opt="sgd", momentum=0.9, lr_base=0.5 * 256 / 1024, weight_decay=2e-5,
    no_decay_on=["norm"], sched="cosine", warmup_epochs=5, warmup_start_factor=0.01, min_lr=0.0,
    label_smoothing=0.1, mixup=0.2, cutmix=1.0, mix_prob=1.0, switch_prob=0.5, auto_augment="ta_wide",
    random_erase=0.1, random_erase_mode="const", train_crop_size=176, val_resize_size=232, val_crop_size=224,
    interpolation="bilinear", ema=True, ema_decay=torchvision_ema_decay(1024, 600), ema_every=32,
    ema_copy_warmup=True, amp="bf16", channels_last=True,
)

# torchvision's defaults (references/classification/README.md: 8 GPUs x 32, SGD 0.1, /10 every 30 epochs of 90).
_CLASSIC = dict(
    epochs=90, batch_size=32, opt="sgd", momentum=0.9, lr_base=0.1, weight_decay=1e-4, no_decay_on=[],
    sched="step", lr_milestones=[30, 60], lr_gamma=0.1, warmup_epochs=0, label_smoothing=0.0, mixup=0.0,
    cutmix=0.0, auto_augment="none", random_erase=0.0, train_crop_size=224, val_resize_size=256,
    val_crop_size=224, interpolation="bilinear", ema=False, amp="bf16", channels_last=True,
)

RECIPES: dict[str, dict] = {
    "resnet50": dict(_NEW_RECIPE, model="resnet50", ra_reps=4),
    "resnet50_classic": dict(_CLASSIC, model="resnet50", lr_milestones=[30, 60, 80]),
    "resnet101": dict(_NEW_RECIPE, model="resnet101"),
    "resnext50_32x4d": dict(_NEW_RECIPE, model="resnext50_32x4d", ra_reps=4),
    # references/classification/README.md, "RegNet / Medium models"
    "regnet_y_8gf": dict(
        _CLASSIC, model="regnet_y_8gf", epochs=100, batch_size=64, lr_base=0.4 * 256 / 512, weight_decay=5e-5,
        sched="cosine", warmup_epochs=5, warmup_start_factor=0.1, min_lr=0.0,
    ),
    # references/classification/README.md, "AlexNet and VGG": the defaults at LR 0.01 (no BatchNorm)
    "alexnet": dict(_CLASSIC, model="alexnet", lr_base=0.01),
    "vgg16": dict(_CLASSIC, model="vgg16", lr_base=0.01),
    # references/classification/README.md, "MobileNetV2": x 0.98 every epoch
    "mobilenet_v2": dict(
        _CLASSIC, model="mobilenet_v2", epochs=300, lr_base=0.045, weight_decay=4e-5, sched="exp",
        lr_decay_epochs=1, lr_gamma=0.98,
    ),
    # references/classification/README.md, "MobileNetV3 Large & Small": torch's RMSprop (alpha 0.9, eps 0.0316)
    "mobilenet_v3_large": dict(
        _CLASSIC, model="mobilenet_v3_large", epochs=600, batch_size=128, opt="rmsprop", opt_eps=0.0316,
        lr_base=0.064 * 256 / 1024, weight_decay=1e-5, sched="exp", lr_decay_epochs=2, lr_gamma=0.973,
        auto_augment="imagenet", random_erase=0.2, random_erase_mode="const",
    ),
    # references/classification/README.md, "ShuffleNet V2"
    "shufflenet_v2_x2_0": dict(_NEW_RECIPE, model="shufflenet_v2_x2_0", ra_reps=4),
    # timm docs/training_hparam_examples.md, "EfficientNet-B0 with RandAugment" (2 GPUs x 384 there, 8 x 96 here):
    # TF's RMSProp, x 0.97 every 2.4 epochs after 3 warmup epochs from 1e-6, timm's defaults (label smoothing
    # 0.1, no decay on biases and norms); torchvision's efficientnet_b0 weights are these, ported.
    "efficientnet_b0": dict(
        _CLASSIC, model="efficientnet_b0", epochs=450, batch_size=96, opt="rmsproptf", opt_eps=1e-3,
        lr_base=0.048 * 256 / 768, weight_decay=1e-5, no_decay_on=["1d"], sched="exp", lr_decay_epochs=2.4,
        lr_gamma=0.97, warmup_epochs=3, warmup_start_factor=1e-6 / 0.048, label_smoothing=0.1, auto_augment="ra",
        ra_num_ops=2, ra_magnitude=9, random_erase=0.2, random_erase_mode="pixel", drop_path=0.2,
        interpolation="bicubic", ema=True, ema_decay=0.9999, ema_every=1, ema_copy_warmup=False,
    ),
    # references/classification/README.md, "ConvNeXt"
    "convnext_tiny": dict(
        _NEW_RECIPE, model="convnext_tiny", opt="adamw", lr_base=1e-3 * 256 / 1024, weight_decay=0.05,
        val_resize_size=236, drop_path=0.1, ra_reps=4,
    ),
    # references/classification/README.md, "vit_b_16" (8 x 512 there, 8 x 128 x 4 accumulation steps here)
    "vit_b_16": dict(
        model="vit_b_16", epochs=300, batch_size=128, accum_steps=4, opt="adamw", lr_base=3e-3 * 256 / 4096,
        weight_decay=0.3, no_decay_on=[], sched="cosine", warmup_epochs=30, warmup_start_factor=0.033,
        min_lr=0.0, label_smoothing=0.11, mixup=0.2, cutmix=1.0, mix_prob=1.0, switch_prob=0.5,
        auto_augment="ra", ra_num_ops=2, ra_magnitude=9, random_erase=0.0, clip_grad=1.0,
        train_crop_size=224, val_resize_size=256, val_crop_size=224, interpolation="bilinear",
        ema=True, ema_decay=torchvision_ema_decay(4096, 300), ema_every=32, ema_copy_warmup=True, amp="bf16",
        channels_last=False, ra_reps=3,
    ),
    # references/classification/README.md, "SwinTransformer" (stochastic depth 0.2 is swin_t's builder default)
    "swin_t": dict(
        model="swin_t", epochs=300, batch_size=128, opt="adamw", lr_base=1e-3 * 256 / 1024, weight_decay=0.05,
        no_decay_on=["norm", "bias", "embedding"], sched="cosine", warmup_epochs=20, warmup_start_factor=0.01,
        min_lr=1e-5, label_smoothing=0.1, mixup=0.8, cutmix=1.0, mix_prob=1.0, switch_prob=0.5,
        auto_augment="ta_wide", random_erase=0.25, random_erase_mode="const", clip_grad=5.0, train_crop_size=224,
        val_resize_size=232, val_crop_size=224, interpolation="bicubic", ema=True,
        ema_decay=torchvision_ema_decay(1024, 300), ema_every=32, ema_copy_warmup=True, amp="bf16",
        channels_last=False, ra_reps=4,
    ),
}

# DeiT (Touvron et al. 2021, "Training data-efficient image transformers & distillation through attention";
# facebookresearch/deit main.py defaults, --repeated-aug on).
_DEIT = dict(
    epochs=300, batch_size=128, opt="adamw", lr_base=5e-4 * 256 / 512, weight_decay=0.05,
    no_decay_on=["1d", "embedding"], sched="cosine", warmup_epochs=5, warmup_start_factor=1e-6 / 1e-3, min_lr=1e-5,
    label_smoothing=0.1, mixup=0.8, cutmix=1.0, mix_prob=1.0, switch_prob=0.5, auto_augment="ra", ra_num_ops=2,
    ra_magnitude=9, random_erase=0.25, random_erase_mode="pixel", drop_path=0.1, train_crop_size=224,
    val_resize_size=256, val_crop_size=224, interpolation="bicubic", ema=True, ema_decay=0.99996, ema_every=1,
    ema_copy_warmup=False, amp="bf16", channels_last=False, ra_reps=3,
)
RECIPES["deit_small"] = dict(_DEIT, model="deit_small")
RECIPES["deit_tiny"] = dict(_DEIT, model="deit_tiny")

# TensorFlow's EfficientNet-Lite0 (tensorflow/tpu models/official/efficientnet: main.py's defaults, which the Lite
# models train with; utils.build_learning_rate and build_optimizer; efficientnet_lite_builder.py): 350 epochs
# (218,949 steps of 2,048), RMSProp (decay 0.9, epsilon 1e-3 inside the root, momentum 0.9), 0.016 per 256, x 0.97
# every 2.4 epochs after 5 warmup epochs from 0, L2 1e-5 on all but BatchNorm, label smoothing 0.1, EMA 0.9999
# with num_updates, dropout 0.2 and survival 0.8 (drop path 0.2), bicubic, no auto-augment.
RECIPES["efficientnet_lite0"] = dict(
    model="efficientnet_lite0", epochs=350, batch_size=256, opt="rmsproptf", opt_eps=1e-3, momentum=0.9,
    lr_base=0.016, weight_decay=1e-5, no_decay_on=["norm"], sched="exp", lr_decay_epochs=2.4, lr_gamma=0.97,
    warmup_epochs=5, warmup_start_factor=0.0, label_smoothing=0.1, mixup=0.0, cutmix=0.0, auto_augment="none",
    random_erase=0.0, drop_path=0.2, train_crop_size=224, val_resize_size=256, val_crop_size=224,
    interpolation="bicubic", ema=True, ema_decay=0.9999, ema_every=1, ema_warmup=True, ema_copy_warmup=False,
    amp="bf16", channels_last=True,
)

# The demo: `python train.py` on the generated dataset (imnet.tools.demo); recipes.md ("demo") says why.
RECIPES["demo"] = dict(
    model="resnet18", epochs=7, batch_size=32, opt="adamw", lr_base=2e-3 * 256 / 32, weight_decay=0.05,
    no_decay_on=["1d", "embedding", "layer_scale"], sched="cosine", warmup_epochs=1, warmup_start_factor=0.1,
    min_lr=0.0, label_smoothing=0.1, mixup=0.0, cutmix=0.0, auto_augment="none", random_erase=0.0,
    train_crop_size=32, crop_scale=[0.6, 1.0], val_resize_size=36, val_crop_size=32, interpolation="bilinear",
    ema=False, amp="none", channels_last=True, workers=0,
)

_TORCHVISION_TABLE = "torchvision weights table (torchvision.models.{}.meta['_metrics'])"

# expected_top1: val top-1 (%) on ImageNet-1k at the recipe's eval policy; approximate: our recipe differs from the
# one that produced it (recipes.md); gpus: reference world size; img_per_s: an ASSUMED A100-class bf16 throughput
# for gpu_hours() only.
META: dict[str, dict] = {
    "resnet50": dict(
        expected_top1=80.858, approximate=False, gpus=8, img_per_s=2900,
        source=_TORCHVISION_TABLE.format("ResNet50_Weights.IMAGENET1K_V2")),
    "resnet50_classic": dict(
        expected_top1=76.13, approximate=True, gpus=8, img_per_s=1800,
        source=_TORCHVISION_TABLE.format("ResNet50_Weights.IMAGENET1K_V1")),
    "resnet101": dict(
        expected_top1=81.728, approximate=False, gpus=8, img_per_s=1700,
        source="pytorch/vision issue #3995 (new recipe + FixRes mitigations, ResNet101 row)"),
    "resnext50_32x4d": dict(
        expected_top1=81.198, approximate=True, gpus=8, img_per_s=2000,
        source=_TORCHVISION_TABLE.format("ResNeXt50_32X4D_Weights.IMAGENET1K_V2")),
    "regnet_y_8gf": dict(
        expected_top1=80.032, approximate=False, gpus=8, img_per_s=700,
        source=_TORCHVISION_TABLE.format("RegNet_Y_8GF_Weights.IMAGENET1K_V1")),
    "alexnet": dict(
        expected_top1=56.522, approximate=False, gpus=8, img_per_s=6000,
        source=_TORCHVISION_TABLE.format("AlexNet_Weights.IMAGENET1K_V1")),
    "vgg16": dict(
        expected_top1=71.592, approximate=False, gpus=8, img_per_s=600,
        source=_TORCHVISION_TABLE.format("VGG16_Weights.IMAGENET1K_V1")),
    "mobilenet_v2": dict(
        expected_top1=71.878, approximate=False, gpus=8, img_per_s=4000,
        source=_TORCHVISION_TABLE.format("MobileNet_V2_Weights.IMAGENET1K_V1")),
    "mobilenet_v3_large": dict(
        expected_top1=74.042, approximate=True, gpus=8, img_per_s=5000,
        source=_TORCHVISION_TABLE.format("MobileNet_V3_Large_Weights.IMAGENET1K_V1")),
    "shufflenet_v2_x2_0": dict(
        expected_top1=76.23, approximate=False, gpus=8, img_per_s=4000,
        source=_TORCHVISION_TABLE.format("ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1")),
    "efficientnet_b0": dict(
        expected_top1=77.692, approximate=True, gpus=8, img_per_s=1800,
        source=_TORCHVISION_TABLE.format("EfficientNet_B0_Weights.IMAGENET1K_V1")),
    "convnext_tiny": dict(
        expected_top1=82.52, approximate=True, gpus=8, img_per_s=1900,
        source=_TORCHVISION_TABLE.format("ConvNeXt_Tiny_Weights.IMAGENET1K_V1")),
    "vit_b_16": dict(
        expected_top1=81.072, approximate=True, gpus=8, img_per_s=900,
        source=_TORCHVISION_TABLE.format("ViT_B_16_Weights.IMAGENET1K_V1")),
    "deit_small": dict(
        expected_top1=79.8, approximate=True, gpus=8, img_per_s=1500,
        source="Touvron et al. 2021 (DeiT), Table 1, DeiT-S; facebookresearch/deit model zoo lists 79.9"),
    "deit_tiny": dict(
        expected_top1=72.2, approximate=True, gpus=8, img_per_s=3500,
        source="Touvron et al. 2021 (DeiT), Table 1, DeiT-Ti; facebookresearch/deit model zoo lists 72.2"),
    "swin_t": dict(
        expected_top1=81.474, approximate=True, gpus=8, img_per_s=1000,
        source=_TORCHVISION_TABLE.format("Swin_T_Weights.IMAGENET1K_V1")),
    "efficientnet_lite0": dict(
        expected_top1=75.1, approximate=True, gpus=8, img_per_s=3000,
        source="tensorflow/tpu models/official/efficientnet/lite/README.md, efficientnet-lite0 FP32 accuracy"),
    "demo": dict(
        expected_top1=DEMO_MIN_TOP1, approximate=False, gpus=1, img_per_s=None,
        source="measured in this repository on a 2-core CPU (recipes.md, 'demo')"),
}


def reference_global_batch(name: str, recipe: dict | None = None) -> int:
    """batch_size x reference GPUs (8 for a recipe without META) x accum_steps of ``recipe`` (default: RECIPES')."""
    r = RECIPES[name] if recipe is None else recipe
    return r["batch_size"] * META.get(name, {}).get("gpus", 8) * r.get("accum_steps", 1)


def reference_lr(name: str, recipe: dict | None = None) -> float:
    """The source's learning rate: lr_base scaled linearly from 256 to the reference global batch."""
    return scale_lr((RECIPES[name] if recipe is None else recipe)["lr_base"], reference_global_batch(name, recipe))


def gpu_hours(name: str) -> float | None:
    """Rough GPU-hours: epochs x 1,281,167 images / assumed images per second per GPU / 3600."""
    ips = META[name]["img_per_s"]
    return None if ips is None else RECIPES[name]["epochs"] * IMAGENET_TRAIN_IMAGES / ips / 3600
