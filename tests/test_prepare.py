"""ifss.data.prepare on tiny VOC / COCO trees, fetched from a local HTTP server where it matters."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ifss.data import sources
from ifss.data.prepare import (
    COCO_STUFF_TO_OBJECT, UnverifiedDownloadWarning, coco_instance_label, fetch_dataset,
    prepare_coco, stuff_to_object_labels,
)
from ifss.errors import IfssError


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(label: np.ndarray, palette: bool = False) -> bytes:
    im = Image.fromarray(label.astype(np.uint8))
    if palette:  # like VOC's SegmentationClass: indices are the labels, colours are a palette
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        assert im.mode == "P"
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _label(value: int) -> np.ndarray:
    lab = np.zeros((6, 8), np.uint8)
    lab[1:4, 2:6] = value
    lab[0, :] = 255
    return lab


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def _serve_sources(www: Path, dataset: str, files: dict[str, dict[str, bytes]], monkeypatch,
                   kind: dict[str, str]) -> None:
    """Write each source archive at its URL path under `www`; patch the md5s to the real ones."""
    rows = []
    for row in sources.SOURCES[dataset]:
        if row.name in files:
            path = www / row.url.split("/", 3)[3]
            (_write_tar if kind[row.name] == "tar" else _write_zip)(path, files[row.name])
            row = dataclasses.replace(row, md5=hashlib.md5(path.read_bytes()).hexdigest())
        rows.append(row)
    monkeypatch.setitem(sources.SOURCES, dataset, tuple(rows))


# ---------------------------------------------------------------------------------------------
# VOC

TRAIN = ["2007_000032", "2008_000001", "2011_003276"]
VAL = ["2007_000033", "2010_000002"]


def _voc_files() -> dict[str, dict[str, bytes]]:
    ids = TRAIN + VAL
    devkit = {f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)}
    devkit["VOCdevkit/VOC2012/JPEGImages/2012_999999.jpg"] = _jpeg(99)  # in no list
    devkit.update({f"VOCdevkit/VOC2012/SegmentationClass/{i}.png": _png(_label(7 + k), palette=True)
                   for k, i in enumerate(VAL)})
    devkit["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = "".join(f"{i}\n" for i in VAL).encode()
    devkit["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = f"{TRAIN[0]}\n".encode()
    # SBD labels for every id but the last val one (that one falls back to the devkit's label)
    aug = {f"SegmentationClassAug/{i}.png": _png(_label(k + 1)) for k, i in enumerate(ids[:-1])}
    aug[f"__MACOSX/SegmentationClassAug/._{ids[0]}.png"] = b"\x00\x05\x16\x07 resource fork"
    # train_aug lists a val id too: it must be dropped from train
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in TRAIN + VAL[:1]]
    lists = {"list/train_aug.txt": "".join(lines).encode(), "list/val.txt": b"ignored\n"}
    return {"VOCtrainval_11-May-2012.tar": devkit, "SegmentationClassAug.zip": aug,
            "list.zip": lists}


VOC_KIND = {"VOCtrainval_11-May-2012.tar": "tar", "SegmentationClassAug.zip": "zip", "list.zip": "zip"}


def test_fetch_voc_builds_the_layout(server, tmp_path, monkeypatch):
    www, base, httpd = server
    _serve_sources(www, "voc", _voc_files(), monkeypatch, VOC_KIND)
    root = tmp_path / "data"
    out = fetch_dataset("voc", root, mirror=base)
    assert out == root / "voc"
    seg = out / "ImageSets" / "Segmentation"
    assert (seg / "train_aug.txt").read_text().split() == TRAIN
    assert (seg / "val.txt").read_text().split() == VAL
    assert sorted(p.stem for p in (out / "JPEGImages").iterdir()) == sorted(TRAIN + VAL)
    assert sorted(p.stem for p in (out / "SegmentationClassAug").iterdir()) == sorted(TRAIN + VAL)
    for k, i in enumerate(TRAIN + VAL):
        image = out / "JPEGImages" / f"{i}.jpg"
        raw = root / "raw/VOCtrainval_11-May-2012/VOCdevkit/VOC2012/JPEGImages" / f"{i}.jpg"
        assert os.path.samefile(image, raw)  # linked, not copied
        label = np.asarray(Image.open(out / "SegmentationClassAug" / f"{i}.png"))
        expected = _label(7 + 1) if i == VAL[-1] else _label(k + 1)  # last val: devkit palette PNG
        assert label.dtype == np.uint8 and label.ndim == 2
        np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) <= set(range(21)) | {255}
    # downloads verified, raw extracted, marker written last
    assert sorted(p.name for p in (root / "downloads").iterdir()) == sorted(VOC_KIND)
    marker = json.loads((out / ".ifss-prepared.json").read_text())
    assert marker["dataset"] == "voc" and marker["complete"]
    assert all(f["verified"] for f in marker["files"].values())

    # idempotent: a second call touches neither the network nor the files
    n = len(httpd.requests)
    assert fetch_dataset("voc", root, mirror=_dead_url()) == out
    assert fetch_dataset("voc", root, mirror=base) == out
    assert len(httpd.requests) == n


def test_fetch_voc_resumes_after_interrupted_prepare(server, tmp_path, monkeypatch):
    www, base, httpd = server
    _serve_sources(www, "voc", _voc_files(), monkeypatch, VOC_KIND)
    root = tmp_path / "data"
    fetch_dataset("voc", root, mirror=base)
    # as if killed before the end: outputs partly there, downloads and raw complete
    (root / "voc" / ".ifss-prepared.json").write_text('{"source": null, "complete": false}')
    (root / "voc" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    (root / "voc" / "JPEGImages" / f"{TRAIN[1]}.jpg").unlink()
    httpd.requests.clear()
    fetch_dataset("voc", root, mirror=base)
    assert httpd.requests == []  # verified downloads are reused
    assert (root / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == VAL
    assert (root / "voc" / "JPEGImages" / f"{TRAIN[1]}.jpg").is_file()


def test_unverified_source_warns_with_its_md5(server, tmp_path, monkeypatch):
    www, base, _ = server
    _serve_sources(www, "voc", _voc_files(), monkeypatch, VOC_KIND)
    rows = tuple(dataclasses.replace(r, md5=None) if r.name == "list.zip" else r
                 for r in sources.SOURCES["voc"])
    monkeypatch.setitem(sources.SOURCES, "voc", rows)
    real = hashlib.md5((www / "~cxliu/data/list.zip").read_bytes()).hexdigest()
    with pytest.warns(UnverifiedDownloadWarning, match=real):
        fetch_dataset("voc", tmp_path / "data", mirror=base)


def test_fetch_with_wrong_checksum_fails_cleanly(server, tmp_path, monkeypatch):
    www, base, _ = server
    _serve_sources(www, "voc", _voc_files(), monkeypatch, VOC_KIND)
    rows = tuple(dataclasses.replace(r, md5="0" * 32) if r.name == "list.zip" else r
                 for r in sources.SOURCES["voc"])
    monkeypatch.setitem(sources.SOURCES, "voc", rows)
    root = tmp_path / "data"
    with pytest.raises(IfssError, match="list.zip"):
        fetch_dataset("voc", root, mirror=base)
    assert not (root / "downloads" / "list.zip").exists()
    assert not (root / "raw" / "list").exists() and not (root / "voc").exists()


def test_fetch_rejects_bad_arguments(tmp_path):
    with pytest.raises(IfssError, match="cityscapes"):
        fetch_dataset("cityscapes", tmp_path)
    with pytest.raises(IfssError, match="panoptic"):
        fetch_dataset("coco", tmp_path, coco_source="panoptic")
    with pytest.raises(IfssError, match="mirror"):
        fetch_dataset("voc", tmp_path, mirror="127.0.0.1:8000")


def test_sources_table_is_well_formed():
    for dataset, rows in sources.SOURCES.items():
        for row in rows:
            assert row.url.endswith("/" + row.name)
            assert row.md5 is None or (len(row.md5) == 32 and int(row.md5, 16) >= 0)
            assert row.md5 is None or row.md5_source
    assert {f.name for f in sources.files_for("coco", "instances")} == {
        "train2017.zip", "val2017.zip", "annotations_trainval2017.zip"}
    assert {f.name for f in sources.files_for("coco", "stuffthingmaps")} == {
        "train2017.zip", "val2017.zip", "stuffthingmaps_trainval2017.zip"}


# ---------------------------------------------------------------------------------------------
# COCO


def test_stuff_lut():
    arr = np.array([[0, 90, 91], [181, 255, 5], [182, 254, 44]], np.uint8)
    np.testing.assert_array_equal(stuff_to_object_labels(arr),
                                  [[1, 91, 0], [0, 255, 6], [0, 0, 45]])
    assert COCO_STUFF_TO_OBJECT.dtype == np.uint8 and COCO_STUFF_TO_OBJECT.shape == (256,)


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


H, W = 20, 24
ANNS = [  # image 1; listed small-first on purpose: painting order must come from the areas
    {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": _square(4, 4, 10, 10)},
    {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _square(1, 1, 15, 15)},
    # crowd person over columns 16..23 (uncompressed column-major RLE), partly under a bottle
    {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1,
     "segmentation": {"counts": [16 * H, 8 * H], "size": [H, W]}},
    {"id": 13, "image_id": 1, "category_id": 44, "iscrowd": 0, "segmentation": _square(17, 1, 22, 6)},
    {"id": 14, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": [[1, 1, 2, 2]]},  # degenerate
    {"id": 15, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": []},
]


def _check_instance_label(label):
    assert label.shape == (H, W) and label.dtype == np.uint8
    assert label[7, 7] == 3  # small car on top of the large person
    assert label[2, 2] == 1 and label[13, 13] == 1  # person
    assert label[18, 2] == 0 and label[0, 0] == 0  # background
    assert label[15, 20] == 255  # crowd only
    assert label[3, 19] == 44  # object over crowd
    assert set(np.unique(label)) == {0, 1, 3, 44, 255}


def test_coco_instance_label():
    _check_instance_label(coco_instance_label(ANNS, H, W))
    assert not coco_instance_label([], 3, 4).any()
    with pytest.raises(IfssError, match="category_id"):
        coco_instance_label([{"id": 1, "category_id": 300, "segmentation": _square(0, 0, 2, 2)}], 4, 4)


def _coco_instances_json(split_images: list[tuple[int, str]], anns: list[dict]) -> bytes:
    return json.dumps({
        "images": [{"id": i, "file_name": f"{s}.jpg", "height": H, "width": W} for i, s in split_images],
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in (1, 3, 44, 90)],
    }).encode()


def test_prepare_coco_from_instances(tmp_path):
    raw = tmp_path / "raw"
    train = [(1, "000000000001"), (2, "000000000002")]
    val = [(7, "000000000007")]
    for folder, images in (("train2017", train), ("val2017", val)):
        d = raw / folder / folder
        d.mkdir(parents=True)
        for k, (_, stem) in enumerate(images):
            (d / f"{stem}.jpg").write_bytes(_jpeg(k))
    ann_dir = raw / "annotations_trainval2017" / "annotations"
    ann_dir.mkdir(parents=True)
    (ann_dir / "instances_train2017.json").write_bytes(_coco_instances_json(train, ANNS))
    val_anns = [{"id": 99, "image_id": 7, "category_id": 90, "iscrowd": 0,
                 "segmentation": _square(2, 2, 8, 8)}]
    (ann_dir / "instances_val2017.json").write_bytes(_coco_instances_json(val, val_anns))

    out = prepare_coco(raw, tmp_path / "coco", workers=2)
    assert (out / "split" / "train.txt").read_text().split() == ["000000000001", "000000000002"]
    assert (out / "split" / "val.txt").read_text().split() == ["000000000007"]
    _check_instance_label(np.asarray(Image.open(out / "annotations/train2017/000000000001.png")))
    assert not np.asarray(Image.open(out / "annotations/train2017/000000000002.png")).any()
    val_label = np.asarray(Image.open(out / "annotations/val2017/000000000007.png"))
    assert val_label[5, 5] == 90 and val_label[15, 15] == 0
    assert os.path.samefile(out / "images/val2017/000000000007.jpg",
                            raw / "val2017/val2017/000000000007.jpg")
    assert not list(out.rglob("*.part"))


def _stuff_raw(raw: Path) -> None:
    for folder, stems in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        images, maps = raw / folder / folder, raw / "stuffthingmaps_trainval2017" / folder
        images.mkdir(parents=True)
        maps.mkdir(parents=True)
        for k, stem in enumerate(stems):
            (images / f"{stem}.jpg").write_bytes(_jpeg(k))
            lab = np.full((6, 8), 150, np.uint8)  # stuff
            lab[1:3, 1:3] = k  # thing index k -> category k + 1
            lab[5, 7] = 255
            (maps / f"{stem}.png").write_bytes(_png(lab))


def test_prepare_coco_from_stuffthingmaps_resumes(tmp_path):
    raw = tmp_path / "raw"
    _stuff_raw(raw)
    out = prepare_coco(raw, tmp_path / "coco", source="stuffthingmaps")
    assert (out / "split/train.txt").read_text().split() == ["000000000009", "000000000025"]
    lab = np.asarray(Image.open(out / "annotations/train2017/000000000025.png"))
    assert lab[1, 1] == 2 and lab[0, 0] == 0 and lab[5, 7] == 255
    # an existing output is kept (resume), a missing one is written again
    kept = out / "annotations/train2017/000000000009.png"
    kept.write_bytes(_png(np.full((6, 8), 42, np.uint8)))
    (out / "annotations/val2017/000000000139.png").unlink()
    prepare_coco(raw, out, source="stuffthingmaps")
    assert np.asarray(Image.open(kept))[0, 0] == 42
    assert np.asarray(Image.open(out / "annotations/val2017/000000000139.png"))[1, 1] == 1


def test_corrupt_stuff_map_names_the_file(tmp_path):
    raw = tmp_path / "raw"
    _stuff_raw(raw)
    bad = raw / "stuffthingmaps_trainval2017/train2017/000000000025.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(IfssError, match="000000000025.png"):
        prepare_coco(raw, tmp_path / "coco", source="stuffthingmaps")
    assert not (tmp_path / "coco/annotations/train2017/000000000025.png").exists()


def test_fetch_coco_stuffthingmaps(server, tmp_path, monkeypatch):
    www, base, _ = server
    raw = tmp_path / "build"
    _stuff_raw(raw)
    files = {
        "train2017.zip": {f"train2017/{p.name}": p.read_bytes() for p in (raw / "train2017/train2017").iterdir()},
        "val2017.zip": {f"val2017/{p.name}": p.read_bytes() for p in (raw / "val2017/val2017").iterdir()},
        "stuffthingmaps_trainval2017.zip": {
            f"{p.parent.name}/{p.name}": p.read_bytes()
            for p in (raw / "stuffthingmaps_trainval2017").rglob("*.png")},
    }
    _serve_sources(www, "coco", files, monkeypatch, {k: "zip" for k in files})
    out = fetch_dataset("coco", tmp_path / "data", mirror=base, coco_source="stuffthingmaps")
    assert (out / "split/val.txt").read_text().split() == ["000000000139"]
    assert np.asarray(Image.open(out / "annotations/val2017/000000000139.png"))[1, 1] == 1
    assert (out / "images/train2017/000000000009.jpg").is_file()
    assert not (tmp_path / "data/downloads/annotations_trainval2017.zip").exists()
    with pytest.raises(IfssError, match="stuffthingmaps"):
        fetch_dataset("coco", tmp_path / "data", mirror=base, coco_source="instances")
