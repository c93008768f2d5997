"""Benchmark section 8: the few-shot heads of many episodes trained at once.

8. episodes  episodes/s of `ifss.episodic.heads.fit_heads` over E episodes as one batch /
             episodes/s of the same episodes one at a time, and the check that both give the same
             heads (and the same query predictions)

The episodes are those of the GFSS evaluation (seed 003 §3.4-3.5, §4.2): a generalized head
(background, B = 15 base classes as PASCAL-5i, the novel class), gamma 10, one shot, plain SGD at
lr 0.1, on random features of the bench model's size (D = head_channels channels at
crop / output_stride, labels at crop). The features are scaled to unit expected norm per pixel,
as a trained network's normalised features, so that 100 steps at lr 0.1 stay well conditioned and
the comparison of the trained weights means something.

Episodes and steps per device: on CUDA, 64 episodes (32 with --quick) of 100 steps, the setting
the target is about (one episode at a time is kernel-launch bound there). On a CPU the work per
episode is the same batched or not, so the ratio stays near 1 whatever the size; the CPU sizes
only keep the section short (8 episodes x 10 steps quick, 4 x 5 at 512 px, one thread).
"""
from __future__ import annotations

import math

import torch

from ifss.bench.context import Context, cpu_ratio
from ifss.bench.report import figure
from ifss.bench.timing import Stopwatch, interleaved, ratio
from ifss.episodic.heads import HeadSettings, binary_prediction, fit_heads, head_logits

EPISODES_TARGET = (">=", 5.0)
SAME_TOLERANCE = 1e-5  # max |batched - one at a time| of the trained weights and biases
# (device, quick) -> (episodes, SGD steps)
PLAN = {("cuda", False): (64, 100), ("cuda", True): (32, 100),
        ("cpu", False): (4, 5), ("cpu", True): (8, 10)}
BASE_CLASSES = 15
GAMMA = 10.0
SHOTS = 1


def random_episodes(episodes: int, channels: int, feature_size: int, image_size: int,
                    device: torch.device, seed: int = 0) -> dict:
    """Support and query features, support labels (a blob of the novel class, a void border),
    start heads (base rows = the teacher's, a small novel row) and the teacher, on `device`."""
    gen = torch.Generator().manual_seed(seed)
    E, D, h, H, B = episodes, channels, feature_size, image_size, BASE_CLASSES

    def features():
        return torch.randn(E, SHOTS, D, h, h, generator=gen) / math.sqrt(D)

    support, query = features(), features()
    # the novel class: where smooth noise is high, plus a block every episode has (n1 > 0)
    noise = torch.nn.functional.interpolate(torch.randn(E * SHOTS, 1, h, h, generator=gen),
                                            size=(H, H), mode="bilinear", align_corners=False)
    labels = (noise.reshape(E, SHOTS, H, H) > 0.5).long()
    labels[:, :, H // 4:H // 2, H // 4:H // 2] = 1
    border = max(1, H // 32)
    for edge in (labels[:, :, :border], labels[:, :, -border:], labels[:, :, :, :border],
                 labels[:, :, :, -border:]):
        edge.fill_(255)
    teacher_w = torch.randn(B + 1, D, generator=gen)
    teacher_b = torch.randn(B + 1, generator=gen) * 0.1
    weight = torch.cat([teacher_w.expand(E, B + 1, D),
                        torch.randn(E, 1, D, generator=gen) * 0.02], dim=1)
    bias = torch.cat([teacher_b.expand(E, B + 1), torch.zeros(E, 1)], dim=1)
    out = dict(features=support, labels=labels, weight=weight, bias=bias, query=query,
               teacher=(teacher_w, teacher_b))
    return {k: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device)
            for k, v in out.items()}


def episodes(ctx: Context) -> dict:
    s, device = ctx.sizes, ctx.runtime.device
    E, steps = PLAN[(device.type, ctx.quick)]
    D, h, H = s.head_channels, s.crop // s.output_stride, s.crop
    data = random_episodes(E, D, h, H, device)
    settings = HeadSettings("generalized", steps=steps, gamma=GAMMA)
    support = (data["features"], data["labels"], data["weight"], data["bias"])
    trained = {}

    def batched() -> float:
        with Stopwatch(device) as sw:
            trained["batched"] = fit_heads(settings, *support, teacher=data["teacher"])
        return E / sw.seconds

    def one_at_a_time() -> float:
        heads = []
        with Stopwatch(device) as sw:
            for e in range(E):
                heads.append(fit_heads(settings, *(t[e:e + 1] for t in support),
                                       teacher=data["teacher"]))
        trained["one_at_a_time"] = tuple(torch.cat(parts) for parts in zip(*heads))
        return E / sw.seconds

    samples = interleaved({"batched": batched, "one_at_a_time": one_at_a_time}, s.warmup,
                          s.repeats)
    batched_eps, single_eps = samples.median("batched"), samples.median("one_at_a_time")
    (w_b, b_b), (w_s, b_s) = trained["batched"], trained["one_at_a_time"]
    weight_diff = (w_b - w_s).abs().max().item()
    bias_diff = (b_b - b_s).abs().max().item()
    novel = BASE_CLASSES + 1  # the last channel

    def predict(w, b):
        with torch.no_grad():
            return binary_prediction(head_logits(w, b, data["query"], (H, H)), novel)

    differing = int((predict(w_b, b_b) != predict(w_s, b_s)).sum())
    same = max(weight_diff, bias_diff) <= SAME_TOLERANCE and differing == 0
    sizes = {"episodes": E, "steps": steps, "shots": SHOTS, "base_classes": BASE_CLASSES,
             "gamma": GAMMA, "feature_channels": D, "feature_size": h, "image_size": H}
    return {"episodes.batched_speedup": figure(
        ratio(batched_eps, single_eps), "ratio", target=EPISODES_TARGET, sizes=sizes,
        warmup=s.warmup, repeats=s.repeats,
        note=None if same else "the batched heads differ from the one-at-a-time heads",
        description="episodes/s of fit_heads training E generalized few-shot heads as one "
                    "batch / episodes/s of the same episodes one at a time (same steps, same "
                    "heads)",
        details={"batched_episodes_per_s": batched_eps,
                 "one_at_a_time_episodes_per_s": single_eps,
                 "cpu_time_ratio": cpu_ratio(ctx, samples, "one_at_a_time", "batched"),
                 "max_abs_weight_difference": weight_diff,
                 "max_abs_bias_difference": bias_diff,
                 "max_abs_weight": w_b.abs().max().item(),
                 "differing_query_pixels": differing,
                 "same_heads": same, "tolerance": SAME_TOLERANCE,
                 "samples_episodes_per_s": samples.as_dict()},
    )}
