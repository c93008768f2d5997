"""The synthetic benchmark: VOC layout, label semantics, determinism, atomic and guarded writes."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from ifss.data import synthetic
from ifss.errors import IfssError

SMALL = dict(seed=3, n_train=60, n_val=20)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("synth") / "voc", **SMALL)


def _ids(root, list_name):
    return (root / "ImageSets" / "Segmentation" / list_name).read_text().split()


def _labels(root):
    for sample_id in _ids(root, "train_aug.txt") + _ids(root, "val.txt"):
        yield sample_id, np.asarray(Image.open(root / "SegmentationClassAug" / f"{sample_id}.png"))


def _all_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_and_lists_match_files(small):
    train, val = _ids(small, "train_aug.txt"), _ids(small, "val.txt")
    assert train[0] == "s_train_000001" and len(train) == 60
    assert val[-1] == "s_val_000020" and len(val) == 20
    assert {p.stem for p in (small / "JPEGImages").glob("*.jpg")} == set(train + val)
    assert {p.stem for p in (small / "SegmentationClassAug").glob("*.png")} == set(train + val)
    for name in ("classes.json", "class_attributes.npy", "meta.json"):
        assert (small / name).is_file()
    assert not list(small.parent.glob(".voc.partial-*")), "staging folder left behind"
    image = Image.open(small / "JPEGImages" / "s_val_000003.jpg")
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 64)


def test_labels_are_voc_palette_pngs_with_valid_values(small):
    for sample_id, _ in _labels(small):
        label = Image.open(small / "SegmentationClassAug" / f"{sample_id}.png")
        assert label.mode == "P" and label.size == (64, 64)
        assert label.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(21)) | {255}
        assert values & set(range(1, 21)), f"{sample_id} has no object"


def test_voc_palette_known_entries():
    palette = synthetic.voc_palette()
    assert len(palette) == 768
    assert palette[15 * 3:15 * 3 + 3] == [192, 128, 128]  # person
    assert palette[255 * 3:] == [224, 224, 192]  # void


def test_void_separates_objects_from_everything_else(small):
    for sample_id, label in _labels(small):
        is_object = (label >= 1) & (label <= 20)
        for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                     ((slice(None), slice(1, None)), (slice(None), slice(None, -1)))):
            touching = (label[a] != label[b]) & (label[a] != 255) & (label[b] != 255)
            assert not touching.any(), f"{sample_id}: two regions touch without void between"
        void = label == 255
        assert 0 < void.sum() < is_object.sum(), f"{sample_id}: void is not a thin outline"
        # void is an object's outline, so it never floats alone in background (a shape's tip may
        # touch the rest of the outline only diagonally, hence 8-neighbours)
        padded = np.pad(label, 1, constant_values=255)
        neighbours = [padded[1 + dy:65 + dy, 1 + dx:65 + dx]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        assert not (void & np.all([n == 0 for n in neighbours], axis=0)).any()


def test_inner_border_of_a_square_is_its_outline():
    instances = np.zeros((8, 8), np.int64)
    instances[2:6, 2:6] = 1
    border = synthetic._inner_border(instances)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    expected[3:5, 3:5] = False
    assert (border == expected).all()


def test_meta_counts_equal_counts_from_pngs(small):
    meta = json.loads((small / "meta.json").read_text())
    assert {k: meta[k] for k in ("seed", "n_train", "n_val", "size")} == {**SMALL, "size": 64}
    assert meta["version"] == synthetic.SYNTHETIC_VERSION
    for split, list_name in (("train", "train_aug.txt"), ("val", "val.txt")):
        counts = np.zeros(21, int)
        for sample_id in _ids(small, list_name):
            label = np.asarray(Image.open(small / "SegmentationClassAug" / f"{sample_id}.png"))
            present = np.unique(label)
            counts[present[present != 255]] += 1
        assert list(meta["class_image_counts"][split].values()) == counts.tolist()
        assert list(meta["class_image_counts"][split]) == list(synthetic.CLASS_NAMES)


def test_classes_and_attributes(small):
    classes = json.loads((small / "classes.json").read_text())
    names = classes["names"]
    assert len(names) == 21 and names[0] == "background" and len(set(names)) == 21
    attributes = np.load(small / "class_attributes.npy")
    assert attributes.dtype == np.float32
    assert attributes.shape == (21, len(classes["attribute_names"]))
    assert np.array_equal(attributes, np.asarray(classes["attributes"], np.float32))
    assert not attributes[0].any() and (np.abs(attributes[1:]).sum(1) > 0).all()
    assert len({row.tobytes() for row in attributes}) == 21


def test_confusable_pairs_differ_in_one_attribute_and_are_nearest():
    attributes = synthetic.class_attributes()
    distance = np.linalg.norm(attributes[:, None] - attributes[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    for a, b in synthetic.CONFUSABLE_PAIRS:
        spec_a, spec_b = synthetic.CLASS_SPECS[a], synthetic.CLASS_SPECS[b]
        assert sum(x != y for x, y in zip(spec_a, spec_b)) == 1
        assert distance[a, b] == distance[a, 1:].min()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small):
    again = synthetic.generate(tmp_path / "again", **SMALL)
    assert _all_bytes(again) == _all_bytes(small)
    other = synthetic.generate(tmp_path / "other", **{**SMALL, "seed": 4})
    image = "JPEGImages/s_train_000001.jpg"
    assert _all_bytes(other)[image] != _all_bytes(small)[image]


def test_images_do_not_depend_on_split_sizes(tmp_path, small):
    fewer = synthetic.generate(tmp_path / "fewer", seed=3, n_train=5, n_val=2)
    for path in ("JPEGImages/s_train_000005.jpg", "SegmentationClassAug/s_val_000002.png"):
        assert (fewer / path).read_bytes() == (small / path).read_bytes()


def test_existing_same_params_is_reused(small):
    meta_time = (small / "meta.json").stat().st_mtime_ns
    assert synthetic.generate(small, **SMALL) == small
    assert (small / "meta.json").stat().st_mtime_ns == meta_time


def test_existing_other_params_raises(tmp_path, small):
    with pytest.raises(IfssError, match="delete it or pick another --out"):
        synthetic.generate(small, **{**SMALL, "n_train": 61})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(IfssError, match=str(foreign)):
        synthetic.generate(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_empty_existing_folder_is_filled(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    synthetic.generate(out, seed=0, n_train=2, n_val=1)
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(n_val=0), dict(size=16)])
def test_bad_arguments_raise(tmp_path, bad):
    with pytest.raises(IfssError):
        synthetic.generate(tmp_path / "bad", **{**dict(n_train=2, n_val=1), **bad})
    assert not (tmp_path / "bad").exists()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    written = []
    real_write = synthetic._write_sample

    def write_then_fail(*args):
        if len(written) == 7:
            raise KeyboardInterrupt
        written.append(args[1])
        real_write(*args)

    monkeypatch.setattr(synthetic, "_write_sample", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "out", seed=0, n_train=10, n_val=2)
    assert len(written) == 7
    assert list(tmp_path.iterdir()) == []


def test_defaults_are_fast_and_every_class_is_common(tmp_path):
    start = time.perf_counter()
    root = synthetic.generate(tmp_path / "defaults")
    elapsed = time.perf_counter() - start
    meta = json.loads((root / "meta.json").read_text())
    train = list(meta["class_image_counts"]["train"].values())[1:]
    val = list(meta["class_image_counts"]["val"].values())[1:]
    assert min(train) >= 150 and min(val) >= 25, (train, val)
    assert elapsed < 20, f"default generation took {elapsed:.1f} s"
