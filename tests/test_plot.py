"""imnet.tools.plot: the SVG parses, has one polyline per (run, metric), and its points follow the values; the recipes
picture has one marker per recipe (the demo aside), at its top-1 and GPU-hours, and docs/recipes.svg is up to date."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from imnet.run.recipes import META, RECIPES, gpu_hours
from imnet.tools.plot import family, log_ticks, main, nice_ticks, read_summary, write_curves_svg, write_overlay_svg

REPO = Path(__file__).resolve().parents[1]

SVG = "{http://www.w3.org/2000/svg}"
COLUMNS = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "epoch_time"]


def rows(n=8, ema=False, shift=0.0):
    out = []
    for e in range(1, n + 1):
        r = {"epoch": e, "train_loss": 2.0 * math.exp(-e / 3) + 0.2 + shift, "val_loss": 1.8 * math.exp(-e / 4) + 0.4,
             "val_top1": 90 - 70 * math.exp(-e / 3) - shift, "val_top5": 99 - 40 * math.exp(-e / 2),
             "lr": 0.1 * (e / 2 if e <= 2 else 0.5 * (1 + math.cos(math.pi * (e - 2) / (n - 2)))), "epoch_time": 3.0}
        if ema:
            r["ema_val_top1"] = r["val_top1"] - 1.5
        out.append(r)
    return out


def write_csv(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(data[0])
    with open(folder / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(data)
    return folder


def polylines(path):
    root = ET.parse(path).getroot()  # raises if the file is not well-formed XML
    assert root.tag == SVG + "svg"
    return list(root.iter(SVG + "polyline"))


def points(poly):
    return [tuple(map(float, p.split(","))) for p in poly.get("points").split()]


def test_one_series_per_metric(tmp_path):
    data = rows(ema=True)
    out = tmp_path / "curves.svg"
    write_curves_svg(data, out, title="demo <run> & co")  # title needs escaping
    series = [p.get("data-metric") for p in polylines(out)]
    assert sorted(series) == sorted(["train_loss", "val_loss", "val_top1", "val_top5", "ema_val_top1", "lr"])
    assert len(set(p.get("data-series") for p in polylines(out))) == len(series)
    # without EMA columns, no EMA series
    write_curves_svg(rows(ema=False), out)
    assert "ema_val_top1" not in [p.get("data-metric") for p in polylines(out)]


def test_swa_curves_are_drawn_from_the_run_log_columns(tmp_path):
    """The columns a run with --swa-start writes (imnet.run.log.val_key) are drawn: loss and accuracy of the average,
    in the panels of the other weights' curves."""
    from imnet.run.log import SUMMARY_COLUMNS, val_key
    data = rows(ema=True)
    for r in data[3:]:  # SWA starts at epoch 4: no point before
        r.update({val_key("swa", "loss"): r["val_loss"] - 0.1, val_key("swa", "top1"): r["val_top1"] + 1.0,
                  val_key("swa", "top5"): r["val_top5"]})
    assert {"swa_val_loss", "swa_val_top1", "swa_val_top5"} <= set(SUMMARY_COLUMNS)
    out = tmp_path / "curves.svg"
    write_curves_svg(data, out)
    by_metric = {p.get("data-metric"): p for p in polylines(out)}
    assert {"swa_val_loss", "swa_val_top1", "swa_val_top5"} <= set(by_metric)
    assert len(points(by_metric["swa_val_top1"])) == len(data) - 3
    root = ET.parse(out).getroot()
    panel_of = {p.get("data-metric"): g.get("data-panel") for g in root.iter(SVG + "g") for p in g.iter(SVG + "polyline")}
    assert panel_of["swa_val_top1"] == panel_of["val_top1"] and panel_of["swa_val_loss"] == panel_of["val_loss"]


def test_points_map_monotonically_to_values(tmp_path):
    data = rows(ema=True)
    out = tmp_path / "curves.svg"
    write_curves_svg(data, out)
    for poly in polylines(out):
        metric = poly.get("data-metric")
        pts = points(poly)
        values = [r[metric] for r in data]
        assert len(pts) == len(data)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        assert all(a < b for a, b in zip(xs, xs[1:])), "epochs increase left to right"
        # SVG y grows downwards: a larger value must sit strictly higher (smaller y), equal values level
        for i in range(len(values)):
            for j in range(len(values)):
                if values[i] > values[j] + 1e-9:
                    assert ys[i] < ys[j], (metric, i, j)
        # and the mapping is affine: equal value steps give equal pixel steps
        if max(values) > min(values):
            k = (ys[-1] - ys[0]) / (values[-1] - values[0]) if values[-1] != values[0] else None
            if k is not None:
                for v, y in zip(values, ys):
                    assert math.isclose(ys[0] + k * (v - values[0]), y, abs_tol=0.05)


def test_csv_strings_and_single_epoch(tmp_path):
    write_csv(tmp_path / "run", rows(n=1))
    out = tmp_path / "one.svg"
    write_curves_svg([{k: str(v) for k, v in r.items()} for r in rows(n=1)], out)
    polys = polylines(out)
    assert len(polys) == 5 and all(len(points(p)) == 1 for p in polys)
    assert read_summary(tmp_path / "run")[0]["epoch"] == 1.0


def test_overlay_has_series_per_run(tmp_path):
    a = write_csv(tmp_path / "a", rows(ema=True))
    b = write_csv(tmp_path / "b", rows(n=5, shift=3.0))
    out = tmp_path / "both.svg"
    write_overlay_svg([a, b], out)
    polys = polylines(out)
    by_run = {}
    for p in polys:
        by_run.setdefault(p.get("data-run"), set()).add(p.get("data-metric"))
    assert by_run == {"a": {"train_loss", "val_loss", "val_top1", "val_top5", "ema_val_top1", "lr"},
                      "b": {"train_loss", "val_loss", "val_top1", "val_top5", "lr"}}
    # same metric, same colour; different runs, different dash pattern
    top1 = {p.get("data-run"): p for p in polys if p.get("data-metric") == "val_top1"}
    assert top1["a"].get("stroke") == top1["b"].get("stroke")
    assert top1["a"].get("stroke-dasharray") != top1["b"].get("stroke-dasharray")


def test_cli_overlay(tmp_path):
    a = write_csv(tmp_path / "a", rows())
    b = write_csv(tmp_path / "b", rows(shift=1.0))
    out = tmp_path / "cmp.svg"
    res = subprocess.run([sys.executable, "-m", "imnet.tools.plot", str(a), str(b), "-o", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert len(polylines(out)) == 2 * 5
    res = subprocess.run([sys.executable, "-m", "imnet.tools.plot", str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no summary.csv" in res.stderr


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0.0, 1.0), (0.37, 0.41), (1e-5, 3e-3), (12.0, 97.5), (5.0, 5.0), (-1.0, 2.0)]:
        t = nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) >= 2
        steps = {round(b - a, 9) for a, b in zip(t, t[1:])}
        assert len(steps) == 1  # evenly spaced
    assert all(float(t).is_integer() for t in nice_ticks(1, 7, integer=True))
    assert log_ticks(17.8, 125.6) == [10, 20, 50, 100, 200] and log_ticks(0.3, 0.5) == [0.2, 0.5]


def recipe_markers(path):
    """{recipe: (marker element, (x, y) of its centre)}: circles and squares alike."""
    out = {}
    for e in ET.parse(path).getroot().iter():
        if e.get("data-recipe"):
            square = e.tag == SVG + "rect"  # 8 x 8, (x, y) its corner
            c = (float(e.get("x" if square else "cx")) + 4 * square, float(e.get("y" if square else "cy")) + 4 * square)
            out[e.get("data-recipe")] = (e, c)
    return out


def test_recipe_picture_draws_every_recipe_but_the_demo(tmp_path):
    out = tmp_path / "recipes.svg"
    assert main(["--recipes", "-o", str(out)]) == 0
    marks = recipe_markers(out)
    assert set(marks) == set(RECIPES) - {"demo"}
    assert "The demo is not drawn" in out.read_text() and "hollow: approximate," in out.read_text()
    for name, (e, _) in marks.items():
        assert float(e.get("data-top1")) == META[name]["expected_top1"], name
        assert float(e.get("data-gpu-hours")) == round(gpu_hours(name), 1), name
        assert e.get("data-family") == family(RECIPES[name]["model"]), name
        assert (e.get("fill") == "white") == META[name]["approximate"], name
    # x affine in log GPU-hours (as written: 0.1 h) rightwards, y affine in top-1 upwards (smaller y)
    for axis, value, sign in ((0, lambda n: math.log(round(gpu_hours(n), 1)), 1),
                              (1, lambda n: META[n]["expected_top1"], -1)):
        lo, hi = min(marks, key=value), max(marks, key=value)
        k = (marks[hi][1][axis] - marks[lo][1][axis]) / (value(hi) - value(lo))
        assert k * sign > 0
        for n, (_, xy) in marks.items():
            assert math.isclose(marks[lo][1][axis] + k * (value(n) - value(lo)), xy[axis], abs_tol=0.05), (n, axis)
    assert [family(m) for m in ("resnext50_32x4d", "vit_b_16", "vgg16", "shufflenet_v2_x2_0")] == [
        "resnext", "vit", "vgg", "shufflenet"]


def test_recipe_picture_takes_new_recipes_and_families(tmp_path, monkeypatch):
    """Recipes to come (and a model no family rule knows) are drawn; past the palette's colours, family markers stay
    distinct by shape."""
    for name, top1 in [("mobilenet_v2", 72.154), ("shufflenet_v2_x2_0", 76.23), ("alexnet", 56.522), ("vgg16", 71.592),
                       ("Mystery", 70.0)]:
        monkeypatch.setitem(RECIPES, name, dict(RECIPES["resnet50_classic"], model=name))
        monkeypatch.setitem(META, name, dict(META["resnet50_classic"], expected_top1=top1))
    out = tmp_path / "recipes.svg"
    assert main(["--recipes", "-o", str(out)]) == 0
    marks = recipe_markers(out)
    assert set(marks) == set(RECIPES) - {"demo"} and marks["Mystery"][0].get("data-family") == "Mystery"
    look = {(e.get("data-family"), e.tag, e.get("stroke")) for e, _ in marks.values()}
    assert len(look) == len({f for f, _, _ in look}) == len({(t, s) for _, t, s in look}) > 10


def test_committed_recipe_picture_is_current(tmp_path):
    out = tmp_path / "recipes.svg"
    res = subprocess.run([sys.executable, "-m", "imnet.tools.plot", "--recipes", "-o", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == str(out), res.stderr
    assert (REPO / "docs" / "recipes.svg").read_text() == out.read_text(), \
        "docs/recipes.svg is stale: redraw it with `python -m imnet.tools.plot --recipes -o docs/recipes.svg`"
