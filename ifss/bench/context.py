"""What every benchmark section gets (`Context`), and helpers the sections share."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ifss.bench.harness import Setup
from ifss.bench.sizes import Sizes
from ifss.distributed import Runtime

REPO = Path(__file__).resolve().parents[2]  # the checkout holding ifss/, Snakefile and config/


def find_repo() -> Path:
    """The workflow to dry-run: the working directory's if it has a Snakefile (a workflow job
    runs there), else the checkout this package was installed from (editable installs)."""
    cwd = Path.cwd()
    return cwd if (cwd / "Snakefile").is_file() else REPO


@dataclass
class Context:
    device: str
    quick: bool
    sizes: Sizes
    runtime: Runtime
    root: Path  # synthetic dataset at the benchmark size
    work: Path  # scratch folder (run directories, checkpoints)
    ft: Setup  # FT at step 1: the model of sections 1, 3, 5 and 7
    log: Callable[[str], None] = print
    methods: list[str] | None = None  # None: every method of the registry
    base: dict | None = None  # "step-0" body + head weights every method starts from
    train_step_s: float | None = None  # median ifss FT step (section 1)
    method_table: dict = field(default_factory=dict)
    repo: Path = field(default_factory=find_repo)

    def model_sizes(self, **extra) -> dict:
        s = self.sizes
        out = dict(backbone=s.backbone, head_channels=s.head_channels,
                   output_stride=s.output_stride, crop=s.crop, batch=self.ft.batch,
                   amp=self.runtime.amp if self.runtime.device.type == "cuda" else "none",
                   channels_last=self.runtime.channels_last)
        out.update(extra)
        return out


def cpu_ratio(ctx: Context, samples, a: str, b: str) -> float | None:
    """Process-CPU-time ratio of a's calls to b's: on CPU a noise-robust cross-check of the
    wall-time figure (meaningless on CUDA, where the work is on the GPU)."""
    if ctx.runtime.device.type != "cpu" or a not in samples.cpu_s or b not in samples.cpu_s:
        return None
    return samples.cpu_ratio(a, b)


def error_line(err: BaseException) -> str:
    """The exception as one short line (type: first line of its message), for notes."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
