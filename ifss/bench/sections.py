"""The benchmark's sections, by name, and running one. Each takes the shared context
(`ifss.bench.context.Context`) and returns {figure name: figure}.

1. step overhead     ifss training step (FT through engine.train) / bare fwd+bwd+SGD step
2. method overhead   each method's step / FT's (MCLOS / PIFS, PSP-CTR / PSP; step-0-only
                     methods at step 0), or its prepare time
3. evaluation        images/s of engine.evaluate_dense / images/s of bare forward passes
4. input pipeline    data-loader images/s (configured workers) / training images/s
5. memory            peak RSS (CPU) or peak allocated (CUDA) of a training step; MCLOS banks
6. workflow scale    `snakemake -n` wall time and job count per paper config
7. precision (CUDA)  bf16 autocast + channels_last + cudnn.benchmark vs fp32 eager
8. episodes          few-shot heads of E episodes trained as one batch vs one at a time
9. simformer         SimFormer's matching share of a step; similarity-stage step / seg step
10. startup          a zero-iteration `ifss train` job forked from a fork server / its own process

1-2 are in ifss.bench.step_cost, 3, 4 and 7 in ifss.bench.throughput, 5-6 in
ifss.bench.resources, 8 in ifss.bench.episodes, 9 in ifss.bench.simformer, 10 in
ifss.bench.startup.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from ifss.bench.context import Context, error_line
from ifss.bench.episodes import episodes
from ifss.bench.report import skipped
from ifss.bench.resources import memory, memory_banks, workflow_scale
from ifss.bench.simformer import simformer
from ifss.bench.startup import startup
from ifss.bench.step_cost import method_overhead, step_overhead
from ifss.bench.throughput import evaluation, input_pipeline, precision

# --- running them ------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Context], dict]] = {
    "step": step_overhead,
    "memory": memory,
    "eval": evaluation,
    "loader": input_pipeline,
    "methods": method_overhead,
    "banks": memory_banks,
    "workflow": workflow_scale,
    "precision": precision,
    "episodes": episodes,
    "simformer": simformer,
    "startup": startup,
}
# The order figures appear in (the numbering), whatever order the sections run in.
FIGURE_ORDER = ("step_overhead", "checkpoint_overhead", "method.", "eval_throughput",
                "loader_vs_train", "memory.", "workflow.", "precision.", "episodes.", "simformer.",
                "startup.")


def ordered(figures: dict) -> dict:
    def key(name):
        for i, prefix in enumerate(FIGURE_ORDER):
            if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                return i
        return len(FIGURE_ORDER)
    return dict(sorted(figures.items(), key=lambda kv: key(kv[0])))


def run_section(name: str, ctx: Context) -> tuple[dict, str | None]:
    """(figures, error): an unexpected exception becomes a figure `<name>.error` and the next
    section still runs."""
    ctx.log(f"bench: {name}")
    start = time.perf_counter()
    try:
        figures = SECTIONS[name](ctx)
    except Exception as err:  # noqa: BLE001 - reported in the record and raised at the end
        tb = traceback.format_exc(limit=6)
        ctx.log(tb)
        return {f"{name}.error": skipped("", f"section failed: {error_line(err)}",
                                         description=tb)}, f"{name}: {error_line(err)}"
    ctx.log(f"bench: {name} done in {time.perf_counter() - start:.1f} s")
    return figures, None
