"""`ifss bench`: how much of the hardware ifss turns into training, as ratios against bare PyTorch.

    run_bench(device="cpu", quick=False, out_dir=Path("results/bench")) -> record

writes `out_dir/<device>.json` (every figure with value, unit, target, met, sizes, repeats and
raw samples; torch version, device name, timestamp) and `out_dir/<device>.md` (the same as a
table), both atomically. Every ratio is measured in one process, interleaved, after warm-up, as the
median of repeats (ifss.bench.timing), so a shared machine still gives a stable answer. Sizes per
device and mode: ifss.bench.sizes. What each figure measures: ifss.bench.sections.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from ifss.bench.sizes import Sizes, sizes_for

__all__ = ["Sizes", "run_bench", "sizes_for"]

DEFAULT_SECTIONS = ("step", "memory", "eval", "loader", "methods", "banks", "workflow",
                    "precision", "episodes", "simformer", "startup")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_bench(device: str = "cpu", quick: bool = False, out_dir: str | Path = "results/bench", *,
              cache_dir: str | Path | None = None, sections: tuple[str, ...] | None = None,
              methods: list[str] | None = None, sizes: Sizes | None = None,
              log=_log) -> dict:
    """Run the benchmark and write `<device>.json` and `<device>.md` into `out_dir`.

    cache_dir: where the synthetic dataset at the benchmark size is kept between runs
    (default `out_dir/.cache`). sections: a subset of DEFAULT_SECTIONS (the others are left out
    of the record). methods: the methods of the method section (default: the registry's).
    Raises IfssError after writing the record if a section failed unexpectedly.
    """
    import torch

    from ifss.bench import sections as S
    from ifss.config import TrainConfig
    from ifss.errors import IfssError

    if device not in ("cpu", "cuda"):
        raise IfssError(f"--device {device!r} is not valid; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise IfssError("--device cuda, but no CUDA device is available here; use --device cpu")
    chosen = tuple(sections or DEFAULT_SECTIONS)
    unknown = [s for s in chosen if s not in S.SECTIONS]
    if unknown:
        raise IfssError(f"unknown bench section(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(S.SECTIONS)}")
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / ".cache"
    sizes = sizes or sizes_for(device, quick)
    defaults = TrainConfig()
    threads_before = torch.get_num_threads()
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    try:
        return _run(device, quick, out_dir, cache_dir, chosen, methods, sizes, log, defaults)
    finally:
        torch.set_num_threads(threads_before)


def _run(device, quick, out_dir, cache_dir, chosen, methods, sizes, log, defaults) -> dict:
    import torch

    from ifss import atomic
    from ifss.bench import sections as S
    from ifss.bench.context import Context
    from ifss.bench.harness import base_state, build_setup, synthetic_root
    from ifss.bench.report import SCHEMA_VERSION, clean, markdown
    from ifss.distributed import setup as setup_runtime
    from ifss.errors import IfssError
    from ifss.run import versions

    runtime = setup_runtime(device, defaults.amp, defaults.channels_last)
    started, load_start = time.time(), _load_average()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    torch.manual_seed(0)
    log(f"bench: {device}{' quick' if quick else ''}, {sizes.backbone} {sizes.crop}px, "
        f"synthetic data in {cache_dir}")
    root = synthetic_root(cache_dir, sizes)
    figures, failures = {}, []
    with tempfile.TemporaryDirectory(prefix="ifss-bench-") as work:
        work = Path(work)
        base = base_state(sizes, runtime, root)
        ft = build_setup("FT", sizes, runtime, root, work / "FT", iterations=sizes.iterations,
                         base=base)
        ctx = Context(device=device, quick=quick, sizes=sizes, runtime=runtime, root=root,
                      work=work, ft=ft, log=log, methods=methods, base=base)
        for name in (n for n in DEFAULT_SECTIONS if n in chosen):
            got, error = S.run_section(name, ctx)
            figures.update(got)
            if error:
                failures.append(error)
        method_table = ctx.method_table
    record = {
        "schema": SCHEMA_VERSION,
        "command": f"ifss bench --device {device}{' --quick' if quick else ''} --out {out_dir}",
        "device": device,
        "device_name": device_name(runtime.device),
        "quick": quick,
        "timestamp": stamp,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": _load_average()},
        "runtime": {"amp": runtime.amp, "channels_last": runtime.channels_last,
                    "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                    "autocast_active": runtime.device.type == "cuda" and runtime.amp != "none"},
        "sizes": sizes.as_dict(),
        "sections": [n for n in DEFAULT_SECTIONS if n in chosen],
        "figures": S.ordered(figures),
        "methods": method_table,
        "failures": failures,
        "wall_time_s": round(time.time() - started, 1),
    }

    record = clean(record)
    atomic.write_json(out_dir / f"{device}.json", record)
    atomic.write_text(out_dir / f"{device}.md", markdown(record))
    log(f"bench: wrote {out_dir / f'{device}.json'} and .md in {record['wall_time_s']:.0f} s")
    if failures:
        raise IfssError(f"bench section(s) failed: {'; '.join(failures)} (the record in "
                        f"{out_dir / f'{device}.json'} has the tracebacks)")
    return record
