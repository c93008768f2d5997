"""Devices and processes: one device without any launcher, DDP when started by torchrun.

Snakemake counts GPUs but does not assign them, so with `train.device=auto` a job claims a free
GPU itself through a lock file per GPU, and pins itself to it with CUDA_VISIBLE_DEVICES before
CUDA starts. A CUDA_VISIBLE_DEVICES set by the user or by SLURM is honoured as is.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ifss.errors import IfssError

log = logging.getLogger("ifss")
_held_locks: list = []  # open lock files live as long as the process


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp: str = "none"  # bf16 | fp16 | none (CUDA only)
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        enabled = self.device.type == "cuda" and self.amp in ("bf16", "fp16")
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)


def claim_free_gpu(count: int, lock_dir: str | Path | None = None, wait_s: float = 5.0) -> int:
    """Index of a GPU no other ifss job holds, waiting while all are taken."""
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    announced = False
    while True:
        for index in range(count):
            handle = open(lock_dir / f"ifss-gpu-{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held_locks.append(handle)
            return index
        if not announced:
            log.info("all %d GPUs are held by other ifss jobs; waiting for one", count)
            announced = True
        time.sleep(wait_s)


def select_device(spec: str) -> torch.device:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise IfssError(f"train.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if spec == "auto":
            return torch.device("cpu")
        raise IfssError(f"train.device={spec} but no CUDA device is available; use train.device=auto")
    if spec.startswith("cuda:"):
        return torch.device(spec)
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None:
        return torch.device("cuda", int(local_rank))
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        index = claim_free_gpu(torch.cuda.device_count())
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        log.info("claimed GPU %d", index)
    return torch.device("cuda", 0)


def setup(device_spec: str, amp: str, channels_last: bool) -> Runtime:
    """Pick the device; join the process group when launched by torchrun."""
    if amp not in ("bf16", "fp16", "none"):
        raise IfssError(f"train.amp={amp!r} is not valid; use bf16, fp16 or none")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_spec)
    rank = 0
    if world > 1:
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
        rank = dist.get_rank()
    return Runtime(device, rank, world, amp, channels_last and device.type == "cuda")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, runtime: Runtime):
    if not runtime.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
