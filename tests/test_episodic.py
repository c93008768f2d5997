"""Episodic (generalized) few-shot evaluation: folds, the pixel filter, episode rules, the image
resize, the config keys, and `ifss eval` with eval.protocol=episodic end to end."""
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_tiny
from ifss.config import EvalConfig, build_config
from ifss.data.layout import Layout
from ifss.data.records import COCO_IDS
from ifss.data.index import images_per_class
from ifss.episodic.episodes import (Fold, binary_label, check_lists, fold_of,
                                    kept_classes, read_kept_classes, sample_episodes)
from ifss.episodic.evaluate import binarize, head_start, resize_pad
from ifss.errors import IfssError
from ifss.tasks import get_task

# ------------------------------------------------------------------------------------- folds


def test_pascal_fold_2():
    fold = fold_of(get_task("voc", "5-2"))
    assert fold.novel == (11, 12, 13, 14, 15)
    assert fold.base == tuple(c for c in range(1, 21) if not 11 <= c <= 15)


def test_coco_interleaved_fold_0():
    fold = fold_of(get_task("coco", "20-0"))
    assert fold.novel == tuple(COCO_IDS[k] for k in range(0, 80, 4))
    assert fold.novel[:3] == (1, 5, 9)  # person, airplane, boat: ids 1, 5, 9 as the original
    assert set(fold.base) == set(COCO_IDS) - set(fold.novel) and len(fold.base) == 60


def test_coco_contiguous_fold_1():
    fold = fold_of(get_task("coco", "20-1c"))
    assert fold.novel == tuple(COCO_IDS[20:40])
    assert fold.base == tuple(COCO_IDS[:20] + COCO_IDS[40:])
    assert [len(fold_of(get_task("coco", f"20-{i}c")).novel) for i in range(4)] == [20] * 4


def test_a_task_without_novel_classes_is_no_fold():
    with pytest.raises(IfssError, match=r"task 'offline' of voc has no novel classes"):
        fold_of(get_task("voc", "offline"))


# ------------------------------------------------------------------------------ pixel filter


def test_pixel_filter_on_a_tiny_label_map():
    label = np.zeros((6, 6), np.uint8)
    label[0, :5] = 3  # 5 pixels
    label[1:3, :] = 7  # 12 pixels
    label[5, :] = 255  # void: never a class, however many pixels
    assert kept_classes(label, 6) == (7,)
    assert kept_classes(label, 5) == (3, 7)
    assert kept_classes(label, 13) == ()
    assert kept_classes(np.zeros((4, 4), np.uint8), 1) == ()  # background is never listed


def test_read_kept_classes_reads_every_label_once(tmp_path):
    layout = Layout(tmp_path, images={"val": "img"}, labels={"val": "lab"},
                    lists={"val": "val.txt"})
    (tmp_path / "lab").mkdir()
    maps = {"a": np.full((4, 6), 2, np.uint8), "b": np.zeros((8, 3), np.uint8)}
    maps["b"][:2, :2] = 5  # 4 pixels of 5
    for name, label in maps.items():
        Image.fromarray(label).save(tmp_path / "lab" / f"{name}.png")
    (tmp_path / "val.txt").write_text("b\na\n")
    classes, largest = read_kept_classes(layout, "val", 4)
    assert list(classes) == ["b", "a"]  # list order kept
    assert classes == {"b": (5,), "a": (2,)}
    assert largest == (8, 6)
    assert read_kept_classes(layout, "val", 5)[0] == {"b": (), "a": (2,)}


# ----------------------------------------------------------------------------- episode rules

FOLD = Fold("toy", base=(9, 10), novel=(1, 2))
LISTS = {  # image -> classes with enough pixels, in val list order
    "q1": (1,), "q2": (1, 2, 9), "x": (9,), "a": (1, 10), "b": (1,), "c": (2,), "d": (2, 10),
    "e": (2,), "f": (10,),
}
QUERIES = ["q1", "q2", "a", "b", "c", "d", "e"]  # every image with a novel class, in order


def test_queries_walk_the_list_and_restart():
    episodes = sample_episodes(LISTS, FOLD, 2, 17, seed=0)
    assert [e.query for e in episodes] == (QUERIES * 3)[:17]
    assert [e.index for e in episodes] == list(range(17))


def test_episode_rules():
    episodes = sample_episodes(LISTS, FOLD, 2, 700, seed=1)
    lists = images_per_class(LISTS)
    for e in episodes:
        assert e.novel in LISTS[e.query] and e.novel in FOLD.novel
        assert len(e.support) == 2 and len(set(e.support)) == 2  # no repeats
        assert e.query not in e.support
        assert all(e.novel in LISTS[s] for s in e.support)
        assert e.base in FOLD.base and e.base not in FOLD.novel
        assert e.base_image in lists[e.base]
    # a query with two novel classes gets either, at random
    assert Counter(e.novel for e in episodes if e.query == "q2").keys() == {1, 2}
    assert Counter(e.base for e in episodes).keys() == {9, 10}


def test_episodes_are_seeded():
    one = sample_episodes(LISTS, FOLD, 2, 50, seed=42)
    assert one == sample_episodes(LISTS, FOLD, 2, 50, seed=42)
    other = sample_episodes(LISTS, FOLD, 2, 50, seed=43)  # the next run
    assert [e.query for e in one] == [e.query for e in other]  # the same walk
    assert [(e.support, e.base_image) for e in one] != [(e.support, e.base_image) for e in other]


def test_a_class_without_enough_images_is_one_clear_error():
    lists = images_per_class(LISTS)  # class 1: q1, q2, a, b (4 images)
    check_lists(lists, FOLD, 3, 2048)
    with pytest.raises(IfssError, match=r"^novel class 1 \(red\) of fold toy has 4 val image\(s\) "
                                        r"with 2048 of its pixels, fewer than nshot \+ 1 = 5 .*"
                                        r"lower nshot or eval\.min_class_pixels$"):
        check_lists(lists, FOLD, 4, 2048, names=["", "red"])
    with pytest.raises(IfssError, match="no val image holds 9 pixels of a novel class"):
        check_lists({9: ["x"]}, FOLD, 1, 9)
    with pytest.raises(IfssError, match="no val image holds 9 pixels of a base class"):
        check_lists({1: ["a", "b"]}, FOLD, 1, 9)


def test_binary_labels():
    label = np.array([[0, 3, 5], [255, 3, 7]], np.uint8)
    assert binary_label(label, 3).tolist() == [[0, 1, 0], [255, 1, 0]]
    labels = torch.from_numpy(np.stack([label, label]))[:, None]  # E x N x H x W
    out = binarize(labels, torch.tensor([3, 7]))
    assert out[0, 0].tolist() == [[0, 1, 0], [255, 1, 0]]
    assert out[1, 0].tolist() == [[0, 0, 0], [255, 0, 1]]


# ----------------------------------------------------------------------------- resize and pad


def test_resize_and_pad():
    mean = np.array([0.485, 0.456, 0.406]) * 255
    image = torch.from_numpy(np.broadcast_to(mean.round().astype(np.uint8)[:, None, None],
                                             (3, 20, 10)).copy())
    label = torch.zeros(20, 10, dtype=torch.uint8)
    label[10:, :] = 4
    x, y = resize_pad(image, label, 8)
    assert x.shape == (3, 8, 8) and y.shape == (8, 8) and y.dtype == torch.uint8
    assert (y[:, 4:] == 255).all()  # 20x10 -> 8x4, padded on the right with void
    assert y[:4, :4].eq(0).all() and y[4:, :4].eq(4).all()  # nearest: the halves kept
    assert x.abs().max() < 0.02  # the mean colour and its padding are both ~0 once normalised
    assert (x[:, :, 4:] == 0).all()
    # size 0: no resize, padded to the frame at the bottom right
    x, y = resize_pad(image, label, 0, frame=(24, 12))
    assert x.shape == (3, 24, 12) and torch.equal(y[:20, :10], label)
    assert (y[20:] == 255).all() and (y[:, 10:] == 255).all()


def test_head_start_values():
    base = (torch.randn(4, 6), torch.randn(4))
    novel_row = torch.randn(1, 6)
    eps = sample_episodes(LISTS, FOLD, 1, 3, seed=0)
    w, b = head_start("generalized", eps, 42, 0, base, novel_row, torch.device("cpu"))
    assert w.shape == (3, 5, 6) and torch.equal(w[1, :4], base[0]) and torch.equal(w[2, 4],
                                                                                  novel_row[0])
    assert torch.equal(b[0, :4], base[1]) and b[0, 4] == 0
    w, b = head_start("binary", eps, 42, 0, base, novel_row, torch.device("cpu"))
    assert w.shape == (3, 2, 6) and b is None
    assert w.abs().max() <= 1 / math.sqrt(6)  # nn.Conv2d's default bound
    assert not torch.equal(w[0], w[1])  # a fresh head per episode ...
    again, _ = head_start("binary", eps[1:], 42, 0, base, novel_row, torch.device("cpu"))
    assert torch.equal(again, w[1:])  # ... from its own seed, whatever the chunk


# ----------------------------------------------------------------------------------- config


@pytest.mark.parametrize("pair, message", [
    ("eval.protocol=episodes", r"^unknown protocol 'episodes' in eval\.protocol"),
    ("eval.head=2way", r"^unknown head '2way' in eval\.head"),
    ("eval.episodes=0", r"^eval\.episodes=0 must be >= 1"),
    ("eval.runs=0", r"^eval\.runs=0 must be >= 1"),
    ("eval.gamma=-1", r"^eval\.gamma=-1\.0 must be >= 0"),
    ("eval.inner_steps=-1", r"^eval\.inner_steps=-1 must be >= 0"),
    ("eval.inner_lr=0", r"^eval\.inner_lr=0\.0 must be > 0"),
    ("eval.episode_batch=0", r"^eval\.episode_batch=0 must be >= 1"),
    ("eval.min_class_pixels=0", r"^eval\.min_class_pixels=0 must be >= 1"),
    ("eval.image_size=-1", r"^eval\.image_size=-1 must be >= 0"),
    ("eval.smoothing_group=0", r"^eval\.smoothing_group=0 must be >= 1"),
    ("eval.seed=-1", r"^eval\.seed=-1 must be in \[0, 2\*\*32\)"),
    ("eval.normalize_query=1", r"config key 'eval\.normalize_query' needs true or false"),
])
def test_episodic_config_keys_are_checked(pair, message):
    with pytest.raises(IfssError, match=message) as err:
        build_config(None, [pair])
    assert "\n" not in str(err.value)


def test_episodic_defaults_and_resume():
    ev = EvalConfig()
    assert (ev.protocol, ev.episodes, ev.runs, ev.head, ev.gamma, ev.inner_steps, ev.inner_lr,
            ev.episode_batch, ev.min_class_pixels, ev.image_size, ev.normalize_query,
            ev.smoothing_group, ev.seed) == ("dense", 20000, 1, "generalized", 0.0, 100, 0.1,
                                            64, 2048, 473, True, 4, 42)
    from ifss.builder import made_for

    base = build_config(None, [])
    episodic = build_config(None, ["eval.protocol=episodic", "eval.head=binary"])
    assert made_for(base.resolved()) == made_for(episodic.resolved())  # never blocks a resume


# ---------------------------------------------------------------------------- end to end

EPISODIC = {"protocol": "episodic", "episodes": 12, "runs": 2, "min_class_pixels": 16,
            "image_size": 0, "inner_steps": 5, "episode_batch": 8, "gamma": 1.0}
KEYS = {"protocol", "dataset", "task", "method", "label", "nshot", "head", "gamma", "episodes",
        "runs", "miou_novel", "miou_base", "fb_iou", "per_run", "max", "mean", "smoothed",
        "per_class_novel", "per_class_base", "config", "versions", "seed", "checkpoint",
        "device", "wall_time_s"}


@pytest.fixture(scope="module")
def psp_step0(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("psp") / "step0"
    run_tiny(synth_root, out, **{"model.arch": "pspnet"})
    return out / "model.pt"


def episodic(checkpoint, out, nshot=1, **ev):
    from ifss.run import eval_run

    return eval_run(checkpoint, {"nshot": nshot, "eval": {**EPISODIC, **ev}}, out)


def in_unit(value):
    return value is None or 0.0 <= value <= 1.0


@pytest.mark.parametrize("head", ["generalized", "binary"])
def test_episodic_eval_writes_metrics(psp_step0, tmp_path, head):
    record = episodic(psp_step0, tmp_path, head=head)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert KEYS <= set(written)
    assert (written["protocol"], written["task"], written["head"], written["nshot"]) == \
        ("episodic", "5-0", head, 1)
    assert len(written["per_run"]) == 2 and [r["seed"] for r in written["per_run"]] == [42, 43]
    for key in ("miou_novel", "fb_iou"):
        assert 0.0 <= written[key] <= 1.0
        assert written[key] == pytest.approx(np.mean([r[key] for r in written["per_run"]]))
    assert set(written["per_class_novel"]) <= {"red_disc_solid", "yellow_triangle_striped",
                                               "green_cross_solid", "blue_square_checker",
                                               "magenta_ring_solid"}
    assert all(in_unit(v) for v in written["per_class_novel"].values())
    for summary in ("max", "mean", "smoothed"):
        assert all(in_unit(v) for v in written[summary].values())
    if head == "generalized":
        assert 0.0 <= written["miou_base"] <= 1.0
        assert written["per_class_base"] and all(in_unit(v)
                                                 for v in written["per_class_base"].values())
    else:
        assert written["miou_base"] is None and written["per_class_base"] is None
        assert "miou_base" not in written["mean"]
    log = (tmp_path / "log.txt").read_text()
    assert "episodic run 1/2" in log and "episodic run 2/2" in log
    assert "episodic synthetic 5-0" in log


@pytest.mark.parametrize("head", ["generalized", "binary"])
def test_episode_batch_does_not_change_the_metrics(psp_step0, tmp_path, head):
    one = episodic(psp_step0, tmp_path / "one", head=head, episode_batch=1, runs=1)
    eight = episodic(psp_step0, tmp_path / "eight", head=head, episode_batch=8, runs=1)
    for key in ("miou_novel", "fb_iou", "miou_base", "per_class_novel", "per_class_base"):
        assert one[key] == pytest.approx(eight[key], abs=1e-9), key


def test_episodic_eval_from_the_command_line(psp_step0, tmp_path):
    from ifss.cli import main

    sets = ["eval.protocol=episodic", "nshot=1", "eval.head=binary", "eval.episodes=4",
            "eval.min_class_pixels=16", "eval.image_size=32", "eval.inner_steps=2"]
    argv = ["eval", "--checkpoint", str(psp_step0), "--out", str(tmp_path)]
    assert main(argv + [x for s in sets for x in ("--set", s)]) == 0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["config"]["eval"]["image_size"] == 32 and written["episodes"] == 4


def test_too_few_images_for_the_shots(psp_step0, tmp_path):
    # class 1 of the synthetic val split has 2 images: a query and one support image at most
    with pytest.raises(IfssError, match=r"^novel class 1 \(red_disc_solid\) of fold 5-0 has 2 "
                                        r"val image\(s\).*lower nshot"):
        episodic(psp_step0, tmp_path / "out", nshot=2)
    assert not (tmp_path / "out").exists()


def test_the_checkpoint_must_be_a_step0_model_of_the_fold(psp_step0, synth_root, tmp_path):
    with pytest.raises(IfssError, match=r"not those of 5-1 step 0; give the checkpoint") as err:
        from ifss.run import eval_run

        eval_run(psp_step0, {"task": "5-1", "eval": EPISODIC}, tmp_path / "a")
    assert "\n" not in str(err.value)
    step1 = tmp_path / "step1"
    run_tiny(synth_root, step1, step=1, nshot=1, previous=str(psp_step0),
             **{"model.arch": "pspnet", "train.iterations": 1})
    with pytest.raises(IfssError, match=r"is a step-1 model of 5-0; episodic evaluation trains "
                                        r"its heads on a step-0 model's features"):
        episodic(step1 / "model.pt", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_generalized_head_needs_a_linear_classifier(cos_step0, tmp_path):
    with pytest.raises(IfssError, match=re.escape("eval.head=generalized starts from the base "
                                                  "classifier's rows as a linear 1x1 classifier")
                       + r".* has a cosine classifier \(method COS\); use eval\.head=binary"):
        episodic(cos_step0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    record = episodic(cos_step0, tmp_path / "bin", head="binary", runs=1, episodes=4)
    assert 0.0 <= record["miou_novel"] <= 1.0
