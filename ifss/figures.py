"""The MCLOS paper's figures, for any runs of the same dataset, task and step (PIFS and MCLOS):

    qualitative_figure(runs, out_png)  rows of test images: image | ground truth | one predicted
                                       mask per run, in the PASCAL VOC palette (seed 000, Fig. 2)
    tsne_figure(runs, out_png)         t-SNE of the pixel embeddings (head features,
                                       L2-normalised) of test pixels, one panel per run, coloured
                                       by ground-truth class, with each panel's silhouette score
                                       (cosine) as a number to compare (Fig. 3)

`runs` maps a display name to a model.pt. Each model is rebuilt from the config saved in the
checkpoint; `data_root` replaces the saved data root (the dataset may live elsewhere now). Both
figures use the same images and, for t-SNE, the same pixels for every run, chosen from the
labels only: the test images holding the most pixels of the classes added after step 0, and per
class up to `per_class` pixels drawn with a fixed seed. Uses matplotlib and scikit-learn
(dependencies of the package).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ifss.atomic import atomic_path
from ifss.config import RunConfig
from ifss.data.build import build_step_data
from ifss.data.incremental import IGNORE
from ifss.data.synthetic import voc_palette
from ifss.errors import IfssError
from ifss.metrics import predicted_classes
from ifss.tasks import Task


@dataclass
class LoadedRun:
    name: str
    model: torch.nn.Module
    cfg: RunConfig
    task: Task


def load_run(name: str, checkpoint: str | Path, data_root: str | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a run's model.pt, in eval mode, with the run's resolved config."""
    from ifss.builder import model_from_checkpoint

    overrides = {"data": {"root": str(data_root)}} if data_root else None
    run, model, _ = model_from_checkpoint(checkpoint, overrides)
    return LoadedRun(name, model.to(device).eval(), run.cfg, run.task)


def load_runs(runs: dict[str, str | Path], data_root: str | None = None,
              device: str | torch.device = "cpu") -> list[LoadedRun]:
    loaded = [load_run(name, path, data_root, device) for name, path in runs.items()]
    if not loaded:
        raise IfssError("a figure needs at least one run (model.pt)")
    first = loaded[0]
    for run in loaded[1:]:
        if (run.cfg.dataset, run.cfg.task, run.cfg.step) != (first.cfg.dataset, first.cfg.task,
                                                             first.cfg.step):
            raise IfssError(
                f"runs {first.name} and {run.name} differ in dataset/task/step "
                f"({first.cfg.dataset} {first.cfg.task} step {first.cfg.step} vs "
                f"{run.cfg.dataset} {run.cfg.task} step {run.cfg.step}); compare runs of one "
                "setting")
    return loaded


# --- pure helpers -----------------------------------------------------------------------------

def colourise(label: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """H x W remapped label (0..C-1, void 255) -> H x W x 3 uint8 in the VOC palette of the
    dataset's original class ids (void keeps the palette's 255 colour)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    lut = np.full(256, 255, dtype=np.int64)
    lut[: len(class_ids)] = class_ids
    return palette[lut[label.astype(np.int64)]]


def denormalise(image: torch.Tensor) -> np.ndarray:
    """A normalised 3 x H x W image tensor -> H x W x 3 uint8."""
    from ifss.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.cpu().float() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def choose_images(labels: list[torch.Tensor], first_novel: int, count: int) -> list[int]:
    """Indices of the `count` labels with the most pixels of classes >= first_novel (ties and
    the rest: most labelled pixels), in that order."""
    def key(i):
        lab = labels[i]
        valid = lab != IGNORE
        return (-int(((lab >= first_novel) & valid).sum()), -int(valid.sum()), i)
    return sorted(range(len(labels)), key=key)[:count]


def choose_pixels(labels: list[torch.Tensor], per_class: int, seed: int = 0):
    """Up to `per_class` labelled pixels of each class over the labels: (image, y, x, class)
    rows of an int64 array, drawn with numpy's generator seeded by `seed`."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, lab in enumerate(labels):
        ys, xs = np.nonzero(lab.numpy() != IGNORE)
        rows.append(np.stack([np.full_like(ys, i), ys, xs, lab.numpy()[ys, xs]], 1))
    rows = np.concatenate(rows) if rows else np.zeros((0, 4), dtype=np.int64)
    keep = []
    for c in np.unique(rows[:, 3]):
        idx = np.flatnonzero(rows[:, 3] == c)
        keep.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    return rows[np.sort(np.concatenate(keep))] if keep else rows


@torch.no_grad()
def embeddings_at(model: torch.nn.Module, image: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """L2-normalised head features of one image (3 x H x W) at label pixels (y, x rows), read
    bilinearly as the logits' upsampling reads them. Returns P x D."""
    device = next(model.parameters()).device
    feats = model.head(model.body(image.unsqueeze(0).to(device))).float()
    h, w = image.shape[-2:]
    pts = torch.as_tensor(points, dtype=torch.float32, device=device)
    grid = torch.stack([(pts[:, 1] + 0.5) / w * 2 - 1, (pts[:, 0] + 0.5) / h * 2 - 1], 1)
    sampled = F.grid_sample(feats, grid.view(1, 1, -1, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return F.normalize(sampled[0, :, 0].T, dim=1).cpu()


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    device = next(model.parameters()).device
    return predicted_classes(model(image.unsqueeze(0).to(device))["logits"])[0].cpu().numpy()


def _test_samples(run: LoadedRun, count: int):
    """The first run's test set: (dataset, labels of its first `count` images)."""
    data = build_step_data(run.cfg, run.task)
    n = min(count, len(data.test))
    samples = [data.test[i] for i in range(n)]
    return data, samples


# --- figures ----------------------------------------------------------------------------------

def qualitative_figure(runs: dict[str, str | Path], out_png: str | Path,
                       data_root: str | None = None, num_images: int = 4, candidates: int = 200,
                       device: str | torch.device = "cpu") -> list[int]:
    """Write the comparison grid; returns the test-image indices shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = load_runs(runs, data_root, device)
    first = loaded[0]
    data, samples = _test_samples(first, candidates)
    chosen = choose_images([s["label"] for s in samples], first.task.num_base, num_images)
    ids = list(first.task.order(first.cfg.step))
    cols = 2 + len(loaded)
    fig, axes = plt.subplots(len(chosen), cols, figsize=(2.2 * cols, 2.2 * len(chosen)),
                             squeeze=False)
    titles = ["image", "ground truth"] + [r.name for r in loaded]
    for row, index in enumerate(chosen):
        sample = samples[index]
        panels = [denormalise(sample["image"]), colourise(sample["label"].numpy(), ids)]
        panels += [colourise(predict(r.model, sample["image"]), ids) for r in loaded]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    fig.suptitle(f"{first.cfg.dataset} {first.cfg.task} step {first.cfg.step}", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)
    return chosen


def tsne_figure(runs: dict[str, str | Path], out_png: str | Path, data_root: str | None = None,
                num_images: int = 40, per_class: int = 100, seed: int = 0, iterations: int = 1000,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """Write the t-SNE panels; returns each run's silhouette score (cosine, on the embeddings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    from ifss.run import class_names

    loaded = load_runs(runs, data_root, device)
    first = loaded[0]
    data, samples = _test_samples(first, num_images)
    pixels = choose_pixels([s["label"] for s in samples], per_class, seed)
    if len(pixels) < 5:
        raise IfssError(f"only {len(pixels)} labelled test pixels in {len(samples)} images; "
                        "a t-SNE needs more (raise num_images)")
    classes = pixels[:, 3]
    names = class_names(first.cfg, first.task)
    ids = list(first.task.order(first.cfg.step))
    palette = np.asarray(voc_palette(), dtype=np.float64).reshape(256, 3) / 255
    scores = {}
    legend_cols = max(1, math.ceil(len(np.unique(classes)) / 24))
    width = 4.5 * len(loaded) + 1.6 * legend_cols
    fig, axes = plt.subplots(1, len(loaded), figsize=(width, 4.8), squeeze=False)
    for ax, run in zip(axes[0], loaded):
        emb = torch.cat([
            embeddings_at(run.model, samples[i]["image"], pixels[pixels[:, 0] == i, 1:3])
            for i in np.unique(pixels[:, 0])]).numpy()
        labels = classes  # `pixels` rows come image by image, as `emb` rows do
        perplexity = float(min(30.0, max(2.0, (len(emb) - 1) / 3)))
        xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                  max_iter=max(250, iterations)).fit_transform(emb)
        scores[run.name] = (float(silhouette_score(emb, labels, metric="cosine"))
                            if len(np.unique(labels)) > 1 else float("nan"))
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=palette[ids[c]], label=names[c])
        ax.set_title(f"{run.name} (silhouette {scores[run.name]:.3f})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels_ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="center right", ncol=legend_cols, fontsize=7,
               markerscale=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 * legend_cols / width, 1))
    _save(fig, out_png)
    return scores


def _save(fig, out_png) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
