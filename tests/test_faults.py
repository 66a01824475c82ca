"""Faults of real clusters and habits of real users: kills between checkpoint writes, failing evaluations, two
runs in one folder, leftovers of kill -9, bad input, the flags people bring from timm and torchvision, and the
platforms without POSIX extras. (Process-group SIGTERM with workers is in test_train.py, next to its reference
run.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import REPO, make_imagefolder
from imnet import checkpoint as ckpt_io
from imnet import dist
from imnet import log as imnet_log
from imnet import signals as imnet_signals

# Small and fast, in-process, no workers: 6 steps per epoch, evaluation every epoch.
BASE = ["--model", "deit_tiny", "--epochs", "2", "--batch-size", "8", "--train-crop-size", "32",
        "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "1e-3", "--warmup-epochs", "1",
        "--opt", "adamw", "--weight-decay", "0.05", "--log-every", "3", "--quiet", "--seed", "5",
        "--workers", "0", "--save-every-minutes", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("fault_data"), num_classes=3, train_per_class=16,
                            val_per_class=5)


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs (a BaseException, so no `except Exception` catches it)."""


def counting_writes(monkeypatch, kill_after: int | None = None) -> list[str]:
    """Record every checkpoint write by name; with kill_after=k, 'kill' the run right after the k-th write."""
    real, names = ckpt_io.save_atomic, []

    def save_atomic(obj, path):
        real(obj, path)
        names.append(Path(path).name)
        if len(names) == kill_after:
            raise Killed
    monkeypatch.setattr(ckpt_io, "save_atomic", save_atomic)
    return names


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run and the names of its checkpoint writes, in order."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        writes = counting_writes(mp)
        assert train.main(BASE + ["--data", str(data), "--output", str(out)]) == 0
    return out, writes


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_epoch_is_saved_before_evaluation_and_best_before_last(reference):
    out, writes = reference
    # Per epoch: last.pt (training done, evaluation pending), best.pt when the top-1 improved, last.pt.
    assert writes[:3] == ["last.pt", "best.pt", "last.pt"] and writes[-1] == "last.pt"
    assert writes.count("last.pt") == 4


def test_best_is_consistent_with_last_after_a_kill_between_any_two_writes(reference, data, tmp_path, monkeypatch):
    """For every k, 'kill' the run right after its k-th checkpoint write, resume with --resume auto: best.pt and
    last.pt agree on the best top-1, and both equal the uninterrupted run's files, weights bitwise."""
    ref_out, writes = reference
    ref_last, ref_best = load(ref_out / "last.pt"), load(ref_out / "best.pt")
    for k in range(1, len(writes)):
        out = tmp_path / f"kill_after_{k}"
        args = BASE + ["--data", str(data), "--output", str(out)]
        with monkeypatch.context() as mp:
            counting_writes(mp, kill_after=k)
            with pytest.raises(Killed):
                train.main(args)
        assert train.main(args + ["--resume", "auto"]) == 0, k
        last, best = load(out / "last.pt"), load(out / "best.pt")
        assert not last["pending_eval"]
        top1s = [row["val_top1"] for row in last["history"]]
        assert best["best_top1"] == last["best_top1"] == max(top1s) == best["metrics"]["val_top1"], (k, top1s)
        assert same_weights(last, ref_last) and same_weights(best, ref_best), k
        assert last["history"] == [dict(r, epoch_time=row["epoch_time"]) for r, row in
                                   zip(ref_last["history"], last["history"])], k


def test_a_stale_best_from_an_older_run_is_repaired_on_resume(reference, data, tmp_path):
    """A folder left by a kill between last.pt and best.pt under the old write order: last.pt knows a newer best
    (its own epoch) than best.pt holds. The resume rewrites best.pt from last.pt."""
    ref_out, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    last = load(ref_out / "last.pt")
    newest = last["history"][-1]["val_top1"]
    last["best_top1"] = newest  # last.pt's own epoch is the best
    last["checksum"] = ckpt_io.content_digest(last)  # as that run would have written it
    torch.save(last, out / "last.pt")
    stale = dict(last, best_top1=newest - 10.0, metrics=dict(last["metrics"], val_top1=newest - 10.0))
    stale["checksum"] = ckpt_io.content_digest(stale)
    torch.save(stale, out / "best.pt")
    assert train.main(BASE + ["--data", str(data), "--output", str(out), "--resume", "auto"]) == 0
    assert (out / "best.pt").read_bytes() == (out / "last.pt").read_bytes()
    assert load(out / "best.pt")["best_top1"] == newest
    assert "best_repaired" in [json.loads(line)["event"] for line in open(out / "log.jsonl")]


def test_a_failing_evaluation_keeps_the_epoch(tmp_path):
    """Every validation image unreadable, read by 2 worker processes: the end-of-epoch evaluation fails with one
    paragraph (no worker traceback), exit 2 (the process exits: no hang on its workers), and the epoch's
    training is in last.pt, marked pending. With the images repaired, --resume auto evaluates that epoch and
    finishes the run."""
    root = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=2)
    originals = {p: p.read_bytes() for p in (root / "val").rglob("*.JPEG")}
    for p in originals:
        p.write_bytes(b"not a JPEG")
    out = tmp_path / "run"
    args = BASE + ["--epochs", "1", "--warmup-epochs", "0", "--workers", "2", "--data", str(root),
                   "--output", str(out)]
    # As a script: the process must also exit (workers that ignore SIGTERM must not hang the interpreter's exit).
    res = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    err = res.stderr
    assert res.returncode == 2, err
    assert "Traceback" not in err and "DataLoader worker" not in err and len(err.strip().splitlines()) == 1, err
    assert "error:" in err
    state = load(out / "last.pt")
    assert (state["epoch"], state["global_step"], state["pending_eval"]) == (1, 3, True)
    assert state["history"][0].get("val_top1") is None and state["history"][0]["train_loss"] > 0
    for p, content in originals.items():
        p.write_bytes(content)
    assert train.main(args + ["--resume", "auto"]) == 0
    state = load(out / "last.pt")
    assert not state["pending_eval"] and state["global_step"] == 3 and state["history"][0]["val_top1"] >= 0
    assert load(out / "best.pt")["best_top1"] == state["history"][0]["val_top1"]


# ----------------------------------------------------------------------------------------- the run folder

def test_new_run_over_an_earlier_run_is_refused(reference, data, tmp_path, capsys):
    ref_out, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "best.pt"):
        (out / name).write_bytes((ref_out / name).read_bytes())
    before = (out / "best.pt").read_bytes()
    capsys.readouterr()
    assert train.main(BASE + ["--data", str(data), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "Traceback" not in err
    assert (out / "best.pt").read_bytes() == before and not (out / "log.jsonl").exists()
    # The demo's second `python train.py`: the way on must name --recipe demo (any flag turns the demo off).
    assert train.main(["--recipe", "demo", "--data", str(data), "--output", str(out)]) == 2
    assert "python train.py --recipe demo --resume auto" in capsys.readouterr().err


def test_concurrent_runs_are_refused_and_a_killed_runs_lock_and_temporaries_do_not_stay(data, tmp_path, capsys):
    """A second run into a folder a live run writes to is refused (naming the owner); after the owner is killed
    with SIGKILL, its lock does not block, and the start removes save temporaries of dead processes only."""
    out = tmp_path / "run"
    args = BASE + ["--data", str(data), "--output", str(out)]
    owner = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--epochs", "200", "--log-every", "1"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.time() + 300
        while not ((out / "log.jsonl").exists() and "train" in (out / "log.jsonl").read_text()):
            assert owner.poll() is None and time.time() < deadline, owner.communicate()
            time.sleep(0.2)
        capsys.readouterr()
        assert train.main(args + ["--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert "Another run is writing" in err and f"pid {owner.pid}" in err, err
        owner.kill()
        owner.wait()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        (out / f".last.pt.tmp-{dead}").write_bytes(b"x" * 1000)
        (out / f".last.pt.tmp-{sleeper.pid}").write_bytes(b"x")
        assert train.main(args + ["--resume", "auto"]) == 0
        assert not (out / f".last.pt.tmp-{dead}").exists()
        assert (out / f".last.pt.tmp-{sleeper.pid}").exists()
        assert load(out / "last.pt")["global_step"] == 12
    finally:
        for p in (owner, sleeper):
            if p.poll() is None:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------------------- bad input

def test_bad_input_exits_2_before_any_work(data, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "out"
    cases = [(["--workers", "-1"], "--workers must be >= 0"),
             (["--lr", "-0.1"], "--lr must be >= 0"),
             (["--momentum", "-0.9"], "--momentum must be >= 0"),
             (["--weight-decay=-1e-4"], "--weight-decay must be >= 0"),
             (["--output", str(a_file)], "is an existing file"),
             (["--output", str(a_file / "sub")], "Cannot write into --output")]
    for extra, needle in cases:
        capsys.readouterr()
        assert train.main(BASE + ["--data", str(data), "--output", str(out)] + extra) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (extra, err)
        assert not out.exists(), extra  # refused before any work: not even the run folder
    # Not a bare `python train.py`: no demo; a missing --data is a setup error (not a surprise recipe).
    capsys.readouterr()
    assert train.main(["--model", "resnet18", "--dry-run", "--output", str(out)]) == 2
    assert "No data" in capsys.readouterr().err
    capsys.readouterr()  # no abbreviations: --fake is not --fake-data (but the message suggests it)
    assert train.main(["--fake", "--dry-run"]) == 2
    assert "unknown flag --fake (did you mean --fake-data?)" in capsys.readouterr().err


def test_only_a_bare_command_is_the_demo():
    below, given = train.parse_args([])
    assert given["recipe"] == "demo" and below["model"] == "resnet18"  # the demo recipe's values
    below, given = train.parse_args(["--model", "resnet18"])
    assert below["recipe"] is None and "recipe" not in given


# ----------------------------------------------------------------------------------------- flags

ALIASES = {"-b": "batch_size", "-j": "workers", "--output-dir": "output", "--model-ema": "ema",
           "--smoothing": "label_smoothing", "--reprob": "random_erase", "--label-smoothing": "label_smoothing"}


def test_aliases_map_to_the_flags_and_every_option_has_help():
    import eval as imnet_eval
    parser = train.build_parser()
    by_option = {s: a for a in parser._actions for s in a.option_strings}
    for alias, dest in ALIASES.items():
        assert alias in by_option and by_option[alias].dest == dest, alias
    below, given = train.parse_args(["-b", "12", "-j", "3", "--output-dir", "o", "--model-ema", "--smoothing", "0.1",
                                     "--reprob", "0.25", "--data", "d"])
    assert given == {"batch_size": 12, "workers": 3, "output": "o", "ema": True, "label_smoothing": 0.1,
                     "random_erase": 0.25, "data": "d"}
    for p in (parser, imnet_eval.build_parser()):
        for action in p._actions:
            assert action.help and action.help.strip(), action.option_strings
        text = p.format_help()
        assert "(default: None)" not in text
        for action in p._actions:  # each option's help shows at most one default
            assert p.formatter_class(prog="x")._get_help_string(action).count("(default:") <= 1, action.option_strings
    assert "(default: 90)" in " ".join(parser.format_help().split())  # defaults are shown


def test_bare_amp_means_bf16_on_gpus_that_have_it(monkeypatch, data, tmp_path, capsys):
    assert train.parse_args(["--amp", "--data", "d"])[1]["amp"] == "auto"
    assert dist.auto_amp(torch.device("cpu")) == "none"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dist.auto_amp(torch.device("cuda:0")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dist.auto_amp(torch.device("cuda:0")) == "fp16"
    capsys.readouterr()
    assert train.main(BASE + ["--data", str(data), "--output", str(tmp_path / "o"), "--amp", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "note: --amp on cpu: no autocast (fp32)" in text and "  amp                    none" in text


# ----------------------------------------------------------------------------------------- portability

def test_peak_memory_units_per_platform(monkeypatch):
    class Usage:
        ru_maxrss = 2**30
    fake = type("resource", (), {"RUSAGE_SELF": 0, "getrusage": staticmethod(lambda who: Usage)})
    monkeypatch.setattr(imnet_log, "resource", fake)
    monkeypatch.setattr(sys, "platform", "darwin")  # bytes
    assert imnet_log.peak_memory_gib(torch.device("cpu")) == 1.0
    monkeypatch.setattr(sys, "platform", "linux")  # kB
    assert imnet_log.peak_memory_gib(torch.device("cpu")) == 1024.0
    monkeypatch.setattr(imnet_log, "resource", None)  # Windows
    assert imnet_log.peak_memory_gib(torch.device("cpu")) != imnet_log.peak_memory_gib(torch.device("cpu"))  # NaN


def test_signals_and_devices_per_platform(monkeypatch):
    monkeypatch.delattr(signal, "SIGUSR1")
    assert imnet_signals._signals("SIGTERM", "SIGUSR1") == (signal.SIGTERM,)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "mps_available", lambda: True)
    assert dist.init("auto").device.type == "mps"
    monkeypatch.setattr(dist, "mps_available", lambda: False)
    assert dist.init("auto").device.type == "cpu"
    with pytest.raises(dist.DeviceError, match="MPS is not available"):
        dist.init("mps")


def test_runs_without_posix_extras(tmp_path):
    """As on Windows: no `resource`, no `fcntl`, no SIGUSR1, no signal masks. The package imports and a run
    completes (no lock, with a note; memory reported as nan)."""
    code = f"""
import signal, sys
del signal.SIGUSR1, signal.pthread_sigmask
sys.modules["resource"] = None
sys.modules["fcntl"] = None
sys.path.insert(0, {str(REPO)!r})
import train
sys.exit(train.main(["--fake-data", "--num-classes", "3", "--model", "resnet18", "--epochs", "1", "--batch-size",
                     "2", "--train-crop-size", "32", "--val-crop-size", "32", "--workers", "0",
                     "--output", {str(tmp_path / "o")!r}, "--log-every", "50"]))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no run-folder lock on this platform" in res.stdout
    assert "mem nan GiB" in res.stdout
    assert load(tmp_path / "o" / "last.pt")["global_step"] == 100


# ------------------------------------------------------------------------------------ odd folder entries

def test_fifo_loop_and_non_utf8_bad_name_are_reported_by_train_and_eval(tmp_path, capsys):
    """A FIFO named like an image and a symlink loop are skipped and reported (not opened: a FIFO would hang a
    worker), and an unreadable image whose name is not valid UTF-8 is named in the log without crashing it."""
    import os

    import eval as imnet_eval

    root = make_imagefolder(tmp_path / "data", num_classes=2, train_per_class=7, val_per_class=2, size=32)
    os.mkfifo(root / "train" / "class_0" / "pipe.jpg")
    (root / "val" / "class_1" / "loop").symlink_to(".")
    try:
        bad = os.path.join(os.fsencode(root / "train" / "class_1"), b"caf\xe9.jpg")
        with open(bad, "wb") as f:
            f.write(b"not a jpeg")
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    out = tmp_path / "run"
    # 14 images + the unreadable one, batch 5: one epoch reads every sample, the unreadable one included.
    code = train.main(["--model", "resnet18", "--epochs", "1", "--batch-size", "5", "--train-crop-size", "32",
                       "--val-crop-size", "32", "--lr", "0.01", "--workers", "0", "--max-bad-images", "2",
                       "--data", str(root), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "train/: 1 entries with image names were skipped" in captured.out and "pipe.jpg" in captured.out
    assert "val/: 1 entries with image names were skipped" in captured.out and "loop" in captured.out
    events = [json.loads(line) for line in open(out / "log.jsonl")]
    assert {e["split"] for e in events if e["event"] == "skipped_files"} == {"train", "val"}
    named = [e["path"] for e in events if e["event"] == "bad_image"]
    assert named == [os.path.join(str(root / "train" / "class_1"), "caf\\xe9.jpg")]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["train_images"] == 15  # the FIFO is not a sample

    code = imnet_eval.main(["--checkpoint", str(out / "last.pt"), "--data", str(root), "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 0 and "1 entries with image names were skipped" in captured.err and "images 4" in captured.out
