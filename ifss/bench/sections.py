"""The benchmark's sections. Each takes the shared context and returns {figure name: figure}.

1. step overhead     ifss training step (FT through engine.train) / bare fwd+bwd+SGD step
2. method overhead   each method's step / FT's (MCLOS / PIFS), or its prepare time
3. evaluation        images/s of engine.evaluate_dense / images/s of bare forward passes
4. input pipeline    data-loader images/s (configured workers) / training images/s
5. memory            peak RSS (CPU) or peak allocated (CUDA) of a training step; MCLOS banks
6. workflow scale    `snakemake -n` wall time and job count per paper config
7. precision (CUDA)  bf16 autocast + channels_last + cudnn.benchmark vs fp32 eager
"""
from __future__ import annotations

import gc
import math
import re
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ifss.bench import gpu
from ifss.bench.harness import (BareLoop, MemorySet, Setup, bare_forward_images_per_s,
                                build_setup, engine_step_seconds, eval_images_per_s,
                                fill_memory, loader_images_per_s, memory_probe, run_config)
from ifss.bench.report import figure, skipped
from ifss.bench.sizes import Sizes
from ifss.bench.timing import MIB, Stopwatch, interleaved, median, ratio, tensor_bytes
from ifss.distributed import Runtime

REPO = Path(__file__).resolve().parents[2]  # the checkout holding ifss/, Snakefile and config/


def find_repo() -> Path:
    """The workflow to dry-run: the working directory's if it has a Snakefile (a workflow job
    runs there), else the checkout this package was installed from (editable installs)."""
    cwd = Path.cwd()
    return cwd if (cwd / "Snakefile").is_file() else REPO

STEP_TARGET = ("<=", 1.05)
MCLOS_TARGET = ("<=", 1.15)
EVAL_TARGET = (">=", 0.95)
LOADER_TARGET = (">=", 1.0)
WORKFLOW_TARGET = ("<=", 10.0)
PRECISION_TARGET = (">=", 2.0)


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


# --- 1. step overhead --------------------------------------------------------------------------

def step_overhead(ctx: Context) -> dict:
    s, ft, rt = ctx.sizes, ctx.ft, ctx.runtime
    n = s.iterations
    batches = ft.train_set.batches(ft.batch, max(1, min(n, len(ft.train_set) // ft.batch)), rt)
    bare = BareLoop(ft.model, batches, ft.cfg, rt)
    samples = interleaved({
        "ifss": lambda: engine_step_seconds(ft, n),
        "bare": lambda: bare.seconds_per_step(n),
    }, s.warmup, s.repeats)
    ifss_s, bare_s = samples.median("ifss"), samples.median("bare")
    ctx.train_step_s = ifss_s
    sizes = ctx.model_sizes(iterations=n)
    figures = {"step_overhead": figure(
        ratio(ifss_s, bare_s), "ratio", target=STEP_TARGET, sizes=sizes, warmup=s.warmup,
        repeats=s.repeats,
        description="FT step through engine.train (everything included) / bare forward + "
                    "cross-entropy + backward + SGD step of the same model on the same batches",
        details={"ifss_step_s": ifss_s, "bare_step_s": bare_s,
                 "ifss_images_per_s": ft.batch / ifss_s if ifss_s else None,
                 "cpu_time_ratio": _cpu_ratio(ctx, samples, "ifss", "bare"),
                 "samples_s": samples.as_dict()},
    )}
    # The resume checkpoint (model + optimiser state, written every train.checkpoint_every
    # iterations) is part of a real run but not of these few iterations: its amortised share.
    from ifss import atomic
    from ifss.config import TrainConfig

    every = TrainConfig().checkpoint_every
    path = ctx.work / "checkpoint-probe.pt"
    with Stopwatch(rt.device) as sw:
        atomic.torch_save({"model": ft.model.state_dict(),
                           "optimizer": bare.optimizer.state_dict()}, path)
    path.unlink(missing_ok=True)
    figures["checkpoint_overhead"] = figure(
        ratio(sw.seconds, every * ifss_s) if ifss_s else None, "fraction", sizes=sizes,
        repeats=1, warmup=0,
        description=f"time of one resume checkpoint (model + SGD state) / {every} ifss steps "
                    "(train.checkpoint_every's default): its amortised share of a step",
        details={"checkpoint_s": sw.seconds, "checkpoint_every": every,
                 "checkpoint_mib": _state_mib(ft.model.state_dict(), bare.optimizer.state_dict())},
    )
    ft.model.zero_grad(set_to_none=True)
    return figures


def _cpu_ratio(ctx: Context, samples, a: str, b: str) -> float | None:
    """Process-CPU-time ratio of a's calls to b's: on CPU a noise-robust cross-check of the
    wall-time figure (meaningless on CUDA, where the work is on the GPU)."""
    if ctx.runtime.device.type != "cpu" or a not in samples.cpu_s or b not in samples.cpu_s:
        return None
    return samples.cpu_ratio(a, b)


def _state_mib(*states) -> float:
    return sum(tensor_bytes(s) for s in states) / MIB


# --- 2. method overhead ------------------------------------------------------------------------

def _registry_methods() -> list[str]:
    from ifss.methods.registry import METHODS

    return list(METHODS)


def _bank_bytes(method) -> int:
    """Bytes of the buffers of the modules a method holds besides the models (memory banks)."""
    total = 0
    for key, value in vars(method).items():
        if key != "old_model" and isinstance(value, torch.nn.Module):
            total += sum(b.numel() * b.element_size() for b in value.buffers())
    return total


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def method_overhead(ctx: Context) -> dict:
    s, rt = ctx.sizes, ctx.runtime
    names = list(ctx.methods) if ctx.methods is not None else _registry_methods()
    if "FT" not in names:
        names.insert(0, "FT")
    if "MCLOS" not in names:
        names.append("MCLOS")
    table: dict[str, dict] = {}
    setups: dict[str, Setup] = {"FT": ctx.ft}
    table["FT"] = {"trains": True, "prepare_s": ctx.ft.prepare_s, "note": None}
    registry = set(_registry_methods())
    for name in names:
        if name == "FT":
            continue
        if name not in registry:
            table[name] = {"trains": None, "note": f"{name} is not in the method registry yet"}
            continue
        ctx.log(f"  method {name}: setting up")
        try:
            setup = build_setup(name, s, rt, ctx.root, ctx.work / name,
                                iterations=s.method_iterations, base=ctx.base)
        except Exception as err:  # noqa: BLE001 - a method under construction is a note
            table[name] = {"trains": None, "note": f"setup failed ({_error(err)})"}
            continue
        entry = {"prepare_s": setup.prepare_s, "note": None,
                 "memory_filled": fill_memory(setup.method)}
        try:
            entry["trains"] = setup.trains()
        except Exception as err:  # noqa: BLE001
            entry.update(trains=None, note=f"param_groups failed ({_error(err)})")
        table[name] = entry
        if entry["trains"]:
            setups[name] = setup
        else:
            entry["state_mib"] = tensor_bytes(setup.method.state_dict()) / MIB
            del setup
    # Round-robin over every training method, FT included, so drift hits each alike. A method
    # that fails while training is dropped (with its error) and the others go on.
    n = s.method_iterations

    def timer(name):
        def run():
            setup = setups[name]
            if table[name].get("failed"):
                return math.nan  # failed once: not run again
            setup.reset()
            try:
                return engine_step_seconds(setup, n)
            except Exception as err:  # noqa: BLE001
                table[name].update(failed=True, note=f"training failed ({_error(err)})")
                return math.nan
            finally:
                setup.model.zero_grad(set_to_none=True)
        return run

    ctx.log(f"  timing {', '.join(setups)} ({s.method_warmup} + {s.method_repeats} rounds)")
    samples = interleaved({name: timer(name) for name in setups}, s.method_warmup,
                          s.method_repeats)
    for name, values in samples.values.items():
        ok = [v for v in values if math.isfinite(v)]
        entry = table[name]
        entry["step_s"] = median(ok) if len(ok) == len(values) else None
        entry["samples_s"] = values
        entry["cpu_s"] = samples.cpu_s[name]
        entry["warmup_s"] = samples.warmup[name]
        setup = setups[name]
        entry["state_mib"] = tensor_bytes(setup.method.state_dict()) / MIB
        entry["bank_mib"] = _bank_bytes(setup.method) / MIB
    ft_s = table["FT"].get("step_s")
    for name, entry in table.items():
        if name == "FT" or not entry.get("trains"):
            continue
        ref = "PIFS" if name == "MCLOS" and table.get("PIFS", {}).get("step_s") else "FT"
        entry["reference"] = ref
        if name == "MCLOS" and ref == "FT" and not entry.get("note"):
            entry["note"] = "PIFS has no step time: compared with FT, target not applied"
        entry["ratio"] = ratio(entry.get("step_s"), table[ref].get("step_s"))
        entry["vs_ft"] = ratio(entry.get("step_s"), ft_s)
        if entry.get("step_s") is not None:
            entry["cpu_time_ratio"] = _cpu_ratio(ctx, samples, name, ref)
    ctx.method_table = table
    figures = {}
    sizes = ctx.model_sizes(iterations=n, task=s.task, step=1, nshot=s.nshot)
    for name, entry in table.items():
        if name == "FT":
            continue
        key = f"method.{name}"
        target = MCLOS_TARGET if name == "MCLOS" and entry.get("reference") == "PIFS" else None
        if entry.get("trains"):
            ref = entry["reference"]
            figures[key] = figure(
                entry["ratio"], "ratio", target=target, note=entry.get("note"), sizes=sizes,
                warmup=s.method_warmup, repeats=s.method_repeats,
                description=f"{name} step / {ref} step (engine.train, step 1)",
                details={k: v for k, v in entry.items() if k != "note"})
        elif entry.get("trains") is False:
            figures[key] = figure(
                entry["prepare_s"], "s", note=entry.get("note") or "no gradient step: prepare "
                "time (imprinting etc.) instead of a step ratio", sizes=sizes, repeats=1,
                warmup=0, description=f"{name}.prepare() on the few-shot set",
                details={k: v for k, v in entry.items() if k != "note"})
        else:
            figures[key] = skipped("ratio", entry["note"], target=target, sizes=sizes,
                                   description=f"{name} step / reference step")
    for name in list(setups):
        if name != "FT":
            del setups[name]
    gc.collect()
    return figures


# --- 3. evaluation -----------------------------------------------------------------------------

def evaluation(ctx: Context) -> dict:
    s, ft, rt = ctx.sizes, ctx.ft, ctx.runtime
    test = MemorySet.copy_of(ft.data.test, count=s.eval_images)
    batches = test.batches(s.eval_batch, math.ceil(s.eval_images / s.eval_batch), rt)
    num_base = ft.data.task.num_base
    samples = interleaved({
        "ifss": lambda: eval_images_per_s(ft.model, test, num_base, rt, s.eval_batch),
        "bare": lambda: bare_forward_images_per_s(ft.model, batches, rt),
    }, s.warmup, s.repeats)
    ifss_ips, bare_ips = samples.median("ifss"), samples.median("bare")
    ft.model.train()
    return {"eval_throughput": figure(
        ratio(ifss_ips, bare_ips), "ratio", target=EVAL_TARGET,
        sizes=ctx.model_sizes(batch=s.eval_batch, images=s.eval_images), warmup=s.warmup,
        repeats=s.repeats,
        description="images/s of engine.evaluate_dense (in-memory test images: loader, "
                    "transfer, forward, argmax, confusion matrix, IoU) / images/s of bare "
                    "forward passes",
        details={"ifss_images_per_s": ifss_ips, "bare_images_per_s": bare_ips,
                 "cpu_time_ratio": _cpu_ratio(ctx, samples, "bare", "ifss"),  # time, inverted
                 "samples_images_per_s": samples.as_dict()},
    )}


# --- 4. input pipeline -------------------------------------------------------------------------

def input_pipeline(ctx: Context) -> dict:
    from ifss.data.build import build_step_data
    from ifss.tasks import get_task

    s, rt = ctx.sizes, ctx.runtime
    cfg = run_config("FT", s, rt, ctx.root, step=0).resolved()
    dataset = build_step_data(cfg, get_task(cfg.dataset, cfg.task)).train
    batch = ctx.ft.batch
    results = {}
    for workers in sorted({s.workers, 0}, reverse=True):
        with warnings.catch_warnings():  # more workers than cores: measured, not advised against
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            runs = [loader_images_per_s(dataset, batch, s.loader_batches, workers, rt, seed=r)
                    for r in range(1 + s.repeats)][1:]  # the first warms the page cache
        results[workers] = {"images_per_s": median([r[0] for r in runs]),
                            "first_batch_s": median([r[1] for r in runs]),
                            "samples_images_per_s": [r[0] for r in runs]}
    loader_ips = results[s.workers]["images_per_s"]
    train_ips = batch / ctx.train_step_s if ctx.train_step_s else None
    note = None if train_ips else "no training step time (step_overhead did not run)"
    return {"loader_vs_train": figure(
        ratio(loader_ips, train_ips), "ratio", target=LOADER_TARGET, note=note,
        sizes={"crop": s.crop, "batch": batch, "batches": s.loader_batches,
               "workers": s.workers, "images": len(dataset)}, warmup=1, repeats=s.repeats,
        description="images/s of the training DataLoader (synthetic JPEG/PNG files, real "
                    "SegmentationSet + train transforms, configured workers) / images/s of the "
                    "ifss training step (>= 1: the loader keeps up)",
        details={"loader_images_per_s": loader_ips, "train_images_per_s": train_ips,
                 "by_workers": {str(k): v for k, v in results.items()},
                 "dataset_images": len(dataset)},
    )}


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
    return {"memory.train_step": fig}


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


# --- 7. precision (CUDA) -----------------------------------------------------------------------

PRECISION_FIGURES = ("precision.speedup", "precision.images_per_s", "precision.peak_fraction")


def precision(ctx: Context, force: bool = False) -> dict:
    """bf16 autocast + channels_last + cudnn.benchmark vs fp32 eager, both through engine.train.
    Runs on CUDA only (`force` runs the same code on another device, for tests)."""
    rt, ft, s = ctx.runtime, ctx.ft, ctx.sizes
    if rt.device.type != "cuda" and not force:
        reason = (f"CUDA only (this run is on {rt.device.type}); run `ifss bench --device cuda` "
                  "on a GPU machine")
        return {name: skipped(unit, reason, target=PRECISION_TARGET if name.endswith("speedup")
                              else None)
                for name, unit in zip(PRECISION_FIGURES, ("ratio", "images/s", "fraction"))}
    device_name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu"
    fast = Runtime(rt.device, amp="bf16", channels_last=True)
    reference = Runtime(rt.device, amp="none", channels_last=False)
    n = s.iterations
    saved_benchmark = torch.backends.cudnn.benchmark

    def throughput(runtime: Runtime, cudnn_benchmark: bool):
        def run():
            torch.backends.cudnn.benchmark = cudnn_benchmark
            fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
            ft.model.to(memory_format=fmt)
            try:
                return ft.batch / engine_step_seconds(ft, n, runtime)
            finally:
                ft.model.zero_grad(set_to_none=True)
        return run

    try:
        samples = interleaved({"bf16_channels_last": throughput(fast, True),
                               "fp32_eager": throughput(reference, False)}, s.warmup, s.repeats)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
        ft.model.to(memory_format=torch.channels_last if rt.channels_last
                    else torch.contiguous_format)
    fast_ips, ref_ips = samples.median("bf16_channels_last"), samples.median("fp32_eager")
    flops = gpu.train_flops_per_image(ft.model, ft.batch, s.crop)
    peak_bf16 = gpu.peak_tflops(device_name, "bf16")
    fp32_kind = gpu.fp32_precision()
    peak_fp32 = gpu.peak_tflops(device_name, fp32_kind)
    frac_fast = gpu.fraction_of_peak(flops, fast_ips, peak_bf16)
    frac_ref = gpu.fraction_of_peak(flops, ref_ips, peak_fp32)
    sizes = ctx.model_sizes(iterations=n)
    common = dict(sizes=sizes, warmup=s.warmup, repeats=s.repeats)
    details = {"bf16_images_per_s": fast_ips, "fp32_images_per_s": ref_ips,
               "train_gflop_per_image": flops / 1e9, "device_name": device_name,
               "samples_images_per_s": samples.as_dict()}
    unknown = None if peak_bf16 else f"{device_name!r} is not in the peak table (ifss.bench.gpu)"
    return {
        "precision.speedup": figure(
            ratio(fast_ips, ref_ips), "ratio", target=PRECISION_TARGET, **common,
            description="training images/s with bf16 autocast + channels_last + "
                        "cudnn.benchmark / fp32 eager (the reference repositories' setting)",
            details=details),
        "precision.images_per_s": figure(
            fast_ips, "images/s", **common,
            description="training images/s (engine.train, FT) with bf16 + channels_last",
            details={"fp32_images_per_s": ref_ips}),
        "precision.peak_fraction": figure(
            frac_fast, "fraction", note=unknown, **common,
            description="achieved FLOP/s (FLOPs of forward + backward per image x images/s) / "
                        "the device's dense bf16 peak",
            details={"peak_bf16_tflops": peak_bf16, "achieved_bf16_tflops":
                     flops * fast_ips / 1e12 if fast_ips else None,
                     "fp32_fraction": frac_ref, "fp32_peak_kind": fp32_kind,
                     "peak_fp32_tflops": peak_fp32}),
    }


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
}
# The order figures appear in (the numbering), whatever order the sections run in.
FIGURE_ORDER = ("step_overhead", "checkpoint_overhead", "method.", "eval_throughput",
                "loader_vs_train", "memory.", "workflow.", "precision.")


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
        return {f"{name}.error": skipped("", f"section failed: {_error(err)}",
                                         description=tb)}, f"{name}: {_error(err)}"
    ctx.log(f"bench: {name} done in {time.perf_counter() - start:.1f} s")
    return figures, None
