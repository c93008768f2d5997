"""ADE20K reader: the extracted ADEChallengeData2016.zip -> the layout of the `ade` record.

    prepare_ade(raw_dir, out)   checks the archive's tree, links it into out/, writes the id lists

The archive holds one folder, ADEChallengeData2016/, with images/{training,validation}/ADE_*.jpg
and annotations/{training,validation}/ADE_*.png (single-channel, 0 = other, 1..150 the classes)
but no id lists. The layout keeps that tree, relative to `out`, and adds the lists the record
names:

    ade/ADEChallengeData2016/images/{training,validation}/<id>.jpg
    ade/ADEChallengeData2016/annotations/{training,validation}/<id>.png
    ade/{train,val}.txt                        ids (file stems), sorted

Every split is checked before anything is written: a missing folder, a folder without images or an
image without its label is one sentence naming it. Images and labels are hard links (symlinks
across file systems, copies where neither works) and existing ones are kept, so an interrupted
preparation resumes; the lists are written last, atomically. An ADEChallengeData2016/ folder that
already lies in `out` (`raw_dir` = `out`, as mmsegmentation's data/ade/) is used in place: only
the lists are written.
"""

from __future__ import annotations

import os
from pathlib import Path

from ifss.data.prepare_files import find_folder, link_or_copy, progress, write_lines
from ifss.data.records import get_dataset
from ifss.data.records.ade import ADE_ARCHIVE_FOLDER
from ifss.errors import IfssError

__all__ = ["prepare_ade"]

_AGAIN = ("extract ADEChallengeData2016.zip again (delete its folder under raw/ and rerun "
          "`ifss download ade`)")


def _files(folder: Path, suffix: str) -> list[str]:
    """Stems of the plain files in `folder` ending in `suffix` (hidden files skipped), sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name[: -len(suffix)] for e in entries
                      if e.name.endswith(suffix) and not e.name.startswith(".")
                      and e.is_file())


def _split_ids(images: Path, labels: Path, image_suffix: str, label_suffix: str) -> list[str]:
    """The ids of one split, after checking that both folders exist and every image has a label."""
    for folder in (images, labels):
        if not folder.is_dir():
            raise IfssError(f"The ADE20K folder {folder} is missing; {_AGAIN}.")
    ids = _files(images, image_suffix)
    if not ids:
        raise IfssError(f"The ADE20K folder {images} holds no {image_suffix} images; {_AGAIN}.")
    have = set(_files(labels, label_suffix))
    missing = [i for i in ids if i not in have]
    if missing:
        more = f" (and {len(missing) - 1} other images lack theirs)" if len(missing) > 1 else ""
        raise IfssError(f"The ADE20K image {images / (missing[0] + image_suffix)} has no label "
                        f"{labels / (missing[0] + label_suffix)}{more}; {_AGAIN}.")
    return ids


def prepare_ade(raw_dir: Path | str, out: Path | str, source: str | None = None,
                workers: int = 1) -> Path:
    """Build the ifss ADE20K layout in `out` from the ADEChallengeData2016/ folder under `raw_dir`.

    The folder is found anywhere below `raw_dir` (one named ADEChallengeData2016 holding images/
    or annotations/); its training split becomes `train`, its validation split `val`. Returns
    `out`. `source` and `workers` are there for the preparers' common signature: ADE20K has one
    label source, and linking is fast.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    folders = get_dataset("ade").folders
    tree = find_folder(raw_dir, f"{ADE_ARCHIVE_FOLDER}/ folder with images/ and annotations/ "
                       "(from ADEChallengeData2016.zip)",
                       lambda name, dirs, files: name == ADE_ARCHIVE_FOLDER
                       and ("images" in dirs or "annotations" in dirs))
    # the record's folders start with ADE_ARCHIVE_FOLDER/: the same paths below base and out
    base = tree.parent
    splits = {}
    for split in folders.lists:  # check every split before writing anything
        splits[split] = _split_ids(base / folders.images[split], base / folders.labels[split],
                                   folders.image_suffix, folders.label_suffix)

    for split, ids in splits.items():
        pairs = ((folders.images[split], folders.image_suffix),
                 (folders.labels[split], folders.label_suffix))
        for rel, _ in pairs:
            (out / rel).mkdir(parents=True, exist_ok=True)
        for image_id in progress(ids, len(ids), f"ade {split}"):
            for rel, suffix in pairs:
                name = image_id + suffix
                link_or_copy(base / rel / name, out / rel / name)
    for split, ids in splits.items():
        write_lines(out / folders.lists[split], ids)
    return out
