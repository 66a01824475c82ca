"""Faults of real clusters and habits of real users: kills between checkpoint writes, failing evaluations, two
runs in one folder, leftovers of kill -9, bad input, the flags people bring from timm and torchvision, and the
platforms without POSIX extras. (Process-group SIGTERM with workers is in test_train.py, next to its reference
run.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import REPO, make_imagefolder, signal_at
from imnet.run import checkpoint as ckpt_io
from imnet.run import dist, flags
from imnet.run import log as imnet_log
from imnet.run import signals as imnet_signals

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
    """Record every checkpoint write by name, a hard link (last.pt made a second name of best.pt) included; with
    kill_after=k, 'kill' the run right after the k-th write."""
    real_save, real_link, names = ckpt_io.save_atomic, train.link_file, []

    def wrote(path):
        names.append(Path(path).name)
        if len(names) == kill_after:
            raise Killed

    def save_atomic(obj, path):
        real_save(obj, path)
        wrote(path)

    def link_file(src, dst):
        real_link(src, dst)
        wrote(dst)
    monkeypatch.setattr(ckpt_io, "save_atomic", save_atomic)
    monkeypatch.setattr(train, "link_file", link_file)
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


def test_last_is_a_hard_link_of_best_when_its_epoch_is_the_best(reference, data, tmp_path):
    """An epoch that improves the best leaves best.pt and last.pt as one file (one copy on the disk); the next
    last.pt is a new file, and best.pt keeps the best epoch's bytes. Epoch 1 of a 3-epoch run, LR 0, improves
    on 'no evaluation yet'; epochs 2 and 3 (the same weights, the same top-1) do not."""
    ref_out, _ = reference
    linked = os.path.samefile(ref_out / "best.pt", ref_out / "last.pt")
    assert linked == (load(ref_out / "best.pt")["epoch"] == load(ref_out / "last.pt")["epoch"])
    flat = BASE + ["--data", str(data), "--lr", "0", "--warmup-epochs", "0"]
    one, three = tmp_path / "one", tmp_path / "three"
    assert train.main(flat + ["--output", str(one), "--epochs", "1"]) == 0
    assert os.path.samefile(one / "best.pt", one / "last.pt") and (one / "best.pt").stat().st_nlink == 2
    assert train.main(flat + ["--output", str(three), "--epochs", "3"]) == 0
    assert not os.path.samefile(three / "best.pt", three / "last.pt") and (three / "best.pt").stat().st_nlink == 1
    best, last = load(three / "best.pt"), load(three / "last.pt")
    assert (best["epoch"], last["epoch"]) == (1, 3) and same_weights(best, last)


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
    assert os.path.samefile(out / "best.pt", out / "last.pt")
    assert load(out / "best.pt")["best_top1"] == newest
    assert "best_repaired" in [json.loads(line)["event"] for line in open(out / "log.jsonl")]


def test_a_failing_evaluation_keeps_the_epoch(tmp_path):
    """Every validation image unreadable by the time of the evaluation (the set checked at setup is skipped
    here: a file system that fails during the run), read by 2 worker processes: the end-of-epoch evaluation
    fails with one paragraph (no worker traceback), exit 2 (the process exits: no hang on its workers), and the
    epoch's training is in last.pt, marked pending. With the images repaired, --resume auto evaluates that epoch
    and finishes the run."""
    root = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=2)
    originals = {p: p.read_bytes() for p in (root / "val").rglob("*.JPEG")}
    for p in originals:
        p.write_bytes(b"not a JPEG")
    out = tmp_path / "run"
    args = BASE + ["--epochs", "1", "--warmup-epochs", "0", "--workers", "2", "--data", str(root),
                   "--output", str(out)]
    # As a process of its own: it must also exit (workers that ignore SIGTERM must not hang the interpreter's exit).
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import train; from imnet.run import data; "
              f"data.check_readable = lambda *a, **k: []; sys.exit(train.main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True,
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
    below, given = flags.parse_args([])
    assert given["recipe"] == "demo" and below["model"] == "resnet18"  # the demo recipe's values
    below, given = flags.parse_args(["--model", "resnet18"])
    assert below["recipe"] is None and "recipe" not in given


# ----------------------------------------------------------------------------------------- flags

ALIASES = {"-b": "batch_size", "-j": "workers", "--output-dir": "output", "--model-ema": "ema",
           "--smoothing": "label_smoothing", "--reprob": "random_erase", "--label-smoothing": "label_smoothing"}


def test_aliases_map_to_the_flags_and_every_option_has_help():
    import eval as imnet_eval
    parser = flags.build_parser()
    by_option = {s: a for a in parser._actions for s in a.option_strings}
    for alias, dest in ALIASES.items():
        assert alias in by_option and by_option[alias].dest == dest, alias
    below, given = flags.parse_args(["-b", "12", "-j", "3", "--output-dir", "o", "--model-ema", "--smoothing", "0.1",
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
    assert flags.parse_args(["--amp", "--data", "d"])[1]["amp"] == "auto"
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


# ------------------------------------------------------------------------ a folder continues only its own run
# A lighter run for the cases below: 3 steps per epoch, 6 validation images, 12 MB checkpoints.
LIGHT = ["--model", "mobilenet_v3_small", "--epochs", "2", "--batch-size", "8", "--train-crop-size", "32",
         "--val-crop-size", "32", "--val-resize-size", "36", "--lr", "0.01", "--warmup-epochs", "0",
         "--log-every", "1", "--quiet", "--seed", "1", "--workers", "0", "--save-every-minutes", "0"]


@pytest.fixture(scope="module")
def light_data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("light_data"), num_classes=3, train_per_class=8,
                            val_per_class=2, size=32)


@pytest.fixture(scope="module")
def light_run(light_data, tmp_path_factory) -> Path:
    """A finished 2-epoch run folder (read it, or copy it before writing)."""
    out = tmp_path_factory.mktemp("light_run")
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out)]) == 0
    return out


def files(folder: Path) -> dict:
    """{name: bytes} of a run folder, its lock aside."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def one_paragraph(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return " ".join(err.split())


def test_a_folder_that_holds_a_run_only_continues_that_run(light_data, light_run, tmp_path, capsys):
    """`--resume A/last.pt --output B` where B holds another run is refused, B untouched byte for byte
    (config.json and log.jsonl included); into an empty folder it forks (a new run id that remembers A's); a
    second fork into that folder is refused (it would throw its progress away) while --resume auto continues it;
    B = A continues A, and so does a backup copy of a folder's own checkpoint; the fork's checkpoint does not
    continue in A. (--stop-at-step keeps each run to a step or two.)"""
    a, b, c, backup = (tmp_path / name for name in ("a", "b", "c", "backup"))
    shutil.copytree(light_run, a)
    common = LIGHT + ["--data", str(light_data), "--epochs", "3"]
    assert train.main(common + ["--seed", "2", "--stop-at-step", "1", "--output", str(b)]) == 0
    a_files, b_files = files(a), files(b)
    a_id = load(a / "last.pt")["run_id"]

    capsys.readouterr()
    assert train.main(common + ["--resume", str(a / "last.pt"), "--output", str(b)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"{b} holds another run" in err and f"--output {a}" in err and "log.jsonl" in err
    assert files(b) == b_files

    assert train.main(common + ["--resume", str(a / "last.pt"), "--output", str(c), "--stop-at-step", "7"]) == 0
    fork = load(c / "last.pt")
    assert fork["forked_from"] == a_id and fork["run_id"] not in ("", a_id) and fork["global_step"] == 7
    assert files(a) == a_files
    assert "fork" in [json.loads(line)["event"] for line in open(c / "log.jsonl")]
    c_files = files(c)
    assert train.main(common + ["--resume", str(a / "last.pt"), "--output", str(c)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert "already holds a continuation" in err and f"--resume auto --output {c}" in err
    assert files(c) == c_files
    assert train.main(common + ["--resume", "auto", "--output", str(c), "--stop-at-step", "8"]) == 0
    assert load(c / "last.pt")["run_id"] == fork["run_id"] and load(c / "last.pt")["global_step"] == 8

    assert train.main(common + ["--resume", str(a / "last.pt"), "--output", str(a), "--epochs", "2"]) == 0  # B = A
    backup.mkdir()
    shutil.copy(b / "last.pt", backup / "last.pt")
    assert train.main(common + ["--seed", "2", "--resume", str(backup / "last.pt"), "--output", str(b),
                                "--stop-at-step", "2"]) == 0
    assert load(b / "last.pt")["run_id"] == load(backup / "last.pt")["run_id"]
    assert load(b / "last.pt")["global_step"] == 2
    capsys.readouterr()
    assert train.main(common + ["--resume", str(c / "last.pt"), "--output", str(a)]) == 2
    assert f"{a} holds another run" in one_paragraph(capsys.readouterr().err)
    assert load(a / "last.pt")["run_id"] == a_id


def test_a_zero_byte_best_is_set_aside_and_rebuilt_from_last(light_run, light_data, tmp_path, capsys):
    """A 0-byte best.pt next to a good last.pt does not block --resume auto: it is moved to best.pt.unreadable
    (with a note) and rebuilt from last.pt when last.pt's epoch is the run's best; when that epoch is not the
    best, best.pt stays absent until an epoch beats it, and the note says so."""
    for own_epoch_best in (True, False):
        out = tmp_path / f"run_{own_epoch_best}"
        shutil.copytree(light_run, out)
        state = load(out / "last.pt")
        newest = state["history"][-1]["val_top1"]
        state["best_top1"] = newest if own_epoch_best else newest + 1.0
        state["checksum"] = ckpt_io.content_digest(state)
        torch.save(state, out / "last.pt")
        (out / "best.pt").write_bytes(b"")
        assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out), "--resume", "auto"]) == 0
        assert (out / "best.pt.unreadable").stat().st_size == 0
        events = [json.loads(line) for line in open(out / "log.jsonl")]
        note = next(e for e in events if e["event"] == "best_unreadable")
        assert note["rebuilt"] is own_epoch_best
        if own_epoch_best:
            assert (out / "best.pt").read_bytes() == (out / "last.pt").read_bytes()
        else:
            assert not (out / "best.pt").exists()
    capsys.readouterr()
    (out / "best.pt").write_bytes(b"")  # a second one is set aside beside the first, which is kept
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out), "--resume", "auto"]) == 0
    assert (out / "best.pt.unreadable").exists() and (out / "best.pt.unreadable.2").exists()


# ------------------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("presses", ["once", "twice"])
def test_ctrl_c_to_the_process_group_saves_and_says_how_to_continue(presses, light_run, light_data, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group, 2 DataLoader workers included
    (tests/signal_at.py signals the group of train.py, started with setsid). Once, as epoch 2 starts (its workers
    decoding the first batches, which must survive it): the step is finished, last.pt written, exit 130, no
    traceback, the log says how to continue, and the resumed run ends bitwise equal to the uninterrupted one.
    Twice (after step 4, then during the save that the first asked for): the run stops at once, exit 130, and
    the previous last.pt (epoch 1's) is intact."""
    out = tmp_path / "run"
    args = [a for a in LIGHT if a != "--quiet"] + ["--data", str(light_data), "--output", str(out)]
    args[args.index("--workers") + 1] = "2"
    moment = "epoch:2:SIGINT" if presses == "once" else "step:4:SIGINT,save:4:SIGINT"  # saves 1-3: epoch 1's
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run([*signal_at(moment), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, start_new_session=True)
    assert res.returncode == 130, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "DataLoader worker" not in res.stderr, res.stderr
    assert not list(out.glob(".*.tmp-*"))
    if presses == "once":
        assert f"stopped by Ctrl-C at epoch 2 step 1; last.pt written. Continue with --resume auto --output {out}" \
            in res.stdout
        assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["event"] == "preempted"
        assert load(out / "last.pt")["global_step"] == 4
        assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out), "--resume", "auto"]) == 0
        assert same_weights(load(out / "last.pt"), load(light_run / "last.pt"))
    else:
        assert "stopped at once by a second Ctrl-C" in res.stderr
        state = ckpt_io.read_state(out / "last.pt")  # whole, checksum verified
        assert (state["global_step"], state["epoch"]) == (3, 1)


def test_two_ctrl_c_while_starting_exit_at_once(tmp_path):
    """Ctrl-C twice while train.py is still starting (before torch is imported): exit 130 at once, no traceback,
    nothing created."""
    out = tmp_path / "run"
    res = subprocess.run([*signal_at("startup:1:SIGINT,startup:1:SIGINT"), "--fake-data", "--output", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert res.returncode == 130 and "stopped by a second Ctrl-C" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_training_workers_ignore_every_stop_signal():
    """A forked worker inherits the main process's handlers (a first SIGINT only sets its copy's flag), but a
    spawned one (macOS, Windows) starts with Python's own, where Ctrl-C raises KeyboardInterrupt and the worker
    exits: the worker init must ignore SIGINT as well as the schedulers' signals, whatever it inherited."""
    code = ("import signal; from imnet.run import data, signals; "
            "[signal.signal(s, signal.SIG_DFL) for s in signals.PREEMPTION_SIGNALS]; "
            "signal.signal(signal.SIGINT, signal.default_int_handler); data._preemptible_worker_init(0); "
            "print(sorted(s.name for s in signals.PREEMPTION_SIGNALS if signal.getsignal(s) == signal.SIG_IGN))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["['SIGINT',", "'SIGTERM',", "'SIGUSR1']"], res.stderr


def test_a_signal_handler_stops_at_the_second_ctrl_c_only(monkeypatch):
    """The rule itself: SIGTERM and a first SIGINT only ask for the stop; a second SIGINT raises KeyboardInterrupt,
    except under torchrun (which forwards the terminal's Ctrl-C, so each rank sees every press twice); the exit
    code is 130 once Ctrl-C was pressed, 0 for a scheduler's signals alone."""
    p = imnet_signals.PreemptionSignals()
    p._handler(signal.SIGTERM, None)
    assert p.requested and p.exit_code == 0 and p.name == "SIGTERM"
    p._handler(signal.SIGINT, None)
    assert p.exit_code == imnet_signals.INTERRUPTED == 130 and p.name == "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        p._handler(signal.SIGINT, None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    p._handler(signal.SIGINT, None)
    assert p.received.count(signal.SIGINT) == 2
    assert signal.SIGINT in imnet_signals.PREEMPTION_SIGNALS  # what the training loader's workers ignore


# ------------------------------------------------------------------------------------------ a full disk
def tmpfs_available() -> bool:
    """A small tmpfs in a mount namespace of our own (unshare: no root needed where user namespaces are on)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not tmpfs_available(), reason="no mount namespace with tmpfs here (the simulated ENOSPC "
                    "test below covers the writer)")
def test_a_full_disk_while_saving_names_the_file_and_keeps_the_previous_checkpoint(light_run, light_data, tmp_path):
    """A real full disk: the run folder on a tmpfs of 2.5 checkpoints. Epoch 1 fits (its best.pt and last.pt are
    one file), and so does epoch 2's last.pt (evaluation pending) beside it; epoch 2 does not improve the best,
    so last.pt is written again after its evaluation, and that third copy does not fit. One paragraph, exit 2:
    which file, how much was written and needed, that the previous last.pt is intact, where --resume auto
    continues. No temporary file is left, last.pt loads (checksum verified) and the resumed run (with room)
    ends bitwise equal to the uninterrupted."""
    out, kept = tmp_path / "run", tmp_path / "kept"
    out.mkdir()
    kept.mkdir()
    size_kib = int(2.5 * (light_run / "last.pt").stat().st_size) // 1024
    args = LIGHT + ["--data", str(light_data), "--output", str(out)]
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "$1" || exit 99; shift 2; "$@"; rc=$?; '
              f'cp -a {out}/. {kept}/; exit $rc')
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(out), "-", sys.executable,
                          str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    err = one_paragraph(res.stderr)
    assert f"Cannot write {out / 'last.pt'}: the disk is full" in err
    assert "MB of it were written; it needs about 12." in err and "The previous last.pt is intact" in err
    assert f"--resume auto --output {out} then continues from last.pt (epoch 3, step 0)" in err
    assert not list(kept.glob(".*.tmp-*"))
    state = ckpt_io.read_state(kept / "last.pt")
    assert (state["epoch"], state["global_step"], state["pending_eval"]) == (2, 6, True)
    assert ckpt_io.read_state(kept / "best.pt")["epoch"] == 1
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(kept), "--resume", "auto"]) == 0
    assert same_weights(load(kept / "last.pt"), load(light_run / "last.pt"))


def full_disk_after(monkeypatch, limit: int, names: tuple):
    """Simulate a full disk in the writer: a temporary file of one of ``names`` takes at most ``limit`` bytes,
    then every write fails with ENOSPC, as the kernel's would."""
    from imnet.run import atomic
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if any(Path(path).name.startswith(f".{n}.tmp-") for n in names) else f
    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def test_a_simulated_full_disk_in_the_writer(light_data, tmp_path, monkeypatch, capsys):
    """ENOSPC from the writer, wherever a real tmpfs cannot be mounted. write_atomic: a NoSpace paragraph, the
    target untouched, no temporary left; torch.save's own wrapping of the error (a RuntimeError about the zip
    position) is seen through. A run whose best.pt cannot be written stops with exit 2, saying nothing was
    replaced, its last.pt (the epoch, evaluation pending) intact."""
    from imnet.run import atomic
    target = tmp_path / "x.pt"
    target.write_bytes(b"old")
    full_disk_after(monkeypatch, 1000, ("x.pt",))
    with pytest.raises(atomic.NoSpace, match="the disk is full") as e:
        ckpt_io.save_atomic({"w": torch.zeros(10_000)}, target)
    assert "needs about 40.0 kB" in str(e.value) and "The previous x.pt is intact" in str(e.value)
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".*"))

    out = tmp_path / "run"
    full_disk_after(monkeypatch, 1_000_000, ("best.pt",))
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"Cannot write {out / 'best.pt'}" in err and "No earlier best.pt was there; nothing was replaced" in err
    assert "of it were written; it needs about 12." in err
    state = ckpt_io.read_state(out / "last.pt")
    assert state["pending_eval"] and state["global_step"] == 3 and not (out / "best.pt").exists()


# ------------------------------------------------------------------ checkpoints whose contents do not fit
def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` with ``edit(state)`` applied, its checksum recomputed (as if its
    pieces had been assembled by a program): only its contents are wrong."""
    state = load(src)
    edit(state)
    state["checksum"] = ckpt_io.content_digest(state)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


def resnet34_under_resnet18(state):
    import torchvision
    state["model"] = torchvision.models.resnet34(num_classes=3).state_dict()
    state["config"]["model"] = "resnet18"


CONTENT_CASES = {
    "a missing model key": (lambda s: s["model"].pop("classifier.3.bias"),
                            "its model weights are not those of mobilenet_v3_small, the model its config names "
                            "(missing tensors 1 (classifier.3.bias))"),
    "another architecture's weights": (resnet34_under_resnet18,
                                       "its model weights are not those of resnet18, the model its config names "
                                       "(unexpected tensors"),
    "no optimizer state": (lambda s: s.update(optimizer={}), "its optimizer state cannot be restored into sgd"),
    "no RNG state": (lambda s: s.pop("rng"), "its RNG state cannot be restored (KeyError: 'rng')"),
    "a malformed RNG state": (lambda s: s.update(rng=[{"python": 1}]), "its RNG state cannot be restored"),
    "a non-integer epoch": (lambda s: s.update(epoch=1.5), "its epoch is 1.5, not a whole number >= 0"),
    "a step beyond the epoch": (lambda s: s.update(step_in_epoch=7, epoch=1),
                                "it is at step 7 of epoch 2, beyond the 3 steps an epoch of this run has"),
}


def test_a_checkpoint_whose_contents_do_not_fit_is_one_paragraph(light_run, light_data, tmp_path, capsys):
    """Top-level entries all present, contents wrong (the checksum recomputed, so only the contents speak): every
    case is refused in one paragraph, exit 2, before anything is written into the folder; eval.py refuses another
    architecture's weights with the very same sentence."""
    import eval as imnet_eval
    for case, (edit, needle) in CONTENT_CASES.items():
        out = tmp_path / case.replace(" ", "_").replace("'", "")
        edited(light_run / "last.pt", out / "last.pt", edit)
        before = files(out)
        model = ["--model", "resnet18"] if case == "another architecture's weights" else []
        capsys.readouterr()
        assert train.main(LIGHT + model + ["--epochs", "3", "--data", str(light_data), "--output", str(out),
                                           "--resume", "auto"]) == 2, case
        err = one_paragraph(capsys.readouterr().err)
        assert needle in err and "use another checkpoint of the run" in err, (case, err)
        assert files(out) == before, case  # config.json is written only once the checkpoint is accepted
        if case in ("a missing model key", "another architecture's weights"):
            assert imnet_eval.main(["--checkpoint", str(out / "last.pt"), "--data", str(light_data),
                                    "--workers", "0"]) == 2
            eval_err = " ".join(capsys.readouterr().err.split())
            assert needle in eval_err and "Traceback" not in eval_err, eval_err


def test_a_world_size_change_is_named_with_the_global_batch(tmp_path):
    """Resuming a 2-process run (batch 2 each) on 1 process: batch 4 keeps the global batch, and the note says
    that the number of processes changed, not only "batch_size: 2 -> 4"; on 4 processes with batch 2 the refusal
    names both splits and the flag that keeps the global batch."""
    from imnet.run import config as imnet_config
    below, given = flags.parse_args(["--fake-data", "--batch-size", "2", "--output", str(tmp_path)])
    then = imnet_config.resolve(below, given, world_size=2)
    state = {"config": then.to_dict(), "classes": ["a", "b"]}
    below, given = flags.parse_args(["--fake-data", "--batch-size", "4", "--output", str(tmp_path)])
    notes = ckpt_io.check_compatible(state, imnet_config.resolve(below, given, world_size=1), ["a", "b"], "last.pt")
    assert notes[0].startswith("processes: 2 -> 1, global batch 4 kept (2 processes x batch 2 x accum 1 -> 1 "
                               "process x batch 4 x accum 1"), notes
    below, given = flags.parse_args(["--fake-data", "--batch-size", "2", "--output", str(tmp_path)])
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.check_compatible(state, imnet_config.resolve(below, given, world_size=4), ["a", "b"], "last.pt")
    assert ("global batch 4 (2 processes x batch 2 x accum 1) vs 8 (4 processes x batch 2 x accum 1): "
            "--global-batch 4 keeps it") in str(e.value)


# ------------------------------------------------------------------------------------------ setup checks
def test_an_unreadable_validation_set_stops_before_training(tmp_path, capsys):
    """Every validation file unreadable: exit 2 at setup, one paragraph, nothing trained (no checkpoint, no step
    in the log). A few unreadable ones among readable files are named for a warning instead (data.check_readable
    decodes 16 files spread over the set)."""
    from imnet.run import data as imnet_data
    root = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=2, size=32)
    val = sorted((root / "val").rglob("*.JPEG"))
    for p in val:
        p.write_bytes(b"not a JPEG")
    out = tmp_path / "run"
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(root), "--output", str(out)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert "The validation set" in err and "looks unreadable: 6 of the 6 files checked" in err
    assert not (out / "last.pt").exists() and not (out / "log.jsonl").exists()

    big = make_imagefolder(tmp_path / "big", num_classes=2, train_per_class=1, val_per_class=20, size=16)
    bad = sorted((big / "val").rglob("*.JPEG"))[0]
    bad.write_bytes(b"")
    ds = imnet_data.ImageFolder(big / "val", ["class_0", "class_1"], transform=None)
    assert imnet_data.check_readable(ds, "validation") == [(str(bad), "empty file")]  # index 0 is always checked


def test_workers_are_capped_by_the_cores_with_a_note(light_data, tmp_path, monkeypatch, capsys):
    """--workers 1000 is refused by the flag's static bound (256); within it, more than 4 per core of this
    machine (shared by a node's processes) is lowered to that, with a note, in the run's Config."""
    from imnet.run import data as imnet_data
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(light_data), "--workers", "1000", "--dry-run"]) == 2
    assert "--workers must be >= 0 and <= 256 (got 1000)" in capsys.readouterr().err
    many = min(256, 4 * cores + 1)
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(tmp_path / "o"), "--dry-run",
                               "--workers", str(many)]) == 0
    out = capsys.readouterr().out
    assert f"note: --workers {many} is more than 4 per CPU core ({cores} cores here): using {4 * cores}" in out
    assert f"workers                {4 * cores}\n" in out
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert imnet_data.cap_workers(9) == (8, "--workers 9 is more than 4 per CPU core (8 cores here, shared by 4 "
                                             "processes): using 8")
    assert imnet_data.cap_workers(8) == (8, None) and imnet_data.cap_workers(0) == (0, None)


def test_a_nan_before_any_checkpoint_does_not_suggest_resuming(light_data, tmp_path, capsys):
    """The NaN message names --resume OUTPUT/last.pt only when that file exists (test_train.py covers that
    case); before the first checkpoint it says there is nothing to resume."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert train.main(LIGHT + ["--data", str(light_data), "--output", str(out), "--lr", "1e30"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "NaN or infinite at optimizer step" in err and "no checkpoint was written yet" in err
    assert "--resume" not in err and not (out / "last.pt").exists()
