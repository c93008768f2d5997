"""SimFormer's pseudo labels (`ifss pseudo-labels`): the rule on hand-built predictions, generation
from a tiny weak-shot model (a stand-in weak-shot method on deeplabv3: generation needs only
`model(x)["logits"]`), the folder's atomic replacement, the checks before any write, and a
retraining run on the folder (data.train_labels)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import rewrite_train_labels, run_tiny
from ifss import builder
from ifss.cli import main
from ifss.data import incremental
from ifss.data.layout import layout_for
from ifss.errors import IfssError
from ifss.methods import registry
from ifss.methods.base import Method
from ifss.simformer import pseudo_labels as pl
from ifss.tasks import get_task

TASK = get_task("synthetic", "15-5")  # base 0..15, novel 16..20
NOVEL = tuple(range(16, 21))
WEAKSHOT = {"task": "15-5", "step": 1, "data.protocol": "weakshot", "method": "WSPROBE"}


class WeakShotProbe(Method):
    """A stand-in weak-shot method: SimFormer's batches, the plain CE loss."""

    needs = frozenset({"label", "image_labels"})


def _register(mp) -> None:
    mp.setitem(registry.METHODS, "WSPROBE", registry.MethodInfo(
        "WSPROBE", "tests", "WeakShotProbe", "WSPROBE", "linear", weakshot=True))
    real = builder.get_method_class
    mp.setattr(builder, "get_method_class",
               lambda name: WeakShotProbe if name == "WSPROBE" else real(name))


@pytest.fixture(autouse=True)
def probe(monkeypatch):
    _register(monkeypatch)


@pytest.fixture(scope="module")
def weak_run(synth_root, tmp_path_factory):
    """(run folder, metrics record) of a tiny weak-shot step 1 of 15-5, with no previous model."""
    out = tmp_path_factory.mktemp("weakshot") / "step1"
    with pytest.MonkeyPatch.context() as mp:
        _register(mp)
        record = run_tiny(synth_root, out, **WEAKSHOT)
    return out, record


# -- the rule -------------------------------------------------------------------------------------


def test_pseudo_label_rule():
    order = (0, 5, 7, 9, 12)  # positions 0..2 base, 3 and 4 novel (original ids 9 and 12)
    prediction = np.array([[3, 3, 4, 4],
                           [1, 2, 3, 0],
                           [4, 3, 1, 2]])
    weak = np.array([[255, 1, 255, 255],  # the weak-shot label: base positions, novel void
                     [255, 255, 255, 2],
                     [0, 255, 255, 1]])
    got = pl.pseudo_label(prediction, weak, [3], order, num_base=3)
    assert got.dtype == np.uint8
    assert got.tolist() == [[9, 5, 255, 255],      # 4 (id 12) is not among the image's classes
                            [255, 255, 9, 7],      # base predictions on void stay void
                            [0, 9, 255, 5]]        # the weak label's base pixels overwrite
    # both novel classes in the image; a base position among the image classes changes nothing
    both = pl.pseudo_label(prediction, weak, [1, 3, 4], order, num_base=3)
    assert both.tolist() == [[9, 5, 12, 12], [255, 255, 9, 7], [0, 9, 255, 5]]
    # no novel class in the image: the weak label alone
    none = pl.pseudo_label(prediction, weak, [], order, num_base=3)
    assert none.tolist() == [[255, 5, 255, 255], [255, 255, 255, 7], [0, 255, 255, 5]]
    with pytest.raises(ValueError):
        pl.pseudo_label(prediction[:2], weak, [3], order, num_base=3)


# -- a weak-shot run ------------------------------------------------------------------------------


def test_weakshot_run_trains_from_scratch_and_reports_weakshot_metrics(weak_run):
    out, record = weak_run
    assert record["step"] == 1 and record["config"]["previous"] == ""
    assert record["train_images"] == 400
    ws = record["weakshot"]
    assert set(ws) >= {"iou", "acc", "miou_all", "fwiou", "macc", "pacc", "miou_base",
                       "miou_novel", "macc_base", "macc_novel", "hm"}
    assert len(ws["iou"]) == 21 and 0 <= ws["pacc"] <= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["weakshot"] == ws
    assert (out / "log.txt").read_text().count("weak-shot: mIoU base") == 1


def _prediction(model, image):
    with torch.no_grad():
        return model(image[None])["logits"].argmax(1)[0].numpy()


def _novel_biased(checkpoint, out):
    """The checkpoint with its novel classes' biases raised: it predicts novel classes almost
    everywhere (the trained tiny model, which never saw a novel pixel, hardly does)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"]["classifier.convs.1.bias"] += 20.0
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("biased", [False, True])
def test_generation_end_to_end(weak_run, synth_root, tmp_path, biased):
    run_dir, _ = weak_run
    checkpoint = run_dir / "model.pt"
    if biased:
        checkpoint = _novel_biased(checkpoint, tmp_path / "biased.pt")
    out = tmp_path / "labels"
    manifest = pl.generate_pseudo_labels(checkpoint, out, {"train": {"device": "cpu"}})
    layout = layout_for("synthetic", synth_root)
    ids = layout.ids("train")
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["images"] == ids and manifest["dataset"] == "synthetic"
    assert (manifest["task"], manifest["split"]) == ("15-5", "train")
    assert manifest["classes"] == list(TASK.order(1)) and manifest["novel"] == list(NOVEL)
    assert manifest["model"] == builder.file_sha256(checkpoint)
    assert (manifest["method"], manifest["label"]) == ("WSPROBE", "WSPROBE")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i}.png" for i in ids]
                                                           + ["manifest.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial left
    # every file follows the rule, from the model's own prediction on the full image
    run, model, _ = builder.model_from_checkpoint(checkpoint)
    model.eval()
    from ifss.data.build import build_step_data

    data = build_step_data(run.cfg, run.task)
    weak_lut = incremental.weakshot_lut(TASK)
    predicted_novel = dropped = 0
    for k in range(0, 400, 23):
        image_id = data.train_plain.samples[k][0]
        sample = data.train_plain[k]
        raw = np.array(Image.open(layout.label_path("train", image_id)))
        got = np.array(Image.open(out / f"{image_id}.png"))
        classes = data.image_classes[image_id]
        novel = [TASK.order(1).index(c) for c in classes if c in NOVEL]
        prediction = _prediction(model, sample["image"])
        want = pl.pseudo_label(prediction, weak_lut[raw], novel, TASK.order(1), TASK.num_base)
        assert np.array_equal(got, want), image_id
        base = ~np.isin(raw, NOVEL + (255,))
        assert np.array_equal(got[base], raw[base])  # base pixels: the ground truth
        assert set(np.unique(got[~base]).tolist()) <= {255, *[c for c in classes if c in NOVEL]}
        predicted_novel += int(np.isin(got, NOVEL).sum())
        dropped += int(((prediction >= TASK.num_base) & ~np.isin(prediction, novel)).sum())
    if biased:  # novel predictions kept where the image holds the class, dropped elsewhere
        assert predicted_novel > 100 and dropped > 100


def _scramble_novel_pixels(root) -> int:
    """Permute the values among each train label's novel pixels (its classes stay the same)."""
    rng = np.random.default_rng(3)

    def scramble(label):
        where = np.isin(label, NOVEL)
        if len(set(label[where].tolist())) < 2:
            return None
        scrambled = label.copy()
        scrambled[where] = rng.permutation(label[where])
        return scrambled

    return rewrite_train_labels(root, scramble)


def test_the_novel_ground_truth_is_never_read(weak_run, synth_root, tmp_path):
    run_dir, _ = weak_run
    root = tmp_path / "synthetic"
    shutil.copytree(synth_root, root)
    assert _scramble_novel_pixels(root) > 20
    first = pl.generate_pseudo_labels(run_dir / "model.pt", tmp_path / "a")
    moved = pl.generate_pseudo_labels(run_dir / "model.pt", tmp_path / "b",
                                      {"data": {"root": str(root)}})
    assert first["images"] == moved["images"]
    for image_id in first["images"]:
        a = np.array(Image.open(tmp_path / "a" / f"{image_id}.png"))
        b = np.array(Image.open(tmp_path / "b" / f"{image_id}.png"))
        assert np.array_equal(a, b), image_id


def test_cli_and_retraining_on_the_folder(weak_run, synth_root, tmp_path):
    run_dir, _ = weak_run
    out = tmp_path / "labels"
    assert main(["pseudo-labels", "--model", str(run_dir / "model.pt"), "--out", str(out),
                 "--set", "eval.batch_size=7"]) == 0
    record = run_tiny(synth_root, tmp_path / "retrain", **WEAKSHOT,
                      **{"data.train_labels": str(out)})
    assert record["config"]["data"]["train_labels"] == str(out)
    assert "weakshot" in record
    # evaluating the retrained model needs the test set only, not the folder
    shutil.rmtree(out)
    from ifss.run import eval_run

    again = eval_run(tmp_path / "retrain" / "model.pt", {}, tmp_path / "eval")
    assert again["weakshot"] == record["weakshot"]


# -- the folder: replaced only by a complete one --------------------------------------------------


def test_a_rerun_replaces_the_folder_only_once_complete(weak_run, tmp_path, monkeypatch):
    run_dir, _ = weak_run
    out = tmp_path / "labels"
    first = pl.generate_pseudo_labels(run_dir / "model.pt", out)
    (out / "marker.txt").write_text("from the first run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real, calls = pl.pseudo_label, []

    def dies_late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 150:
            raise KeyboardInterrupt  # killed half-way
        return real(*args, **kwargs)

    monkeypatch.setattr(pl, "pseudo_label", dies_late)
    with pytest.raises(KeyboardInterrupt):
        pl.generate_pseudo_labels(run_dir / "model.pt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["labels"]  # the partial folder is gone
    # a killed run with no folder there before leaves nothing at its place
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        pl.generate_pseudo_labels(run_dir / "model.pt", tmp_path / "fresh")
    assert [p.name for p in tmp_path.iterdir()] == ["labels"]
    monkeypatch.setattr(pl, "pseudo_label", real)
    second = pl.generate_pseudo_labels(run_dir / "model.pt", out)
    assert not (out / "marker.txt").exists() and second["images"] == first["images"]
    assert [p.name for p in tmp_path.iterdir()] == ["labels"]


@pytest.mark.parametrize("case, message", [
    ("missing", r"checkpoint .*nothing.pt does not exist"),
    ("not weak-shot", r"checkpoint .*model.pt was trained by COS under data.protocol=fewshot, not "
                      r"by a weak-shot method \(SimFormer, WSPROBE\) under data.protocol=weakshot; "
                      r"give the model.pt of a weak-shot run"),
    ("out is a file", r"pseudo-label folder .*labels is a file"),
    ("out holds other files", r"pseudo-label folder .*labels exists and holds other files \(no "
                              r"manifest.json\), which a new pseudo-label folder would replace"),
    ("no dataset", r"data root .*elsewhere holds no synthetic dataset"),
])
def test_inputs_are_checked_before_any_write(weak_run, cos_step0, tmp_path, case, message):
    run_dir, _ = weak_run
    checkpoint = {"missing": tmp_path / "nothing.pt", "not weak-shot": cos_step0}.get(
        case, run_dir / "model.pt")
    out = tmp_path / "labels"
    overrides = {}
    if case == "out is a file":
        out.write_text("a file")
    elif case == "out holds other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "no dataset":
        overrides = {"data": {"root": str(tmp_path / "elsewhere")}}
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IfssError, match=message):
        pl.generate_pseudo_labels(checkpoint, out, overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert main(["pseudo-labels", "--model", str(checkpoint), "--out", str(out)]
                + [f"--set=data.root={tmp_path / 'elsewhere'}"] * (case == "no dataset")) == 2
