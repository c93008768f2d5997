"""ADE20K: the record (classes, tasks, download row) and its reader, on a tiny ADE-layout archive
served from a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ifss.cli import main, parser
from ifss.data import sources
from ifss.data.ade import prepare_ade
from ifss.data.index import build_image_classes
from ifss.data.layout import layout_for
from ifss.data.prepare import fetch_dataset
from ifss.data.records import ADE, ADE_CLASSES, DATASETS, get_dataset
from ifss.errors import IfssError
from ifss.tasks import get_task

TOP = "ADEChallengeData2016"
TRAIN = ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
VAL = ["ADE_val_00000001", "ADE_val_00000002"]
# label values per image: 0 background, 1..150 classes (150 = flag, the last)
VALUES = {TRAIN[0]: (1, 150), TRAIN[1]: (12, 101), TRAIN[2]: (3,), VAL[0]: (150, 7), VAL[1]: (55,)}


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(values: tuple[int, ...]) -> bytes:
    label = np.zeros((8, 8), np.uint8)  # 0 = background ("other")
    for k, v in enumerate(values):
        label[2 * k: 2 * k + 2, 1:7] = v
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return buf.getvalue()


def _tree() -> dict[str, bytes]:
    """Archive members, as ADEChallengeData2016.zip holds them."""
    files = {
        f"{TOP}/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n150\t0.0002\t421\t56\tflag\n",
        f"{TOP}/sceneCategories.txt": b"ADE_train_00000001 airport_terminal\n",
    }
    for split, ids in (("training", TRAIN), ("validation", VAL)):
        for k, i in enumerate(ids):
            files[f"{TOP}/images/{split}/{i}.jpg"] = _jpeg(k)
            files[f"{TOP}/annotations/{split}/{i}.png"] = _png(VALUES[i])
    files[f"__MACOSX/{TOP}/images/training/._{TRAIN[0]}.jpg"] = b"\x00\x05\x16\x07 fork"
    return files


def _write_raw(raw: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(data)


@pytest.fixture
def served(server, monkeypatch):
    """The tiny archive at its URL path on the local server; the row's md5 patched to its own."""
    www, base, httpd = server
    (row,) = sources.SOURCES["ade"]
    path = www / row.url.split("/", 3)[3]
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _tree().items():
            zf.writestr(name, data)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.SOURCES, "ade", (dataclasses.replace(row, md5=md5),))
    return base, httpd


# ------------------------------------------------------------------------------ the record


def test_ade_record_facts():
    assert get_dataset("ade") is ADE and list(DATASETS)[-1] == "ade"
    assert len(ADE_CLASSES) == 151 and len(set(ADE_CLASSES)) == 151
    assert ADE_CLASSES[:6] == ("background", "wall", "building", "sky", "floor", "tree")
    assert ADE_CLASSES[150] == "flag" and ADE_CLASSES[90] == "television"
    assert ADE.label_ids == tuple(range(151)) and ADE.label_space == "ade"
    (row,) = ADE.sources
    assert row.url == "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
    assert row.md5 == "7328b3957e407ddae1d3cbf487f149ef" and "torchbench" in row.md5_source
    assert "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7" in row.md5_source  # the sha1, for reference
    assert parser().parse_args(["download", "ade", "--root", "d"]).dataset == "ade"


def test_ade_continual_tasks():
    ids = tuple(range(1, 151))
    task = get_task("ade", "100-50")
    assert task.steps == (ids[:100], ids[100:])
    assert task.classes_per_step(1) == [101, 50] and task.num_base == 101
    names = task.class_names(1)
    assert names[0] == "background" and names[101] == "poster" and names[-1] == "flag"
    ten = get_task("ade", "100-10")
    assert ten.num_steps == 6 and ten.steps[1] == tuple(range(101, 111))
    assert ten.classes_per_step(5) == [101, 10, 10, 10, 10, 10]
    fifty = get_task("ade", "50-50")
    assert fifty.steps == (ids[:50], ids[50:100], ids[100:])
    for name in ("100-50", "100-10", "50-50", "offline"):
        for order in ("", "b", "c"):
            if name == "offline" and order:
                continue
            steps = get_task("ade", name + order).steps
            flat = [c for s in steps for c in s]
            assert sorted(flat) == list(ids), name + order
            assert [len(s) for s in steps] == [len(s) for s in get_task("ade", name).steps]


@pytest.mark.parametrize("order", ["b", "c"])
def test_ade_shuffled_orders_as_mib_lists_them(order):
    b50, b10, bb = (get_task("ade", f"{t}{order}").steps for t in ("100-50", "100-10", "50-50"))
    # MiB's tables: 100-10x's new classes are 100-50x's, and so are 50-50x's last step
    assert sorted(c for s in b10[1:] for c in s) == list(b50[1]) == list(bb[2])
    assert b10[0] == b50[0]
    first = {"b": (1, 3, 5, 6, 8), "c": (1, 5, 6, 8, 9)}[order]  # MiB's 100-50x step 0 begins so
    assert b50[0][:5] == first and b50[0] == tuple(sorted(b50[0]))
    assert b10[1] == {"b": (11, 16, 50, 64, 66, 73, 89, 92, 145, 146),
                      "c": (3, 4, 7, 18, 39, 64, 73, 101, 113, 137)}[order]


# ------------------------------------------------------------------------------ download + reader


def test_fetch_ade_builds_the_layout(served, tmp_path):
    base, httpd = served
    root = tmp_path / "data"
    out = fetch_dataset("ade", root, mirror=base)
    assert out == root / "ade"
    assert (out / "train.txt").read_text().split() == TRAIN
    assert (out / "val.txt").read_text().split() == VAL
    layout = layout_for("ade", out)
    layout.check()
    assert layout.ids("val") == VAL
    raw = root / "raw" / TOP / TOP
    for split, folder, ids in (("train", "training", TRAIN), ("val", "validation", VAL)):
        for i in ids:
            image, label = layout.image_path(split, i), layout.label_path(split, i)
            assert os.path.samefile(image, raw / "images" / folder / f"{i}.jpg")  # linked
            assert os.path.samefile(label, raw / "annotations" / folder / f"{i}.png")
    # the label space holds 0..150: every value in the files is a class
    classes = build_image_classes(layout, "train", "ade")
    assert classes == {i: sorted({0, *VALUES[i]}) for i in TRAIN}
    marker = json.loads((out / ".ifss-prepared.json").read_text())
    assert marker["complete"] and marker["files"]["ADEChallengeData2016.zip"]["verified"]
    assert not list(out.rglob("*.part")) and not (out / "__MACOSX").exists()

    n = len(httpd.requests)  # prepared: a second call touches nothing
    assert fetch_dataset("ade", root, mirror=base) == out and len(httpd.requests) == n


def test_download_ade_cli_then_resume(served, tmp_path):
    base, httpd = served
    root = tmp_path / "data"
    assert main(["download", "ade", "--root", str(root), "--mirror", base]) == 0
    out = root / "ade"
    layout_for("ade", out).check()
    # as if killed before the end: a list and a link gone, the marker not complete
    (out / ".ifss-prepared.json").write_text('{"source": null, "complete": false}')
    (out / "val.txt").unlink()
    layout_for("ade", out).image_path("train", TRAIN[1]).unlink()
    httpd.requests.clear()
    assert main(["download", "ade", "--root", str(root), "--mirror", base]) == 0
    assert httpd.requests == []  # the verified download is reused
    assert (out / "val.txt").read_text().split() == VAL
    assert layout_for("ade", out).image_path("train", TRAIN[1]).is_file()


def test_fetch_ade_refuses_a_wrong_checksum(served, tmp_path, monkeypatch, capsys):
    base, _ = served
    (row,) = sources.SOURCES["ade"]
    monkeypatch.setitem(sources.SOURCES, "ade", (dataclasses.replace(row, md5="0" * 32),))
    root = tmp_path / "data"
    with pytest.raises(IfssError, match=r"Checksum mismatch for ADEChallengeData2016\.zip"):
        fetch_dataset("ade", root, mirror=base)
    assert main(["download", "ade", "--root", str(root), "--mirror", base]) == 2
    assert "expected md5 " + "0" * 32 in capsys.readouterr().err
    assert not (root / "downloads" / "ADEChallengeData2016.zip").exists()
    assert not list((root / "downloads").glob("*.part"))
    assert not (root / "raw").exists() and not (root / "ade").exists()


def test_image_without_label_is_refused(tmp_path):
    files = _tree()
    del files[f"{TOP}/annotations/training/{TRAIN[1]}.png"]
    _write_raw(tmp_path / "raw", files)
    out = tmp_path / "ade"
    with pytest.raises(IfssError, match=rf"image .*{TRAIN[1]}\.jpg has no label .*{TRAIN[1]}\.png"):
        prepare_ade(tmp_path / "raw", out)
    assert not out.exists()  # checked before anything was written


@pytest.mark.parametrize("missing", ["annotations/validation", "images/training"])
def test_missing_folder_is_named(tmp_path, missing):
    files = {k: v for k, v in _tree().items() if not k.startswith(f"{TOP}/{missing}/")}
    _write_raw(tmp_path / "raw", files)
    with pytest.raises(IfssError, match=rf"folder .*{TOP}/{missing} is missing"):
        prepare_ade(tmp_path / "raw", tmp_path / "ade")
    assert not (tmp_path / "ade").exists()


def test_no_ade_tree_is_named(tmp_path):
    _write_raw(tmp_path / "raw", {"something/else.txt": b"x"})
    with pytest.raises(IfssError, match=f"No {TOP}/ folder"):
        prepare_ade(tmp_path / "raw", tmp_path / "ade")


def test_prepare_in_place_writes_only_the_lists(tmp_path):
    """An ADEChallengeData2016/ already in the data folder (mmsegmentation's data/ade/)."""
    data = tmp_path / "ade"
    _write_raw(data, {k: v for k, v in _tree().items() if k.startswith(TOP)})
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert prepare_ade(data, data) == data
    after = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert sorted(set(after) - set(before)) == [Path("train.txt"), Path("val.txt")]
    layout_for("ade", data).check()


def test_label_outside_the_label_space_is_refused(tmp_path):
    files = _tree()
    files[f"{TOP}/annotations/training/{TRAIN[2]}.png"] = _png((151,))
    _write_raw(tmp_path / "raw", files)
    layout = layout_for("ade", prepare_ade(tmp_path / "raw", tmp_path / "ade"))
    with pytest.raises(IfssError, match=rf"{TRAIN[2]}\.png holds value\(s\) \[151\]"):
        build_image_classes(layout, "train", "ade")
