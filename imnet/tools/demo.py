"""The demo dataset ``python train.py`` trains on: ten classes (seven shapes, three textures) of small photo-like
images, ``demo-v1-seed0/{train,val}/<class>/<class>_00000.JPEG``. Image i of class c in split s depends on
``default_rng((seed, s, c, i))`` only; change VERSION whenever the output changes.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1
CLASSES = ("checker", "circle", "crescent", "cross", "dots", "ring", "square", "star", "stripes", "triangle")
TRAIN_PER_CLASS = 200
VAL_PER_CLASS = 40
SHORT_SIDE = (48, 96)       # px, uniform
ASPECT = (3 / 4, 4 / 3)     # width / height, log-uniform
GREY_FRACTION = 0.1
OBJECT_RADIUS = (0.3, 0.45)   # fraction of the short side
CLUTTER = (0, 4)            # lines and blobs per image, uniform
SUPERSAMPLE = 4             # object masks are drawn at this factor, then box-filtered: anti-aliased edges


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imnet"
    return Path(os.environ.get("IMNET_CACHE") or default).expanduser()


def dataset_name(seed: int = 0) -> str:
    return f"demo-v{VERSION}-seed{seed}"


def ensure_dataset(root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """``<root or cache_dir()>/demo-v1-seed<seed>``, generated on first use; processes may race (atomic rename)."""
    parent = Path(root).expanduser() if root is not None else cache_dir()
    final = parent / dataset_name(seed)
    if final.is_dir():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    # Same parent as the final folder, so that the rename stays on one file system (and is atomic).
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        write_dataset(tmp, seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():  # we lost the race (or failed): our copy is not needed
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_dataset(out: Path, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                  val_per_class: int = VAL_PER_CLASS) -> None:
    """Fewer images per class give a prefix of the full set."""
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for c, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.default_rng((seed, split_id, c, i))
                image, quality = render(name, rng)
                image.save(folder / f"{name}_{i:05d}.JPEG", format="JPEG", quality=quality)


# ---------------------------------------------------------------------------------------------- rendering

def render(name: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """-> (PIL image in mode RGB or L, JPEG quality)."""
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))

    bg_colour, obj_colour = _contrasting_colours(rng)
    canvas = _background(w, h, bg_colour, rng)

    radius = rng.uniform(*OBJECT_RADIUS) * min(w, h)   # object size, px
    cx = rng.uniform(radius * 0.8, w - radius * 0.8)   # mostly inside the frame
    cy = rng.uniform(radius * 0.8, h - radius * 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    alpha = _mask(name, w, h, cx, cy, radius, angle, rng)  # float in [0, 1], (h, w)
    paint = _paint(name, w, h, cx, cy, radius, angle, obj_colour, bg_colour, rng)  # (h, w, 3)
    image = canvas * (1 - alpha[..., None]) + paint * alpha[..., None]

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0, 10))  # sensor noise
    pil = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB")
    if rng.random() < 0.25:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < GREY_FRACTION:
        pil = pil.convert("L")
    return pil, int(rng.integers(70, 96))


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and object colours whose grey levels differ by at least 40 (visible in greyscale too)."""
    bg = rng.uniform(0, 255, 3)
    while True:
        obj = rng.uniform(0, 255, 3)
        if abs(_luma(obj) - _luma(bg)) >= 40:
            return bg, obj


def _background(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Base colour + a linear gradient + clutter (thin lines, small blobs) in nearby colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(direction) + yy * math.sin(direction)) / max(w, h)
    canvas = (colour + ramp[..., None] * rng.uniform(-40, 40, 3)).astype(np.float32)

    clutter = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(clutter)
    s = min(w, h)
    for _ in range(int(rng.integers(CLUTTER[0], CLUTTER[1] + 1))):
        c = tuple(int(v) for v in np.clip(colour + rng.normal(0, 45, 3), 0, 255))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            length, theta = rng.uniform(0.2, 0.6) * s, rng.uniform(0, 2 * math.pi)
            draw.line([x0, y0, x0 + length * math.cos(theta), y0 + length * math.sin(theta)],
                      fill=c, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(0.03, 0.09) * s
            draw.ellipse([x0 - r, y0 - r * rng.uniform(0.5, 1.5), x0 + r, y0 + r], fill=c)
    return np.asarray(clutter, dtype=np.float32)


def _polygon(n: int, radius: float, angle: float, cx: float, cy: float, radii=None) -> list[tuple[float, float]]:
    """Vertices of an n-gon around (cx, cy); ``radii``: one radius per vertex (stars)."""
    radii = radii if radii is not None else [radius] * n
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k, r in enumerate(radii)]


def _mask(name, w, h, cx, cy, r, angle, rng) -> np.ndarray:
    """Anti-aliased silhouette: float (h, w) in [0, 1]."""
    k = SUPERSAMPLE
    m = Image.new("L", (w * k, h * k), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = cx * k, cy * k, r * k
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * rng.uniform(0.5, 0.7)
        d.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle)
        d.ellipse([ox - r * 0.9, oy - r * 0.9, ox + r * 0.9, oy + r * 0.9], fill=0)
    elif name == "triangle":
        d.polygon(_polygon(3, r, angle, cx, cy), fill=255)
    elif name in ("square", "checker") or (name in ("stripes", "dots") and rng.random() < 0.5):
        d.polygon(_polygon(4, r * 0.9, angle, cx, cy), fill=255)
    elif name == "star":
        d.polygon(_polygon(10, r, angle, cx, cy, radii=[r if j % 2 == 0 else 0.42 * r for j in range(10)]),
                  fill=255)
    elif name == "cross":
        a, b = 0.28 * r, r  # half arm width, arm length
        arm = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
               (-a, -a)]
        ca, sa = math.cos(angle), math.sin(angle)
        d.polygon([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in arm], fill=255)
    else:  # stripes / dots in a disc
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    m = m.resize((w, h), Image.Resampling.BOX)
    return np.asarray(m, dtype=np.float32) / np.float32(255)


def _paint(name, w, h, cx, cy, r, angle, colour, bg_colour, rng) -> np.ndarray:
    """The object's fill: flat colour with light shading, or a two-colour texture for texture classes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # object coordinates: u along the object's orientation, v across it, in units of the radius
    u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / r
    v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / r
    shading = 1.0 + 0.15 * u  # a light from one side: a bit of 3-D, not a class cue
    flat = np.clip(colour.astype(np.float32) * shading[..., None], 0, 255)
    if name not in ("stripes", "checker", "dots"):
        return flat
    # second colour: the background's, shifted, so the texture stays visible against both
    other = np.clip(bg_colour + rng.normal(0, 30, 3), 0, 255)
    period = rng.uniform(0.35, 0.55)  # in radii: 4-6 periods across the object
    if name == "stripes":
        on = np.floor(u / period) % 2 == 0
    elif name == "checker":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:  # dots on a square lattice
        du = u / period - np.round(u / period)
        dv = v / period - np.round(v / period)
        on = du * du + dv * dv > 0.3 ** 2
    return np.where(on[..., None], flat, other)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate (once) and print the path of the imnet demo dataset.")
    parser.add_argument("--root", default=None, help="parent folder (default: $IMNET_CACHE, else "
                                                     "$XDG_CACHE_HOME/imnet, else ~/.cache/imnet)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    print(ensure_dataset(args.root, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
