"""Two processes that must agree before they train (the CPU, gloo): what the run resumes (rank 0 decides; a rank
that does not see --output gets the checkpoint from rank 0) and a refusal (it stops every rank, exit 2, with the
same paragraph and no traceback), under torchrun and with the env:// variables alone, as srun starts processes.
Every launch runs under a time limit: a hang fails the test instead of blocking the suite."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_imagefolder
from imnet.run.checkpoint import content_digest
from test_distributed import env, free_port

# 48 training images: 6 steps of a global batch of 8 (2 processes x 4, or 1 x 8).
RUN = ["--model", "mobilenet_v3_small", "--epochs", "1", "--train-crop-size", "32", "--val-crop-size", "32",
       "--val-resize-size", "36", "--lr", "0.01", "--warmup-epochs", "0", "--log-every", "1", "--seed", "1",
       "--workers", "0", "--save-every-minutes", "0"]
LIMIT = 300  # seconds for a launch, startup included (2 shared cores); a hang is killed and fails


def launch(procs: list[tuple[list[str], Path, dict]]) -> list[tuple[int, str, str]]:
    """Start every (command, cwd, extra env) at once -> (exit code, stdout, stderr) of each; all killed on a hang."""
    running = [subprocess.Popen(cmd, cwd=cwd, env={**env(), **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True) for cmd, cwd, extra in procs]
    try:
        outs = [p.communicate(timeout=LIMIT) for p in running]
    except subprocess.TimeoutExpired:
        for p in running:  # torchrun's workers too: each launch is a process group of its own
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"the processes did not end within {LIMIT} s: " + " | ".join(p.communicate()[1][-800:]
                                                                                for p in running))
    return [(p.returncode, out, err) for p, (out, err) in zip(running, outs)]


def torchrun_nodes(*args: str, cwds: list[Path]) -> list[tuple[int, str, str]]:
    """One torchrun per 'node' (one process each), meeting at 127.0.0.1, each in its own working folder."""
    port = str(free_port())
    return launch([([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(cwds)), "--node_rank",
                     str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                     str(REPO / "train.py"), *args], cwd, {}) for node, cwd in enumerate(cwds)])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("ranks_data"), num_classes=3, train_per_class=16,
                            val_per_class=5)


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> Path:
    """A run folder stopped at step 3 of 6 (1 process x 8; resumed below by 2 x 4, the same global batch)."""
    out = tmp_path_factory.mktemp("stopped")
    [(rc, _, err)] = launch([([sys.executable, str(REPO / "train.py"), *RUN, "--data", str(data), "--batch-size",
                               "8", "--output", str(out), "--stop-at-step", "3"], REPO, {})])
    assert rc == 0, err[-3000:]
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_rank_that_does_not_see_the_run_folder_resumes_rank_0s_checkpoint(data, stopped, tmp_path):
    """Node 1 has its own disk: the relative --output names an empty folder there. It restores rank 0's last.pt
    (sent by rank 0) before DDP wraps the model, so the run equals the resume where both ranks see the folder,
    bitwise; there, each rank reads its own view (nothing is sent)."""
    args = [*RUN, "--data", str(data), "--batch-size", "4", "--output", "run", "--resume", "auto"]
    shared, node0, node1 = tmp_path / "shared", tmp_path / "node0", tmp_path / "node1"
    for folder in (shared, node0, node1):
        folder.mkdir()
    for folder in (shared, node0):
        shutil.copytree(stopped, folder / "run")
    results = {"one view": torchrun_nodes(*args, cwds=[shared, shared]),
               "two views": torchrun_nodes(*args, cwds=[node0, node1])}
    for name, ranks in results.items():
        for rank, (rc, _, err) in enumerate(ranks):
            assert rc == 0, (name, rank, err[-3000:])
    assert "rank 0 sent it" not in results["one view"][0][1]
    assert "1 of 2 processes do not see run/last.pt" in results["two views"][0][1]
    assert not (node1 / "run" / "last.pt").exists()
    a, b = load(shared / "run" / "last.pt"), load(node0 / "run" / "last.pt")
    assert a["global_step"] == b["global_step"] == 6
    assert a["run_id"] == b["run_id"] == load(stopped / "last.pt")["run_id"]
    for key in ("model", "optimizer", "meter", "bad_images"):
        assert content_digest({key: a[key]}) == content_digest({key: b[key]}), key
    assert [row["train_loss"] for row in a["history"]] == [row["train_loss"] for row in b["history"]]
    assert a["history"][-1]["val_top1"] == b["history"][-1]["val_top1"]


def hold_lock(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"pid {os.getpid()} on host the-test\n")
    fh.flush()
    return fh


# case -> (extra flags, the folder's setup, words of the paragraph)
REFUSALS = {
    "the folder holds a run": ([], "copy", "already holds a run (last.pt)"),
    "the lock is held": (["--resume", "auto"], "lock", "Another run is writing into"),
    "the checkpoint does not fit": (["--resume", "auto", "--model", "resnet18"], "copy",
                                    "model mobilenet_v3_small vs resnet18"),
}


@pytest.mark.parametrize("launcher", ["torchrun", "env"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_stops_every_rank_with_one_paragraph(case, launcher, data, stopped, tmp_path):
    """Rank 0 refuses (only it claims the folder) and tells every rank before any collective that could wait:
    every process exits 2, its stderr holds the same paragraph and no traceback."""
    extra, setup, words = REFUSALS[case]
    out = tmp_path / "run"
    lock = hold_lock(out) if setup == "lock" else shutil.copytree(stopped, out)
    args = [str(REPO / "train.py"), *RUN, *extra, "--data", str(data), "--batch-size", "4", "--output", str(out)]
    if launcher == "env":
        port = str(free_port())
        ranks = launch([([sys.executable, *args], REPO, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                                         "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
                        for r in (0, 1)])
        codes, errs = [rc for rc, _, _ in ranks], [err for _, _, err in ranks]
    else:
        logs = tmp_path / "logs"
        [(_, _, agent)] = launch([([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                                    "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                                    str(free_port()), "--log-dir", str(logs), "--redirects", "2", *args], REPO, {})])
        found = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", agent))
        codes = [int(found.get(str(r), -1)) for r in (0, 1)]  # the agent's summary of its failed ranks
        errs = [next(logs.glob(f"*/attempt_0/{r}/stderr.log")).read_text() for r in (0, 1)]
    if setup == "lock":
        lock.close()
    assert codes == [2, 2], (codes, errs)
    paragraphs = [[line for line in err.splitlines() if line.startswith("error: ")] for err in errs]
    assert paragraphs[0] == paragraphs[1] and len(paragraphs[0]) == 1, errs
    assert words in paragraphs[0][0], paragraphs[0]
    assert all("Traceback" not in err for err in errs), errs
