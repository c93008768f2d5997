"""Issue 11, data part: a class index is used only while it matches the list and labels it was
made from; `ifss convert-coco` records which source wrote the labels and refuses another."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from ifss.cli import main
from ifss.data.index import INDEX_VERSION, load_image_classes
from ifss.data.layout import layout_for
from ifss.errors import IfssError

LIST = "ImageSets/Segmentation/train_aug.txt"


@pytest.fixture
def root(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset (copy2 keeps the files' mtimes)."""
    dst = tmp_path / "synthetic"
    shutil.copytree(synth_root, dst, ignore=shutil.ignore_patterns(".ifss"))
    return dst


def _ids(root: Path) -> list[str]:
    return (root / LIST).read_text().split()


def _add_train_image(root: Path) -> str:
    """A new train id (a copy of the first val image and label) appended to train_aug.txt."""
    layout = layout_for("synthetic", root)
    src = layout.ids("val")[0]
    shutil.copyfile(layout.image_path("val", src), layout.image_path("train", "added_0001"))
    shutil.copyfile(layout.label_path("val", src), layout.label_path("train", "added_0001"))
    with open(root / LIST, "a") as f:
        f.write("added_0001\n")
    return "added_0001"


def _repaint(root: Path, image_classes: dict, old: int, new: int, **save) -> str:
    """Paint class `old` as `new` in the first train label holding `old`; that label's id."""
    layout = layout_for("synthetic", root)
    image_id = next(i for i, cs in image_classes.items() if old in cs and new not in cs)
    path = layout.label_path("train", image_id)
    label = np.array(Image.open(path))
    label[label == old] = new
    Image.fromarray(label).save(path, **save)
    return image_id


def _load(root: Path, index: str | Path = "") -> dict:
    return load_image_classes(layout_for("synthetic", root), "train", "voc", index)


# ---------------------------------------------------------------------------------------------
# the cache beside the data: rebuilt, with one log line saying why


def test_cache_rebuilt_when_an_id_is_added(root, caplog):
    before = _load(root)
    n = len(before)
    added = _add_train_image(root)
    caplog.clear()  # records of the first load count too when the logger is already at INFO
    with caplog.at_level(logging.INFO, logger="ifss"):
        after = _load(root)
    assert added in after and len(after) == n + 1
    assert after[added] == sorted(set(np.unique(np.array(Image.open(
        layout_for("synthetic", root).label_path("train", added))))) - {255})
    lines = [r.getMessage() for r in caplog.records if "class index" in r.getMessage()]
    assert len(lines) == 1 and f"{LIST} has {n + 1} ids, the index {n}" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ifss"):
        assert _load(root) == after  # up to date now: read, not rebuilt
    assert not caplog.records


def test_cache_rebuilt_when_the_list_is_cut(root):
    _load(root)
    ids = _ids(root)
    (root / LIST).write_text("".join(f"{i}\n" for i in ids[:20]))
    assert list(_load(root)) == ids[:20]
    (root / LIST).write_text("".join(f"{i}\n" for i in reversed(ids[:20])))  # same ids, new order
    assert list(_load(root)) == ids[:20][::-1]


def test_emptied_list_names_the_list(root):
    _load(root)
    (root / LIST).write_text("")
    with pytest.raises(IfssError, match=r"id list .*train_aug.txt (is empty|lists no image)"):
        _load(root)


def test_cache_rebuilt_when_a_label_is_repainted(root, caplog):
    before = _load(root)
    image_id = _repaint(root, before, 15, 16)
    with caplog.at_level(logging.INFO, logger="ifss"):
        after = _load(root)
    assert 15 not in after[image_id] and 16 in after[image_id]
    assert f"{image_id}.png changed since the index was made" in caplog.text


def test_same_size_same_mtime_edit_of_a_fresh_label_is_caught(root):
    """A label written just before the index (the same timestamp tick) is hashed as well."""
    layout = layout_for("synthetic", root)
    image_classes = _load(root)
    image_id = next(i for i, cs in image_classes.items() if 15 in cs and 16 not in cs)
    path = layout.label_path("train", image_id)
    label = np.array(Image.open(path))
    Image.fromarray(label).save(path, compress_level=0)  # stored: size depends only on H x W
    assert 15 in _load(root)[image_id]  # rebuilt: this file is new, so racy, so hashed
    st = path.stat()
    label[label == 15] = 16
    Image.fromarray(label).save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert 16 in _load(root)[image_id] and 15 not in _load(root)[image_id]


def test_old_cache_without_fingerprint_is_rebuilt(root):
    cache = root / ".ifss" / "image_classes_train.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({"version": 1, "split": "train", "image_classes": {"x": [1]}}))
    assert list(_load(root)) == list(dict.fromkeys(_ids(root)))
    assert json.loads(cache.read_text())["version"] == INDEX_VERSION
    cache.write_text('{"version": 2, "split": "tr')  # cut short by hand: also rebuilt
    assert len(_load(root)) == len(_ids(root))


# ---------------------------------------------------------------------------------------------
# an explicit data.class_index (made by `ifss splits`): refused when stale, with the fix


def _splits(root: Path, out: Path) -> int:
    return main(["splits", "--dataset", "synthetic", "--root", str(root), "--out", str(out)])


def _train(root: Path, index: Path, run: Path) -> int:
    sets = tiny_overrides(root) + [f"data.class_index={index}"]
    return main(["train", *[a for s in sets for a in ("--set", s)], "--out", str(run)])


def test_explicit_index_with_an_added_id_is_refused(root, tmp_path, capsys):
    index = tmp_path / "splits" / "class_index.json"
    assert _splits(root, index) == 0
    n = len(json.loads(index.read_text())["image_classes"])
    added = _add_train_image(root)
    made = index.read_text()
    assert _train(root, index, tmp_path / "run") == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ifss: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"ifss: error: class index {index} ")
    err = errors[0]
    assert f"{LIST} has {n + 1} ids, the index {n}" in err
    assert re.search(rf"`ifss splits --dataset (DATASET|synthetic) --root {re.escape(str(root))} "
                     rf"--out {re.escape(str(index))}`", err)  # synthetic once cli.py passes it
    assert index.read_text() == made  # refused, not rewritten
    assert _splits(root, index) == 0  # the fix
    assert added in _load(root, index)


def test_explicit_index_with_a_repainted_label_is_refused(root, tmp_path, capsys):
    index = tmp_path / "class_index.json"
    assert _splits(root, index) == 0
    image_id = _repaint(root, json.loads(index.read_text())["image_classes"], 15, 16)
    with pytest.raises(IfssError, match=rf"label file .*{image_id}.png changed since the index "
                       r"was made; rebuild it with `ifss splits"):
        _load(root, index)
    assert _splits(root, index) == 0
    assert 16 in _load(root, index)[image_id]


@pytest.mark.parametrize("change, message", [
    ("cut", r"ImageSets/Segmentation/train_aug.txt has 20 ids, the index \d+"),
    ("old", r"it has index format 1 \(this ifss writes 2"),
    ("split", r"it indexes the 'val' split, not 'train'"),
    ("garbage", r"it is not a class index"),
    ("removed_label", r"label file .*\.png is missing"),
])
def test_explicit_index_stale_cases(root, tmp_path, change, message):
    index = tmp_path / "class_index.json"
    assert _splits(root, index) == 0
    data = json.loads(index.read_text())
    if change == "cut":
        (root / LIST).write_text("".join(f"{i}\n" for i in _ids(root)[:20]))
    elif change == "old":
        index.write_text(json.dumps({"version": 1, "split": "train",
                                     "image_classes": data["image_classes"]}))
    elif change == "split":
        index.write_text(json.dumps({**data, "split": "val"}))
    elif change == "garbage":
        index.write_text("{not json")
    else:
        layout_for("synthetic", root).label_path("train", _ids(root)[3]).unlink()
    with pytest.raises(IfssError, match=rf"class index .* \(data.class_index\) does not match "
                       rf"the data in .*: {message}"):
        _load(root, index)


def test_explicit_index_moved_with_its_data_still_matches(root, tmp_path):
    """Paths are relative to the root and mtimes survive a copy that keeps them."""
    index = tmp_path / "class_index.json"
    assert _splits(root, index) == 0
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert _load(moved, index) == json.loads(index.read_text())["image_classes"]


# ---------------------------------------------------------------------------------------------
# convert-coco: the label source is recorded; another source is refused


def _coco_raw(raw: Path) -> None:
    """COCO images, instance JSONs and COCO-Stuff maps of the same three 6 x 8 images: a crowd
    region over rows 1..2, cols 1..2 (stuff map: thing 0 there), pixel (5, 7) unlabeled."""
    from test_prepare import _stuff_raw

    _stuff_raw(raw)  # images + stuff maps: thing k at [1:3, 1:3], stuff elsewhere, 255 at (5, 7)
    ann_dir = raw / "annotations_trainval2017" / "annotations"
    ann_dir.mkdir(parents=True)
    for folder, stems in (("train2017", ["000000000009", "000000000025"]),
                          ("val2017", ["000000000139"])):
        images = [{"id": int(s), "file_name": f"{s}.jpg", "height": 6, "width": 8} for s in stems]
        anns = [{"id": 100 + int(s), "image_id": int(s), "category_id": 1, "iscrowd": 1,
                 "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]} for s in stems]
        (ann_dir / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))


def _convert(raw: Path, out: Path, source: str) -> int:
    return main(["convert-coco", "--raw", str(raw), "--out", str(out), "--source", source])


def _labels(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "annotations").rglob("*.png"))}


def test_convert_coco_refuses_another_source(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "coco"
    _coco_raw(raw)
    assert _convert(raw, out, "instances") == 0
    record = json.loads((out / "annotations/.ifss-labels.json").read_text())
    assert record == {"source": "instances", "complete": True}
    label = np.asarray(Image.open(out / "annotations/train2017/000000000009.png"))
    assert label[1, 1] == 255 and label[5, 7] == 0  # crowd void, unlabeled background
    kept = _labels(out)
    capsys.readouterr()

    assert _convert(raw, out, "stuffthingmaps") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (f"ifss: error: {out / 'annotations'} holds COCO labels converted from "
                   f"'instances', not from 'stuffthingmaps'; remove {out / 'annotations'} to "
                   "convert again from 'stuffthingmaps', or convert into a new --out.")
    assert _labels(out) == kept
    assert json.loads((out / "annotations/.ifss-labels.json").read_text()) == record

    assert _convert(raw, out, "instances") == 0  # the same source again: nothing to do
    assert _labels(out) == kept

    shutil.rmtree(out / "annotations")  # the fix the sentence gives
    assert _convert(raw, out, "stuffthingmaps") == 0
    label = np.asarray(Image.open(out / "annotations/train2017/000000000009.png"))
    assert label[1, 1] == 1 and label[5, 7] == 255 and label[0, 0] == 0
    assert json.loads((out / "annotations/.ifss-labels.json").read_text())["source"] == \
        "stuffthingmaps"


def test_interrupted_conversion_does_not_look_complete(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "coco"
    _coco_raw(raw)
    bad = raw / "stuffthingmaps_trainval2017/val2017/000000000139.png"
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # fails after the train labels are written
    assert _convert(raw, out, "stuffthingmaps") == 2
    assert (out / "annotations/train2017/000000000009.png").is_file()
    assert json.loads((out / "annotations/.ifss-labels.json").read_text())["complete"] is False
    assert not (out / "split").exists()  # no id list: readers see an unfinished dataset
    with pytest.raises(IfssError, match="id list .*split/train.txt is missing"):
        layout_for("coco", out).check()
    capsys.readouterr()
    assert _convert(raw, out, "instances") == 2  # half of it is stuffthingmaps already
    assert "from 'stuffthingmaps', not from 'instances'" in capsys.readouterr().err
    bad.write_bytes(good)
    assert _convert(raw, out, "stuffthingmaps") == 0  # resumes
    assert json.loads((out / "annotations/.ifss-labels.json").read_text())["complete"] is True
    layout_for("coco", out).check()


def test_labels_without_a_record_are_not_overwritten(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "coco"
    _coco_raw(raw)
    assert _convert(raw, out, "instances") == 0
    (out / "annotations/.ifss-labels.json").unlink()  # as an older ifss left it
    kept = _labels(out)
    assert _convert(raw, out, "stuffthingmaps") == 2
    assert "COCO labels of an unrecorded source" in capsys.readouterr().err
    assert _labels(out) == kept
