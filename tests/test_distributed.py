import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from ifss.distributed import claim_free_gpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(synth_root, tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(worker), str(out), str(dump),
           *tiny_overrides(synth_root, method="FT", **{"train.iterations": 4})]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:  # never leave the workers behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = list(tmp_path.rglob("metrics.json"))
    assert metrics == [out / "metrics.json"]
    record = json.loads(metrics[0].read_text())
    assert record["world_size"] == 2 and record["iterations"] == 4


def test_gpu_claim_skips_held_locks(tmp_path):
    import fcntl

    held = open(tmp_path / "ifss-gpu-0.lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert claim_free_gpu(2, lock_dir=tmp_path) == 1
    held.close()
    assert claim_free_gpu(2, lock_dir=tmp_path) == 0


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda0"])
def test_bad_device_spec_is_named(spec):
    from ifss.distributed import select_device
    from ifss.errors import IfssError

    with pytest.raises(IfssError, match=f"train.device='{spec}' is not a device"):
        select_device(spec)


def test_auto_is_cpu_without_cuda():
    from ifss.distributed import select_device

    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
    else:
        assert select_device("auto").type == "cuda"
