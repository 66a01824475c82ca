"""The measurements behind bench/gpu_check.sh, one section per call so that each runs under its own time limit.

    python bench/gpu_train.py flops  --json F   # training FLOPs per image (FlopCounterMode, fwd + bwd), GPU name
    python bench/gpu_train.py syncs  --json F   # host-device synchronisations per training step (CUDA sync debug)
    python bench/gpu_train.py imnet  --json F   # train.py --fake-data, bf16 + channels_last (imnet_compile: +--compile)
    python bench/gpu_train.py imnet_start --json F  # as imnet at the progressive ramp's START size (PROGRESSIVE_START)
    python bench/gpu_train.py compile_steps --json F  # bench/compile.py: compile time at START then SIZE, speedup
    python bench/gpu_train.py plain  --json F   # the plain way: float workers, fp32, NCHW, bare loop
    python bench/gpu_train.py data   --json F   # input pipeline img/s with all cores on the real JPEG sample
    python bench/gpu_train.py merge  DIR        # combine DIR/*.json (+ time-outs) into one JSON object

Settings come from the environment so the shell script stays short; IMNET_GPU_CHECK_SMOKE=1 shrinks
everything (resnet18, small images and batches, fp32, 2 workers) to test the script end to end on a CPU:

    IMNET_GPU_CHECK_MODEL (resnet50)  _SIZE (224)  _BATCH (256)  _STEPS (40)  _LOG_EVERY (10)
    _WORKERS (nproc)  _AMP (bf16)  _DATA (../shared/data/imagenet-sample/val)  _DATA_SECONDS (15)
    _PROGRESSIVE_START (160: FFCV's first size)
    IMNET_PEAK_TFLOPS: the GPU's dense bf16 peak when the table below does not know the GPU.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
sys.path.insert(0, ROOT)

SMOKE = os.environ.get("IMNET_GPU_CHECK_SMOKE", "") not in ("", "0")

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOPS. Matched in order.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # H100 SXM5
                    ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0)]


def setting(name, default, cast=str):
    smoke = {"MODEL": "resnet18", "SIZE": "64", "BATCH": "8", "STEPS": "6", "LOG_EVERY": "2", "WORKERS": "2",
             "AMP": "none", "DATA_SECONDS": "3", "PROGRESSIVE_START": "32"}
    value = os.environ.get(f"IMNET_GPU_CHECK_{name}")
    if value is None:
        value = smoke.get(name, default) if SMOKE else default
    return cast(value)


MODEL = setting("MODEL", "resnet50")
SIZE = setting("SIZE", "224", int)
BATCH = setting("BATCH", "256", int)
STEPS = setting("STEPS", "40", int)
LOG_EVERY = setting("LOG_EVERY", "10", int)
WORKERS = setting("WORKERS", str(os.cpu_count() or 1), int)
AMP = setting("AMP", "bf16")
DATA = setting("DATA", os.path.join(ROOT, "..", "shared", "data", "imagenet-sample", "val"))
DATA_SECONDS = setting("DATA_SECONDS", "15", float)
PROGRESSIVE_START = setting("PROGRESSIVE_START", "160", int)


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gpu_peak():
    """(name, dense bf16 peak TFLOPS or None, where the peak came from)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if os.environ.get("IMNET_PEAK_TFLOPS"):
        return name, float(os.environ["IMNET_PEAK_TFLOPS"]), "IMNET_PEAK_TFLOPS"
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return name, peak, f"table ({key})"
    return name, None, "unknown GPU: set IMNET_PEAK_TFLOPS to its dense bf16 peak"


# ------------------------------------------------------------------------------------------- sections

def section_flops():
    """FLOPs of one training step per image: forward + loss + backward, counted by FlopCounterMode
    (matmuls and convolutions, 2 FLOPs per multiply-add; what the tensor cores do)."""
    from torch.utils.flop_counter import FlopCounterMode
    from imnet.run.models import build_model
    dev = device()
    model = build_model(MODEL, 1000, image_size=SIZE).to(dev).train()
    n = 2
    x = torch.randn(n, 3, SIZE, SIZE, device=dev)
    y = torch.randint(0, 1000, (n,), device=dev)
    with FlopCounterMode(display=False) as fwd:
        logits = model(x)
    with FlopCounterMode(display=False) as bwd:
        F.cross_entropy(logits, y).backward()
    f, b = fwd.get_total_flops() / n, bwd.get_total_flops() / n
    name, peak, source = gpu_peak()
    return {"model": MODEL, "image_size": SIZE, "forward_flops_per_image": f, "train_flops_per_image": f + b,
            "train_over_forward": (f + b) / f, "gpu": name, "peak_bf16_tflops": peak, "peak_source": source,
            "torch": torch.__version__, "cpus": os.cpu_count()}


def read_train_events(log_path):
    events = []
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("event") == "train":
                events.append(rec)
    return events


def section_imnet(compile_model, size=SIZE):
    """train.py itself on --fake-data with the resnet50 recipe's regularization (MixUp/CutMix, label
    smoothing, RandomErasing, EMA every 32), bf16 + channels_last, stopped after STEPS optimizer steps
    (--stop-at-step: before the end-of-epoch evaluation). img/s is the median of the logged windows after the
    first (which holds cuDNN autotuning and, with --compile, the compilation)."""
    import train
    out = tempfile.mkdtemp(prefix="imnet-gpu-check-")
    argv = ["--recipe", "resnet50", "--fake-data", "--num-classes", "1000", "--model", MODEL,
            "--train-crop-size", str(size), "--val-crop-size", str(size), "--batch-size", str(BATCH),
            "--epochs", "1", "--warmup-epochs", "0", "--amp", AMP, "--channels-last", "--workers", str(WORKERS),
            "--stop-at-step", str(STEPS), "--log-every", str(LOG_EVERY), "--save-every-minutes", "0",
            "--quiet", "--output", out]
    if compile_model:
        argv.append("--compile")
    t0 = time.perf_counter()
    rc = train.main(argv)
    wall = time.perf_counter() - t0
    events = read_train_events(os.path.join(out, "log.jsonl"))
    shutil.rmtree(out, ignore_errors=True)  # last.pt is written at the stop: hundreds of MB
    steady = events[1:] or events
    if rc != 0 or not steady:
        raise RuntimeError(f"train.py exited {rc} with {len(events)} train events; argv {argv}")
    return {"argv": argv, "size": size, "img_per_s": statistics.median(e["img_per_s"] for e in steady),
            "img_per_s_windows": [round(e["img_per_s"], 1) for e in events],
            "data_share": statistics.median(e["data_share"] for e in steady),
            "peak_mem_gib": max(e["peak_mem_gib"] for e in events), "wall_s": wall}


def step_config(full, size, batch, amp):
    """The Config train.py resolves for a --fake-data run of resnet18 (full: the resnet50 recipe's
    regularization), for driving train.train_step directly."""
    import train
    from imnet.run import config
    below = vars(train.build_parser().parse_args([]))
    given = dict(model="resnet18", fake_data=True, num_classes=1000, train_crop_size=size, batch_size=batch,
                 channels_last=True, amp=amp, lr=0.01, epochs=100, output=tempfile.gettempdir(), quiet=True)
    if full:
        given.update(mixup=0.2, cutmix=1.0, label_smoothing=0.1, random_erase=0.25, ema=True, ema_decay=0.999)
    return config.resolve(below, given, world_size=1).with_data(100 * batch, 1, 1000)


def section_syncs():
    """Host-device synchronisations per training step: train.train_step with the full recipe on a small
    model, under torch.cuda.set_sync_debug_mode("warn"), which warns at every call that waits for the GPU
    (.item(), blocking copies, ...). The design wants none between log lines. On a CPU the steps run (to test
    this script) but nothing can be counted."""
    import warnings
    import train
    from imnet.ema import ModelEma
    from imnet.metrics import Meter
    from imnet.mixing import Mixer
    from imnet.run.models import build_model
    from imnet.optim import build_optimizer, param_groups
    dev = device()
    model = build_model("resnet18", 1000).to(dev).to(memory_format=torch.channels_last)
    opt = build_optimizer("sgd", param_groups(model, 1e-4), lr=0.01, weight_decay=1e-4)
    results = {}
    n, size = min(BATCH, 32), min(SIZE, 112)
    for label, full in (("no recipe", False), ("full recipe", True)):
        cfg = step_config(full, size, n, "bf16" if dev.type == "cuda" else "none")
        parts = train.Parts(model=model, train_model=model, eval_model=model, optimizer=opt, device=dev,
                             mixer=Mixer(1000, 0.2, 1.0, label_smoothing=0.1) if full else None,
                             ema=ModelEma(model, 0.999) if full else None)
        g = torch.Generator().manual_seed(0)
        batch = (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                 torch.randint(0, 1000, (n,), generator=g))
        if dev.type == "cuda":
            batch = (batch[0].pin_memory(), batch[1].pin_memory())
        steps = 2 if SMOKE else 4
        guard = train.NonFiniteGuard(dev)

        def run(epoch):  # train.py's inner loop without the log line: train_step + device-side bookkeeping
            meter, window = Meter(dev), torch.zeros((), device=dev)
            for k in range(steps):
                loss, _ = train.train_step(cfg, parts, [batch], epoch, k, epoch * steps + k, meter)
                guard.update(loss, epoch * steps + k)
                window += loss
        run(0)  # warm-up (cuDNN, lazy state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if dev.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                run(1)
            finally:
                if dev.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        where = {}
        for w in syncs:
            key = f"{os.path.relpath(w.filename, ROOT) if w.filename.startswith(ROOT) else w.filename}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
        results[label] = {"syncs_per_step": len(syncs) / steps, "where": where,
                          "counted": dev.type == "cuda"}
    return results


def section_compile_steps():
    """bench/compile.py on this device: train.py's training step eager vs torch.compile'd, bf16 +
    channels_last; compile time at PROGRESSIVE_START and then SIZE (the recompilation a progressive run meets
    at a new size), steady-state speedup at SIZE."""
    import subprocess
    cmd = [sys.executable, os.path.join(HERE, "compile.py"), "--model", MODEL, "--sizes", str(PROGRESSIVE_START),
           str(SIZE), "--batch-size", str(min(BATCH, 128)), "--amp", AMP, "--threads", str(min(WORKERS, 8)),
           "--rounds", "3" if SMOKE else "5", "--steps", "2" if SMOKE else "5", "--num-classes", "1000"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


class PlainFake(torch.utils.data.Dataset):
    """torchvision's usual way, on synthetic images: each item is a PIL image turned into a normalized float
    tensor by ToTensor + Normalize in the worker (4x the bytes of uint8 to collate, pin and copy)."""

    def __init__(self, size, length, num_classes=1000, bank=16):
        import torchvision.transforms as T
        from PIL import Image
        g = torch.Generator().manual_seed(0)
        arrays = torch.randint(0, 256, (bank, size, size, 3), dtype=torch.uint8, generator=g).numpy()
        self.images = [Image.fromarray(a) for a in arrays]
        self.tf = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        self.length, self.num_classes = length, num_classes

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.tf(self.images[i % len(self.images)]), i % self.num_classes


def section_plain():
    """The same model driven the plain way: float workers, default collate, pinned memory, fp32, NCHW,
    F.cross_entropy, SGD; img/s over the steps after the first LOG_EVERY (warm-up)."""
    import torchvision
    dev = device()
    torch.backends.cudnn.benchmark = True  # as train.py does (and as most scripts do)
    ds = PlainFake(SIZE, length=(STEPS + 1) * BATCH)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         pin_memory=dev.type == "cuda", drop_last=True,
                                         persistent_workers=WORKERS > 0)
    model = getattr(torchvision.models, MODEL)(num_classes=1000).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    warm = min(LOG_EVERY, STEPS // 2)
    t0 = None
    n = 0
    for step, (x, y) in enumerate(loader):
        if step == warm:
            sync(dev)
            t0 = time.perf_counter()
        if step >= STEPS:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t0 is not None:
            n += x.shape[0]
    sync(dev)
    seconds = time.perf_counter() - t0
    return {"img_per_s": n / seconds, "images_timed": n, "steps": STEPS, "warmup_steps": warm,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}


class EndlessKeys:
    """(index, epoch) keys for imnet's ImageFolder: a fresh permutation per epoch, without end."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        epoch = 0
        while True:
            for i in torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch)).tolist():
                yield i, epoch
            epoch += 1


def loader_rate(loader, seconds):
    """Images per second from the first batch on (worker start-up excluded), for about ``seconds``."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch[0].shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0), n


def section_data():
    """imnet's input pipeline (ImageFolder + train_transform(SIZE) + build_loader, uint8 batches) with
    WORKERS processes on the real JPEG sample, then torchvision's standard one (ImageFolder, RandomResizedCrop,
    flip, ToTensor, Normalize, default collate) with the same workers, for scale."""
    import torchvision
    import torchvision.transforms as T
    from imnet.run import data, folders
    from imnet.transforms import train_transform
    if not os.path.isdir(DATA):
        raise FileNotFoundError(f"no JPEG sample at {DATA} (set IMNET_GPU_CHECK_DATA)")
    pin = torch.cuda.is_available()
    classes = folders.find_classes(DATA)
    ds = data.ImageFolder(DATA, classes, train_transform(SIZE), seed=0)
    batch = min(BATCH, 64)
    loader = data.build_loader(ds, EndlessKeys(len(ds)), batch, WORKERS, pin_memory=pin, drop_last=True)
    imnet_rate, imnet_n = loader_rate(loader, DATA_SECONDS)
    del loader
    tv_ds = torchvision.datasets.ImageFolder(DATA, transform=T.Compose([
        T.RandomResizedCrop(SIZE, antialias=True), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    sampler = torch.utils.data.RandomSampler(tv_ds, replacement=True, num_samples=len(tv_ds) * 1000)
    tv_loader = torch.utils.data.DataLoader(tv_ds, batch_size=batch, sampler=sampler, num_workers=WORKERS,
                                            pin_memory=pin, drop_last=True, persistent_workers=WORKERS > 0)
    tv_rate, tv_n = loader_rate(tv_loader, DATA_SECONDS)
    return {"data": os.path.abspath(DATA), "images": len(ds), "workers": WORKERS, "batch_size": batch,
            "crop": SIZE, "imnet_img_per_s": imnet_rate, "imnet_images_timed": imnet_n,
            "torchvision_img_per_s": tv_rate, "torchvision_images_timed": tv_n,
            "speedup": imnet_rate / tv_rate}


# ------------------------------------------------------------------------------------------- merge

def merge(folder):
    """One JSON object from the sections' files; a section without its file timed out or failed (its
    status file says which, and its log tail says why)."""
    res = {"smoke": SMOKE, "sections": {}}
    parts = {}
    for status_file in sorted(glob.glob(os.path.join(folder, "*.status"))):
        name = os.path.basename(status_file)[:-len(".status")]
        with open(status_file) as f:
            rc, limit, seconds = f.read().split()
        status = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped"}.get(rc, "failed")
        entry = {"status": status, "rc": rc, "limit_s": int(limit), "seconds": float(seconds)}
        path = os.path.join(folder, name + ".json")
        if rc == "0" and os.path.exists(path):
            with open(path) as f:
                parts[name] = json.load(f)
        elif os.path.exists(os.path.join(folder, name + ".log")):
            with open(os.path.join(folder, name + ".log")) as f:
                entry["log_tail"] = f.read()[-1500:]
        res["sections"][name] = entry
    fl = parts.get("flops", {})
    flops, peak = fl.get("train_flops_per_image"), fl.get("peak_bf16_tflops")
    res.update({k: fl.get(k) for k in ("gpu", "peak_bf16_tflops", "peak_source", "model", "image_size",
                                       "forward_flops_per_image", "train_flops_per_image", "train_over_forward",
                                       "torch", "cpus")})
    for name in ("imnet", "imnet_compile", "imnet_start", "plain"):
        if name in parts:
            r = parts[name]
            if flops:
                r["achieved_tflops"] = r["img_per_s"] * flops / 1e12
                r["fraction_of_bf16_peak"] = r["achieved_tflops"] / peak if peak else None
            res[name] = r
    plain = parts.get("plain", {}).get("img_per_s")
    for name in ("imnet", "imnet_compile"):
        if plain and name in parts:
            res[f"{name}_over_plain"] = parts[name]["img_per_s"] / plain
    if "imnet_start" in parts and "imnet" in parts:  # what the low-resolution epochs of a ramp gain
        start, end = parts["imnet_start"]["size"], parts["imnet"]["size"]
        res["progressive"] = {"start": start, "end": end, "flops_ratio": (end / start) ** 2,
                              "img_per_s_ratio": parts["imnet_start"]["img_per_s"] / parts["imnet"]["img_per_s"]}
    if "imnet_compile" in parts and "imnet" in parts:
        res["compile_gain"] = parts["imnet_compile"]["img_per_s"] / parts["imnet"]["img_per_s"]
    if "compile_steps" in parts:
        res["compile_steps"] = parts["compile_steps"]
    if "syncs" in parts:
        res["syncs"] = parts["syncs"]
    if "data" in parts:
        res["data"] = parts["data"]
        per = parts["imnet"]["img_per_s"] if "imnet" in parts else None
        if per:  # how many of these machines' cores one GPU's training would need for real JPEGs
            res["data"]["gpu_img_per_s_over_pipeline"] = per / parts["data"]["imnet_img_per_s"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", choices=["flops", "syncs", "imnet", "imnet_compile", "imnet_start", "compile_steps",
                                        "plain", "data", "merge"])
    ap.add_argument("folder", nargs="?", help="merge: the folder of section files")
    ap.add_argument("--json", help="write the section's result here")
    args = ap.parse_args()
    if args.section == "merge":
        print(json.dumps(merge(args.folder), indent=1))
        return 0
    torch.manual_seed(0)
    run = {"flops": section_flops, "syncs": section_syncs, "plain": section_plain, "data": section_data,
           "imnet": lambda: section_imnet(False), "imnet_compile": lambda: section_imnet(True),
           "imnet_start": lambda: section_imnet(False, PROGRESSIVE_START),
           "compile_steps": section_compile_steps}[args.section]
    result = run()
    text = json.dumps(result)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
