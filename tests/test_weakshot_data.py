"""SimFormer's weak-shot data: the COCO-Stuff-10K record and reader (on a tiny release written with
scipy.io.savemat), the weak-shot splits of COCO-Stuff-10K and ADE20K, and the weak-shot protocol
(data.protocol weakshot): its images and labels, novel pixels never in a batch, the run config
checks, and pseudo-label folders as training labels (data.train_labels)."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from ifss import builder
from ifss.cli import parser
from ifss.config import build_config
from ifss.data import incremental
from ifss.data.build import build_step_data
from ifss.data.cocostuff10k import COCOSTUFF_TO_IFSS, cocostuff_label, prepare_cocostuff10k
from ifss.data.index import build_image_classes
from ifss.data.layout import layout_for
from ifss.data.prepare import UnverifiedDownloadWarning, fetch_dataset
from ifss.data.records import ADE_CLASSES, COCOSTUFF10K, DATASETS, get_dataset
from ifss.data.records.ade import SIMFORMER_ADE_NOVEL
from ifss.data.records.cocostuff10k import (
    COCOSTUFF10K_SOURCE_IDS, SIMFORMER_COCOSTUFF_RANDP, SIMFORMER_COCOSTUFF_RATIOS,
)
from ifss.data.segmentation import SegmentationSet, pad_collate
from ifss.errors import IfssError
from ifss.methods import registry
from ifss.methods.base import Method
from ifss.metrics import weakshot_classes
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


# ------------------------------------------------------------------------------ the protocol
# SimFormer's weak-shot step (data.protocol weakshot) on the synthetic benchmark's 15-5: base
# classes 0..15 with pixel labels, novel classes 16..20 known from image-level labels only.

WS_TASK = get_task("synthetic", "15-5")
WS_NOVEL = tuple(range(16, 21))


def ws_config(root, **extra):
    base = {"data.root": root, "task": "15-5", "step": 1, "data.protocol": "weakshot",
            "method": "WSPROBE", "data.crop_size": 32}
    base.update(extra)
    return build_config(None, [f"{k}={v}" for k, v in base.items()])


def ws_data(root, needs=("label", "image_labels"), **extra):
    return build_step_data(ws_config(root, **extra), WS_TASK, needs=frozenset(needs))


class WeakShotProbe(Method):
    """A stand-in weak-shot method (the batches SimFormer asks for, the plain CE loss)."""

    needs = frozenset({"label", "image_labels"})


@pytest.fixture
def ws_probe(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "WSPROBE", registry.MethodInfo(
        "WSPROBE", "tests", "WeakShotProbe", "WSPROBE", "linear", weakshot=True))
    real = builder.get_method_class
    monkeypatch.setattr(builder, "get_method_class",
                        lambda name: WeakShotProbe if name == "WSPROBE" else real(name))


@pytest.fixture
def ws_tree(synth_root, tmp_path):
    root = tmp_path / "synthetic"
    shutil.copytree(synth_root, root)
    return root


def _remap(values, lut):
    return [int(v) for v in lut[np.array(values)]]


def test_weakshot_luts_void_the_novel_pixels():
    values = [0, 3, 15, 16, 20, 255]  # background, base, base, novel, novel, void
    assert _remap(values, incremental.weakshot_lut(WS_TASK)) == [0, 3, 15, 255, 255, 255]
    assert _remap(values, incremental.labelled_lut(WS_TASK)) == [0, 3, 15, 16, 20, 255]
    # test: every class of order(1), void stays void (nothing is unseen)
    assert _remap(values, incremental.test_lut(WS_TASK, 1, "weakshot")) == values
    # COCO-Stuff-10K ws1: the novel ids sit inside the id range, base positions close the gaps
    ws1 = get_task("cocostuff10k", "ws1")
    lut = incremental.weakshot_lut(ws1)
    novel, base = ws1.steps[1][0], ws1.steps[0][3]
    assert lut[novel] == 255 and lut[base] == 4 and lut[255] == 255
    assert incremental.labelled_lut(ws1)[novel] == ws1.order(1).index(novel)


@pytest.mark.parametrize("classes, enters", [((0,), True), ((16,), True), ((3, 17), True),
                                             ((255,), False), ((), False)])
def test_weakshot_images_hold_a_class_of_the_task(classes, enters):
    assert incremental.keeps_image_weakshot(classes, WS_TASK) is enters


def test_weakshot_step_data(synth_root):
    data = ws_data(synth_root)
    layout = layout_for("synthetic", synth_root)
    index = data.image_classes
    want = [i for i, cs in index.items() if set(cs) - {255}]
    assert [i for i, _ in data.train.samples] == want and len(want) == len(layout.ids("train"))
    assert [i for i, _ in data.test.samples] == layout.ids("val")  # every val image
    assert data.num_classes == 21
    holding_novel = 0
    for k, (image_id, _) in enumerate(data.train_plain.samples):
        sample = data.train_plain[k]
        raw = np.array(Image.open(layout.label_path("train", image_id)))
        label = sample["label"].numpy()
        novel_pixels = np.isin(raw, WS_NOVEL)
        assert (label[novel_pixels] == 255).all()  # novel pixels become void
        assert (label[~novel_pixels] == raw[~novel_pixels]).all()  # base and void stay
        assert label[label != 255].max(initial=0) < 16
        # the image labels hold the novel classes the pixels no longer show
        want = torch.tensor([float(c in index[image_id]) for c in WS_TASK.order(1)])
        assert torch.equal(sample["image_labels"], want)
        holding_novel += bool(novel_pixels.any())
    assert holding_novel > 50
    # test labels keep every class
    test = data.test[0]["label"].numpy()
    raw = np.array(Image.open(layout.label_path("val", data.test.samples[0][0])))
    assert (test == raw).all()


def _scramble_novel_pixels(root, ids) -> int:
    """Give every novel pixel of the listed train labels another novel class (each file's set
    of novel classes may change; the data built before reads the files again)."""
    layout = layout_for("synthetic", root)
    rng = np.random.default_rng(1)
    changed = 0
    for image_id in ids:
        path = layout.label_path("train", image_id)
        with Image.open(path) as img:
            palette, label = img.getpalette(), np.array(img)
        novel = np.isin(label, WS_NOVEL)
        if not novel.any():
            continue
        scrambled = label.copy()
        scrambled[novel] = rng.choice(WS_NOVEL, size=int(novel.sum()))
        out = Image.fromarray(scrambled)
        if palette:
            out.putpalette(palette)  # an L image with a palette becomes P, values kept
        out.save(path)
        changed += int(not np.array_equal(scrambled, label))
    return changed


def test_novel_pixels_never_reach_the_batches(ws_tree):
    data = ws_data(ws_tree)
    ids = [i for i, _ in data.train.samples]
    keys = list(range(len(data.train)))

    def batches():
        train = pad_collate([data.train[(k, 7)] for k in keys])
        plain = pad_collate([data.train_plain[k] for k in keys])
        return train, plain

    def labelled():  # the control: the same samples with every class kept
        every = SegmentationSet(data.train.layout, "train",
                                [(i, incremental.labelled_lut(WS_TASK)) for i in ids],
                                data.train_plain.transform, WS_TASK.label_space, 21)
        return torch.stack([every[k]["label"] for k in keys[:100]])

    before, control = batches(), labelled()
    assert _scramble_novel_pixels(ws_tree, ids) > 50
    after = batches()
    for old, new in zip(before, after):
        assert old.keys() == new.keys() == {"image", "index", "label", "image_labels"}
        assert all(torch.equal(old[k], new[k]) for k in old)
    assert not torch.equal(control, labelled())


def test_weakshot_classes_for_the_metrics():
    assert weakshot_classes(WS_TASK) == (list(range(0, 16)), list(range(16, 21)))
    ws1 = get_task("cocostuff10k", "ws1")  # no label file holds 0: background left out
    assert weakshot_classes(ws1) == (list(range(1, 129)), list(range(129, 172)))
    ade = get_task("ade", "ws1")  # SimFormer voids ADE's "other"
    assert weakshot_classes(ade) == (list(range(1, 113)), list(range(113, 151)))


# -- the run config ------------------------------------------------------------------------------


def test_a_weakshot_run_needs_no_previous_model(ws_probe, synth_root):
    run = builder.resolve(ws_config(synth_root))
    assert run.cfg.step == 1 and not run.cfg.previous
    model, old, ckpt = builder.build_step_models(run, None)
    assert old is None and ckpt is None
    assert model(torch.zeros(1, 3, 32, 32))["logits"].shape == (1, 21, 32, 32)


@pytest.mark.parametrize("extra, message", [
    ({"method": "FT"}, r"data.protocol=weakshot trains a weak-shot method \(.*SimFormer.*\), and "
                       r"FT is not one; set method="),
    ({"data.protocol": "disjoint"}, r"method WSPROBE is a weak-shot method and trains under "
                                    r"data.protocol=weakshot only, not disjoint"),
    ({"previous": "step0/model.pt"}, r"starts from ImageNet weights \(model.pretrained\).*"
                                     r"leave previous empty"),
    ({"step": 0}, r"step 1 of a two-step task.*this is step 0 of task 15-5"),
    ({"task": "10-5-5"}, r"this is step 1 of task 10-5-5, which has 3 step\(s\)"),
])
def test_weakshot_run_config_checks(ws_probe, synth_root, extra, message):
    with pytest.raises(IfssError, match=message):
        builder.resolve(ws_config(synth_root, **extra))


def test_made_for_follows_the_pseudo_label_manifest(ws_probe, tmp_path):
    folder = tmp_path / "pl"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    cfg = builder.resolve(ws_config(tmp_path, **{"data.train_labels": folder})).cfg
    first = builder.made_for(cfg)
    (folder / "manifest.json").write_text('{"created": "later"}')
    assert builder.made_for(cfg)["data.train_labels"] != first["data.train_labels"]


# -- data.train_labels: a pseudo-label folder ----------------------------------------------------


def _pseudo_folder(root, folder, value=16, **manifest):
    """A hand-made pseudo-label folder: every label pixel `value` (an original id)."""
    data = ws_data(root)
    layout = layout_for("synthetic", root)
    ids = [i for i, _ in data.train.samples]
    folder.mkdir()
    for image_id in ids:
        shape = np.array(Image.open(layout.label_path("train", image_id))).shape
        Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(folder / f"{image_id}.png")
    record = {"format": 1, "dataset": "synthetic", "task": "15-5", "split": "train",
              "images": ids, "classes": list(WS_TASK.order(1)), "novel": list(WS_NOVEL),
              "model": "0" * 64, "method": "WSPROBE", "label": "WSPROBE", "created": "now"}
    record.update(manifest)
    (folder / "manifest.json").write_text(json.dumps(record))
    return ids


def test_train_labels_replace_the_dataset_labels(synth_root, tmp_path):
    folder = tmp_path / "pl"
    ids = _pseudo_folder(synth_root, folder, value=17)
    data = ws_data(synth_root, **{"data.train_labels": folder})
    assert [i for i, _ in data.train.samples] == ids  # the same images, the dataset's index
    sample = data.train_plain[3]
    assert (sample["label"] == WS_TASK.order(1).index(17)).all()  # novel labels kept
    plain = ws_data(synth_root)
    assert torch.equal(sample["image_labels"], plain.train_plain[3]["image_labels"])
    assert torch.equal(data.test[0]["label"], plain.test[0]["label"])  # the test set is the same


@pytest.mark.parametrize("damage, message", [
    ("no folder", r"pseudo-label folder .*pl \(data.train_labels\) does not exist; rerun "
                  r"`ifss pseudo-labels --model RUN/model.pt --out .*pl`"),
    ("no manifest", r"has no manifest.json, so it is no finished `ifss pseudo-labels` output; "
                    r"rerun `ifss pseudo-labels"),
    ("bad manifest", r"manifest .*manifest.json cannot be read .*; rerun `ifss pseudo-labels"),
    ("other task", r"holds labels of synthetic 10-10 train, not of synthetic 15-5 train; give "
                   r"this task's folder, or rerun `ifss pseudo-labels"),
    ("image missing", r"has no label for 1 of the 400 training images \(first: .*\); rerun "
                      r"`ifss pseudo-labels"),
    ("file missing", r"pseudo-label file .*\.png is missing although .*manifest.json lists it; "
                     r"rerun `ifss pseudo-labels"),
])
def test_train_labels_folder_is_checked(synth_root, tmp_path, damage, message):
    folder = tmp_path / "pl"
    if damage != "no folder":
        ids = _pseudo_folder(synth_root, folder, **({"task": "10-10"} if damage == "other task"
                                                   else {}))
        manifest = folder / "manifest.json"
        if damage == "no manifest":
            manifest.unlink()
        elif damage == "bad manifest":
            manifest.write_text("{not json")
        elif damage == "image missing":
            record = json.loads(manifest.read_text())
            manifest.write_text(json.dumps({**record, "images": ids[:7] + ids[8:]}))
        elif damage == "file missing":
            (folder / f"{ids[-1]}.png").unlink()
    with pytest.raises(IfssError, match=message):
        ws_data(synth_root, **{"data.train_labels": folder})


def test_simformer_is_checked_like_any_weakshot_method(synth_root):
    pytest.importorskip("ifss.methods.simformer")  # written alongside this module
    builder.resolve(ws_config(synth_root, method="SimFormer"))
    with pytest.raises(IfssError, match="method SimFormer is a weak-shot method"):
        builder.resolve(ws_config(synth_root, method="SimFormer", **{"data.protocol": "overlap"}))
