"""The data of weak steps and of per-step splits: image-level labels from the class index, no
pixel label read when a method does not ask for them, the split each step trains on, and the
extra test splits of a dataset."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import rewrite_train_labels, run_tiny
from ifss import builder
from ifss.config import build_config
from ifss.data.build import build_step_data
from ifss.data.index import write_index
from ifss.data.layout import layout_for
from ifss.data.records import DATASETS, SYNTHETIC, Folders
from ifss.data.segmentation import pad_collate
from ifss.errors import IfssError
from ifss.methods import registry
from ifss.methods.base import Method
from ifss.methods.finetune import FineTuning
from ifss.run import eval_run
from ifss.tasks import get_task

NEW = np.arange(16, 21)  # the classes step 1 of 15-5 learns


def step_data(root, task="15-5", step=1, protocol="disjoint", needs=frozenset({"label"}),
              dataset="synthetic", **extra):
    cfg = build_config(None, [f"data.root={root}", f"dataset={dataset}", f"task={task}",
                              f"step={step}", f"data.protocol={protocol}", "data.crop_size=32"]
                       + [f"{k}={v}" for k, v in extra.items()])
    return build_step_data(cfg, get_task(dataset, task), needs=frozenset(needs))


@pytest.fixture
def tree(synth_root, tmp_path):
    """A copy of the synthetic benchmark the test may change."""
    root = tmp_path / "synthetic"
    shutil.copytree(synth_root, root)
    return root


# -- image labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("task, protocol", [("15-5", "disjoint"), ("15-5", "overlap"),
                                            ("10-5-5", "overlap")])
def test_image_labels_come_from_the_class_index(synth_root, task, protocol):
    data = step_data(synth_root, task, 1, protocol, needs={"label", "image_labels"})
    order = get_task("synthetic", task).order(1)
    hidden_old = 0  # old classes the remapped label map shows as background
    for index in range(12):
        image_id, _ = data.train.samples[index]
        sample = data.train_plain[index]
        classes = data.image_classes[image_id]
        want = torch.tensor([float(c in classes) for c in order])
        assert torch.equal(sample["image_labels"], want), image_id
        in_label = set(sample["label"].unique().tolist()) - {255}
        hidden_old += sum(1 for i, c in enumerate(order)
                          if 0 < c and c not in get_task("synthetic", task).steps[1]
                          and c in classes and i not in in_label)
    assert hidden_old > 0  # the vectors hold what the label maps no longer show
    if task == "10-5-5":  # overlap lets images with future classes in; they never show
        assert any(set(data.image_classes[i]) & set(NEW) for i, _ in data.train.samples)


def test_image_labels_describe_the_whole_image_under_any_crop(synth_root):
    data = step_data(synth_root, needs={"image_labels"}, **{"data.crop_size": 8})
    assert torch.equal(data.train[(3, 1)]["image_labels"], data.train[(3, 2)]["image_labels"])
    assert data.train[(3, 1)]["image_labels"].shape == (21,)


# -- no pixel label read ------------------------------------------------------------------------


def test_a_weak_step_reads_no_training_label(tree):
    data = step_data(tree, needs={"image_labels"})  # builds the class index first
    layout = layout_for("synthetic", tree)
    for image_id, _ in data.train.samples:
        layout.label_path("train", image_id).write_bytes(b"\x00garbage, not a PNG")
    for dataset in (data.train, data.train_plain):
        batch = pad_collate([dataset[(i, 5)] for i in range(len(dataset))])
        assert set(batch) == {"image", "index", "image_labels"}
        assert batch["image_labels"].shape == (len(dataset), 21)
        assert batch["image_labels"][:, 16:].sum(1).min() >= 1  # every image holds a new class
    assert data.train[(0, 5)]["image"].shape == (3, 32, 32)
    assert torch.equal(data.train[(0, 5)]["image"], data.train[(0, 5)]["image"])  # seeded
    test = data.test[0]
    assert test["label"].shape == test["image"].shape[-2:]  # the test set reads its own labels
    # the control: the same samples with pixel labels do meet the garbage
    pixels = copy.copy(data.train)
    pixels.read_labels = True
    with pytest.raises(IfssError, match="cannot be decoded"):
        pixels[0]


def test_unknown_data_need_is_refused(synth_root):
    with pytest.raises(IfssError, match=r"asked for \['masks'\].*label, image_labels"):
        step_data(synth_root, needs={"label", "masks"})

    class Greedy(Method):
        needs = frozenset({"label", "masks"})

    cfg = build_config(None, ["method=FT"])
    with pytest.raises(IfssError, match=r"method FT asks for data \['masks'\]"):
        Greedy.data_needs(cfg)
    assert FineTuning.data_needs(cfg) == {"label"}


# -- end to end: a weak step never reads the new classes' pixels --------------------------------


class WeakProbe(Method):
    """Pixel labels at step 0, image labels only after: a multi-label loss on max-pooled logits."""

    @classmethod
    def data_needs(cls, cfg):
        return frozenset({"label"} if cfg.step == 0 else {"image_labels"})

    def loss(self, batch, out, old_out):
        assert "label" not in batch
        pooled = out["logits"].amax((2, 3))
        return {"bce": F.binary_cross_entropy_with_logits(pooled, batch["image_labels"])}


class PixelProbe(WeakProbe):
    """The control: the same loss plus cross-entropy on the pixel labels."""

    @classmethod
    def data_needs(cls, cfg):
        return frozenset({"label", "image_labels"})

    def loss(self, batch, out, old_out):
        return {**Method.loss(self, batch, out, old_out),
                "bce": F.binary_cross_entropy_with_logits(out["logits"].amax((2, 3)),
                                                          batch["image_labels"])}


@pytest.fixture
def probes(monkeypatch):
    classes = {"WEAK": WeakProbe, "PIXEL": PixelProbe}
    for name in classes:
        monkeypatch.setitem(registry.METHODS, name,
                            registry.MethodInfo(name, "tests", name, "FT", "linear"))
    real = builder.get_method_class
    monkeypatch.setattr(builder, "get_method_class", lambda name: classes.get(name) or real(name))


def scramble_new_class_pixels(root) -> int:
    """Permute every pixel of each train label holding a class of step 1 (same set of classes per
    image, so the same class index content; the positions change). Returns the files changed."""
    rng = np.random.default_rng(0)

    def scramble(label):
        if not np.isin(label, NEW).any():
            return None
        return rng.permutation(label.reshape(-1)).reshape(label.shape)

    return rewrite_train_labels(root, scramble)


def test_a_weak_step_never_reads_the_new_classes_pixels(probes, synth_root, tmp_path):
    disjoint = {"task": "15-5", "data.protocol": "disjoint"}
    run_tiny(synth_root, tmp_path / "step0", method="FT", **disjoint)
    previous = tmp_path / "step0" / "model.pt"
    scrambled = tmp_path / "scrambled"
    shutil.copytree(synth_root, scrambled)
    assert scramble_new_class_pixels(scrambled) > 100

    def step1(method, root):
        out = tmp_path / f"{method}-{root.name}"
        run_tiny(root, out, method=method, step=1, previous=previous, **disjoint)
        return torch.load(out / "model.pt", weights_only=True)["model"]

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(step1("WEAK", synth_root), step1("WEAK", scrambled))
    # the control: a step that reads the pixels ends elsewhere on the scrambled labels
    assert not same(step1("PIXEL", synth_root), step1("PIXEL", scrambled))


# -- the split each step trains on, extra test splits -------------------------------------------


@pytest.fixture
def two_split_tree(tree, monkeypatch):
    """A dataset whose step k >= 1 trains on "train2" (half the train ids) and which is also
    tested on "val2" (half the val ids), registered as "synth2"."""
    lists = tree / "ImageSets/Segmentation"
    train = (lists / "train_aug.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    (lists / "train2.txt").write_text("\n".join(train[1::2]) + "\n")
    (lists / "val2.txt").write_text("\n".join(val[: len(val) // 2]) + "\n")
    f = SYNTHETIC.folders
    folders = Folders(
        images={**f.images, "train2": f.images["train"], "val2": f.images["val"]},
        labels={**f.labels, "train2": f.labels["train"], "val2": f.labels["val"]},
        lists={**f.lists, "train2": "ImageSets/Segmentation/train2.txt",
               "val2": "ImageSets/Segmentation/val2.txt"},
    )
    record = dataclasses.replace(SYNTHETIC, name="synth2", folders=folders,
                                 train_splits=("train", "train2"), extra_tests=("val2",))
    monkeypatch.setitem(DATASETS, "synth2", record)
    return tree, set(train), set(train[1::2]), val[: len(val) // 2]


def test_each_step_trains_on_its_split(two_split_tree, caplog):
    root, train, train2, val2 = two_split_tree
    step0 = step_data(root, step=0, dataset="synth2")
    assert {i for i, _ in step0.train.samples} - train2  # step 0: the whole train list
    step1 = step_data(root, step=1, dataset="synth2")
    ids = {i for i, _ in step1.train.samples}
    assert ids and ids <= train2 and set(step1.image_classes) == train2
    assert step1.train.split == step1.train_plain.split == "train2"
    assert [i for i, _ in step1.extra_tests["val2"].samples] == val2
    assert step1.extra_tests["val2"][0]["label"].shape == step1.extra_tests["val2"][0][
        "image"].shape[-2:]
    # data.class_index indexes "train": step 1 uses the cache of train2 instead, and says so
    index = root / "index_train.json"
    write_index(index, layout_for("synth2", root), "train", "voc")
    caplog.set_level(logging.INFO, logger="ifss")
    again = step_data(root, step=1, dataset="synth2", **{"data.class_index": index})
    assert {i for i, _ in again.train.samples} == ids
    assert (root / ".ifss" / "image_classes_train2.json").is_file()
    assert any("indexes train" in r.getMessage() for r in caplog.records)


def test_extra_tests_are_in_metrics(two_split_tree, tmp_path):
    root = two_split_tree[0]
    record = run_tiny(root, tmp_path / "run", dataset="synth2", task="15-5")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    summary = {k: saved[k] for k in ("iou", "miou_base", "miou_novel", "miou_all", "hm",
                                     "pixel_accuracy")}
    assert set(saved["tests"]) == {"val2"}
    assert set(saved["tests"]["val2"]) == set(summary)
    assert len(saved["tests"]["val2"]["iou"]) == 16
    assert saved["tests"] == record["tests"]
    evaluated = eval_run(tmp_path / "run" / "model.pt", {}, tmp_path / "eval")
    assert evaluated["tests"] == saved["tests"]
    assert {k: evaluated[k] for k in summary} == summary


def test_records_without_extra_tests_add_no_key(synth_root, tmp_path):
    record = run_tiny(synth_root, tmp_path / "run", **{"train.iterations": 1})
    assert "tests" not in record
    assert "tests" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
