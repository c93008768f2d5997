"""SimFormer's weak-shot data: the COCO-Stuff-10K record and reader (on a tiny release written with
scipy.io.savemat), and the weak-shot splits of COCO-Stuff-10K and ADE20K."""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ifss.cli import parser
from ifss.data.cocostuff10k import COCOSTUFF_TO_IFSS, cocostuff_label, prepare_cocostuff10k
from ifss.data.index import build_image_classes
from ifss.data.layout import layout_for
from ifss.data.prepare import UnverifiedDownloadWarning, fetch_dataset
from ifss.data.records import ADE_CLASSES, COCOSTUFF10K, DATASETS, get_dataset
from ifss.data.records.ade import SIMFORMER_ADE_NOVEL
from ifss.data.records.cocostuff10k import (
    COCOSTUFF10K_SOURCE_IDS, SIMFORMER_COCOSTUFF_RANDP, SIMFORMER_COCOSTUFF_RATIOS,
)
from ifss.errors import IfssError
from ifss.tasks import get_task

# ------------------------------------------------------------------------------ the record


def test_cocostuff10k_record_classes_and_ids():
    classes = COCOSTUFF10K.classes
    assert get_dataset("cocostuff10k") is COCOSTUFF10K and len(classes) == 172
    assert len(set(classes)) == 172 and None not in classes
    assert COCOSTUFF10K.object_ids == tuple(range(1, 172))
    # things in COCO id order, then stuff 92..182 (MaskFormer's index + 1, SimFormer's did + 1)
    known = {1: "person", 4: "motorcycle", 12: "stop sign", 63: "tv", 80: "toothbrush",
             81: "banner", 146: "sky-other", 170: "window-other", 171: "wood"}
    assert {k: classes[k] for k in known} == known
    assert classes[0] == "background"  # ifss's class 0, which no label file holds
    source = COCOSTUFF10K_SOURCE_IDS
    assert len(source) == 171 and source[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)
    unused = sorted(set(range(1, 92)) - set(source))
    assert unused == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
    # COCO-Stuff v1.1 value -> ifss id, as mmsegmentation's coco_stuff10k.py table (+ 0 -> 255)
    for value, ifss_id in ((0, 255), (1, 1), (13, 12), (72, 63), (90, 80), (92, 81), (157, 146),
                           (182, 171)):
        assert COCOSTUFF_TO_IFSS[value] == ifss_id
    assert all(COCOSTUFF_TO_IFSS[v] < 0 for v in unused + [183, 254, 255])


def test_cocostuff10k_download_row_and_cli():
    (row,) = COCOSTUFF10K.sources
    assert row.url == ("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                       "cocostuff-10k-v1.1.zip")
    assert row.name == "cocostuff-10k-v1.1.zip" and row.md5 is None  # none published
    assert "cocostuff10k" in DATASETS and COCOSTUFF10K.prepare.endswith(":prepare_cocostuff10k")
    assert parser().parse_args(["download", "cocostuff10k", "--root", "d"]).dataset \
        == "cocostuff10k"


def test_cocostuff_label_remaps_and_refuses_unused_ids():
    S = np.array([[0, 1, 72], [92, 182, 13]], dtype=np.float64)  # loadmat gives doubles too
    assert cocostuff_label(S).tolist() == [[255, 1, 63], [81, 171, 12]]
    assert cocostuff_label(S).dtype == np.uint8
    for bad in (12, 183, 255, -1, 2.5):
        with pytest.raises(ValueError, match="no COCO-Stuff class"):
            cocostuff_label(np.array([[1, bad]], dtype=np.float64))
    with pytest.raises(ValueError, match="2 dimensions"):
        cocostuff_label(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------ the reader

TRAIN = ["COCO_train2014_000000000077", "COCO_train2014_000000000078"]
TEST = ["COCO_train2014_000000000139"]
# COCO-Stuff v1.1 values per image (0 unlabeled) and their ifss ids
VALUES = {TRAIN[0]: (1, 72), TRAIN[1]: (92, 182), TEST[0]: (157, 13)}


def _jpeg(seed: int, h: int = 6, w: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _S(values: tuple[int, ...]) -> np.ndarray:
    S = np.zeros((6, 8), np.uint8)  # 0 = unlabeled
    for k, v in enumerate(values):
        S[2 * k: 2 * k + 2, 1:7] = v
    return S


def _mat(S: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"S": S, "names": np.array(["person", "tv"], dtype=object),
                           "captions": np.array(["a cat"], dtype=object)})
    return buf.getvalue()


def _release() -> dict[str, bytes]:
    """Files as cocostuff-10k-v1.1.zip holds them (images/, annotations/, imageLists/)."""
    files = {"imageLists/train.txt": "".join(i + "\n" for i in TRAIN).encode(),
             "imageLists/test.txt": (TEST[0] + "\n").encode(),
             "imageLists/all.txt": "".join(i + "\n" for i in TRAIN + TEST).encode()}
    for k, i in enumerate(TRAIN + TEST):
        files[f"images/{i}.jpg"] = _jpeg(k)
        files[f"annotations/{i}.mat"] = _mat(_S(VALUES[i]))
    return files


def _write(raw: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(data)
    return raw


def _expected(image_id: str) -> np.ndarray:
    return cocostuff_label(_S(VALUES[image_id]))


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_converts_labels_links_images_writes_lists(tmp_path, workers):
    raw = _write(tmp_path / "raw" / "cocostuff-10k-v1.1", _release())
    out = prepare_cocostuff10k(tmp_path / "raw", tmp_path / "cocostuff10k", workers=workers)
    assert (out / "lists" / "train.txt").read_text().split() == TRAIN
    assert (out / "lists" / "test.txt").read_text().split() == TEST
    layout = layout_for("cocostuff10k", out)
    layout.check()
    assert layout.ids("val") == TEST
    for split, ids in (("train", TRAIN), ("val", TEST)):
        for i in ids:
            assert os.path.samefile(layout.image_path(split, i), raw / "images" / f"{i}.jpg")
            label = np.asarray(Image.open(layout.label_path(split, i)))
            assert label.dtype == np.uint8 and np.array_equal(label, _expected(i))
    assert np.asarray(Image.open(layout.label_path("val", TEST[0])))[0, 0] == 255  # unlabeled
    # the label files hold only the record's ids and void
    classes = build_image_classes(layout, "train", "cocostuff10k")
    assert classes == {TRAIN[0]: [1, 63], TRAIN[1]: [81, 171]}
    assert not list(out.rglob("*.part"))
    # a second run keeps what is there
    stamp = layout.label_path("train", TRAIN[0]).stat().st_mtime_ns
    prepare_cocostuff10k(tmp_path / "raw", out)
    assert layout.label_path("train", TRAIN[0]).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("broken, message", [
    ("missing-mat", r"annotations/COCO_train2014_000000000139\.mat, listed in "
                    r"imageLists/test\.txt, is missing"),
    ("missing-jpg", r"images/COCO_train2014_000000000078\.jpg, listed in "
                    r"imageLists/train\.txt, is missing"),
    ("overlap", r"1 ids \(first COCO_train2014_000000000077\) are in both"),
    ("empty-list", r"imageLists/test\.txt is empty"),
    ("no-release", r"No COCO-Stuff-10K release"),
])
def test_inputs_are_checked_before_the_first_write(tmp_path, broken, message):
    files = _release()
    if broken == "missing-mat":
        del files[f"annotations/{TEST[0]}.mat"]
    elif broken == "missing-jpg":
        del files[f"images/{TRAIN[1]}.jpg"]
    elif broken == "overlap":
        files["imageLists/test.txt"] = (TRAIN[0] + "\n" + TEST[0] + "\n").encode()
    elif broken == "empty-list":
        files["imageLists/test.txt"] = b"\n"
    else:
        files = {k: v for k, v in files.items() if not k.startswith("imageLists/")}
    _write(tmp_path / "raw", files)
    with pytest.raises(IfssError, match=message):
        prepare_cocostuff10k(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_label_maps_are_named(tmp_path):
    files = _release()
    files[f"annotations/{TRAIN[1]}.mat"] = _mat(_S((92, 12)))  # 12: street sign, unused
    _write(tmp_path / "raw", files)
    with pytest.raises(IfssError, match=rf"{TRAIN[1]}\.mat is wrong: values \[12\]"):
        prepare_cocostuff10k(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out" / "lists").exists()  # lists come last

    files[f"annotations/{TRAIN[1]}.mat"] = _mat(np.ones((5, 8), np.uint8))  # image is 6x8
    _write(tmp_path / "raw2", files)
    with pytest.raises(IfssError, match=r"is 5x8 but its image .* is 6x8"):
        prepare_cocostuff10k(tmp_path / "raw2", tmp_path / "out2")

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"names": np.array(["person"], dtype=object)})  # no S
    files[f"annotations/{TRAIN[1]}.mat"] = buf.getvalue()
    _write(tmp_path / "raw3", files)
    with pytest.raises(IfssError, match=r"holds no label map S"):
        prepare_cocostuff10k(tmp_path / "raw3", tmp_path / "out3")


def test_the_v1_0_release_is_refused_with_a_reason(tmp_path):
    files = _release()
    # a MATLAB v7.3 header (HDF5 files, as cocostuff-10k-v1.0.zip stores them)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    files[f"annotations/{TRAIN[0]}.mat"] = header + b"\0" * 512
    _write(tmp_path / "raw", files)
    with pytest.raises(IfssError, match=r"MATLAB v7\.3 file.*v1\.0 release.*v1\.1"):
        prepare_cocostuff10k(tmp_path / "raw", tmp_path / "out")


def test_fetch_cocostuff10k_unverified_download(server, tmp_path):
    www, base, _ = server
    (row,) = COCOSTUFF10K.sources
    path = www / row.url.split("/", 3)[3]
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _release().items():
            zf.writestr(name, data)
    root = tmp_path / "data"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fetch_dataset("cocostuff10k", root, mirror=base)
    assert any(issubclass(w.category, UnverifiedDownloadWarning) for w in caught)
    assert out == root / "cocostuff10k"
    layout = layout_for("cocostuff10k", out)
    assert layout.ids("train") == TRAIN and layout.ids("val") == TEST
    assert np.array_equal(np.asarray(Image.open(layout.label_path("val", TEST[0]))),
                          _expected(TEST[0]))


# ------------------------------------------------------------------------------ the splits

# split 1 of each dataset as the research notes give it (SimFormer's 0-based dids)
RESEARCH_COCO_SPLIT1 = [3, 6, 10, 11, 18, 19, 26, 27, 31, 34, 37, 38, 40, 41, 50, 53, 55, 59, 61,
                        68, 76, 82, 85, 90, 92, 94, 103, 106, 108, 112, 113, 117, 120, 127, 129,
                        131, 141, 146, 155, 156, 159, 166, 169]
RESEARCH_ADE_SPLIT1 = [1, 3, 6, 8, 10, 13, 17, 22, 23, 29, 33, 38, 41, 50, 51, 56, 67, 70, 71, 74,
                       77, 81, 92, 93, 98, 101, 102, 103, 110, 113, 119, 121, 126, 127, 130, 136,
                       147, 149]


def _check_split(dataset: str, name: str, n_classes: int) -> tuple[set, set]:
    task = get_task(dataset, name)
    assert task.num_steps == 2
    base, novel = (set(s) for s in task.steps)
    assert len(base) == len(task.steps[0]) and len(novel) == len(task.steps[1])  # no repeats
    assert not base & novel and base | novel == set(range(1, n_classes + 1))
    assert list(task.steps[0]) == sorted(base) and list(task.steps[1]) == sorted(novel)
    assert task.num_base == 1 + len(base) and task.order(1)[0] == 0
    return base, novel


def test_cocostuff10k_weakshot_splits():
    sizes = {f"ws{k}": 43 for k in range(1, 5)}
    sizes.update({"ws5": 51, "ws6": 59, "ws7": 68, "ws8": 76, "ws9": 85})
    assert [int(171 * r) for r in SIMFORMER_COCOSTUFF_RATIOS] == [51, 59, 68, 76, 85]
    novels = {}
    for name, size in sizes.items():
        _, novels[name] = _check_split("cocostuff10k", name, 171)
        assert len(novels[name]) == size, name
    assert novels["ws1"] == {d + 1 for d in RESEARCH_COCO_SPLIT1}
    assert len({frozenset(novels[f"ws{k}"]) for k in range(1, 5)}) == 4  # four different splits
    # split 4 and the class-ratio splits are prefixes of one permutation: nested
    assert len(set(SIMFORMER_COCOSTUFF_RANDP)) == len(SIMFORMER_COCOSTUFF_RANDP) >= 85
    chain = ["ws4", "ws5", "ws6", "ws7", "ws8", "ws9"]
    for small, large in zip(chain, chain[1:]):
        assert novels[small] < novels[large], (small, large)
    assert novels["ws9"] == {d + 1 for d in SIMFORMER_COCOSTUFF_RANDP[:85]}
    assert get_task("cocostuff10k", "offline").steps == (tuple(range(1, 172)),)
    names = get_task("cocostuff10k", "ws1").class_names(1)
    assert names[0] == "background" and len(names) == 172
    assert names[129] == "motorcycle"  # the first novel class: did 3


def test_ade_weakshot_splits():
    novels = {}
    for k in range(1, 5):
        _, novels[k] = _check_split("ade", f"ws{k}", 150)
        assert len(novels[k]) == 38
        assert novels[k] == {d + 1 for d in SIMFORMER_ADE_NOVEL[k]}
    assert novels[1] == {d + 1 for d in RESEARCH_ADE_SPLIT1}
    assert len({frozenset(s) for s in novels.values()}) == 4
    # did 0 is SimFormer's "wall", ifss's ADE id 1
    assert 1 in novels[2] and ADE_CLASSES[1] == "wall"
    assert get_task("ade", "ws1").num_base == 1 + 112
