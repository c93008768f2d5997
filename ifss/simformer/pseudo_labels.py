"""SimFormer's pseudo labels (GeneratePseudoLabel, research/wilson_sdr_gfss_simformer.md §D.1):
a trained weak-shot model labels the novel pixels of its own training images, and a retraining
run (data.train_labels) reads them as pixel labels of every class.

The rule, per training image of the weak-shot step (`pseudo_label`):

    1. every pixel void (255);
    2. a pixel the model predicts as novel class c gets c, if c is one of the image's novel
       classes (its image-level labels, from the class index); other predictions stay void;
    3. the base pixels of the weak-shot training label (read through `weakshot_lut`, where
       novel pixels are void, so the novel classes' ground-truth pixels are never read) keep
       their base class, over whatever step 2 wrote.

The prediction is the argmax of `model(image)["logits"]` over every class of the task, on the
full image at the test transform. Values are the dataset's original label ids.

A pseudo-label folder holds `<image id>.png` for every training image and `manifest.json`:

    format      1
    dataset, task, split     what the labels are for (the weak-shot step's train split)
    images      the image ids, in training order (every one has its PNG)
    classes     the task's class ids, order(1); novel: its step-1 class ids
    model       sha256 of the model.pt that predicted them; checkpoint: its path then
    method, label            the weak-shot run's method and table label
    created     UTC time the folder was finished

The folder is written under a temporary sibling name and renamed into place once complete; a
folder already there (an earlier run's) is replaced only then, so DIR is always either the old
complete folder or the new one. A run that fails or is interrupted removes its partial folder;
one killed outright leaves it as a hidden sibling (`.NAME.partial-*`), never anything at DIR.
`pseudo_label_layout` refuses a folder whose manifest is missing or made for other data before a
run trains on it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ifss.atomic import os_error_message, replace_dir, share
from ifss.data.incremental import IGNORE
from ifss.errors import IfssError
from ifss.metrics import predicted_classes

log = logging.getLogger("ifss")
MANIFEST = "manifest.json"
FORMAT = 1


def _rerun(folder) -> str:
    return (f"rerun `ifss pseudo-labels --model RUN/model.pt --out {folder}` with the weak-shot "
            "model of this task")


# ---------------------------------------------------------------------------------------------
# the rule


def pseudo_label(prediction, weak_label, image_novel_classes: Iterable[int],
                 order: Sequence[int], num_base: int) -> np.ndarray:
    """One image's pseudo label in original label ids (uint8, H x W).

    `prediction`: H x W class positions in `order` (the model's argmax); `weak_label`: H x W
    weak-shot training label (positions, 255 void, novel pixels already void); positions below
    `num_base` are base classes. `image_novel_classes`: positions of the novel classes the image
    holds (its image-level labels); other positions given there are not novel and are ignored.
    """
    prediction = np.asarray(prediction)
    weak_label = np.asarray(weak_label)
    if prediction.shape != weak_label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {weak_label.shape} differ")
    ids = np.asarray(order, dtype=np.int64)
    out = np.full(prediction.shape, IGNORE, dtype=np.uint8)
    novel = [int(c) for c in image_novel_classes if num_base <= int(c) < len(ids)]
    predicted_novel = np.isin(prediction, novel)
    out[predicted_novel] = ids[prediction[predicted_novel]]
    base = weak_label < num_base  # void (255) and any novel position are not base
    out[base] = ids[weak_label[base]]
    return out


# ---------------------------------------------------------------------------------------------
# the folder: its manifest, checked before a run reads it


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IfssError(f"pseudo-label folder {folder} (data.train_labels) does not exist; "
                        f"{_rerun(folder)}, or correct data.train_labels")
    if not path.is_file():
        raise IfssError(f"pseudo-label folder {folder} (data.train_labels) has no {MANIFEST}, so "
                        f"it is no finished `ifss pseudo-labels` output; {_rerun(folder)}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise IfssError(f"pseudo-label manifest {path} cannot be read ({err}); "
                        f"{_rerun(folder)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IfssError(f"pseudo-label manifest {path} is not of format {FORMAT}; "
                        f"{_rerun(folder)}")
    return manifest


def check_manifest(folder: str | Path, dataset: str, task, split: str,
                   ids: Sequence[str]) -> dict:
    """The manifest of `folder`, refused in one sentence unless it is for `dataset`, `task`
    (its classes too), `split`, and lists every id of `ids` with its PNG present."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    made = tuple(manifest.get(k) for k in ("dataset", "task", "split"))
    if made != (dataset, task.name, split):
        raise IfssError(
            f"pseudo-label folder {folder} (data.train_labels) holds labels of "
            f"{made[0]} {made[1]} {made[2]}, not of {dataset} {task.name} {split}; give this "
            f"task's folder, or {_rerun(folder)}")
    if manifest.get("classes") != list(task.order(1)):
        raise IfssError(
            f"pseudo-label folder {folder} (data.train_labels) was made for other classes of "
            f"{dataset} {task.name} than the task has now; {_rerun(folder)}")
    listed = set(manifest.get("images") or ())
    missing = [i for i in ids if i not in listed]
    if missing:
        raise IfssError(
            f"pseudo-label folder {folder} (data.train_labels) has no label for {len(missing)} "
            f"of the {len(ids)} training images (first: {missing[0]}); {_rerun(folder)}")
    absent = next((i for i in ids if not (folder / f"{i}.png").is_file()), None)
    if absent is not None:
        raise IfssError(f"pseudo-label file {folder / f'{absent}.png'} is missing although "
                        f"{folder / MANIFEST} lists it; {_rerun(folder)}")
    return manifest


def pseudo_label_layout(layout, folder: str | Path, dataset: str, task, split: str,
                        ids: Sequence[str]):
    """`layout` with the labels of `split` read from the pseudo-label `folder` (checked)."""
    check_manifest(folder, dataset, task, split, ids)
    labels = {**layout.labels, split: str(Path(folder).absolute())}  # root / absolute = absolute
    return dataclasses.replace(layout, labels=labels, label_suffix=".png")


# ---------------------------------------------------------------------------------------------
# generation


def _check_out(out: Path) -> None:
    """`out` may be made (and its parent written), and holds nothing but an earlier run's
    pseudo labels: any other folder there would be replaced, so it is refused."""
    from ifss.run import check_run_dir

    check_run_dir(out, "pseudo-label folder")
    check_run_dir(out.absolute().parent, "the folder of the pseudo-label folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise IfssError(f"pseudo-label folder {out} exists and holds other files (no {MANIFEST}), "
                        "which a new pseudo-label folder would replace; give --out a new folder "
                        "or move that one away")


def _weakshot_model(run, checkpoint) -> None:
    cfg = run.cfg
    if cfg.data.protocol != "weakshot" or not run.info.weakshot:
        from ifss.methods.registry import weakshot_methods

        raise IfssError(
            f"checkpoint {checkpoint} was trained by {cfg.method} under data.protocol="
            f"{cfg.data.protocol}, not by a weak-shot method ({', '.join(weakshot_methods())}) "
            "under data.protocol=weakshot; give the model.pt of a weak-shot run")


def _sized_collate(batch: list[dict]) -> tuple[dict, list[tuple[int, int]]]:
    from ifss.data.segmentation import pad_collate

    sizes = [tuple(s["image"].shape[-2:]) for s in batch]
    return pad_collate(batch), sizes


@torch.no_grad()
def _predict_into(model, data, folder: Path, runtime, batch_size: int, workers: int) -> list[str]:
    """Write every training image's pseudo label into `folder`; the ids written, in order."""
    from torch.utils.data import DataLoader

    from ifss.data.segmentation import class_positions

    dataset = data.train_plain
    task, order = data.task, data.task.order(1)
    ids = [i for i, _ in dataset.samples]
    novel = class_positions({i: data.image_classes[i] for i in ids}, order)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=_sized_collate, pin_memory=runtime.device.type == "cuda")
    model.eval()
    done, every = 0, max(1, len(ids) // 10)
    for batch, sizes in loader:
        images = batch["image"].to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)["logits"]  # at the image size (upsampled by the model)
        predictions = predicted_classes(logits).cpu().numpy()
        labels = batch["label"].numpy()
        for k, (index, (h, w)) in enumerate(zip(batch["index"].tolist(), sizes)):
            image_id = ids[index]
            label = pseudo_label(predictions[k, :h, :w], labels[k, :h, :w], novel[image_id],
                                 order, task.num_base)
            path = folder / f"{image_id}.png"
            if path.parent != folder:  # an id with folders in it
                path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(path)
        if (done + len(sizes)) // every > done // every or done + len(sizes) == len(ids):
            log.info("pseudo labels: %d / %d images", done + len(sizes), len(ids))
        done += len(sizes)
    return ids


def generate_pseudo_labels(checkpoint: str | Path, out: str | Path,
                           overrides: dict | None = None) -> dict:
    """Pseudo labels of every training image of the weak-shot run that made `checkpoint`
    (its saved config, with `overrides` such as a moved data.root) into the folder `out`;
    returns the manifest."""
    from ifss import builder
    from ifss.data.build import build_step_data, train_split
    from ifss.distributed import setup, teardown
    from ifss.run import ensure_dataset, run_logging

    out = Path(out)
    run, model, _ = builder.model_from_checkpoint(checkpoint, overrides)
    _weakshot_model(run, checkpoint)
    _check_out(out)
    cfg = run.cfg
    # the weak label is always the dataset's, through the weak-shot LUT (never earlier pseudo
    # labels the model may have been retrained on)
    data_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_labels=""))
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        if runtime.distributed:
            raise IfssError("`ifss pseudo-labels` runs in one process; start it without torchrun "
                            "(train.device picks its GPU)")
        with run_logging(runtime):
            ensure_dataset(cfg)
            data = build_step_data(data_cfg, run.task, needs=frozenset({"label"}))
            digest = builder.file_sha256(checkpoint)
            model.to(runtime.device)
            out.absolute().parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            try:
                log.info("pseudo labels of %d %s images of %s %s by %s into %s",
                         len(data.train_plain), train_split(cfg.dataset, cfg.step), cfg.dataset,
                         cfg.task, checkpoint, out)
                ids = _predict_into(model, data, partial, runtime, cfg.eval.batch_size,
                                    cfg.data.workers)
                manifest = {
                    "format": FORMAT, "dataset": cfg.dataset, "task": cfg.task,
                    "split": train_split(cfg.dataset, cfg.step), "images": ids,
                    "classes": list(run.task.order(1)), "novel": list(run.task.steps[1]),
                    "model": digest, "checkpoint": str(checkpoint), "method": cfg.method,
                    "label": cfg.label or cfg.method,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
                share(partial)
                replace_dir(partial, out)
            except OSError as err:  # the disk refused a write: one sentence, nothing left
                shutil.rmtree(partial, ignore_errors=True)
                raise IfssError(os_error_message(err, err.filename or out)) from None
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            log.info("pseudo labels of %d images written to %s", len(ids), out)
            return manifest
    finally:
        teardown()

