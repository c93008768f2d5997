"""Few-shot sampling: which images a step learns each new class from.

Protocol (ours, deterministic and documented): for class c, take the train images whose label
holds c, sort their ids, shuffle them with a generator seeded by the class id alone, and let split
`ishot` take positions [ishot * stride, ishot * stride + nshot). So splits are disjoint (for
nshot <= stride), the 1-shot image of a split is also in its 2- and 5-shot sets (as in PIFS), and
the choice does not depend on the task, the method or the machine.

PIFS's exact lists can be used instead: a TSV with columns dataset, class, ishot and the ids
(comma-separated, in PIFS order); split `ishot` then takes the first nshot ids of its row.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from ifss.errors import IfssError


def check_stride(stride: int) -> None:
    if stride < 1:
        raise IfssError(f"data.fewshot_stride={stride} must be >= 1; set the distance between "
                        "the first images of two few-shot splits (20 by default)")


def check_split(nshot: int, ishot: int, stride: int | None = None) -> None:
    """The domain of a split: nshot >= 1 images per class, ishot >= 0 and, where the stride
    protocol picks the images (`stride` given), nshot <= stride. The run config checks the same
    through this function."""
    if nshot < 1:
        raise IfssError(f"nshot={nshot} must be >= 1; set the number of images per new class, "
                        "such as 1, 2 or 5")
    if ishot < 0:
        raise IfssError(f"ishot={ishot} must be >= 0; use 0, 1, 2, ... to pick a few-shot split")
    if stride is None:
        return
    check_stride(stride)
    if nshot > stride:
        raise IfssError(f"nshot={nshot} exceeds data.fewshot_stride={stride}; split ishot takes "
                        "images [ishot*stride, ishot*stride+nshot) of each class, so splits would "
                        "overlap; lower nshot or raise data.fewshot_stride")


def shuffled_candidates(class_id: int, image_ids: list[str]) -> list[str]:
    ids = sorted(image_ids)
    random.Random(f"ifss-fewshot-class-{class_id}").shuffle(ids)
    return ids


def sample_fewshot(
    class_images: dict[int, list[str]],
    classes: tuple[int, ...],
    nshot: int,
    ishot: int,
    stride: int = 20,
) -> list[tuple[str, int]]:
    """(image id, class it was sampled for) pairs, class by class."""
    check_split(nshot, ishot, stride)
    pairs = []
    for c in classes:
        ids = shuffled_candidates(c, class_images.get(c, []))
        start = ishot * stride
        chosen = ids[start : start + nshot]
        if len(chosen) < nshot:
            raise IfssError(
                f"class {c} has {len(ids)} train images, too few for split ishot={ishot} with "
                f"nshot={nshot} (needs {start + nshot}); use a smaller ishot or data.fewshot_stride"
            )
        pairs += [(image_id, c) for image_id in chosen]
    return pairs


def load_fewshot_lists(path: str | Path, dataset: str) -> dict[tuple[int, int], list[str]]:
    """(class, ishot) -> ids from a PIFS-protocol TSV (lines starting with # are comments)."""
    path = Path(path)
    if not path.is_file():
        raise IfssError(f"few-shot list file {path} (data.fewshot_lists) does not exist")
    rows = [line for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(rows, delimiter="\t")
    columns = reader.fieldnames or []
    ids_field = next((k for k in columns if k.startswith("image_ids")), None)
    if "class" not in columns or "ishot" not in columns or ids_field is None:
        raise IfssError(f"few-shot list file {path} (data.fewshot_lists) needs a tab-separated "
                        "header with the columns class, ishot and image_ids (and optionally "
                        f"dataset); its header is {columns!r}")
    table = {}
    for number, row in enumerate(reader, start=1):
        if row.get("dataset", dataset) not in (dataset, "voc" if dataset == "synthetic" else dataset):
            continue
        try:
            key = int(row["class"]), int(row["ishot"])
        except (TypeError, ValueError):
            raise IfssError(f"few-shot list file {path}: data row {number} has class "
                            f"{row['class']!r} and ishot {row['ishot']!r}; both must be integers"
                            ) from None
        table[key] = [i.strip() for i in (row[ids_field] or "").split(",") if i.strip()]
    if not table:
        raise IfssError(f"few-shot list file {path} (data.fewshot_lists) has no row for dataset "
                        f"{dataset}; add its rows or unset data.fewshot_lists")
    return table


def sample_from_lists(
    lists: dict[tuple[int, int], list[str]], classes: tuple[int, ...], nshot: int, ishot: int
) -> list[tuple[str, int]]:
    check_split(nshot, ishot)
    pairs = []
    for c in classes:
        ids = lists.get((c, ishot))
        if ids is None or len(ids) < nshot:
            raise IfssError(
                f"the few-shot list file (data.fewshot_lists) has no {nshot} ids for class {c}, "
                f"ishot {ishot}; add them, or use a smaller nshot or another ishot"
            )
        pairs += [(image_id, c) for image_id in ids[:nshot]]
    return pairs
