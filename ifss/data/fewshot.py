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
    if nshot > stride:
        raise IfssError(f"nshot={nshot} exceeds data.fewshot_stride={stride}; splits would overlap")
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
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    table = {}
    for row in csv.DictReader(rows, delimiter="\t"):
        if row.get("dataset", dataset) not in (dataset, "voc" if dataset == "synthetic" else dataset):
            continue
        ids_field = next(k for k in row if k.startswith("image_ids"))
        table[int(row["class"]), int(row["ishot"])] = row[ids_field].split(",")
    return table


def sample_from_lists(
    lists: dict[tuple[int, int], list[str]], classes: tuple[int, ...], nshot: int, ishot: int
) -> list[tuple[str, int]]:
    pairs = []
    for c in classes:
        ids = lists.get((c, ishot))
        if ids is None or len(ids) < nshot:
            raise IfssError(
                f"the few-shot list file has no {nshot} ids for class {c}, ishot {ishot}"
            )
        pairs += [(image_id, c) for image_id in ids[:nshot]]
    return pairs
