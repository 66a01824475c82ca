"""Training curves as a standalone SVG (no plotting library): loss, accuracy and learning rate per epoch.

    python -m imnet.tools.plot runs/a runs/b -o compare.svg     # overlay runs (reads RUN/summary.csv)

Each series is a ``<polyline>`` with ``data-run`` / ``data-metric`` / ``data-series`` attributes, for machines.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from imnet.run.atomic import write_text
from imnet.run.log import WEIGHTS, val_key

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

    for t in xticks:
        x = sx(t)
        el.append(f'<line x1="{x:.1f}" y1="{py1:.1f}" x2="{x:.1f}" y2="{py1 + 4:.1f}" stroke="#444"/>')
        el.append(f'<text x="{x:.1f}" y="{py1 + 15:.1f}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for t in yticks:
        y = sy(t)
        el.append(f'<line x1="{px0:.1f}" y1="{y:.1f}" x2="{px1:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        el.append(f'<text x="{px0 - 5:.1f}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    el.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{py1 + 31:.1f}" text-anchor="middle">epoch</text>')

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
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           "<style>.tick{font-size:10px;fill:#333}.legend{font-size:11px}</style>",
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
                   f'{escape(title)}</text>')
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plot (and overlay) training curves from RUN/summary.csv.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run output folder(s) holding summary.csv")
    parser.add_argument("-o", "--output", help="SVG file (default: RUN/curves.svg for one run, curves.svg for several)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    for d in args.runs:
        if not (Path(d) / "summary.csv").is_file():
            parser.error(f"{d}: no summary.csv there (is it a train.py --output folder?)")
    out = args.output or (str(Path(args.runs[0]) / "curves.svg") if len(args.runs) == 1 else "curves.svg")
    write_overlay_svg(args.runs, out, args.title)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
