"""Episodic evaluation of a step-0 model: (generalized) few-shot segmentation on frozen features.

Protocol of GFSS-Capstone (hmdliu; src/test.py, src/model/meta/mib.py; capstone report §3.1 and
§4.2 "Episodic Inference" / "Evaluation Metrics"; research/wilson_sdr_gfss_simformer.md §C.1,
§C.3). A model pre-trained on a fold's base classes stays frozen; for every episode
(ifss.episodic.episodes) a 1x1 head is trained on the features of its K support images
(ifss.episodic.heads) and scored (ifss.episodic.scores):

- binary (FSS): a fresh 2-way head; its novel prediction on the query;
- generalized (GFSS): a (B+2)-way head started from the base classifier's rows plus a novel row
  (drawn once per evaluation: the original reloads the same initial state every episode),
  trained with the aggregated binary CE + gamma * background distillation from the base
  classifier; its novel prediction on the query and, on the episode's base image, its
  prediction of the episode's base class.

Images are resized (longer side to eval.image_size) and padded to a square at the bottom right
with the mean colour (0 after normalisation) and void labels, as the original's test resize.
Features are the classifier's input (`out["features"]`); the query's are L2-normalised when
eval.normalize_query is set, as the original's `norm_q` (support and base features are not).

Many episodes train at once (eval.episode_batch): the model runs once per distinct image of a
chunk, and every episode's draws (its episode, its binary head's start values) come from seeds of
its own, so the metrics do not depend on the batch size.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ifss.config import RunConfig
from ifss.data.incremental import IGNORE
from ifss.data.index import images_per_class
from ifss.data.layout import Layout
from ifss.data.segmentation import read_pair
from ifss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ifss.distributed import Runtime
from ifss.episodic.episodes import (Episode, Fold, check_lists, fold_of,
                                    read_kept_classes, sample_episodes)
from ifss.episodic.heads import HeadSettings, binary_prediction, fit_heads, head_logits
from ifss.episodic.scores import EpisodeScores, over_runs
from ifss.errors import IfssError
from ifss.metrics import percent_text
from ifss.models.classifiers import CLASSIFIERS, LinearClassifier
from ifss.tasks import Task

log = logging.getLogger("ifss")
SPLIT = "val"
_HEAD_INIT, _NOVEL_ROW = 1, 2  # tags of the seed sequences besides the episodes' own


# ---------------------------------------------------------------------------------------------
# images


def resize_pad(image: Tensor, label: Tensor, size: int,
               frame: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """uint8 image 3 x H x W and label H x W -> normalised float image and uint8 label.

    size > 0: the longer side resized to `size` (aspect ratio kept; plain bilinear for the image
    and nearest for the label, as the original's cv2 INTER_LINEAR / INTER_NEAREST), then padded
    to size x size. size 0: no resize, padded to `frame` (H, W). Padding is at the bottom and
    right, image 0 (the mean colour once normalised), label void."""
    h, w = label.shape[-2:]
    if size > 0:
        scale = size / max(h, w)
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        frame = (size, size)
    else:
        new, frame = (h, w), frame or (h, w)
    x = image.float().div(255).unsqueeze(0)
    y = label.reshape(1, 1, h, w)
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
        y = F.interpolate(y.float(), size=new, mode="nearest").to(torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    pad = (0, frame[1] - new[1], 0, frame[0] - new[0])
    x = F.pad(x, pad, value=0.0)
    y = F.pad(y, pad, value=IGNORE)
    return x[0], y[0, 0].to(torch.uint8)


class EpisodeImages(Dataset):
    """Image ids -> (normalised image, uint8 label with the dataset's own ids), resized and
    padded (resize_pad)."""

    def __init__(self, layout: Layout, ids: Sequence[str], size: int, frame: tuple[int, int]):
        self.layout, self.ids, self.size, self.frame = layout, list(ids), size, frame

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        image, label = read_pair(self.layout, SPLIT, self.ids[k])
        return resize_pad(image, torch.from_numpy(label.copy()), self.size, self.frame)


# ---------------------------------------------------------------------------------------------
# checks and head start values


def classifier_name(model: nn.Module) -> str:
    kind = type(model.classifier)
    return next((name for name, cls in CLASSIFIERS.items() if cls is kind), kind.__name__)


def check_model(model: nn.Module, task: Task, cfg: RunConfig, source: str) -> Fold:
    """The fold of a step-0 model the configured head can start from (one sentence if not)."""
    if cfg.step != 0:
        raise IfssError(f"checkpoint {source} is a step-{cfg.step} model of {task.name}; "
                        "episodic evaluation trains its heads on a step-0 model's features, so "
                        "give the fold's step-0 model.pt")
    fold = fold_of(task)
    if cfg.eval.head == "generalized" and not isinstance(model.classifier, LinearClassifier):
        raise IfssError(
            f"eval.head=generalized starts from the base classifier's rows as a linear 1x1 "
            f"classifier, but checkpoint {source} has a {classifier_name(model)} classifier "
            f"(method {cfg.method}); use eval.head=binary or a step-0 model with a linear "
            "classifier (such as method FT)")
    return fold


def base_classifier(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(B+1) x D weight and B+1 bias (or None) of the step-0 classifier, detached."""
    conv = model.classifier.convs[0]
    weight = conv.weight.detach().float().flatten(1)
    bias = None if getattr(conv, "bias", None) is None else conv.bias.detach().float()
    return weight, bias


def init_rows(rng: np.random.Generator, rows: int, dim: int) -> Tensor:
    """rows x dim drawn as nn.Conv2d's default weight init of a 1x1 conv with `dim` inputs:
    kaiming_uniform(a=sqrt(5)), i.e. uniform in +-1/sqrt(dim)."""
    bound = 1.0 / np.sqrt(dim)
    return torch.from_numpy(rng.uniform(-bound, bound, size=(rows, dim))).float()


def head_start(head: str, episodes: Sequence[Episode], seed: int, run: int,
               base: tuple[Tensor, Tensor | None], novel_row: Tensor,
               device: torch.device) -> tuple[Tensor, Tensor | None]:
    """E x C x D start weights and E x C biases (or None) of the chunk's heads."""
    weight, bias = base
    dim = weight.shape[1]
    if head == "binary":  # a fresh head per episode, no bias, from the episode's own seed
        rows = [init_rows(np.random.default_rng([seed + run, ep.index, _HEAD_INIT]), 2, dim)
                for ep in episodes]
        return torch.stack(rows).to(device), None
    E = len(episodes)
    w = torch.cat([weight, novel_row.to(weight)]).unsqueeze(0).expand(E, -1, -1).clone()
    b = None
    if bias is not None:
        b = torch.cat([bias, bias.new_zeros(1)]).unsqueeze(0).expand(E, -1).clone()
    return w, b


def binarize(labels: Tensor, classes: Tensor) -> Tensor:
    """labels E x N x H x W (dataset ids) -> 1 where the episode's class, 255 void, else 0."""
    fg = labels == classes.view(-1, *([1] * (labels.dim() - 1)))
    return torch.where(labels == IGNORE, torch.full_like(labels, IGNORE, dtype=torch.long),
                       fg.long())


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class _Chunk:
    episodes: list[Episode]
    ids: list[str]  # the distinct images, in first-use order
    where: dict[str, int]


def _chunks(episodes: list[Episode], size: int, with_base: bool) -> list[_Chunk]:
    """Episodes in chunks of `size`, each with its distinct images (the base images only
    `with_base`: a binary head never scores them)."""
    chunks = []
    for start in range(0, len(episodes), size):
        part = episodes[start:start + size]
        ids = list(dict.fromkeys(i for ep in part for i in (
            (ep.query, *ep.support) + ((ep.base_image,) if with_base else ()))))
        chunks.append(_Chunk(part, ids, {i: k for k, i in enumerate(ids)}))
    return chunks


@torch.no_grad()
def _features(model: nn.Module, images: list[Tensor], batch: int, runtime: Runtime) -> Tensor:
    out = []
    for start in range(0, len(images), batch):
        x = torch.stack(images[start:start + batch]).to(runtime.device, non_blocking=True)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            out.append(model(x, upsample=False)["features"].float())
    return torch.cat(out)


def _run_once(model, chunks: list[_Chunk], loader_items, cfg: RunConfig, run: int,
              base_cls, novel_row, order: tuple[int, ...], runtime: Runtime):
    ev = cfg.eval
    settings = HeadSettings(ev.head, ev.inner_steps, ev.inner_lr, ev.gamma)
    generalized = ev.head == "generalized"
    teacher = base_cls if generalized else None
    novel_scores, base_scores = EpisodeScores(), EpisodeScores()
    channel = {c: k for k, c in enumerate(order)}
    device = runtime.device
    for chunk in chunks:
        pairs = [next(loader_items) for _ in chunk.ids]
        feats = _features(model, [p[0] for p in pairs], ev.batch_size, runtime)
        labels = torch.stack([p[1] for p in pairs]).to(device)
        eps = chunk.episodes
        q = torch.tensor([chunk.where[ep.query] for ep in eps], device=device)
        s = torch.tensor([[chunk.where[i] for i in ep.support] for ep in eps], device=device)
        novel = torch.tensor([ep.novel for ep in eps], device=device)
        size = tuple(labels.shape[-2:])
        weight, bias = head_start(ev.head, eps, ev.seed, run, base_cls, novel_row, device)
        weight, bias = fit_heads(settings, feats[s], binarize(labels[s], novel), weight, bias,
                                 teacher)
        with torch.no_grad():
            query = feats[q].unsqueeze(1)
            if ev.normalize_query:
                query = F.normalize(query, dim=2)
            logits = head_logits(weight, bias, query, size)
            fg = weight.shape[1] - 1  # binary: channel 1; generalized: the novel row, last
            novel_scores.add(binary_prediction(logits, fg),
                             binarize(labels[q].unsqueeze(1), novel), novel)
            if generalized:
                b = torch.tensor([chunk.where[ep.base_image] for ep in eps], device=device)
                base = torch.tensor([ep.base for ep in eps], device=device)
                logits = head_logits(weight, bias, feats[b].unsqueeze(1), size)
                fg = torch.tensor([channel[ep.base] for ep in eps], device=device)
                base_scores.add(binary_prediction(logits, fg),
                                binarize(labels[b].unsqueeze(1), base), base)
    return novel_scores, (base_scores if generalized else None)


def _named(per_class: Mapping, names: Mapping[int, str]) -> dict:
    return {names.get(int(c), str(c)): v for c, v in per_class.items()}


def _mean_per_class(runs: list[dict], key: str) -> dict | None:
    if runs[0][key] is None:
        return None
    names = dict.fromkeys(name for r in runs for name in r[key])  # a class may miss a run
    return {name: _mean([r[key].get(name) for r in runs]) for name in names}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def evaluate_episodic(model: nn.Module, layout: Layout, task: Task, cfg: RunConfig,
                      runtime: Runtime, names: Mapping[int, str] | None = None,
                      source: str = "the model") -> dict:
    """Score a step-0 model of a fold on eval.runs runs of eval.episodes episodes with nshot
    support images each; returns the summary (means over runs, per run, max / mean / smoothed,
    per-class IoU). Every input is checked before the first episode."""
    ev = cfg.eval
    fold = check_model(model, task, cfg, source)
    if runtime.distributed:
        raise IfssError("episodic evaluation runs in one process; start `ifss eval` without "
                        "torchrun")
    names = dict(names or {})
    image_classes, largest = read_kept_classes(layout, SPLIT, ev.min_class_pixels)
    check_lists(images_per_class(image_classes), fold, cfg.nshot, ev.min_class_pixels, SPLIT,
                [names.get(c, "") for c in range(max(fold.base + fold.novel) + 1)])
    per_run_episodes = [sample_episodes(image_classes, fold, cfg.nshot, ev.episodes,
                                        ev.seed + r) for r in range(ev.runs)]
    model.eval()
    base_cls = tuple(None if t is None else t.to(runtime.device)
                     for t in base_classifier(model))
    dim = base_cls[0].shape[1]
    novel_row = init_rows(np.random.default_rng([ev.seed, 0, _NOVEL_ROW]), 1, dim)
    order = task.order(0)
    per_run = []
    for r, episodes in enumerate(per_run_episodes):
        started = time.time()
        chunks = _chunks(episodes, ev.episode_batch, ev.head == "generalized")
        images = EpisodeImages(layout, [i for c in chunks for i in c.ids], ev.image_size,
                               largest)
        loader = DataLoader(images, batch_size=None, shuffle=False,
                            num_workers=cfg.data.workers)
        novel, base = _run_once(model, chunks, iter(loader), cfg, r, base_cls, novel_row,
                                order, runtime)
        wall = time.time() - started
        record = {
            "run": r, "seed": ev.seed + r, "episodes": len(episodes),
            "miou_novel": novel.miou(), "fb_iou": novel.fb_iou(),
            "miou_base": None if base is None else base.miou(),
            "per_class_novel": _named(novel.per_class(), names),
            "per_class_base": None if base is None else _named(base.per_class(), names),
            "episodes_per_s": round(len(episodes) / max(wall, 1e-9), 2),
            "wall_time_s": round(wall, 2),
        }
        per_run.append(record)
        log.info("episodic run %d/%d (seed %d, %s head, %d-shot): novel mIoU %s, FB-IoU %s, "
                 "base mIoU %s (%d episodes, %.1f episodes/s)", r + 1, ev.runs, ev.seed + r,
                 ev.head, cfg.nshot, percent_text(record["miou_novel"]),
                 percent_text(record["fb_iou"]), percent_text(record["miou_base"]),
                 len(episodes), record["episodes_per_s"])
    summary = {key: _mean([r[key] for r in per_run])
               for key in ("miou_novel", "miou_base", "fb_iou")}
    keys = ("miou_novel", "fb_iou") + (("miou_base",) if ev.head == "generalized" else ())
    numbers = [{k: r[k] for k in keys} for r in per_run]
    return _no_nan({
        **summary, "per_run": per_run,
        **over_runs(numbers, "miou_novel", ev.smoothing_group),
        "per_class_novel": _mean_per_class(per_run, "per_class_novel"),
        "per_class_base": _mean_per_class(per_run, "per_class_base"),
        "fold": {"base": list(fold.base), "novel": list(fold.novel)},
        "queries": sum(1 for cs in image_classes.values() if set(cs) & set(fold.novel)),
    })


def _no_nan(value):
    """nan (a class never labelled nor predicted; no episode) -> None, which JSON can hold."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

