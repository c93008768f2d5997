import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ifss.cli import parser
from ifss.data import sources
from ifss.data.index import build_image_classes
from ifss.data.layout import layout_for
from ifss.data.records import DATASETS, DatasetRecord, Folders, SourceFile, get_dataset
from ifss.errors import IfssError
from ifss.data.records import COCO_IDS
from ifss.tasks import get_task, task_names

# research/pifs_mclos_mib.md §1.3
COCO_NOVEL = {
    0: [1, 5, 9, 14, 18, 22, 27, 33, 37, 41, 46, 50, 54, 58, 62, 67, 74, 78, 82, 87],
    1: [2, 6, 10, 15, 19, 23, 28, 34, 38, 42, 47, 51, 55, 59, 63, 70, 75, 79, 84, 88],
    2: [3, 7, 11, 16, 20, 24, 31, 35, 39, 43, 48, 52, 56, 60, 64, 72, 76, 80, 85, 89],
    3: [4, 8, 13, 17, 21, 25, 32, 36, 40, 44, 49, 53, 57, 61, 65, 73, 77, 81, 86, 90],
}


def test_coco_ids_exclude_unused():
    assert len(COCO_IDS) == 80
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91} & set(COCO_IDS)


@pytest.mark.parametrize("fold", range(4))
def test_coco_20i(fold):
    task = get_task("coco", f"20-{fold}")
    assert list(task.steps[1]) == COCO_NOVEL[fold]
    assert sorted(task.steps[0] + task.steps[1]) == list(COCO_IDS)
    multi = get_task("coco", f"20-{fold}m")
    assert multi.num_steps == 5
    assert [list(s) for s in multi.steps[1:]] == [COCO_NOVEL[fold][i:i + 5] for i in range(0, 20, 5)]


@pytest.mark.parametrize("fold", range(4))
def test_voc_5i(fold):
    novel = list(range(5 * fold + 1, 5 * fold + 6))
    task = get_task("voc", f"5-{fold}")
    assert list(task.steps[1]) == novel
    assert len(task.steps[0]) == 15 and not set(task.steps[0]) & set(novel)
    assert task.num_base == 16
    multi = get_task("voc", f"5-{fold}m")
    assert [list(s) for s in multi.steps[1:]] == [[c] for c in novel]


def test_voc_continual_tasks():
    assert get_task("voc", "15-5").steps == (tuple(range(1, 16)), tuple(range(16, 21)))
    assert get_task("voc", "15-1").num_steps == 6
    assert get_task("voc", "19-1").steps[1] == (20,)
    assert get_task("voc", "10-10").steps[1] == tuple(range(11, 21))
    assert get_task("voc", "10-1").num_steps == 11


def test_order_and_counts():
    task = get_task("synthetic", "5-1m")
    assert task.order(2) == (0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 6, 7)
    assert task.classes_per_step(2) == [16, 1, 1]
    assert task.class_names(1)[-1] == "bus"


def test_unknown_task_lists_valid_ones():
    with pytest.raises(IfssError, match=r"unknown task '5-9'.*valid tasks: offline, 5-0"):
        get_task("voc", "5-9")
    with pytest.raises(IfssError, match="unknown dataset"):
        get_task("cityscapes", "5-0")
    with pytest.raises(IfssError, match="steps 0..1"):
        get_task("voc", "5-0").check_step(2)
    assert "20-3m" in task_names("coco")


def test_records_and_tasks_import_without_torch():
    # the workflow imports these while building the DAG
    code = ("import sys, ifss.tasks, ifss.data.records, ifss.data.layout, ifss.data.sources; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_dataset_names_the_nearest():
    with pytest.raises(IfssError, match=r"unknown dataset 'vco' \(did you mean voc\?\); valid "
                                        r"datasets: voc, coco, synthetic"):
        get_dataset("vco")
    with pytest.raises(IfssError, match="unknown dataset 'vco'"):
        task_names("vco")


def test_every_record_is_consistent():
    for name, record in DATASETS.items():
        assert record.name == name and record.classes[0] == "background"
        space = get_dataset(record.label_space)
        assert space.classes == record.classes  # label ids mean the same in both
        for task in record.tasks:
            steps = get_task(name, task).steps
            ids = [c for step in steps for c in step]
            assert len(ids) == len(set(ids)) and set(ids) <= set(record.object_ids), (name, task)
        assert set(record.folders.images) == set(record.folders.labels) == set(record.folders.lists)
        assert bool(record.sources) == bool(record.prepare)
        for row in record.sources:
            assert row.needed_for is None or row.needed_for <= set(record.label_sources)


def test_a_new_dataset_is_one_record(tmp_path, monkeypatch):
    """Registering a record is all it takes: tasks, class names, layout, index, downloads, CLI."""
    row = SourceFile(name="tiny.zip", url="http://example.org/tiny.zip", md5=None,
                     extract_to="tiny")
    tiny = DatasetRecord(
        name="tiny",
        classes=("background", "cat", None, "dog"),  # id 2 unused, as COCO has unused ids
        folders=Folders(images={"train": "img"}, labels={"train": "lab"},
                        lists={"train": "train.txt"}),
        tasks={"1-1": ((1,), (3,))},
        make="make it with `tiny-maker --out {root}`",
        sources=(row,),
        prepare="tiny_reader:prepare",
    )
    monkeypatch.setitem(DATASETS, "tiny", tiny)

    task = get_task("tiny", "1-1")
    assert task_names("tiny") == ["1-1"] and task.label_space == "tiny"
    assert task.class_names(1) == ["background", "cat", "dog"]
    with pytest.raises(IfssError, match=r"unknown task '1-2' for dataset 'tiny'.*valid tasks: 1-1"):
        get_task("tiny", "1-2")

    root = tmp_path / "tiny"
    layout = layout_for("tiny", root)
    with pytest.raises(IfssError, match=f"make it with `tiny-maker --out {root}`"):
        layout.check()
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    (root / "train.txt").write_text("a\nb\n")
    labels = {"a": [[0, 1], [255, 1]], "b": [[0, 3], [3, 3]]}
    for image_id, label in labels.items():
        Image.fromarray(np.array(label, np.uint8)).save(layout.label_path("train", image_id))
    layout.check()
    assert layout.image_path("train", "a") == root / "img" / "a.jpg"
    assert build_image_classes(layout, "train", task.label_space) == {"a": [0, 1], "b": [0, 3]}
    Image.fromarray(np.array([[2]], np.uint8)).save(layout.label_path("train", "b"))
    with pytest.raises(IfssError, match=r"holds value\(s\) \[2\]"):  # unused id: no class
        build_image_classes(layout, "train", task.label_space)

    assert sources.files_for("tiny") == (row,) and "tiny" in sources.SOURCES
    assert parser().parse_args(["download", "tiny", "--root", str(tmp_path)]).dataset == "tiny"


def test_sources_table_writes_through_to_the_records(monkeypatch):
    # tests replace a dataset's rows in the old table; fetch_dataset must see them
    original = DATASETS["voc"]
    rows = sources.SOURCES["voc"][:1]
    monkeypatch.setitem(sources.SOURCES, "voc", rows)
    assert sources.files_for("voc") == rows and DATASETS["voc"].tasks is original.tasks
    monkeypatch.undo()
    assert DATASETS["voc"] == original
    assert list(sources.SOURCES) == ["voc", "coco", "cocostuff10k", "ade"]
    with pytest.raises(IfssError, match="'synthetic' has nothing to download; make it with"):
        sources.files_for("synthetic")
    with pytest.raises(IfssError, match="unknown label source 'panoptic' for dataset 'coco'"):
        sources.files_for("coco", "panoptic")
