"""Benchmark sections 5-6: memory and workflow size.

5. memory            peak RSS (CPU) or peak allocated (CUDA) of a training step, with plain BN and
                     with InPlace-ABN (model.norm=iabn); MCLOS banks
6. workflow scale    `snakemake -n` wall time and job count per paper config
"""
from __future__ import annotations

import dataclasses
import gc
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from ifss.bench.context import Context, error_line
from ifss.bench.harness import build_setup, engine_step_seconds, memory_probe
from ifss.bench.report import figure, skipped
from ifss.bench.timing import MIB, median
from ifss.errors import IfssError
from ifss.models import norm_factory

WORKFLOW_TARGET = ("<=", 10.0)
IABN = dict(norm="iabn", activation="leaky_relu")  # InPlace-ABN has no relu


# --- 5. memory ---------------------------------------------------------------------------------

def memory(ctx: Context) -> dict:
    ft, rt = ctx.ft, ctx.runtime
    gc.collect()
    sizes = ctx.model_sizes(iterations=1)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
        torch.cuda.reset_peak_memory_stats(rt.device)
        before = torch.cuda.memory_allocated(rt.device)
        engine_step_seconds(ft, 1)
        peak = torch.cuda.max_memory_allocated(rt.device)
        fig = figure(peak / MIB, "MiB", sizes=sizes, repeats=1, warmup=0,
                     description="torch.cuda.max_memory_allocated over one FT training step",
                     details={"allocated_before_mib": before / MIB,
                              "step_increase_mib": (peak - before) / MIB,
                              "max_reserved_mib": torch.cuda.max_memory_reserved(rt.device) / MIB})
    else:
        got = memory_probe(ctx.sizes, ctx.root)
        note = None if got["reset"] else ("the peak-RSS mark could not be reset: this is the "
                                          "probe process's lifetime peak")
        fig = figure(got["peak"] / MIB, "MiB", sizes=ctx.model_sizes(iterations=2), repeats=1,
                     warmup=0, note=note,
                     description="peak resident memory of a fresh process (python, torch, the "
                                 "FT model and its data) over two FT training steps",
                     details={"rss_after_setup_mib": got["before"] / MIB,
                              "step_increase_mib": (got["peak"] - got["before"]) / MIB,
                              "source": got["source"]})
    ft.model.zero_grad(set_to_none=True)
    return {"memory.train_step": fig, "memory.train_step_iabn": memory_iabn(ctx, fig)}


def iabn_unusable(device: torch.device) -> str | None:
    """Why model.norm=iabn cannot train on `device`, or None: inplace-abn missing, or built
    without that device's kernels (`make install` builds the CPU ones)."""
    try:
        layer = norm_factory(IABN["norm"], IABN["activation"])(2).to(device)
        x = torch.randn(2, 2, 2, 2, device=device, requires_grad=True)
        layer(x * 1.0).sum().backward()  # a copy: the layer writes into its input
    except (IfssError, RuntimeError) as err:
        return error_line(err)
    return None


def memory_iabn(ctx: Context, bn: dict) -> dict:
    """memory.train_step measured the same way with model.norm=iabn (leaky_relu), beside the BN
    figure `bn`: on CPU a fresh process's peak RSS; on CUDA the BN figure's allocation before
    its step plus the increase over one iabn step (this process also holds the BN model)."""
    rt = ctx.runtime
    sizes = {**bn["sizes"], **IABN}
    desc = ("memory.train_step with model.norm=iabn, model.activation=leaky_relu (InPlace-ABN: "
            "the activation is computed in place and inverted in backward)")
    why = iabn_unusable(rt.device)
    if why:
        return skipped("MiB", f"model.norm=iabn cannot run here: {why}", description=desc,
                       sizes=sizes)
    iabn_sizes = dataclasses.replace(ctx.sizes, **IABN)
    if rt.device.type == "cuda":
        setup = build_setup("FT", iabn_sizes, rt, ctx.root, ctx.work / "FT-iabn", iterations=1,
                            base=ctx.base)
        gc.collect()
        torch.cuda.synchronize(rt.device)
        torch.cuda.reset_peak_memory_stats(rt.device)
        before = torch.cuda.memory_allocated(rt.device)
        engine_step_seconds(setup, 1)
        increase = (torch.cuda.max_memory_allocated(rt.device) - before) / MIB
        value, note = bn["details"]["allocated_before_mib"] + increase, None
        del setup
    else:
        got = memory_probe(iabn_sizes, ctx.root)
        increase = (got["peak"] - got["before"]) / MIB
        value = got["peak"] / MIB
        note = None if got["reset"] else ("the peak-RSS mark could not be reset: this is the "
                                          "probe process's lifetime peak")
    bn_increase = bn["details"]["step_increase_mib"]
    details = {"step_increase_mib": increase, "bn_mib": bn["value"],
               "bn_step_increase_mib": bn_increase,
               "step_increase_vs_bn": increase / bn_increase if bn_increase > 0 else None}
    return figure(value, "MiB", sizes=sizes, repeats=1, warmup=0, note=note, description=desc,
                  details=details)


def memory_banks(ctx: Context) -> dict:
    entry = ctx.method_table.get("MCLOS")
    desc = "bytes of the buffers of MCLOS's memory banks (pixel + region, every class)"
    if not entry:
        return {"memory.mclos_banks": skipped("MiB", "the method section did not run",
                                              description=desc)}
    if entry.get("bank_mib") is None:
        return {"memory.mclos_banks": skipped("MiB", f"MCLOS not measured: {entry.get('note')}",
                                              description=desc)}
    return {"memory.mclos_banks": figure(
        entry["bank_mib"], "MiB", description=desc, sizes={"classes": ctx.ft.data.num_classes},
        details={"method_state_mib": entry.get("state_mib")}, note=entry.get("note"))}


# --- 6. workflow scale -------------------------------------------------------------------------

def _dry_run(repo: Path, configfile: Path, timeout: float = 600) -> tuple[float, int | None, str]:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", "--quiet", "rules",
           "--configfile", str(configfile)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        last = [line for line in out.strip().splitlines() if line.strip()][-3:]
        return wall, None, f"snakemake -n failed (exit {proc.returncode}): {' / '.join(last)}"
    jobs = job_count(out)
    return wall, jobs, "" if jobs is not None else "no job count in the output of snakemake -n"


def job_count(output: str) -> int | None:
    """Jobs of a dry run: the `total N` row of Snakemake's job stats (0 if nothing to do)."""
    match = re.search(r"^total\s+(\d+)\s*$", output, re.MULTILINE)
    if match:
        return int(match.group(1))
    return 0 if "Nothing to be done" in output else None


def workflow_scale(ctx: Context) -> dict:
    desc = "wall time of `snakemake -n` (DAG of the whole paper matrix), all paper configs"
    repo = ctx.repo
    if ctx.sizes.workflow_repeats < 1:
        return {"workflow.total": skipped("s", "not measured with --quick (each dry run takes "
                                          "seconds); run `ifss bench` without --quick",
                                          target=WORKFLOW_TARGET, description=desc)}
    if not (repo / "Snakefile").is_file():
        return {"workflow.total": skipped("s", f"no Snakefile in {repo} (ifss installed without "
                                          "its workflow)", target=WORKFLOW_TARGET,
                                          description=desc)}
    configs = sorted((repo / "config" / "papers").glob("*.yaml"))
    if not configs:
        return {"workflow.total": skipped("s", "no paper configs (config/papers/*.yaml) yet",
                                          target=WORKFLOW_TARGET, description=desc)}
    figures, total, notes = {}, 0.0, []
    repeats = ctx.sizes.workflow_repeats
    for path in configs:
        runs = [_dry_run(repo, path) for _ in range(repeats)]
        wall = median([r[0] for r in runs])
        jobs, note = runs[-1][1], runs[-1][2] or None
        if note:
            notes.append(f"{path.stem}: {note}")
        total += wall
        figures[f"workflow.{path.stem}"] = figure(
            wall if not note else None, "s", note=note, repeats=repeats, warmup=0,
            sizes={"configs": 1},
            description=f"`snakemake -n --configfile config/papers/{path.name}` wall time",
            details={"jobs": jobs, "samples_s": [r[0] for r in runs]})
    figures["workflow.total"] = figure(
        None if notes else total, "s", target=WORKFLOW_TARGET, note="; ".join(notes) or None,
        sizes={"configs": len(configs)}, repeats=repeats, warmup=0, description=desc,
        details={"jobs": {p.stem: figures[f"workflow.{p.stem}"]["details"]["jobs"]
                          for p in configs}})
    return figures
