"""What the benchmark runs: one method's step-1 run set up as `ifss train` sets it up, the real
engine over an in-memory copy of its (transformed) training samples, and the bare PyTorch loop of
the same model over the same batches.

The setup mirrors `ifss.run._train`: resolved config, step data from the synthetic dataset (real
files, real transforms), the method, its model (random weights stand in for the step-0
checkpoint: timing does not depend on their values), the frozen previous model when the method
asks for one, the state its step-0 run carries (below), `method.prepare`, then `engine.train`.

Carried state. A method with a step-0 run of its own (registry: `step0` with `base` = itself, or
a `step0_from`) starts step 1 from what that run saved in model.pt besides the weights: its
`state_dict()` and its owned modules' weights (importance weights, prototypes, a memory, DWI's
weight generator). `ifss.bench.carried.carried_state` makes them as the workflow does, in memory:
that method's step 0 on the synthetic step-0 data (the step-0 classes), `engine.train` for a
few iterations of its main phase and of each extra phase, then `finish`, and returns
`{"method": ..., "modules": ...}` on the CPU, as `torch.load` of model.pt gives them, for
`build_method`'s checkpoint argument. It runs inside `build_setup`, outside every timing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ifss import engine
from ifss.bench.carried import (Step0Error, carried_state, load_matching, run_config,
                                seeded_step)
from ifss.bench.sizes import Sizes
from ifss.bench.timing import Stopwatch, synchronize
from ifss.config import RunConfig
from ifss.data.build import StepData, build_step_data
from ifss.data.segmentation import pad_collate
from ifss.distributed import Runtime
from ifss.losses import IGNORE
from ifss.methods.registry import MethodInfo
from ifss.models import build_model
from ifss.tasks import get_task


def synthetic_root(cache_dir: Path, sizes: Sizes) -> Path:
    """The synthetic dataset at the benchmark's image size (made once, then reused)."""
    from ifss.data.synthetic import generate

    root = cache_dir / f"synthetic-{sizes.crop}px-{sizes.synth_train}-{sizes.synth_val}"
    return generate(root, seed=0, n_train=sizes.synth_train, n_val=sizes.synth_val,
                    size=sizes.crop)


class MemorySet(Dataset):
    """Already-transformed samples held in memory: the engine's loop without decoding.

    Indexes like a SegmentationSet (an int or the engine's `(index, seed)` pairs) and wraps
    around, so any number of batches can be drawn from a few samples."""

    def __init__(self, samples: list[dict], num_classes: int):
        if not samples:
            raise ValueError("MemorySet needs at least one sample")
        self.samples, self.num_classes = samples, num_classes

    @classmethod
    def copy_of(cls, dataset, count: int | None = None, seed: int = 0) -> "MemorySet":
        """`count` samples of `dataset` (default: each once), transforms applied under fixed
        seeds, as the engine draws them."""
        count = len(dataset) if count is None else count
        samples = [dataset[(i % len(dataset), seed + i)] for i in range(count)]
        return cls(samples, dataset.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        return dict(self.samples[index % len(self.samples)])  # pad_collate may replace entries

    def batches(self, batch_size: int, count: int, runtime: Runtime) -> list[dict]:
        """`count` collated batches on the device, prepared outside any timing (the floor's
        input: already where the model is)."""
        out = []
        for b in range(count):
            items = [self[(b * batch_size + i) % len(self)] for i in range(batch_size)]
            out.append(engine.to_device(pad_collate(items), runtime))
        return out


@dataclass
class Setup:
    """One method's step-1 (or step-0) run, prepared and ready to train."""

    name: str
    info: MethodInfo
    cfg: RunConfig
    runtime: Runtime
    method: object
    model: torch.nn.Module
    old_model: torch.nn.Module | None
    data: StepData
    train_set: MemorySet
    prepare_s: float
    run_dir: Path
    base: dict | None = None  # shared "step-0" body + head weights
    own: dict | None = None  # the rest of the prepared model's state (classifier), a copy
    carried_state: bool = False  # started from the state its own step-0 run made (in memory)
    step0_s: float | None = None  # seconds of that step-0 run (never part of a timing)

    def reset(self) -> None:
        """Back to the prepared weights, so each timed call trains from the same start (a few
        steps at batch 1 from synthetic weights can diverge, and the engine stops on NaN)."""
        if self.base is not None:
            load_matching(self.model, self.base)
        if self.own:
            self.model.load_state_dict(self.own, strict=False)

    @property
    def batch(self) -> int:
        return min(self.cfg.data.batch_size, len(self.train_set))

    def trains(self) -> bool:
        """False for methods without a gradient step (WI, AMP, DWI)."""
        return self.method.trains


@torch.no_grad()
def base_state(sizes: Sizes, runtime: Runtime, root: Path, images: int = 4) -> dict:
    """Body and head weights standing in for a step-0 checkpoint: random weights with batch-norm
    statistics measured on `images` step-0 training images (cumulative average), so that an
    eval-mode forward (the previous model, teachers, imprinting, evaluation) sees activations of
    a trained network's scale instead of growing through 100 layers with running stats (0, 1)."""
    cfg = run_config("FT", sizes, runtime, root, step=0).resolved()
    task = get_task(cfg.dataset, cfg.task)
    data = build_step_data(cfg, task)
    model = build_model(cfg.model, task.classes_per_step(0), "linear").to(runtime.device)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    batch = max(2, min(sizes.batch, images))  # two or more: the pooling branch's BN gets stats
    for b in MemorySet.copy_of(data.train, count=images).batches(batch, images // batch, runtime):
        model(b["image"])
    return {k: v.clone() for k, v in model.state_dict().items()
            if not k.startswith("classifier.")}


def build_setup(name: str, sizes: Sizes, runtime: Runtime, root: Path, run_dir: Path,
                iterations: int | None = None, base: dict | None = None,
                step0_iterations: int | None = None, train: dict | None = None,
                step: int = 1) -> Setup:
    """Method `name` at step `step` of the benchmark task (1; 0 for a step-0-only method and its
    reference), as `ifss train` would prepare it, from the "step-0" weights `base`
    (ifss.bench.harness.base_state; None: random init) and, at step 1 for a method with its own
    step-0 run, the state that run carries (`carried_state`, `step0_iterations` iterations; made
    before anything of step 1, and never timed).
    Raises whatever the method raises (the caller turns that into a note); Step0Error when its
    step-0 run failed."""
    from ifss.builder import build_method, place, resolve

    run = resolve(run_config(name, sizes, runtime, root, step=step, iterations=iterations,
                             train=train), training=False)
    cfg, info = run.cfg, run.info
    start = time.perf_counter()
    try:
        ckpt = None if step == 0 else carried_state(name, sizes, runtime, root,
                                                    run_dir / "step0", base, step0_iterations)
    except Exception as err:  # noqa: BLE001 - one clear line for the bench's note
        lines = str(err).strip().splitlines()
        raise Step0Error(f"its step-0 run failed: {type(err).__name__}: "
                         f"{lines[0] if lines else ''}") from err
    step0_s = time.perf_counter() - start if ckpt is not None else None
    data, model = seeded_step(run, runtime, base)
    old = None
    if run.method_cls.uses_old_model and cfg.step > 0:
        old = run.model(cfg.step - 1)
        load_matching(old, model.state_dict())  # the previous step's model
        old.to(runtime.device).eval().requires_grad_(False)
    method = build_method(run, runtime, model, ckpt)
    place(model, method, runtime)
    with Stopwatch(runtime.device) as sw:
        method.prepare(model, old, data)
    train_set = MemorySet.copy_of(data.train, seed=cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    shared = {k for k, v in (base or {}).items() if k in state and state[k].shape == v.shape}
    own = {k: v.detach().clone() for k, v in state.items() if k not in shared}
    return Setup(name, info, cfg, runtime, method, model, old, data, train_set, sw.seconds,
                 run_dir, base, own, carried_state=ckpt is not None, step0_s=step0_s)


@torch.no_grad()
def fill_memory(method, seed: int = 0) -> bool:
    """Fill every bank of a method's memory (MCLOS) to capacity with random unit vectors, so a
    step is timed as it runs once the memory is full (most of a real run), not against the
    empty memory a fresh setup has. False when the method has no memory."""
    memory = getattr(method, "memory", None)
    if memory is None:
        return False
    queue = memory.queue
    gen = torch.Generator().manual_seed(seed)
    entries = torch.randn(queue.storage.shape[0] - 1, queue.dim, generator=gen)
    queue.storage[:-1].copy_(torch.nn.functional.normalize(entries, dim=1))
    queue.count.fill_(queue.size)
    return True


def engine_step_seconds(setup: Setup, iterations: int, runtime: Runtime | None = None) -> float:
    """Seconds per iteration of `engine.train` over `iterations` iterations, everything it does
    included (optimizer and loader construction, logging, the method's loss) and nothing
    subtracted. tqdm is off, as in a workflow job (stderr is not a terminal)."""
    runtime = runtime or setup.runtime
    cfg = dataclasses.replace(setup.cfg, train=dataclasses.replace(setup.cfg.train,
                                                                   iterations=iterations))
    with contextlib.redirect_stderr(io.StringIO()):
        with Stopwatch(runtime.device) as sw:
            engine.train(setup.model, setup.method, setup.train_set, cfg, runtime, setup.run_dir)
    return sw.seconds / iterations


class BareLoop:
    """forward + cross-entropy + backward + SGD step of `model` over fixed device batches: the
    physical floor of a training step (same autocast and memory format as the runtime)."""

    def __init__(self, model: torch.nn.Module, batches: list[dict], cfg: RunConfig,
                 runtime: Runtime):
        self.model, self.batches, self.runtime = model, batches, runtime
        t = cfg.train
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay)

    def step(self, batch: dict) -> None:
        with self.runtime.autocast():
            logits = self.model(batch["image"])["logits"]
            loss = F.cross_entropy(logits, batch["label"], ignore_index=IGNORE)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def seconds_per_step(self, iterations: int) -> float:
        self.model.train()
        with Stopwatch(self.runtime.device) as sw:
            for i in range(iterations):
                self.step(self.batches[i % len(self.batches)])
        return sw.seconds / iterations


@torch.no_grad()
def bare_forward_images_per_s(model: torch.nn.Module, batches: list[dict],
                              runtime: Runtime) -> float:
    """Images/s of plain forward passes (eval mode, no gradient, the runtime's autocast)."""
    model.eval()
    images = 0
    with Stopwatch(runtime.device) as sw:
        for batch in batches:
            with runtime.autocast():
                model(batch["image"])
            images += batch["image"].shape[0]
    return images / sw.seconds


def eval_images_per_s(model: torch.nn.Module, dataset: MemorySet, num_base: int,
                      runtime: Runtime, batch_size: int) -> float:
    """Images/s of `engine.evaluate_dense` (loader, transfer, forward, argmax, confusion matrix,
    summary) over `dataset`."""
    with Stopwatch(runtime.device) as sw:
        engine.evaluate_dense(model, dataset, num_base, runtime, batch_size, workers=0)
    return len(dataset) / sw.seconds


def loader_images_per_s(dataset, batch_size: int, batches: int, workers: int,
                        runtime: Runtime, seed: int = 0) -> tuple[float, float]:
    """(steady images/s, seconds to the first batch) of the training DataLoader exactly as the
    engine builds it (resumable batch sampler, pad_collate, pinned memory on CUDA)."""
    from torch.utils.data import DataLoader

    from ifss.data.batches import ResumableBatches

    sampler = ResumableBatches(len(dataset), batch_size, seed).span(0, batches + 1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        collate_fn=pad_collate, pin_memory=runtime.device.type == "cuda")
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter()
    images = 0
    for batch in it:
        images += batch["image"].shape[0]
    steady = time.perf_counter() - t_first
    del first, it, loader
    return images / steady, t_first - start


def synchronize_all(runtime: Runtime) -> None:
    synchronize(runtime.device)


def _memory_child(sizes: Sizes, root: str, queue) -> None:
    """In a fresh process: the FT setup, then two training steps through engine.train; reports
    the resident memory after the setup and the peak over the steps (spawned by memory_probe)."""
    import tempfile

    from ifss.bench.timing import peak_rss_bytes, reset_peak_rss, rss_bytes

    try:
        if sizes.threads:
            torch.set_num_threads(sizes.threads)
        runtime = Runtime(torch.device("cpu"))
        with tempfile.TemporaryDirectory(prefix="ifss-bench-mem-") as work:
            setup = build_setup("FT", sizes, runtime, Path(root), Path(work) / "FT", iterations=2)
            before = rss_bytes()
            was_reset = reset_peak_rss()
            engine_step_seconds(setup, 2)
            peak, source = peak_rss_bytes()
        queue.put({"peak": peak, "before": before, "source": source, "reset": was_reset})
    except Exception as err:  # noqa: BLE001 - reported by the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def memory_probe(sizes: Sizes, root: Path, timeout: float = 1800) -> dict:
    """Peak RSS of FT training at `sizes` on CPU, measured in a fresh (spawned) process, so that
    nothing the benchmark itself holds (other models, freed-but-kept heap) is counted: what a
    user's `ifss train` process at this size peaks at, imports and model included."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(sizes, str(root), queue), daemon=True)
    child.start()
    try:
        result = queue.get(timeout=timeout)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    if "error" in result:
        raise RuntimeError(f"memory probe failed: {result['error']}")
    return result
