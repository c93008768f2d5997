import numpy as np
import pytest
import torch
from PIL import Image

from ifss.config import build_config
from ifss.data import fewshot, incremental
from ifss.data.batches import ResumableBatches
from ifss.data.build import build_step_data
from ifss.data.index import images_per_class, load_image_classes
from ifss.data.layout import layout_for
from ifss.errors import IfssError
from ifss.tasks import get_task

TASK = get_task("voc", "5-0")  # base: 6..20, novel: 1..5


def test_step0_filter_drops_images_with_novel_classes():
    assert incremental.keeps_image_at_step0([0, 6, 20], TASK)
    assert incremental.keeps_image_at_step0([0], TASK)
    assert not incremental.keeps_image_at_step0([0, 6, 3], TASK)


def test_base_remap_on_hand_made_label():
    label = np.array([[0, 6, 7], [20, 255, 3]], dtype=np.uint8)
    out = incremental.apply_lut(label, incremental.base_lut(TASK))
    # order(0) = 0, 6, 7, ..., 20 -> 6 is 1, 7 is 2, 20 is 15; novel 3 -> ignored
    assert out.tolist() == [[0, 1, 2], [15, 255, 255]]


def test_fewshot_remap_keeps_old_and_sampled_class_only():
    label = np.array([[0, 6, 2], [3, 255, 1]], dtype=np.uint8)
    out = incremental.apply_lut(label, incremental.fewshot_lut(TASK, 1, sampled_class=2))
    # order(1) = base order + 1, 2, 3, 4, 5 -> class 2 is index 17; classes 1 and 3 -> 255
    assert out.tolist() == [[0, 1, 17], [255, 255, 255]]


def test_test_remap_ignores_unseen_classes():
    multi = get_task("voc", "5-0m")
    label = np.array([[1, 2, 3, 6]], dtype=np.uint8)
    out = incremental.apply_lut(label, incremental.test_lut(multi, 2))
    assert out.tolist() == [[16, 17, 255, 1]]


def test_invalid_label_value_is_reported():
    with pytest.raises(ValueError) as err:
        incremental.apply_lut(np.array([[0, 37, 21]], dtype=np.uint8), incremental.base_lut(TASK))
    assert err.value.args[0] == [21, 37]


def test_fewshot_sampling_deterministic_nested_and_disjoint():
    images = {c: [f"img{c}_{i:03d}" for i in range(80)] for c in (1, 2)}
    a = fewshot.sample_fewshot(images, (1, 2), nshot=5, ishot=0)
    assert a == fewshot.sample_fewshot(images, (1, 2), nshot=5, ishot=0)
    assert [p for p in a if p[1] == 1] and all(i.startswith(f"img{c}") for i, c in a)
    splits = [set(fewshot.sample_fewshot(images, (1,), 5, ishot)) for ishot in range(3)]
    assert not (splits[0] & splits[1] or splits[1] & splits[2] or splits[0] & splits[2])
    one = fewshot.sample_fewshot(images, (1,), 1, 1)
    assert set(one) <= splits[1]
    # the choice depends on the class, not on the order the images were listed in
    shuffled = {1: list(reversed(images[1]))}
    assert fewshot.sample_fewshot(shuffled, (1,), 5, 0) == fewshot.sample_fewshot(images, (1,), 5, 0)


def test_fewshot_too_few_images():
    with pytest.raises(IfssError, match="class 4 has 10 train images"):
        fewshot.sample_fewshot({4: [str(i) for i in range(10)]}, (4,), 5, ishot=1)


def test_pifs_lists(tmp_path):
    tsv = tmp_path / "ids.tsv"
    tsv.write_text("# comment\ndataset\tclass\tishot\timage_ids_first5\n"
                   "voc\t1\t0\ta,b,c,d,e\nvoc\t1\t1\tf,g,h,i,j\n")
    lists = fewshot.load_fewshot_lists(tsv, "voc")
    assert fewshot.sample_from_lists(lists, (1,), 2, 1) == [("f", 1), ("g", 1)]
    with pytest.raises(IfssError, match="class 2"):
        fewshot.sample_from_lists(lists, (2,), 1, 0)


def test_resumable_batches_resume_exactly():
    full = list(ResumableBatches(23, 4, seed=3).span(0, 12))
    tail = list(ResumableBatches(23, 4, seed=3).span(7, 12))
    assert full[7:] == tail
    assert len({i for i, _ in full[0]}) == 4  # no repeats within a batch
    epoch0 = [i for b in full[:5] for i, _ in b]
    assert len(set(epoch0)) == 20  # 23 // 4 = 5 batches per epoch, drop_last
    ranks = [list(ResumableBatches(23, 4, 3, rank=r, world=2).span(0, 1))[0] for r in (0, 1)]
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}
    assert ResumableBatches(5, 10, 0).batch_size == 5  # few-shot set smaller than a batch


def test_step_data_on_synthetic(synth_root):
    task = get_task("synthetic", "5-0")
    cfg = build_config(None, [f"data.root={synth_root}", "data.crop_size=32"])
    data = build_step_data(cfg, task)
    image_classes = load_image_classes(layout_for("synthetic", synth_root), "train", "voc")
    kept = [i for i, cs in image_classes.items() if not set(cs) & {1, 2, 3, 4, 5}]
    assert [i for i, _ in data.train.samples] == kept
    sample = data.train[(0, 123)]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64
    assert torch.equal(sample["label"], data.train[(0, 123)]["label"])  # seeded augmentation
    labels = set(sample["label"].unique().tolist()) - {255}
    assert labels <= set(range(16))
    test = data.test[0]
    assert test["image"].shape[-2:] == test["label"].shape

    cfg1 = build_config(None, [f"data.root={synth_root}", "step=1", "nshot=2", "ishot=1"])
    data1 = build_step_data(cfg1, task)
    assert len(data1.train) == 10
    per_class = images_per_class(image_classes)
    for image_id, lut in data1.train.samples:
        sampled = [c for c in range(1, 6) if lut[c] != 255]
        assert len(sampled) == 1 and image_id in per_class[sampled[0]]


def test_bad_label_file_named(synth_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    layout = layout_for("synthetic", root)
    val_id = layout.ids("val")[0]
    path = layout.label_path("val", val_id)
    label = np.array(Image.open(path))
    label[0, 0] = 42
    Image.fromarray(label).save(path)
    cfg = build_config(None, [f"data.root={root}"])
    data = build_step_data(cfg, get_task("synthetic", "5-0"))
    with pytest.raises(IfssError, match=rf"label file .*{val_id}.png holds value\(s\) \[42\]"):
        data.test[0]
    layout.image_path("val", val_id).write_bytes(b"not a jpeg")
    with pytest.raises(IfssError, match=rf"image file .*{val_id}.jpg cannot be decoded"):
        data.test[0]


def test_missing_root_says_how_to_make_it(tmp_path):
    with pytest.raises(IfssError, match="does not exist; download it with `ifss download voc"):
        layout_for("voc", tmp_path / "nope").check()


def test_image_labels_describe_the_whole_image(synth_root):
    cfg = build_config(None, [f"data.root={synth_root}", "data.crop_size=16"])
    data = build_step_data(cfg, get_task("synthetic", "5-0"), needs={"label", "image_labels"})
    _, full_label = data.train.load(0)
    expected = set(full_label.unique().tolist()) - {255}
    sample = data.train[(0, 7)]
    assert sample["image_labels"].shape == (16,)
    assert set(sample["image_labels"].nonzero().flatten().tolist()) == expected
