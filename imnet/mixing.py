"""MixUp and CutMix on a batch on the device, with label smoothing folded into the soft targets.

MixUp (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") trains on convex combinations
of two examples and of their labels:

    x~ = lam * x_i + (1 - lam) * x_j,      y~ = lam * y_i + (1 - lam) * y_j,      lam ~ Beta(a, a).

CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features") pastes a box of x_j into x_i instead and mixes the labels by the area that was pasted.

Conventions (the same as timm and torchvision.transforms.v2):

* **One lambda per batch** (and, for CutMix, one box): cheap, with the expectation of per-sample lambdas.
* **Partner = the batch flipped**: sample i is mixed with sample N-1-i (``images.flip(0)``); the loader
  shuffles, so this pairs random samples. (torchvision pairs i with i-1, ``roll(1, 0)``.)
* **Label smoothing** (Szegedy et al. 2016, "Rethinking the Inception Architecture") is folded into the
  targets before mixing: off-target value eps/C, on-target value 1 - eps + eps/C. Mixing two such
  vectors equals smoothing the mixed one-hot vectors, so the order does not matter; pass
  ``label_smoothing=0`` to the loss when the targets come from here.
* **Randomness** comes only from ``generator`` (torch's global CPU RNG when None), in this fixed order:
  u_apply, u_switch, lambda, then for CutMix the box centre x, then y. Pass a CPU generator even for CUDA
  images: the draws are a few host scalars, so nothing waits for the GPU (a CUDA one syncs on each draw).
"""

import math

import torch

__all__ = ["one_hot", "sample_beta", "cutmix_box", "mixup", "cutmix", "Mixer"]


def one_hot(labels, num_classes, smoothing=0.0):
    """Integer labels (N,) -> float32 targets (N, C), off-target eps/C, on-target 1 - eps + eps/C."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def _device_of(generator):
    return generator.device if generator is not None else torch.device("cpu")


def sample_beta(alpha, generator=None):
    """One draw lam ~ Beta(alpha, alpha), as a Python float.

    G1 / (G1 + G2) ~ Beta(alpha, alpha) for independent G1, G2 ~ Gamma(alpha, 1): ``torch._sample_dirichlet``
    on (alpha, alpha), the sampler ``torch.distributions.Beta`` itself calls, but taking a generator. The same
    RNG state gives torchvision's MixUp/CutMix lambda (float32, like theirs).
    """
    concentration = torch.tensor([[alpha, alpha]], dtype=torch.float32, device=_device_of(generator))
    return float(torch._sample_dirichlet(concentration, generator=generator)[0, 0])


def cutmix_box(lam, height, width, generator=None):
    """CutMix box for a mixing ratio lam (Yun et al. 2019, Sec. 3.1) -> ((y1, y2, x1, x2), lam_true).

    The box has sides r*H and r*W with r = sqrt(1 - lam), so its nominal area is (1 - lam) * H * W.
    Its centre (cx, cy) is uniform over the pixels; the half sides are floor(r*W/2), floor(r*H/2), and
    the box is clipped to the image. Clipping (and flooring) shrinks the pasted area, so lambda is
    corrected to the true kept fraction:

        lam_true = 1 - (x2 - x1) * (y2 - y1) / (H * W).

    Rows y1:y2 and columns x1:x2 (half-open) are pasted. Same box as torchvision.transforms.v2.CutMix.
    """
    device = _device_of(generator)
    cx = int(torch.randint(width, (1,), generator=generator, device=device))
    cy = int(torch.randint(height, (1,), generator=generator, device=device))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1, x2 = max(cx - half_w, 0), min(cx + half_w, width)
    y1, y2 = max(cy - half_h, 0), min(cy + half_h, height)
    lam_true = 1.0 - (x2 - x1) * (y2 - y1) / (width * height)
    return (y1, y2, x1, x2), lam_true


def mixup(images, targets, lam):
    """x~ = lam * x + (1 - lam) * x.flip(0), same for targets; new tensors, the inputs are not modified."""
    mixed = images.flip(0).mul_(1.0 - lam).add_(images.mul(lam))
    return mixed, targets.flip(0).mul_(1.0 - lam).add_(targets.mul(lam))


def cutmix(images, targets, box, lam):
    """Paste ``box`` = (y1, y2, x1, x2) of the flipped batch into a copy of ``images``; mix the targets
    with ``lam``, which must be the true kept fraction returned by :func:`cutmix_box`."""
    y1, y2, x1, x2 = box
    mixed = images.clone()
    mixed[..., y1:y2, x1:x2] = images[..., y1:y2, x1:x2].flip(0)
    return mixed, targets.flip(0).mul_(1.0 - lam).add_(targets.mul(lam))


class Mixer:
    """Batch-level MixUp / CutMix with soft, label-smoothed targets.

    With probability ``prob`` a batch is mixed: CutMix with probability ``switch_prob`` if both alphas are > 0,
    else MixUp (timm's convention); if only one alpha is > 0, that one. An unmixed batch keeps its images and
    gets smoothed one-hot targets. ``mixer(images, labels, generator=None) -> (images, targets)``: targets
    float32 (N, num_classes), rows summing to 1; new tensors when mixing happens.
    """

    def __init__(self, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5,
                 label_smoothing=0.0):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.enabled = mixup_alpha > 0 or cutmix_alpha > 0

    def sample(self, height, width, generator=None):
        """This batch's dict(mode="none"|"mixup"|"cutmix", lam=float, box=tuple|None); u_apply, u_switch always
        drawn first."""
        device = _device_of(generator)
        u_apply, u_switch = torch.rand(2, generator=generator, device=device).tolist()
        if not self.enabled or u_apply >= self.prob:
            return dict(mode="none", lam=1.0, box=None)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or u_switch < self.switch_prob)
        if use_cutmix:
            lam = sample_beta(self.cutmix_alpha, generator)
            box, lam = cutmix_box(lam, height, width, generator)
            return dict(mode="cutmix", lam=lam, box=box)
        return dict(mode="mixup", lam=sample_beta(self.mixup_alpha, generator), box=None)

    def __call__(self, images, labels, generator=None):
        targets = one_hot(labels, self.num_classes, self.label_smoothing)
        params = self.sample(images.shape[-2], images.shape[-1], generator)
        if params["mode"] == "mixup":
            return mixup(images, targets, params["lam"])
        if params["mode"] == "cutmix":
            return cutmix(images, targets, params["box"], params["lam"])
        return images, targets
