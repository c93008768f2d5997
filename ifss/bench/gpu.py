"""FLOPs of a training step and the peak FLOP/s of known accelerators.

FLOPs come from torch.utils.flop_counter on a copy of the model on the meta device (no compute,
no memory; counts convolutions and matrix products, 2 FLOPs per multiply-add, which is what the
vendors' peaks count too). Peaks are the vendors' dense (no sparsity) tensor-core figures.
"""
from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F

from ifss.losses import IGNORE

# (pattern on torch.cuda.get_device_name(), dense TFLOP/s by precision). First match wins, so
# the more specific names come first (GH200 before H200, H100 PCIe/NVL before H100, A100 before
# A10, L40S before L40 before L4).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"GH200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H100.*PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"H100.*NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", {"bf16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of `device_name` at `precision` (bf16 | tf32 | fp32); None if the
    device is not in the table (the fraction of peak is then reported as null)."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name or ""):
            return peaks.get(precision)
    return None


def fp32_precision() -> str:
    """What fp32 convolutions run as on CUDA: TF32 tensor cores unless switched off."""
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def train_flops_per_image(model: torch.nn.Module, batch: int, size: int) -> float:
    """FLOPs of one forward + backward of `model` per image (cross-entropy on the logits), counted
    on a meta-device copy (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").train()
    meta.requires_grad_(True)
    x = torch.empty(batch, 3, size, size, device="meta")
    y = torch.zeros(batch, size, size, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(meta(x)["logits"], y, ignore_index=IGNORE)
        loss.backward()
    return counter.get_total_flops() / batch


def fraction_of_peak(flops_per_image: float | None, images_per_s: float | None,
                     peak: float | None) -> float | None:
    if not flops_per_image or not images_per_s or not peak:
        return None
    return flops_per_image * images_per_s / (peak * 1e12)
