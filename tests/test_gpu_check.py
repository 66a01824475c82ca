"""bench/gpu_check.sh: the CUDA guard, every row of its table in the smoke mode, and its pieces against closed
forms (the training FLOPs, timm's log line, the sync count). No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO

ROWS = ["device", "jpegs", "peak bf16 datasheet", "peak bf16 matmul", "train synthetic 64", "train synthetic 32",
        "train jpeg 64", "train jpeg 32", "loader per core", "eval bench", "eval jpeg", "syncs per eval batch",
        "syncs per train step", "timm synthetic", "compile gain"]


def load_gpu_train():
    spec = importlib.util.spec_from_file_location("gpu_train", REPO / "bench" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(env, tmp_path, timeout):
    """The check in its own process group, killed whole (its train.py and eval.py too) when it overruns."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), **env}
    proc = subprocess.Popen(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard refuses only where CUDA is missing")
def test_guard_refuses_without_cuda(tmp_path):
    res = run_check({"IMNET_GPU_CHECK_SMOKE": "0"}, tmp_path, 60)
    assert res.returncode == 2, res.stderr
    assert "CUDA is not available" in res.stderr and "IMNET_GPU_CHECK_SMOKE=1" in res.stderr
    assert res.stdout == "" and not (tmp_path / "gpu_check.json").exists()


def test_smoke_prints_every_row(tmp_path):
    missing_timm = str(tmp_path / "no-timm" / "train.py")  # CI has no copy of timm's script: the row says so
    res = run_check({"IMNET_GPU_CHECK_SMOKE": "1", "IMNET_GPU_CHECK_TIMM": missing_timm}, tmp_path, 900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ROWS, res.stdout
    status = {r["row"]: r["status"] for r in rows}
    expected = {**{name: "ok" for name in ROWS}, "peak bf16 datasheet": "unknown", "timm synthetic": "skipped"}
    assert status == expected, [r for r in rows if r["status"] != expected[r["row"]]]
    for name in ROWS:  # the table on stdout has the same rows
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    values = {r["row"]: r["value"] for r in rows}
    assert values["jpegs"] == 10 * (8 + 4)
    assert all(values[name] > 0 for name in ROWS[3:11] + ["compile gain"])


def test_training_flops_resnet50_is_three_forward_passes():
    """ResNet-50 at 224: 4.1 GMACs forward (8.2 GFLOPs, the figure eval.py --bench counts); training adds the
    backward pass, twice the forward's work less the first convolution's input gradient."""
    from imnet.run.benchmark import forward_flops
    import torchvision
    train = load_gpu_train().training_flops("resnet50", 224)
    with torch.device("meta"):
        forward = forward_flops(torchvision.models.resnet50(), 224, torch.device("meta")) * 1e9
    assert forward == pytest.approx(8.18e9, rel=0.01)
    assert 2.95 < train / forward < 3.0


def test_timm_rate_is_the_median_window_after_the_first():
    text = "\n".join([  # timm's train.py log format ("Time: <last>s, <last rate>/s  (<avg>s, <avg rate>/s)")
        "INFO Train: 0 [   0/30 (  3%)]  Loss: 6.94 (6.94)  Time: 9.101s,   28.13/s  (9.101s,   28.13/s)  LR: 1e-01",
        "INFO Train: 0 [  10/30 ( 37%)]  Loss: 6.90 (6.92)  Time: 0.090s, 2844.44/s  (0.911s,  281.01/s)  LR: 1e-01",
        "Test: [   0/0]  Time: 0.019 (0.019)  Loss:   0.184 ( 0.184)",
        "INFO Train: 0 [  20/30 ( 70%)]  Loss: 6.88 (6.91)  Time: 0.080s, 3200.00/s  (0.500s,  512.00/s)  LR: 1e-01",
        "INFO Train: 0 [  29/30 (100%)]  Loss: 6.87 (6.90)  Time: 0.085s, 3011.76/s  (0.400s,  640.00/s)  LR: 1e-01"])
    assert load_gpu_train().timm_img_per_s(text) == 3011.76
    with pytest.raises(RuntimeError):
        load_gpu_train().timm_img_per_s("no training line")


def test_sync_count_counts_each_warning_and_keeps_the_exit_code(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys, warnings\n"
                      "for _ in range(3):\n"
                      "    warnings.warn('called a synchronizing CUDA operation')\n"
                      "warnings.warn('an unrelated warning')\n"
                      "sys.exit(int(sys.argv[1]))\n")
    out = tmp_path / "syncs.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_train.py"), "syncs", str(out), str(script), "3"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    counted = json.loads(out.read_text())
    assert counted["syncs"] == 3 and list(counted["where"].values()) == [3]
    assert list(counted["where"])[0].endswith("script.py:3")


def test_datasheet_peak_matches_the_most_specific_name(monkeypatch):
    peak = load_gpu_train().datasheet_peak
    monkeypatch.delenv("IMNET_PEAK_TFLOPS", raising=False)
    assert peak("NVIDIA H100 80GB HBM3") == 989.0 and peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0 and peak("Tesla T4") is None
    monkeypatch.setenv("IMNET_PEAK_TFLOPS", "123")
    assert peak("Tesla T4") == 123.0
