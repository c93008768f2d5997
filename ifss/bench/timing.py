"""Timing and memory probes: interleaved repeats with warm-up, medians, peak memory.

Every ratio of the benchmark compares two (or more) callables measured in the same process, in
alternating order (ABBA...), after untimed warm-up calls; each side's figure is the median of its
repeats. Drift of a shared machine (other jobs, clock changes) then hits both sides alike.
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


@dataclass
class Samples:
    """What `interleaved` measured: each function's results (`values`), the process CPU seconds
    of each timed call (`cpu_s`: user + system of every thread of this process; a cross-check
    that a busy co-tenant inflates far less than wall time), and the warm-up calls' results."""

    values: dict[str, list[float]]
    cpu_s: dict[str, list[float]]
    warmup: dict[str, list[float]]

    def median(self, name: str) -> float | None:
        return median([v for v in self.values[name] if math.isfinite(v)])

    def cpu_ratio(self, a: str, b: str) -> float | None:
        """median CPU seconds of a's calls / b's (same work per call on both sides)."""
        return ratio(median(self.cpu_s[a]), median(self.cpu_s[b]))

    def as_dict(self) -> dict:
        return {"values": self.values, "cpu_s": self.cpu_s, "warmup": self.warmup}


def interleaved(fns: dict[str, Callable[[], float]], warmup: int, repeats: int) -> Samples:
    """Call each function `warmup` times untimed, then `repeats` times in ABBA order.

    Each function measures itself and returns a number (seconds per step, images/s, ...): only
    it knows what to synchronise and what to divide by.
    """
    names = list(fns)
    warm: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            warm[name].append(float(fns[name]()))
    values: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else reversed(names)):
            start = time.process_time()
            values[name].append(float(fns[name]()))
            cpu[name].append(time.process_time() - start)
    return Samples(values, cpu, warm)


class Stopwatch:
    """`with Stopwatch(device) as sw: ...` then `sw.seconds` (synchronised on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = math.nan

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


# --- memory -----------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 2**20


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> tuple[int, str]:
    """(bytes, source): the peak since the last reset (VmHWM) where the kernel keeps it, else the
    process's lifetime peak (getrusage)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024, "VmHWM"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss if sys.platform == "darwin" else maxrss * 1024), "ru_maxrss"


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a (nested) dict / list / module state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
