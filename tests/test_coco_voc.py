"""COCO-to-VOC (WILSON): the record and its task, the converter (`ifss coco-voc`) on tiny COCO and
VOC layouts, the step-0 filter, the workflow's derived dataset and the extra-test table column."""
from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ifss.data.coco_voc as coco_voc
from ifss.cli import main
from ifss.continual_results import write_continual_tables
from ifss.data.coco_voc import build_coco_voc
from ifss.data.incremental import keeps_image
from ifss.data.index import build_image_classes
from ifss.data.layout import layout_for
from ifss.data.prepare_files import MARKER
from ifss.data.records import COCO_CLASSES, COCO_IDS, VOC_CLASSES, get_dataset
from ifss.errors import IfssError
from ifss.tasks import get_task
from ifss.workflow.matrix import Matrix

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

# the 20 VOC classes as COCO ids (research wilson_sdr_gfss_simformer.md §A.6)
WILSON_VOC_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
# VOC names that COCO spells otherwise
COCO_NAME = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
             "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}


def expected_coco_id(voc_id: int) -> int:
    """Independent of the converter's table: the COCO id of the VOC class's name."""
    if voc_id in (0, 255):
        return voc_id
    name = VOC_CLASSES[voc_id]
    return COCO_CLASSES.index(COCO_NAME.get(name, name))


# ------------------------------------------------------------------------------ tiny trees

COCO_TRAIN = {  # id -> COCO ids in its label
    "000000000001": (8, 15),   # truck, bench: no VOC class -> step 0 keeps it
    "000000000002": (8, 1),    # truck + person -> dropped
    "000000000003": (72,),     # tv only -> dropped
    "000000000004": (90, 44),  # toothbrush + bottle -> dropped
    "000000000005": (90,),     # toothbrush -> kept
}
COCO_VAL = {"000000000010": (1, 8)}
ALL_VOC = np.array(list(range(21)) + [255], np.uint8).reshape(2, 11)  # every VOC value once
VOC_TRAIN = {"2007_000001": ALL_VOC, "2007_000002": None, "2008_000003": None}  # None: person
VOC_VAL = {"2007_000010": None, "2007_000011": ALL_VOC}


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (2, 11, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _save_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8))
    if palette:  # VOC's SegmentationClass style: the indices are the labels
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    im.save(path, format="PNG")


def _coco_label(ids) -> np.ndarray:
    label = np.zeros((2, 11), np.uint8)
    for k, c in enumerate(ids):
        label[:, 2 * k:2 * k + 2] = c
    label[0, -1] = 255
    return label


def make_coco(root: Path) -> Path:
    """The layout `ifss download coco` writes."""
    for split, folder, ids in (("train", "train2017", COCO_TRAIN), ("val", "val2017", COCO_VAL)):
        for k, (i, classes) in enumerate(ids.items()):
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            (root / "images" / folder / f"{i}.jpg").write_bytes(_jpeg(k))
            _save_png(root / "annotations" / folder / f"{i}.png", _coco_label(classes))
        (root / "split").mkdir(parents=True, exist_ok=True)
        (root / "split" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def make_voc(root: Path) -> Path:
    """The layout `ifss download voc` writes (one label a palette PNG, as SegmentationClass)."""
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for list_name, ids in (("train_aug", VOC_TRAIN), ("val", VOC_VAL)):
        for k, (i, label) in enumerate(ids.items()):
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            (root / "JPEGImages" / f"{i}.jpg").write_bytes(_jpeg(10 + k))
            if label is None:
                label = np.full((2, 11), 15, np.uint8)  # person
                label[0, 0] = 0
            _save_png(root / "SegmentationClassAug" / f"{i}.png", label,
                      palette=i == "2008_000003")
        (lists / f"{list_name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def trees(tmp_path):
    return make_coco(tmp_path / "data" / "coco"), make_voc(tmp_path / "data" / "voc"), \
        tmp_path / "data" / "coco-voc"


def _label(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _tree_state(root: Path) -> dict:
    """Every path under root (links not followed) -> (mtime_ns, size)."""
    state = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(Path(dirpath) / name)
            state[str(Path(dirpath) / name)] = (st.st_mtime_ns, st.st_size)
    return state


# ------------------------------------------------------------------------------ record and task


def test_voc_classes_map_to_their_coco_ids():
    from ifss.data.records.coco_voc import VOC_IN_COCO, VOC_TO_COCO

    assert [expected_coco_id(v) for v in range(21)] == list(VOC_TO_COCO)
    assert list(VOC_IN_COCO) == WILSON_VOC_IDS


def test_record_and_task():
    record = get_dataset("coco-voc")
    assert record.label_space == "coco" and record.classes == COCO_CLASSES
    assert record.train_splits == ("train", "voc_train") and record.extra_tests == ("voc_val",)
    assert record.sources == () and "ifss coco-voc" in record.how_to_make("DIR")
    task = get_task("coco-voc", "voc")
    assert task.num_steps == 2 and task.label_space == "coco"
    assert list(task.steps[1]) == WILSON_VOC_IDS
    assert len(task.steps[0]) == 60 and not set(task.steps[0]) & set(WILSON_VOC_IDS)
    assert sorted(task.steps[0] + task.steps[1]) == list(COCO_IDS)
    assert list(task.steps[0]) == sorted(task.steps[0])
    # COCO-stuff ids + 1 of the research notes: {8, 10, 11, 13, 14, 15, 22-25, ...}
    assert task.steps[0][:10] == (8, 10, 11, 13, 14, 15, 22, 23, 24, 25)


# ------------------------------------------------------------------------------ the converter


def test_build_relabels_links_and_lists(trees):
    coco, voc, out = trees
    assert build_coco_voc(coco, voc, out, workers=2) == out
    record = get_dataset("coco-voc")
    layout = layout_for("coco-voc", out)
    layout.check()
    # every VOC id becomes its COCO id, 0 and 255 stay
    expected = np.vectorize(expected_coco_id)(ALL_VOC)
    for split, i in (("voc_train", "2007_000001"), ("voc_val", "2007_000011")):
        got = _label(layout.label_path(split, i))
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
    person = _label(layout.label_path("voc_train", "2008_000003"))  # from a palette PNG
    assert set(np.unique(person)) == {0, 1}
    # images and COCO labels: links to the inputs' folders, no copies
    for split, src in (("train", coco / "images/train2017"), ("val", coco / "images/val2017"),
                       ("voc_train", voc / "JPEGImages"), ("voc_val", voc / "JPEGImages")):
        link = out / record.folders.images[split]
        assert link.is_symlink() and link.resolve() == src.resolve()
        for i in layout.ids(split):
            assert os.path.samefile(layout.image_path(split, i), src / f"{i}.jpg")
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        link = out / record.folders.labels[split]
        assert link.is_symlink() and link.resolve() == (coco / "annotations" / folder).resolve()
    assert not (out / "voc" / "SegmentationClassAugAsCoco").is_symlink()
    # id lists
    assert layout.ids("train") == list(COCO_TRAIN) and layout.ids("val") == list(COCO_VAL)
    assert layout.ids("voc_train") == list(VOC_TRAIN) and layout.ids("voc_val") == list(VOC_VAL)
    marker = json.loads((out / MARKER).read_text())
    assert marker["complete"] and marker["dataset"] == "coco-voc"
    assert marker["from"] == {"coco": str(coco.resolve()), "voc": str(voc.resolve())}


def test_marker_is_written_last_and_an_incomplete_output_is_rebuilt(trees, monkeypatch):
    coco, voc, out = trees
    write_lines = coco_voc.write_lines

    def fail_on_last_list(path, ids):
        if path.name == "voc_val.txt":
            raise OSError(28, "No space left on device", str(path))
        write_lines(path, ids)

    monkeypatch.setattr(coco_voc, "write_lines", fail_on_last_list)
    with pytest.raises(OSError):
        build_coco_voc(coco, voc, out)
    assert (out / "split" / "voc_train.txt").is_file() and not (out / MARKER).exists()
    monkeypatch.undo()
    # a label spoiled in the interrupted output is rewritten by the rebuild
    spoiled = out / "voc" / "SegmentationClassAugAsCoco" / "2007_000001.png"
    _save_png(spoiled, np.zeros((2, 11), np.uint8))
    build_coco_voc(coco, voc, out)
    assert np.array_equal(_label(spoiled), np.vectorize(expected_coco_id)(ALL_VOC))
    assert json.loads((out / MARKER).read_text())["complete"]


def test_rerun_over_a_complete_output_does_nothing(trees, monkeypatch):
    coco, voc, out = trees
    build_coco_voc(coco, voc, out)
    before = _tree_state(out)

    def no_work(*args, **kwargs):
        raise AssertionError("a complete output was written again")

    for name in ("_relabel", "_link_folder", "write_lines", "write_text_atomic"):
        monkeypatch.setattr(coco_voc, name, no_work)
    assert build_coco_voc(coco, voc, out) == out
    assert _tree_state(out) == before
    monkeypatch.undo()
    other = make_voc(out.parent / "voc2")
    with pytest.raises(IfssError, match=r"was built from .*; delete .* to build it from these"):
        build_coco_voc(coco, other, out)


@pytest.mark.parametrize("spoil, message", [
    (lambda coco, voc: os.rename(coco, coco.with_name("gone")),
     r"the coco folder .*/coco \(--coco\) does not exist; prepare it with `ifss download coco "
     r"--root DIR` and pass --coco DIR/coco"),
    (lambda coco, voc: os.rename(voc, voc.with_name("gone")),
     r"the voc folder .*/voc \(--voc\) does not exist; prepare it with `ifss download voc"),
    (lambda coco, voc: (coco / "split" / "val.txt").unlink(),
     r"the coco val id list .*/coco/split/val.txt is missing; prepare it with"),
    (lambda coco, voc: (voc / "ImageSets/Segmentation/train_aug.txt").unlink(),
     r"the voc train id list .*/train_aug.txt is missing; prepare it with `ifss download voc"),
    (lambda coco, voc: os.rename(coco / "annotations", coco / "labels"),
     r"the coco train label folder .*/annotations/train2017 is missing"),
])
def test_missing_inputs_fail_before_anything_is_written(trees, spoil, message):
    coco, voc, out = trees
    spoil(coco, voc)
    with pytest.raises(IfssError, match=message):
        build_coco_voc(coco, voc, out)
    assert not out.exists()


def test_a_label_value_that_is_no_voc_class_is_named(trees):
    coco, voc, out = trees
    _save_png(voc / "SegmentationClassAug" / "2007_000002.png", np.full((2, 11), 21, np.uint8))
    with pytest.raises(IfssError, match=r"VOC label file .*2007_000002.png holds value\(s\) "
                                        r"\[21\], which are no VOC class id"):
        build_coco_voc(coco, voc, out)
    assert not (out / MARKER).exists()


def test_cli(trees, capsys):
    coco, voc, out = trees
    assert main(["coco-voc", "--coco", str(coco), "--voc", str(voc), "--out", str(out)]) == 0
    assert (out / MARKER).is_file()
    assert main(["coco-voc", "--coco", str(coco.parent / "nope"), "--voc", str(voc),
                 "--out", str(out.parent / "x")]) == 2
    assert "the coco folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the task's images


def test_step0_drops_every_coco_image_with_a_voc_class(trees):
    coco, voc, out = trees
    build_coco_voc(coco, voc, out)
    task = get_task("coco-voc", "voc")
    layout = layout_for("coco-voc", out)
    train = build_image_classes(layout, "train", task.label_space)
    step0 = [i for i, cs in train.items() if keeps_image(cs, task, 0, "disjoint")]
    assert step0 == ["000000000001", "000000000005"]
    assert all(set(train[i]) & set(WILSON_VOC_IDS) for i in set(train) - set(step0))
    # step 1 trains on VOC relabelled to COCO ids: every image enters
    voc_train = build_image_classes(layout, "voc_train", task.label_space)
    assert voc_train["2007_000002"] == [0, 1]  # person is COCO 1
    assert all(keeps_image(cs, task, 1, "disjoint") for cs in voc_train.values())


# ------------------------------------------------------------------------------ workflow

DERIVED = {
    "datasets": {
        "coco": {"source": "download", "root": "data/coco"},
        "voc": {"source": "download", "root": "data/voc"},
        "coco-voc": {"source": "derived"},
    },
    "methods": {"FT": None},
    "tables": {"wilson": {"kind": "continual", "dataset": "coco-voc", "tasks": ["voc"],
                          "protocols": ["disjoint"], "methods": ["FT"],
                          "extra_tests": {"voc_val": ["new"]}}},
}


def _load(edit=None) -> Matrix:
    cfg = copy.deepcopy(DERIVED)
    if edit:
        edit(cfg)
    return Matrix.load(cfg, ROOT, SCHEMA)


def test_workflow_derived_dataset():
    matrix = _load()
    assert matrix.datasets["coco-voc"]["from"] == {"coco": "coco", "voc": "voc"}  # default
    assert matrix.datasets["coco-voc"]["root"] == "data/coco-voc"
    assert matrix.dataset_marker("coco-voc") == f"data/coco-voc/{MARKER}"
    assert matrix.derived_inputs("coco-voc") == {"coco": f"data/coco/{MARKER}",
                                                 "voc": f"data/voc/{MARKER}"}
    assert matrix.derived_args("coco-voc") == "--coco data/coco --voc data/voc"
    # step 0 trains on COCO "train" (the explicit index); step 1 on voc_train (the cache)
    assert "data.class_index" in matrix.dataset_keys("coco-voc", 0)
    assert "data.class_index" not in matrix.dataset_keys("coco-voc", 1)
    assert "data.class_index" in matrix.dataset_keys("voc", 1)
    assert matrix.table_spec("wilson")["extra_tests"] == {"voc_val": ["new"]}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"].pop("voc"),
     "datasets.coco-voc.from.voc: 'voc' is not under datasets (configured: coco, coco-voc); add "
     "a voc entry"),
    (lambda c: c["datasets"]["coco-voc"].update({"from": {"voc": "coco"}}),
     "datasets.coco-voc.from.voc: 'coco' is no voc dataset"),
    (lambda c: c["datasets"]["coco-voc"].update({"from": {"vco": "voc"}}),
     "unknown config key 'vco' under datasets.coco-voc.from"),
    (lambda c: c["datasets"]["voc"].update(source="derived"),
     "datasets.voc.source: voc is not built from other datasets (derived datasets: coco-voc)"),
    (lambda c: c["datasets"]["voc"].update({"from": {"coco": "coco"}}),
     "datasets.voc.from: only a dataset with source derived is built from others; remove it"),
    (lambda c: c["datasets"]["coco-voc"].update(source="download"),
     "datasets.coco-voc.source: coco-voc has nothing to download; set it to derived"),
    (lambda c: c["tables"]["wilson"].update(extra_tests={"val": ["new"]}),
     "tables.wilson.extra_tests: 'val' is no extra test of dataset 'coco-voc' (its extra tests: "
     "voc_val); remove it"),
    (lambda c: c["tables"]["wilson"].update(extra_tests={"voc_val": ["novel"]}),
     "config key 'tables.wilson.extra_tests.voc_val.0': 'novel' is not one of"),
    (lambda c: c["tables"].update(f={"dataset": "voc", "tasks": ["5-0"], "methods": ["FT"],
                                     "shots": [1], "ishots": [0],
                                     "extra_tests": {"voc_val": ["new"]}}),
     "tables.f.extra_tests: a few-shot table has no extra_tests; remove it"),
])
def test_workflow_derived_dataset_errors(edit, message):
    with pytest.raises(IfssError) as err:
        _load(edit)
    assert message in str(err.value)


def test_snakemake_plans_the_derived_dataset(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(DERIVED))  # JSON is YAML
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "results/tables/wilson.csv", "-n", "-p", "--configfile", str(config)],
        capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert ("ifss coco-voc --coco data/coco --voc data/voc --out data/coco-voc --workers"
            in out), out[-3000:]
    for rule in ("download_coco", "download_voc", "derive_coco_voc", "class_index", "table"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    commands = [line for line in out.splitlines() if "ifss train " in line]
    step0 = [c for c in commands if "step=0" in c]
    step1 = [c for c in commands if "step=1" in c]
    assert len(step0) == 1 and len(step1) == 1, commands
    assert "data.class_index=resources/splits/coco-voc/class_index.json" in step0[0]
    assert "data.class_index" not in step1[0]


# ------------------------------------------------------------------------------ the table


def _metrics(tmp: Path, method: str, old, new, voc_new, tests=True) -> Path:
    record = {
        "dataset": "coco-voc", "task": "voc", "method": method, "base_method": "FT",
        "step": 1, "num_steps": 2, "nshot": None, "ishot": None,
        "classes": ["background", "truck", "person"], "class_ids": [0, 8, 1],
        "iou": [0.9, old, new], "num_base": 2, "miou_base": old, "miou_novel": new,
        "miou_all": (old + new) / 2, "hm": None, "pixel_accuracy": 0.8, "seed": 42,
        "config": {"data": {"protocol": "disjoint"}},
    }
    if tests:
        record["tests"] = {"voc_val": {"miou_base": 0.5, "miou_novel": voc_new,
                                       "miou_all": 0.6, "hm": None}}
    path = tmp / method / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def test_continual_table_with_an_extra_test_column(tmp_path):
    runs = [_metrics(tmp_path, "FT", 0.398, 0.41, 0.557),
            _metrics(tmp_path, "LWF", 0.367, 0.49, 0.736)]
    files = [tmp_path / name for name in ("t.csv", "t.md", "t_runs.csv", "t_pc.csv")]
    write_continual_tables(runs, *files, methods=["FT", "LWF"], tasks=["voc"],
                           protocols=["disjoint"], title="COCO-to-VOC",
                           extra_tests={"voc_val": ["new"]})
    csv = pd.read_csv(files[0]).set_index("method")
    assert list(csv.columns) == ["voc disjoint old", "voc disjoint new", "voc disjoint all",
                                 "voc disjoint voc_val new"]
    assert csv.loc["FT", "voc disjoint voc_val new"] == 55.7
    assert csv.loc["LWF", "voc disjoint voc_val new"] == 73.6
    assert csv.loc["LWF", "voc disjoint new"] == 49.0
    md = files[1].read_text()
    assert "| voc disjoint all | voc disjoint voc_val new |" in md
    assert "| FT | 39.8 | 41.0 | 40.4 | 55.7 |" in md
    assert "Columns named after a split (voc_val)" in md
    assert pd.read_csv(files[2])["voc_val new"].round(1).tolist() == [55.7, 73.6]
    # without extra_tests: the table as before
    write_continual_tables(runs, *files, tasks=["voc"], protocols=["disjoint"])
    assert len(pd.read_csv(files[0]).columns) == 4  # method + old, new, all


def test_a_run_without_the_extra_test_is_named(tmp_path):
    path = _metrics(tmp_path, "FT", 0.4, 0.4, 0.5, tests=False)
    files = [tmp_path / name for name in ("t.csv", "t.md", "t_runs.csv", "t_pc.csv")]
    with pytest.raises(IfssError, match=r"metrics file .*FT/metrics.json has no "
                                        r"tests.voc_val.miou_novel \(the table's column "
                                        r"`voc_val new`\); rerun its job"):
        write_continual_tables([path], *files, extra_tests={"voc_val": ["new"]})
