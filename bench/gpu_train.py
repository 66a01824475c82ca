"""The GPU check behind bench/gpu_check.sh: every figure comes from train.py and eval.py run as command lines
(each under its own time limit, within one budget) on JPEGs generated here, and ends in one table.

    python bench/gpu_train.py                    # the whole check (what bench/gpu_check.sh runs)
    python bench/gpu_train.py jpegs DIR          # ImageNet-like JPEGs: DIR/train/<class>/*.JPEG, DIR/val/...
    python bench/gpu_train.py syncs JSON SCRIPT [ARGS...]   # SCRIPT under CUDA's sync debug mode: count the syncs
    python bench/gpu_train.py timm SIZE STEPS TRAIN_PY [ARGS...]  # timm's train.py fed synthetic device batches

Rows: the device (CUDA guard: exit 2 without CUDA unless IMNET_GPU_CHECK_SMOKE=1), the JPEGs, the bf16 peak (the
datasheet's and a measured matmul's), ResNet-50 training img/s with bf16 + channels_last at 224 and 176 px on
synthetic data (--fake-data) and on the JPEGs (train.py's real loader), the loader's img/s per worker core, eval.py
--bench and a real evaluation pass, host syncs per training step and per evaluation batch, timm's train.py at the
synthetic setting (when carried in bench/.timm/train.py) and the compile gain. IMNET_GPU_CHECK_SMOKE=1 runs every
row on the CPU at tiny sizes (resnet18, 64 and 32 px, a few steps, compile disabled) to test the check itself.
Settings: IMNET_GPU_CHECK_BUDGET (seconds, 440; smoke 3600), _WORKERS (cpus - 1), _BATCH (256), _STEPS (30),
_TIMM (path), IMNET_PEAK_TFLOPS (dense bf16 peak of a GPU the table below does not know).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SMOKE = os.environ.get("IMNET_GPU_CHECK_SMOKE", "") not in ("", "0")
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setting(name, gpu, smoke):
    return type(gpu)(os.environ.get(f"IMNET_GPU_CHECK_{name}", smoke if SMOKE else gpu))


BUDGET = setting("BUDGET", 440.0, 3600.0)
SLACK = 5 if SMOKE else 1  # a shared CPU in CI can be many times slower than its quiet self; no device time spent
MODEL = "resnet18" if SMOKE else "resnet50"
LOADER_MODEL = "resnet18" if SMOKE else "mobilenet_v3_small"  # fast enough on a GPU that the loader is the limit
SIZES = (64, 32) if SMOKE else (224, 176)
BATCH = setting("BATCH", 256, 4)
STEPS = setting("STEPS", 30, 4)  # logged every STEPS // 3; img/s: the median of the windows after the first
WORKERS = setting("WORKERS", max(CPUS - 1, 1), 1)
AMP = "none" if SMOKE else "bf16"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SMALL_VAL_PER_CLASS = (10, 8, 4, 1) if SMOKE else (100, 80, 50, 10)
SHORT_SIDE = (72, 96) if SMOKE else (333, 400)  # the long side is 500 (ImageNet's typical 500 x 375, ~110 KB)
TIMM = os.environ.get("IMNET_GPU_CHECK_TIMM", os.path.join(ROOT, "bench", ".timm", "train.py"))

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOPS; matched in order.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("GH200", 989.0), ("A100", 312.0)]


# ------------------------------------------------------------------------------------------- helpers

def render_jpeg(path, seed):
    """One ImageNet-like JPEG: 500 px long side, a smooth colour field plus texture and sensor noise, quality 90
    (about 100 KB and 1.1 ms to decode against 108 KB and 1.4 ms for real ImageNet validation files)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    short = int(rng.integers(*SHORT_SIDE))
    long = round(short * 4 / 3) if SMOKE else 500
    w, h = (long, short) if rng.random() < 0.75 else (short, long)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (h // 3, w // 3, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    img = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(mid, np.float32)
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def write_jpegs(root):
    """train/ and val/ with CLASSES folders, and val_small/: val's first SMALL_VAL_PER_CLASS images per class
    (hard links), for the per-batch difference of the evaluation's sync count."""
    from multiprocessing import Pool
    jobs = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"c{c:03d}"))
            jobs += [(os.path.join(root, split, f"c{c:03d}", f"{i:05d}.JPEG"), (split == "val", c, i))
                     for i in range(per_class)]
    with Pool(CPUS) as pool:
        pool.starmap(render_jpeg, jobs, chunksize=16)
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, "val_small", f"c{c:03d}"))
        for i in range(SMALL_VAL_PER_CLASS):
            name = os.path.join(f"c{c:03d}", f"{i:05d}.JPEG")
            os.link(os.path.join(root, "val", name), os.path.join(root, "val_small", name))
    sizes = [os.path.getsize(p) for p, _ in jobs]
    return {"images": len(jobs), "mean_kb": sum(sizes) / len(sizes) / 1e3}


def training_flops(model_name, size):
    """FLOPs of one training image (forward + backward, FlopCounterMode: 2 per multiply-add) of torchvision's
    model, the one train.py builds; ResNet-50 at 224: 3 x 8.2 G (4.1 GMACs forward)."""
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):  # shapes only: counted without computing
        model = torchvision.models.get_model(model_name, num_classes=1000)
        x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).float().logsumexp(1).sum().backward()
    return counter.get_total_flops() / 2


def matmul_tflops(device):
    """Measured dense bf16 matmul rate: n x n x n products (2 n^3 FLOPs each), best of a few timed rounds."""
    n, reps = (256, 2) if SMOKE else (8192, 20)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(3):
        a @ b
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best / 1e12


def datasheet_peak(name):
    if os.environ.get("IMNET_PEAK_TFLOPS"):
        return float(os.environ["IMNET_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def train_img_per_s(log_path):
    """Median img/s of the logged windows after the first (cuDNN autotuning, compilation, worker start), and
    the median share of the step time spent waiting for data."""
    with open(log_path) as f:
        events = [e for e in map(json.loads, f) if e.get("event") == "train"]
    steady = events[1:] or events
    if not steady:
        raise RuntimeError(f"no train events in {log_path}")
    return statistics.median(e["img_per_s"] for e in steady), statistics.median(e["data_share"] for e in steady)


def timm_img_per_s(text):
    """Median of the per-window rates ("Time: 0.123s, 2081.32/s") of timm's "Train:" lines after the first."""
    rates = [float(m.group(1)) for m in re.finditer(r"^.*Train:.*?Time:\s*[\d.]+s,\s*([\d.]+)/s", text, re.M)]
    if not rates:
        raise RuntimeError("no 'Train: ... Time: ...s, N/s' line in timm's output")
    return statistics.median(rates[1:] or rates)


def timm_version():
    try:
        import timm
        return timm.__version__
    except ImportError:
        return "(not installed)"


# ------------------------------------------------------------------------------------------- in-process wrappers

def count_syncs(json_path, script, args):
    """Run SCRIPT (train.py, eval.py) in this process with torch.cuda.set_sync_debug_mode("warn"), which warns at
    every call that makes the host wait for the GPU (.item(), a blocking copy, ...); write the count and where."""
    import runpy
    import warnings
    counting = torch.cuda.is_available()
    sys.argv, sys.path[0] = [script, *args], os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` has
    rc = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if counting:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            if counting:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = {}
    for w in syncs:
        key = f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    with open(json_path, "w") as f:
        json.dump({"syncs": len(syncs), "counted": counting, "where": where}, f)
    return rc


def run_timm(size, steps, script, args):
    """timm's train.py on synthetic batches: its create_dataset / create_loader replaced by a loader that yields
    the same normalised float batch on the device (what timm's prefetcher hands the step), STEPS per epoch."""
    import runpy
    import timm.data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = int(args[args.index("--batch-size") + 1])
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    class Loader:
        dataset, sampler, batch_sampler, mixup_enabled = None, None, None, False

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __iter__(self):
            return iter([(images, labels)] * self.n)

    timm.data.create_dataset = lambda *a, **k: list(range(batch * steps))
    timm.data.create_loader = lambda dataset, *a, is_training=False, **k: Loader(steps if is_training else 1)
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    return 0


# ------------------------------------------------------------------------------------------- the check

class Check:
    """Runs the command lines one after the other within BUDGET seconds; each row records its figures or why
    it has none (timed out, failed: the log's tail is in the JSON, the whole log in the logs folder)."""

    def __init__(self, work, logs):
        self.work, self.logs, self.start, self.rows = work, logs, time.perf_counter(), []
        self.facts = {}

    def command(self, name, argv, limit, env=None):
        """Run argv under min(limit, what is left of the budget); None and a failed row when it does not end
        with 0."""
        left = BUDGET - (time.perf_counter() - self.start)
        limit = min(limit * SLACK, left)
        if limit < 5:
            self.row(name, "skipped", note="no time left in the budget")
            return None
        log = os.path.join(self.logs, name.replace(" ", "_") + ".log")
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} (limit {limit:.0f}s)", file=sys.stderr, flush=True)
        with open(log, "w") as f:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:  # the whole group: loader workers and compile workers too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
        seconds = time.perf_counter() - t0
        print(f"[gpu_check] {name}: {rc} in {seconds:.0f}s", file=sys.stderr, flush=True)
        if rc != 0:
            with open(log) as f:
                tail = f.read()[-1500:]
            self.row(name, "timeout" if rc == "timeout" else "failed", note=f"exit {rc}; {log}", log_tail=tail)
            return None
        with open(log) as f:
            return f.read()

    def row(self, name, status, value=None, unit="", note="", **extra):
        self.rows.append({"row": name, "status": status, "value": value, "unit": unit, "note": note, **extra})

    def train(self, name, size, extra, limit, model=MODEL, keep=False, env=None):
        """train.py for STEPS optimizer steps (stopped as if preempted: before any evaluation); (img/s, data
        share, run folder) or None."""
        out = os.path.join(self.work, name)
        argv = [sys.executable, "train.py", "--model", model, "--train-crop-size", str(size), "--val-crop-size",
                str(size), "--batch-size", str(BATCH), "--amp", AMP, "--channels-last", "--epochs", "90",
                "--warmup-epochs", "0", "--eval-every", "0", "--stop-at-step", str(STEPS), "--log-every",
                str(max(STEPS // 3, 1)), "--save-every-minutes", "0", "--quiet", "--output", out, *extra]
        if self.command(name, argv, limit, env) is None:
            return None
        rate, share = train_img_per_s(os.path.join(out, "log.jsonl"))
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return rate, share, out

    def fraction(self, rate, size):
        """Achieved training TFLOPS and their fraction of the datasheet's and the measured matmul's peak."""
        flops = self.facts["flops"].get(size)
        if not flops:
            return ""
        achieved = rate * flops / 1e12
        parts = [f"{achieved:.0f} TFLOPS"]
        for label in ("datasheet", "matmul"):
            if self.facts.get(label):
                parts.append(f"{100 * achieved / self.facts[label]:.1f}% of {label}")
        return ", ".join(parts)

    def syncs(self, name, script, runs, per, limit):
        """Syncs per unit: the difference of two runs that differ by `per` units (steps or batches), so that the
        setup, the checkpoint and the report cancel out."""
        counts = []
        for i, args in enumerate(runs):
            path = os.path.join(self.work, f"{name}-{i}.json")
            if self.command(f"{name}-{i}", [sys.executable, "bench/gpu_train.py", "syncs", path, script, *args],
                            limit) is None:
                return
            with open(path) as f:
                counts.append(json.load(f))
        if not counts[0]["counted"]:
            self.row(name, "ok", None, "syncs", note="not counted: no CUDA (the runs themselves passed)")
            return
        value = (counts[1]["syncs"] - counts[0]["syncs"]) / per
        self.row(name, "ok", value, "syncs", note=f"{counts[0]['syncs']} vs {counts[1]['syncs']} over {per} more",
                 where=counts[1]["where"])

    def run(self):
        data = os.path.join(self.work, "jpegs")
        t0 = time.perf_counter()
        made = write_jpegs(data)
        self.row("jpegs", "ok", made["images"], "images", note=f"{CLASSES} classes, mean {made['mean_kb']:.0f} KB, "
                 f"generated in {time.perf_counter() - t0:.0f}s on {CPUS} cores")

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.facts["flops"] = {size: training_flops(MODEL, size) for size in SIZES}
        self.facts["datasheet"] = datasheet_peak(self.facts["gpu"]) if device.type == "cuda" else None
        self.facts["matmul"] = matmul_tflops(device)
        self.row("peak bf16 datasheet", "ok" if self.facts["datasheet"] else "unknown", self.facts["datasheet"],
                 "TFLOPS", note="dense; unknown GPU: set IMNET_PEAK_TFLOPS" if not self.facts["datasheet"] else
                 "dense, NVIDIA datasheet")
        self.row("peak bf16 matmul", "ok", self.facts["matmul"], "TFLOPS", note="measured n x n x n bf16 matmul")

        fake = {}
        for size in SIZES:
            r = self.train(f"train synthetic {size}", size, ["--fake-data"], 90)
            if r:
                fake[size] = r[0]
                self.row(f"train synthetic {size}", "ok", r[0], "img/s", note=self.fraction(r[0], size))
        run224 = None
        for size in SIZES:
            r = self.train(f"train jpeg {size}", size, ["--data", data, "--workers", str(WORKERS)], 90,
                           keep=size == SIZES[0])
            if r:
                run224 = r[2] if size == SIZES[0] else run224
                note = f"data wait {100 * r[1]:.0f}%, {WORKERS} workers; " + self.fraction(r[0], size)
                self.row(f"train jpeg {size}", "ok", r[0], "img/s", note=note)

        r = self.train("loader per core", SIZES[0], ["--data", data, "--workers", str(WORKERS)], 60,
                       model=LOADER_MODEL)
        if r:
            per_core = r[0] / WORKERS
            need = f"; a GPU at {fake[SIZES[0]]:.0f} img/s needs {fake[SIZES[0]] / per_core:.0f} cores" \
                if SIZES[0] in fake else ""
            self.row("loader per core", "ok", per_core, "img/s", note=f"{LOADER_MODEL} at {SIZES[0]} px, {WORKERS} "
                     f"workers, data wait {100 * r[1]:.0f}% (near 100%: the loader is the limit){need}")

        path = os.path.join(self.work, "bench.json")
        bench = [sys.executable, "eval.py", "--bench", "--model", MODEL, "--batch-sizes", str(BATCH), "--amp", AMP,
                 "--channels-last", "--val-crop-size", str(SIZES[0]), "--json", path]
        if SMOKE:
            bench += ["--bench-warmup", "1", "--bench-iters", "2"]
        if self.command("eval bench", bench, 60) is not None:
            with open(path) as f:
                rate = json.load(f)["results"][0]["img_per_s"]
            self.row("eval bench", "ok", rate, "img/s", note=f"eval.py --bench, batch {BATCH}, {SIZES[0]} px")

        if run224:
            ckpt = os.path.join(run224, "last.pt")
            path = os.path.join(self.work, "eval.json")
            evaluate = ["--checkpoint", ckpt, "--batch-size", str(BATCH), "--workers", str(WORKERS),
                        "--amp", AMP, "--channels-last"]
            if self.command("eval jpeg", [sys.executable, "eval.py", *evaluate, "--data", os.path.join(data, "val"),
                                          "--json", path], 60) is not None:
                with open(path) as f:
                    report = json.load(f)
                images = CLASSES * VAL_PER_CLASS
                self.row("eval jpeg", "ok", images / report["seconds"], "img/s",
                         note=f"eval.py on {images} JPEGs, {WORKERS} workers (worker start included)")
            batches = [-(-CLASSES * n // BATCH) for n in (SMALL_VAL_PER_CLASS, VAL_PER_CLASS)]
            self.syncs("syncs per eval batch", "eval.py",
                       [evaluate + ["--data", os.path.join(data, split)] for split in ("val_small", "val")],
                       batches[1] - batches[0], 60)
        else:
            self.row("eval jpeg", "skipped", note="no checkpoint: 'train jpeg' failed")
            self.row("syncs per eval batch", "skipped", note="no checkpoint: 'train jpeg' failed")

        first, second = max(STEPS // 3, 1), 2 * max(STEPS // 3, 1)
        runs = [["--fake-data", "--model", MODEL, "--train-crop-size", str(SIZES[1]), "--batch-size", str(BATCH),
                 "--amp", AMP, "--channels-last", "--epochs", "90", "--eval-every", "0", "--log-every", str(first),
                 "--save-every-minutes", "0", "--quiet", "--stop-at-step", str(stop), "--output",
                 os.path.join(self.work, f"syncs-{stop}")] for stop in (first, second)]
        self.syncs("syncs per train step", "train.py", runs, second - first, 60)

        if not os.path.exists(TIMM):
            self.row("timm synthetic", "skipped", note=f"no {TIMM}: copy there the train.py of timm "
                     f"{timm_version()} (the version installed here)")
        else:
            size = SIZES[0]
            args = ["--model", MODEL, "--img-size", str(size), "--batch-size", str(BATCH), "--opt", "sgd",
                    "--lr", "0.1", "--smoothing", "0", "--epochs", "1", "--warmup-epochs", "0", "--channels-last",
                    "--log-interval", str(max(STEPS // 3, 1)), "--output", os.path.join(self.work, "timm"),
                    "--num-classes", "1000", "--workers", "0", "--data-dir", data]
            if AMP == "bf16":
                args += ["--amp", "--amp-dtype", "bfloat16"]
            if SMOKE:
                args += ["--device", "cpu"]
            text = self.command("timm synthetic", [sys.executable, "bench/gpu_train.py", "timm", str(size),
                                                   str(STEPS), TIMM, *args], 90)
            if text is not None:
                rate = timm_img_per_s(text)
                note = f"imnet/timm {fake[size] / rate:.2f}" if size in fake else ""
                self.row("timm synthetic", "ok", rate, "img/s",
                         note=f"timm {timm_version()}'s train.py at {size} px; {note}")

        env = {"TORCHDYNAMO_DISABLE": "1"} if SMOKE and not os.environ.get("IMNET_GPU_CHECK_SMOKE_COMPILE") else {}
        r = self.train("train synthetic compiled", SIZES[0], ["--fake-data", "--compile"], 200, env=env)
        if r:
            gain = r[0] / fake[SIZES[0]] if SIZES[0] in fake else None
            note = f"{r[0]:.0f} img/s compiled" + (" (smoke: TORCHDYNAMO_DISABLE=1)" if env else "")
            self.row("compile gain", "ok", gain, "x", note=note)
        else:
            self.row("compile gain", "failed", note="see 'train synthetic compiled'")


def table(rows):
    lines = [f"{'row':<26} {'status':<8} {'value':>10} {'unit':<7} note"]
    for r in rows:
        v = r["value"]
        text = "" if v is None else (f"{v:,.2f}" if isinstance(v, float) and abs(v) < 100 else f"{v:,.0f}")
        lines.append(f"{r['row']:<26} {r['status']:<8} {text:>10} {r['unit']:<7} {r['note']}")
    return "\n".join(lines)


def check():
    if not torch.cuda.is_available() and not SMOKE:
        print(f"gpu_check: CUDA is not available to torch {torch.__version__} on this machine, so no figure would "
              "be a GPU's. Run it where `python -c 'import torch; print(torch.cuda.is_available())'` prints True, "
              "or set IMNET_GPU_CHECK_SMOKE=1 to test the check on the CPU.", file=sys.stderr)
        return 2
    out = os.environ.get("OUT") or None
    work = tempfile.mkdtemp(prefix="imnet-gpu-check-")
    logs = os.path.join(out, "gpu_check_logs") if out else tempfile.mkdtemp(prefix="imnet-gpu-check-logs-")
    os.makedirs(logs, exist_ok=True)
    c = Check(work, logs)
    c.facts["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    c.row("device", "ok", None, note=f"{c.facts['gpu']}, torch {torch.__version__}, {CPUS} cpus"
          + (", SMOKE (CPU, tiny sizes)" if SMOKE else ""))
    try:
        c.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(table(c.rows))
        report = json.dumps({"smoke": SMOKE, "model": MODEL, "sizes": SIZES, "batch": BATCH, "steps": STEPS,
                             "workers": WORKERS, "rows": c.rows}, indent=1)
        if out:
            with open(os.path.join(out, "gpu_check.json"), "w") as f:
                f.write(report)
        print(f"[gpu_check] {time.perf_counter() - c.start:.0f}s; logs in {logs}", file=sys.stderr)
    return 0


def main(argv):
    if argv[:1] == ["jpegs"]:
        print(json.dumps(write_jpegs(argv[1])))
        return 0
    if argv[:1] == ["syncs"]:
        return count_syncs(argv[1], argv[2], argv[3:])
    if argv[:1] == ["timm"]:
        return run_timm(int(argv[1]), int(argv[2]), argv[3], argv[4:])
    return check()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
