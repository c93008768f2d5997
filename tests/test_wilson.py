"""WILSON as a method: BCE step 0, image labels only at step k (the pixels never read), the
localizer (own module, own lr, fresh each step), the warm-up, the prior variants, every term
named and logged."""
from __future__ import annotations

import shutil

import pytest
import torch

from conftest import run_tiny
from ifss import builder
from ifss.config import build_config
from ifss.distributed import setup
from ifss.errors import IfssError
from ifss.methods.params import WILSONParams
from ifss.methods.registry import get_method_class
from test_weak_data import scramble_new_class_pixels

DISJOINT = {"task": "15-5", "data.protocol": "disjoint"}
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
WEAK = {"params.localizer_channels": 16, "train.schedule": "constant_poly",
        "train.warmup_iterations": 2}


@pytest.fixture(scope="module")
def wilson_step0(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wilson") / "step0"
    run_tiny(synth_root, out, method="WILSON", **DISJOINT)
    return out


def step1(root, out, previous, **extra):
    settings = {**DISJOINT, **WEAK, **extra}
    return run_tiny(root, out, method="WILSON", step=1, previous=previous, **settings)


def logged_terms(run_dir) -> set[str]:
    lines = [line for line in (run_dir / "log.txt").read_text().splitlines() if " iter " in line]
    words = lines[-1].split()
    return {words[i] for i in range(3, len(words) - 2, 2)} - {"total"}


def test_step0_trains_with_one_hot_bce(wilson_step0):
    assert logged_terms(wilson_step0) == {"bce"}
    ckpt = torch.load(wilson_step0 / "model.pt", weights_only=True)
    assert ckpt["modules"] == {}  # no localizer at step 0


def test_data_needs_pixels_at_step0_and_image_labels_after(synth_root):
    cls = get_method_class("WILSON")
    cfg = build_config(None, [f"data.root={synth_root}", "method=WILSON", "task=15-5"])
    assert cls.data_needs(cfg) == {"label"}
    cfg = build_config(None, [f"data.root={synth_root}", "method=WILSON", "task=15-5", "step=1",
                              "previous=x.pt"])
    assert cls.data_needs(cfg) == {"image_labels"}


def test_step1_logs_every_term_and_saves_the_localizer(synth_root, wilson_step0, tmp_path):
    out = tmp_path / "step1"
    record = step1(synth_root, out, wilson_step0 / "model.pt")
    assert logged_terms(out) == {"cls", "loc", "enc", "seg", "sss"}
    assert record["miou_novel"] is not None
    localizer = torch.load(out / "model.pt", weights_only=True)["modules"]["localizer"]
    assert localizer["4.weight"].shape[:2] == (21, 16)  # one logit per class seen so far


@pytest.mark.parametrize("prior, terms", [("none", {"cls", "enc", "seg", "sss"}),
                                          ("fixed", {"cls", "enc", "seg", "sss"}),
                                          ("ce", {"cls", "loc", "enc", "seg", "sss"})])
def test_prior_variants_train(synth_root, wilson_step0, tmp_path, prior, terms):
    out = tmp_path / prior
    step1(synth_root, out, wilson_step0 / "model.pt", **{"params.prior": prior})
    assert logged_terms(out) == terms


def test_warm_up_trains_only_the_localizer_and_body(synth_root, wilson_step0, tmp_path):
    """Before train.warmup_iterations only ℓ_CLS, ℓ_LOC and ℓ_ENC act: the head and the old
    classifier take no gradient and keep the step-0 weights (their norm statistics follow the
    forward passes); the body moves."""
    out = tmp_path / "warm"
    step1(synth_root, out, wilson_step0 / "model.pt", **{"train.warmup_iterations": 6})
    before = torch.load(wilson_step0 / "model.pt", weights_only=True)["model"]
    after = torch.load(out / "model.pt", weights_only=True)["model"]
    for key, value in before.items():
        if key.startswith(("head.", "classifier.")) and not key.endswith(STATISTICS):
            assert torch.equal(value, after[key]), key
    moved = [k for k in before if k.startswith("body.") and k.endswith("weight")
             and not torch.equal(before[k], after[k])]
    assert moved


def test_localizer_has_its_own_learning_rate(synth_root, wilson_step0):
    cfg = build_config(None, [f"data.root={synth_root}", "method=WILSON", "step=1",
                              f"previous={wilson_step0 / 'model.pt'}", "train.lr=0.002",
                              "params.localizer_lr=0.05", "params.localizer_channels=8",
                              *[f"{k}={v}" for k, v in DISJOINT.items()]])
    run = builder.resolve(cfg)
    model = run.model()
    method = run.method(setup("cpu", "none", False))
    method.attach(model)
    groups = {g["name"]: g["lr_mult"] for g in method.param_groups(model, run.cfg.train)}
    assert groups["localizer"] * 0.002 == pytest.approx(0.05)


def test_a_weak_step_never_reads_the_new_classes_pixels(synth_root, wilson_step0, tmp_path):
    scrambled = tmp_path / "scrambled"
    shutil.copytree(synth_root, scrambled)
    assert scramble_new_class_pixels(scrambled) > 100
    states = []
    for root in (synth_root, scrambled):
        out = tmp_path / f"run-{root.name}"
        step1(root, out, wilson_step0 / "model.pt")
        states.append(torch.load(out / "model.pt", weights_only=True)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_next_step_starts_a_fresh_localizer(synth_root, tmp_path):
    """10-5-5: step 2's localizer has 21 outputs; step 1's (16) is not loaded into it."""
    settings = {"task": "10-5-5", "data.protocol": "overlap"}
    run_tiny(synth_root, tmp_path / "s0", method="WILSON", **settings)
    run_tiny(synth_root, tmp_path / "s1", method="WILSON", step=1,
             previous=tmp_path / "s0" / "model.pt", **settings, **WEAK)
    run_tiny(synth_root, tmp_path / "s2", method="WILSON", step=2,
             previous=tmp_path / "s1" / "model.pt", **settings, **WEAK)
    localizer = torch.load(tmp_path / "s2" / "model.pt", weights_only=True)["modules"]["localizer"]
    assert localizer["4.weight"].shape[0] == 21


def test_params_domains():
    with pytest.raises(IfssError, match="prior"):
        WILSONParams(prior="strong")
    with pytest.raises(IfssError, match=r"params.alpha in \[0, 1\]"):
        WILSONParams(alpha=1.5)
    with pytest.raises(IfssError, match="pamr_dilations"):
        WILSONParams(pamr_dilations=[0, 2])
