"""Two processes started directly with the env:// variables (as srun does), when gloo cannot connect."""

import os
import socket
import subprocess
import sys

from conftest import REPO


def test_an_unusable_gloo_interface_stops_every_rank_naming_the_variable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "GLOO_SOCKET_IFNAME": "imnet-no-such-if"}
    argv = [sys.executable, "train.py", "--fake-data", "--dry-run", "--model", "resnet18", "--num-classes", "3",
            "--device", "cpu", "--output", str(tmp_path / "run")]
    procs = [subprocess.Popen(argv, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert not any("Traceback" in out + err for out, err in outs), outs
    err = outs[0][1].strip()
    assert err.count("\n") == 0 and "GLOO_SOCKET_IFNAME" in err and "imnet-no-such-if" in err, err
