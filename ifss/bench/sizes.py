"""How big each measurement of `ifss bench` is, per device and mode.

The full sizes are the papers' setting (DeepLab-v3, ResNet-101, output stride 16, 256-channel
ASPP, 512x512 crops, BN + leaky ReLU as config/papers/pifs_voc.yaml). On CPU a ResNet-101 step at
512x512 takes 5-40 s per image on this project's shared 2-core host, so the CPU default keeps the crop and the
model but uses batch 1 and one iteration per repeat (the per-step overhead is then at its largest
relative share, so the ratios are, if anything, pessimistic) and two repeats per method.

Every CPU size runs on ONE intra-op thread. On a shared machine (other jobs keeping the cores
busy), two OpenMP threads stall at every barrier whenever one of them is descheduled. Measured on
this project's 2-core host under a co-tenant load of 5-12: the same bare ResNet-101 512x512 step
took 21.7-40.5 s across repeats on two threads and 4.7-5.2 s on one, a full CPU run 25-32 min on
two threads and 5-10 min on one, and imprinting 5 tiny-model images 6.7 s on two threads and
0.07 s on one. The figures are ratios, which the thread count hardly moves; absolute images/s
are single-thread. `--quick` (the CI size: the tiny backbone on 64x64 images, a few iterations
per repeat, no `snakemake -n` runs, which take seconds each, MCLOS with the demo config's
scaled memory) takes about 10 s.

The state a method carries from its own step 0 (importance weights, prototypes, memory, DWI's
generator) is made by running that step 0 for `step0_iterations` iterations before its step 1 is
set up: one at the CPU paper size, where one of DWI's cool-down iterations alone runs some
twenty ResNet-101 forward passes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Sizes:
    backbone: str
    head_channels: int
    output_stride: int
    activation: str
    crop: int  # training crop = side of the synthetic images
    batch: int  # training batch (step overhead, methods, memory, precision)
    iterations: int  # training iterations per timed repeat
    warmup: int  # untimed calls before the timed repeats
    repeats: int  # timed repeats (the median is reported)
    method_iterations: int
    method_warmup: int
    method_repeats: int
    eval_images: int
    eval_batch: int
    loader_batches: int  # batches timed per loader repeat (after the first)
    workers: int  # data-loader workers (the paper configs' data.workers)
    workflow_repeats: int  # `snakemake -n` runs per paper config (0: not measured)
    synth_train: int = 60  # synthetic train images (>= 3 per class: few-shot sampling works)
    synth_val: int = 4
    nshot: int = 1  # the few-shot step trains on 5 * nshot images (task 5-0, step 1)
    norm: str = "bn"  # model.norm (the memory section measures iabn beside it)
    task: str = "5-0"
    threads: int = 0  # torch intra-op threads (0: torch's default, one per core)
    # iterations of the in-memory step-0 run (main phase and each extra phase) that makes the
    # state a method carries to step 1 (ifss.bench.carried.carried_state; never timed)
    step0_iterations: int = 2
    # method -> params of its run (default: the method's own, the papers' sizes)
    method_params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


PAPER_MODEL = dict(backbone="resnet101", head_channels=256, output_stride=16,
                   activation="leaky_relu", crop=512)

# MCLOS at the demo size: the paper's memory (5000 entries per class and bank, 1024/2048
# examples) dwarfs a tiny model's step, so the demo config scales it to its 64 px images; the
# quick bench times that configuration (the same values as config/config.yaml, tested).
DEMO_MCLOS_PARAMS = dict(memory_size=200, memory_candidates=32, anchors_per_class=4,
                         max_anchors=64, num_pos=32, num_neg=128, pixels_per_class=10,
                         pixels_per_class_step0=2)

# WILSON's localizer at the demo's width (config/config.yaml): 256 channels (the paper's, for a
# 2048-channel body) would outweigh the tiny model's 64-channel head
DEMO_WILSON_PARAMS = dict(localizer_channels=64)

SIZES = {
    ("cuda", False): Sizes(**PAPER_MODEL, batch=8, iterations=10, warmup=1, repeats=5,
                           method_iterations=10, method_warmup=1, method_repeats=3,
                           eval_images=64, eval_batch=8, loader_batches=20, workers=4,
                           workflow_repeats=2, nshot=2),
    ("cpu", False): Sizes(**PAPER_MODEL, batch=1, iterations=1, warmup=1, repeats=3,
                          method_iterations=1, method_warmup=1, method_repeats=2,
                          eval_images=2, eval_batch=1, loader_batches=10, workers=4,
                          workflow_repeats=2, threads=1, step0_iterations=1),
    # quick: 8 iterations per timed engine.train call, as for the methods: each call builds
    # its optimiser, schedule and loader, a fixed cost a run spreads over hundreds of steps
    ("quick", True): Sizes(backbone="resnet_tiny", head_channels=64, output_stride=16,
                           activation="relu", crop=64, batch=4, iterations=8, warmup=1,
                           repeats=3, method_iterations=8, method_warmup=1, method_repeats=3,
                           eval_images=8, eval_batch=8, loader_batches=5, workers=2,
                           workflow_repeats=0, threads=1,
                           method_params={"MCLOS": DEMO_MCLOS_PARAMS,
                                          "WILSON": DEMO_WILSON_PARAMS}),
}


def sizes_for(device: str, quick: bool) -> Sizes:
    """The sizes of `ifss bench --device DEVICE [--quick]` (quick is the same on every device)."""
    return SIZES[("quick", True)] if quick else SIZES[(device, False)]
