"""Training curves as a standalone SVG (no plotting library): loss, accuracy and learning rate per epoch; and the
recipes' expected top-1 against their GPU-hours.

    python -m imnet.tools.plot runs/a runs/b -o compare.svg     # overlay runs (reads RUN/summary.csv)
    python -m imnet.tools.plot --recipes -o docs/recipes.svg    # recipes: expected top-1 against GPU-hours

Each series is a ``<polyline>`` with ``data-run`` / ``data-metric`` / ``data-series`` attributes, for machines; each
recipe a marker with ``data-recipe`` / ``data-family`` / ``data-top1`` / ``data-gpu-hours``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from imnet.run.atomic import write_text
from imnet.run.log import WEIGHTS, val_key
from imnet.run.recipes import META, RECIPES, gpu_hours

PANELS = (
    ("Loss", ("train_loss", *(val_key(w, "loss") for w in WEIGHTS))),
    ("Accuracy (%)", tuple(val_key(w, m) for w in WEIGHTS for m in ("top1", "top5"))),
    ("Learning rate", ("lr",)),
)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
DASHES = ("", "6 3", "2 2", "8 3 2 3")  # one per run, repeating: metric = colour, run = dash pattern

PANEL_W, PANEL_H = 340, 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 14, 30, 40
LEGEND_LINE = 15


def read_summary(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``run_dir/summary.csv`` with numbers as floats (empty cells dropped)."""
    with open(Path(run_dir) / "summary.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(f)]


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k steps; whole steps if ``integer``) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1 + 1e-12
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    ticks, t = [], math.floor(lo / step) * step
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.1e}"
    return f"{v:.6g}"


def _svg_open(width: float, height: float, title: str | None) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           "<style>.tick{font-size:10px;fill:#333}.legend{font-size:11px}</style>",
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
                   f'{escape(title)}</text>')
    return out


def _axes(px0, px1, py0, py1, xticks, yticks, sx, sy, xlabel: str) -> list[str]:
    """Tick marks and labels under the x axis, grid lines and labels left of the y axis, the x axis' name."""
    el = []
    for t in xticks:
        x = sx(t)
        el.append(f'<line x1="{x:.1f}" y1="{py1:.1f}" x2="{x:.1f}" y2="{py1 + 4:.1f}" stroke="#444"/>')
        el.append(f'<text x="{x:.1f}" y="{py1 + 15:.1f}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for t in yticks:
        y = sy(t)
        el.append(f'<line x1="{px0:.1f}" y1="{y:.1f}" x2="{px1:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        el.append(f'<text x="{px0 - 5:.1f}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    el.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{py1 + 31:.1f}" text-anchor="middle">{escape(xlabel)}</text>')
    return el


def _series(runs, metrics):
    """[(run_label, metric, [(epoch, value), ...])] for the metrics present, in a stable order."""
    out = []
    for label, rows in runs:
        for metric in metrics:
            pts = [(r["epoch"], r[metric]) for r in rows
                   if "epoch" in r and metric in r and math.isfinite(r[metric])]
            if pts:
                out.append((label, metric, pts))
    return out


def _panel(x0: float, y0: float, title: str, series, run_index) -> list[str]:
    """SVG elements of one panel whose top-left corner is (x0, y0)."""
    el = [f'<g class="panel" data-panel={quoteattr(title)}>',
          f'<text x="{x0 + PANEL_W / 2:.1f}" y="{y0 + 18:.1f}" text-anchor="middle" font-weight="bold">'
          f'{escape(title)}</text>']
    px0, px1 = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R
    py0, py1 = y0 + MARGIN_T, y0 + PANEL_H - MARGIN_B  # py1 is the bottom (larger y)
    el.append(f'<rect x="{px0:.1f}" y="{py0:.1f}" width="{px1 - px0:.1f}" height="{py1 - py0:.1f}" '
              f'fill="none" stroke="#444"/>')
    if not series:
        el.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{(py0 + py1) / 2:.1f}" text-anchor="middle" '
                  f'fill="#888">no data</text></g>')
        return el

    xs = [e for _, _, pts in series for e, _ in pts]
    ys = [v for _, _, pts in series for _, v in pts]
    xticks = nice_ticks(min(xs), max(xs), integer=True)
    yticks = nice_ticks(min(ys), max(ys))
    xlo, xhi, ylo, yhi = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def sx(e):
        return px0 + (e - xlo) / ((xhi - xlo) or 1) * (px1 - px0)

    def sy(v):  # larger value -> higher on screen (smaller y)
        return py1 - (v - ylo) / ((yhi - ylo) or 1) * (py1 - py0)

    el += _axes(px0, px1, py0, py1, xticks, yticks, sx, sy, "epoch")

    legend = []
    for k, (run, metric, pts) in enumerate(series):
        colour = PALETTE[[m for _, m, _ in series].index(metric) % len(PALETTE)]
        dash = DASHES[run_index[run] % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        label = metric if len(run_index) == 1 else f"{run}: {metric}"
        points = " ".join(f"{sx(e):.2f},{sy(v):.2f}" for e, v in pts)
        el.append(f'<polyline data-run={quoteattr(run)} data-metric={quoteattr(metric)} '
                  f'data-series={quoteattr(f"{run}/{metric}")} points="{points}" fill="none" '
                  f'stroke="{colour}" stroke-width="1.8"{dash_attr}>'
                  f'<title>{escape(label)}: last {_fmt(pts[-1][1])}</title></polyline>')
        if len(pts) == 1:  # a one-point polyline is invisible: mark it
            el.append(f'<circle class="marker" cx="{sx(pts[0][0]):.2f}" cy="{sy(pts[0][1]):.2f}" r="2.5" '
                      f'fill="{colour}"/>')
        ly = y0 + PANEL_H + k * LEGEND_LINE
        legend.append(f'<line x1="{px0:.1f}" y1="{ly:.1f}" x2="{px0 + 22:.1f}" y2="{ly:.1f}" stroke="{colour}" '
                      f'stroke-width="2"{dash_attr}/>')
        legend.append(f'<text x="{px0 + 28:.1f}" y="{ly + 4:.1f}" class="legend">{escape(label)}</text>')
    el.extend(legend)
    el.append("</g>")
    return el


def render_svg(runs: list[tuple[str, list[dict]]], title: str | None = None) -> str:
    run_index = {label: i for i, (label, _) in enumerate(runs)}
    top = 30 if title else 6
    panels = [(name, _series(runs, metrics)) for name, metrics in PANELS]
    legend_h = max(len(s) for _, s in panels) * LEGEND_LINE + 6
    width, height = PANEL_W * len(PANELS), top + PANEL_H + legend_h
    out = _svg_open(width, height, title)
    for i, (name, series) in enumerate(panels):
        out.extend(_panel(i * PANEL_W, top, name, series, run_index))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_curves_svg(rows: list[dict], path, title: str | None = None, label: str = "run") -> None:
    """One run's curves; ``rows`` are summary.csv rows (dicts; numbers or numeric strings)."""
    rows = [{k: float(v) for k, v in r.items() if v not in (None, "")} for r in rows]
    write_text(path, render_svg([(label, rows)], title))


def write_overlay_svg(run_dirs, path, title: str | None = None) -> None:
    """Overlay the curves of several run folders (each with a summary.csv), labelled by folder name."""
    runs, seen = [], set()
    for d in run_dirs:
        label = Path(d).resolve().name or str(d)
        while label in seen:
            label += "'"
        seen.add(label)
        runs.append((label, read_summary(d)))
    write_text(path, render_svg(runs, title))


def family(model: str) -> str:
    """A model's family: its name's leading letters (resnet50 -> resnet, vit_b_16 -> vit, vgg16 -> vgg)."""
    return re.match(r"[a-z]*", model).group() or model


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k values from the largest <= lo to the smallest >= hi (0 < lo <= hi)."""
    vals = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    return [v for v in vals if max(u for u in vals if u <= lo) <= v <= min(u for u in vals if u >= hi)]


def _marker(x: float, y: float, k: int, fill: str | None, attrs: str = "", inner: str = "") -> str:
    """Family k's marker, filled with its colour unless ``fill``: a circle in the palette's first round of colours,
    a square in its second, a circle again in its third..."""
    colour = PALETTE[k % len(PALETTE)]
    tag, at = (("rect", f'x="{x - 4:.2f}" y="{y - 4:.2f}" width="8" height="8"') if k // len(PALETTE) % 2
               else ("circle", f'cx="{x:.2f}" cy="{y:.2f}" r="4.5"'))
    return (f'<{tag} {attrs}{at} fill="{colour if fill is None else fill}" stroke="{colour}" stroke-width="1.6">'
            f'{inner}</{tag}>')


def _label_cost(box, boxes, panel) -> tuple[bool, int]:
    """(box leaves the panel, how many of boxes it overlaps); boxes are (x0, y0, x1, y1)."""
    return (not (panel[0] <= box[0] and box[2] <= panel[2] and panel[1] <= box[1] and box[3] <= panel[3]),
            sum(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes))


def render_recipes_svg() -> str:
    """Every recipe but the demo: expected top-1 against recipes.md's GPU-hours (log x), coloured by model family,
    hollow where approximate; each point a marker with data-recipe / -family / -top1 / -gpu-hours attributes."""
    pts = [(n, family(RECIPES[n]["model"]), META[n]["expected_top1"], round(gpu_hours(n), 1), META[n]["approximate"])
           for n in RECIPES if n != "demo"]
    fams = list(dict.fromkeys(f for _, f, *_ in pts))
    w, h, legend_w = 680, 520, 180
    px0, px1, py0, py1 = MARGIN_L, w - MARGIN_R, 40, h - 70
    xt = log_ticks(min(p[3] for p in pts), max(p[3] for p in pts))
    yt = nice_ticks(min(p[2] for p in pts), max(p[2] for p in pts), count=7)

    def sx(hours):
        return px0 + math.log(hours / xt[0]) / (math.log(xt[-1] / xt[0]) or 1) * (px1 - px0)

    def sy(top1):
        return py1 - (top1 - yt[0]) / ((yt[-1] - yt[0]) or 1) * (py1 - py0)

    out = _svg_open(w + legend_w, h, "imnet recipes: expected ImageNet top-1 against training cost")
    out.append(f'<rect x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}" fill="none" stroke="#444"/>')
    out += _axes(px0, px1, py0, py1, xt, yt, sx, sy, "GPU-hours (recipes.md's rough estimate, log scale)")
    out.append(f'<text transform="translate(16 {(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'expected top-1 (%)</text>')
    boxes = [(sx(hr) - 5, sy(t) - 5, sx(hr) + 5, sy(t) + 5) for _, _, t, hr, _ in pts]  # labels avoid the markers
    for name, fam, top1, hours, approx in sorted(pts, key=lambda p: -p[2]):  # top to bottom
        x, y, tw = sx(hours), sy(top1), 6.0 * len(name)
        # the label's place: the nearest free line (dy 0, -12, +12, -24...), right of the point before left of it;
        # where none is free, the one that covers the fewest other labels and markers
        tries = [(lx, dy, (lx, y + dy - 8, lx + tw, y + dy + 3)) for dy in sorted(range(-72, 73, 12), key=abs)
                 for lx in (x + 8, x - 8 - tw)]
        lx, dy, box = min(tries, key=lambda t: _label_cost(t[2], boxes, (px0, py0, px1, py1)))
        boxes.append(box)
        if dy:
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx if lx > x else lx + tw:.1f}" y2="{y + dy - 3:.1f}" '
                       f'stroke="#aaa" stroke-width="0.7"/>')
        attrs = (f'class="recipe" data-recipe={quoteattr(name)} data-family={quoteattr(fam)} data-top1="{top1}" '
                 f'data-gpu-hours="{hours}" ')
        out.append(_marker(x, y, fams.index(fam), "white" if approx else None, attrs,
                           f"<title>{escape(name)}: {top1}% top-1, ~{hours} GPU-hours</title>"))
        out.append(f'<text x="{lx:.1f}" y="{y + dy + 1:.1f}" font-size="10">{escape(name)}</text>')
    lx = w + 10
    for k, fam in enumerate(fams):
        out.append(_marker(lx + 5, py0 + 5 + k * LEGEND_LINE, k, None))
        out.append(f'<text x="{lx + 16}" y="{py0 + 9 + k * LEGEND_LINE}" class="legend">{escape(fam)}</text>')
    ly = py0 + 9 + (len(fams) + 1) * LEGEND_LINE
    out += [f'<circle cx="{lx + 5}" cy="{ly - 4}" r="4.5" fill="white" stroke="#444" stroke-width="1.6"/>',
            f'<text x="{lx + 16}" y="{ly}" class="legend">hollow: approximate,</text>',
            f'<text x="{lx + 16}" y="{ly + LEGEND_LINE}" class="legend">recipes.md says why</text>',
            f'<text x="{px0}" y="{h - 20}" class="legend">GPU-hours: epochs x 1,281,167 / an assumed A100-class '
            f'images/s per GPU / 3600 (recipes.md). The demo is not drawn:</text>',
            f'<text x="{px0}" y="{h - 6}" class="legend">its top-1 is on the generated demo dataset, not ImageNet.'
            f'</text>', "</svg>"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plot (and overlay) training curves from RUN/summary.csv; or, with "
                                     "--recipes, every recipe's expected top-1 against its GPU-hours.")
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run output folder(s) holding summary.csv")
    parser.add_argument("-o", "--output", help="SVG file (default: RUN/curves.svg for one run, curves.svg for several; "
                        "recipes.svg with --recipes)")
    parser.add_argument("--title")
    parser.add_argument("--recipes", action="store_true", help="draw the recipes (recipes.md's table), not runs")
    args = parser.parse_args(argv)
    if args.recipes:
        if args.runs or args.title:
            parser.error("--recipes takes no RUN and no --title")
        write_text(args.output or "recipes.svg", render_recipes_svg())
        print(args.output or "recipes.svg")
        return 0
    if not args.runs:
        parser.error("give RUN folder(s), or --recipes")
    for d in args.runs:
        if not (Path(d) / "summary.csv").is_file():
            parser.error(f"{d}: no summary.csv there (is it a train.py --output folder?)")
    out = args.output or (str(Path(args.runs[0]) / "curves.svg") if len(args.runs) == 1 else "curves.svg")
    write_overlay_svg(args.runs, out, args.title)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
