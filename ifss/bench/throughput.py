"""Benchmark sections 3, 4 and 7: images per second.

3. evaluation        images/s of engine.evaluate_dense / images/s of bare forward passes
4. input pipeline    data-loader images/s (configured workers) / training images/s
7. precision (CUDA)  bf16 autocast + channels_last + cudnn.benchmark vs fp32 eager
"""
from __future__ import annotations

import math
import warnings

import torch

from ifss.bench import gpu
from ifss.bench.context import Context, cpu_ratio
from ifss.bench.harness import (MemorySet, bare_forward_images_per_s, engine_step_seconds,
                                eval_images_per_s, loader_images_per_s, run_config)
from ifss.bench.report import figure, skipped
from ifss.bench.timing import interleaved, median, ratio
from ifss.distributed import Runtime

EVAL_TARGET = (">=", 0.95)
LOADER_TARGET = (">=", 1.0)
PRECISION_TARGET = (">=", 2.0)


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
                 "cpu_time_ratio": cpu_ratio(ctx, samples, "bare", "ifss"),  # time, inverted
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
