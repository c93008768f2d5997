"""Benchmark section 9: SimFormer's training step (issue 15's targets).

9. simformer  matching share: seconds spent in the Hungarian matching (cost matrices + scipy's
              assignment, every deep-supervision output) / seconds of the whole seg-stage step,
              at 100 queries (target <= 0.10);
              crosim step / seg step: the similarity stage's step (+ SimNet, its balanced BCE,
              the distillation) over the seg stage's, same model and batch (target <= 1.5)

One pair of images per step (the original's per-GPU batch), a weak-shot batch made by hand: base
classes in blocks with pixel labels, one novel class shared by both images, void where it lies.
Sizes: the paper's mask-transformer (ResNet-50 at stride 32, width 256, 100 queries, 6 decoder
layers, FFN 2048) at the bench crop; `--quick` the tiny backbone at 64 px, width 64, still 100
queries and 6 layers (the target is stated at 100 queries).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ifss.bench.context import Context, cpu_ratio
from ifss.bench.report import figure
from ifss.bench.timing import interleaved, median, ratio, synchronize
from ifss.data.incremental import IGNORE

MATCHING_TARGET = ("<=", 0.10)
CROSIM_TARGET = ("<=", 1.5)
QUERIES = 100
BASE_CLASSES = (1, 2, 3)  # positions in the synthetic 15-5 order (16 base incl. background)
NOVEL_CLASS = 17


def weakshot_batch(size: int, device: torch.device, seed: int = 0) -> dict:
    """Two images; base classes 1-3 in quarters, the novel class in the last quarter (void)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, size, size, generator=gen)
    label = torch.zeros(2, size, size, dtype=torch.long)
    half = size // 2
    label[:, :half, :half] = BASE_CLASSES[0]
    label[0, :half, half:] = BASE_CLASSES[1]
    label[1, :half, half:] = BASE_CLASSES[2]
    label[:, half:, half:] = IGNORE  # the novel class's pixels: void in a weak-shot label
    image_labels = torch.zeros(2, 21)
    image_labels[:, [0, BASE_CLASSES[0], NOVEL_CLASS]] = 1
    image_labels[0, BASE_CLASSES[1]] = 1
    image_labels[1, BASE_CLASSES[2]] = 1
    return {"image": image.to(device), "label": label.to(device),
            "image_labels": image_labels.to(device)}


def run_config(ctx: Context, crosim: bool):
    from ifss.config import RunConfig, from_dict

    s = ctx.sizes
    width, ffn = (64, 256) if ctx.quick else (256, 2048)
    return from_dict(RunConfig, {
        "dataset": "synthetic", "task": "15-5", "step": 1, "method": "SimFormer",
        "data": {"protocol": "weakshot", "batch_size": 2, "crop_size": s.crop},
        "model": {"arch": "maskformer", "backbone": s.backbone if ctx.quick else "resnet50",
                  "head_channels": width,
                  "num_queries": QUERIES, "decoder_layers": 6, "attention_heads": 8,
                  "ffn_channels": ffn},
        "train": {"optimizer": "adamw", "lr": 1e-4, "clip_grad_norm": 0.01,
                  "lr_mult": {"body": 0.1}},
        "params": {"crosim": crosim},
    })


class SimFormerStep:
    """The model, method and AdamW of one stage, stepping on one batch."""

    def __init__(self, ctx: Context, crosim: bool):
        from ifss import optim
        from ifss.methods.params import SimFormerParams
        from ifss.methods.simformer import SimFormer
        from ifss.models import build_model

        self.cfg = run_config(ctx, crosim)
        self.runtime = ctx.runtime
        torch.manual_seed(0)
        self.model = build_model(self.cfg.model, [16, 5], "linear").to(ctx.runtime.device)
        self.method = SimFormer(SimFormerParams(crosim=crosim), self.cfg, ctx.runtime)
        self.method.attach(self.model)
        for module in self.method.modules().values():
            module.to(ctx.runtime.device)
        self.method.train_mode(self.model)
        self.optimizer = optim.build_optimizer(self.method.param_groups(self.model, self.cfg.train),
                                               self.cfg.train)
        self.trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.iteration = 0

    def seconds(self, batch: dict, iterations: int) -> float:
        from ifss import optim

        synchronize(self.runtime.device)
        start = time.perf_counter()
        for _ in range(iterations):
            self.method.before_step(self.iteration, 0)
            with self.runtime.autocast():
                out = self.model(batch["image"], upsample=False)
                loss = sum(self.method.loss(batch, out, None).values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optim.clip_gradients(self.trained, self.cfg.train.clip_grad_norm)
            self.optimizer.step()
            self.iteration += 1
        synchronize(self.runtime.device)
        return (time.perf_counter() - start) / iterations


@contextmanager
def timed_matching(device: torch.device, spent: list[float]):
    """Adds the seconds of every `hungarian_match` call made by the losses to `spent`."""
    from ifss.simformer import mask_losses

    original = mask_losses.hungarian_match

    def timed(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            synchronize(device)
            spent.append(time.perf_counter() - start)

    mask_losses.hungarian_match = timed
    try:
        yield
    finally:
        mask_losses.hungarian_match = original


def simformer(ctx: Context) -> dict:
    s, device = ctx.sizes, ctx.runtime.device
    batch = weakshot_batch(s.crop, device)
    seg, crosim = SimFormerStep(ctx, crosim=False), SimFormerStep(ctx, crosim=True)
    n = s.method_iterations
    shares: list[float] = []  # per call: seconds in matching / seconds of the steps

    def seg_step() -> float:
        spent: list[float] = []
        with timed_matching(device, spent):
            seconds = seg.seconds(batch, n)
        shares.append(sum(spent) / n / seconds)
        return seconds

    samples = interleaved({"seg": seg_step, "crosim": lambda: crosim.seconds(batch, n)},
                          s.method_warmup, s.method_repeats)
    seg_s, crosim_s = samples.median("seg"), samples.median("crosim")
    timed = shares[s.method_warmup:]  # the warm-up calls' shares dropped
    share = median(timed)
    model = run_config(ctx, False).model
    sizes = ctx.model_sizes(arch="maskformer", backbone=model.backbone, queries=QUERIES,
                            decoder_layers=6, head_channels=model.head_channels, batch=2,
                            iterations=n)
    common = dict(sizes=sizes, warmup=s.method_warmup, repeats=s.method_repeats)
    return {
        "simformer.matching_share": figure(
            share, "ratio", target=MATCHING_TARGET, **common,
            description="seconds in the Hungarian matching (cost matrices and scipy's "
                        "assignment, every deep-supervision output) / seconds of the whole "
                        "seg-stage training step, 100 queries, one image pair",
            details={"seg_step_s": seg_s, "shares": timed}),
        "simformer.crosim_over_seg": figure(
            ratio(crosim_s, seg_s), "ratio", target=CROSIM_TARGET, **common,
            description="seconds of a similarity-stage step (+ SimNet, balanced BCE, "
                        "distillation) / seconds of a seg-stage step, same model and batch",
            details={"seg_step_s": seg_s, "crosim_step_s": crosim_s,
                     "cpu_time_ratio": cpu_ratio(ctx, samples, "crosim", "seg"),
                     "samples_s": samples.as_dict()}),
    }
