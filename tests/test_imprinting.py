"""Imprinting (WI, AMP, DWI) against hand computations, and WI / DWI runs on the synthetic data."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import run_tiny, tiny_overrides
from ifss.config import build_config
from ifss.methods import imprinting as imp
from ifss.methods.dwi import WeightGenerator, dwi_image_prototypes
from ifss.models.classifiers import LinearClassifier
from ifss.run import train_run

# one image, D = 2 features on a 2x2 map; labels: class 1 at two pixels, 0 at one, void at one
FEAT = torch.tensor([[[3.0, 0.0], [1.0, 5.0]],
                     [[4.0, 2.0], [1.0, 0.0]]]).unsqueeze(0)  # 1 x 2 x 2 x 2
LABEL = torch.tensor([[[1, 0], [1, 255]]])


def unit(v):
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm()


def test_class_feature_sums_by_hand():
    sums, counts = imp.class_feature_sums(FEAT, LABEL, 3, normalize_pixels=False)
    # class 1: pixels (0,0) = (3,4) and (1,0) = (1,1); class 0: pixel (0,1) = (0,2)
    torch.testing.assert_close(sums[0], torch.tensor([[0.0, 2.0], [4.0, 5.0], [0.0, 0.0]]))
    torch.testing.assert_close(counts[0], torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError):
        imp.class_feature_sums(FEAT, torch.tensor([[[1, 0], [3, 255]]]), 3, False)


def test_wi_prototypes_and_weights_by_hand():
    proto, present = imp.wi_image_prototypes(FEAT, LABEL, 3)
    p1 = unit(unit([3, 4]) + unit([1, 1]))  # normalize(sum of normalized pixel features)
    torch.testing.assert_close(proto[0, 1], p1)
    torch.testing.assert_close(proto[0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(proto[0, 2], torch.zeros(2))
    assert present[0].tolist() == [True, True, False]
    # a second image where class 1 is one pixel (2, -1): w = normalize(p1 + normalize((2,-1)))
    feat2 = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    label2 = torch.tensor([[[1, 255], [255, 255]]])
    feats, labels = torch.cat([FEAT, feat2]), torch.cat([LABEL, label2])
    protos, _ = imp.wi_image_prototypes(feats, labels, 3)
    torch.testing.assert_close(imp.wi_weights(protos.sum(0))[1], unit(p1 + unit([2, -1])))


def test_features_are_upsampled_bilinearly_to_the_label():
    small = torch.arange(8.0).view(1, 2, 2, 2)
    up = imp.features_at(small, (4, 4))
    torch.testing.assert_close(up, F.interpolate(small, size=(4, 4), mode="bilinear",
                                                 align_corners=False))
    assert imp.features_at(small, (2, 2)) is small


def test_amp_proxy_and_alpha_mixing_by_hand():
    means, present = imp.amp_image_means(FEAT, LABEL, 3)
    torch.testing.assert_close(means[0, 1], torch.tensor([2.0, 2.5]))  # mean of (3,4), (1,1)
    # image 2: class 1 mean (6, 0.5); class 2 mean (1, 1)
    feat2 = torch.tensor([[[6.0, 1.0]], [[0.5, 1.0]]]).unsqueeze(0)  # 1 x 2 x 1 x 2
    m2, p2 = imp.amp_image_means(feat2, torch.tensor([[[1, 2]]]), 3)
    total = means.sum(0) + m2.sum(0)
    images = present.sum(0) + p2.sum(0)
    proxies = imp.amp_proxies(total, images)
    torch.testing.assert_close(proxies[1], unit([4.0, 1.5]))  # mean of (2, 2.5) and (6, 0.5)
    torch.testing.assert_close(proxies[0], unit([0.0, 2.0]))
    torch.testing.assert_close(proxies[2], unit([1.0, 1.0]))
    # classifier: step 0 = classes 0, 1 (old), step 1 = class 2 (new); class 0 absent this time
    cls = LinearClassifier(2, [2, 1])
    with torch.no_grad():
        cls.convs[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1))
        cls.convs[0].bias.copy_(torch.tensor([0.3, 0.7]))
    present_all = torch.tensor([False, True, True])
    imp.imprint_amp(cls, proxies, present_all, step=1, alpha=0.25)
    w0 = cls.convs[0].weight.view(2, 2)
    torch.testing.assert_close(w0[0], torch.tensor([1.0, 0.0]))  # absent: untouched
    torch.testing.assert_close(w0[1], 0.25 * torch.tensor([0.0, 2.0]) + 0.75 * unit([4.0, 1.5]))
    torch.testing.assert_close(cls.convs[0].bias, torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(cls.convs[1].weight.view(2), unit([1.0, 1.0]))
    torch.testing.assert_close(cls.convs[1].bias, torch.zeros(1))


def test_dwi_generator_by_hand():
    protos, present = dwi_image_prototypes(FEAT, LABEL, 3)
    torch.testing.assert_close(protos[0, 1], (unit([3, 4]) + unit([1, 1])) / 2)  # mean, no renorm
    gen = WeightGenerator(2)
    torch.testing.assert_close(gen.a.detach(), unit([1.0, 1.0]))
    k = torch.tensor([[1.0, 3.0], [3.0, -1.0]])
    torch.testing.assert_close(gen(k), unit([1.0, 1.0]) * torch.tensor([2.0, 1.0]))


# --- runs on the synthetic benchmark ---------------------------------------------------------

NO_TRAINING = {"train.iterations": 0, "train.epochs": 0}


def test_wi_step1_sets_the_imprinted_weights(synth_root, cos_step0, tmp_path):
    from ifss.data.build import build_step_data
    from ifss.models import build_model
    from ifss.tasks import get_task

    out = tmp_path / "wi"
    m = run_tiny(synth_root, out, method="WI", step=1, nshot=2, previous=cos_step0, **NO_TRAINING)
    assert m["iterations"] == 0 and m["miou_novel"] is not None
    assert json.loads((out / "metrics.json").read_text())["method"] == "WI"
    # recompute the imprinted weights from the step-0 model and the few-shot images
    cfg = build_config(None, tiny_overrides(synth_root, task="5-0", method="WI", step=1, nshot=2))
    task = get_task("synthetic", "5-0")
    data = build_step_data(cfg.resolved(), task)
    model = build_model(cfg.resolved().model, [16, 5], "cosine")
    model.load_state_dict(torch.load(cos_step0, weights_only=True)["model"], strict=False)
    total, images = imp.class_statistics(model, data.train_plain, imp.wi_image_prototypes,
                                         torch.device("cpu"))
    assert images[16:].tolist() == [2.0] * 5 and images[1:16].sum() > 0  # old classes are seen
    expected = imp.wi_weights(total[16:21])
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    torch.testing.assert_close(saved["classifier.convs.1.weight"].view(5, -1), expected)
    old = torch.load(cos_step0, weights_only=True)["model"]
    assert torch.equal(saved["classifier.convs.0.weight"], old["classifier.convs.0.weight"])
    assert torch.equal(saved["head.red_conv.weight"], old["head.red_conv.weight"])


def test_wi_takes_no_gradient_step_whatever_the_iterations(synth_root, cos_step0, tmp_path):
    """WI declares trains = False: a configured iteration count is logged as unused, not run."""
    a = run_tiny(synth_root, tmp_path / "a", method="WI", step=1, nshot=1, previous=cos_step0,
                 **{"train.iterations": 2})
    b = run_tiny(synth_root, tmp_path / "b", method="WI", step=1, nshot=1, previous=cos_step0,
                 **NO_TRAINING)
    assert a["iterations"] == 0 and a["iou"] == b["iou"]
    assert "takes no gradient step" in (tmp_path / "a" / "log.txt").read_text()


def test_amp_runs_on_ft_base(synth_root, tmp_path):
    ft0 = tmp_path / "ft0"
    run_tiny(synth_root, ft0, method="FT", **{"train.iterations": 2})
    out = tmp_path / "amp"
    m = run_tiny(synth_root, out, method="AMP", step=1, nshot=1, previous=ft0 / "model.pt",
            **NO_TRAINING)
    assert m["config"]["params"] == {"amp_alpha": 0.25}
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    assert torch.equal(saved["classifier.convs.1.bias"], torch.zeros(5))
    torch.testing.assert_close(saved["classifier.convs.1.weight"].flatten(1).norm(dim=1),
                               torch.ones(5))
    assert saved["classifier.convs.0.bias"][0] == 0  # background is in every image: re-imprinted


def test_dwi_cool_down_state_travels_to_step1(synth_root, cos_step0, tmp_path):
    d0 = tmp_path / "dwi0"
    params = {"params.dyn_iter": 3, "params.shots": "[1,2]", "params.random_images": 2,
              "params.class_images": 1}
    m0 = run_tiny(synth_root, d0, method="DWI", previous=cos_step0, **NO_TRAINING, **params)
    assert m0["config"]["params"]["dyn_iter"] == 3 and m0["config"]["params"]["dyn_lr"] == 1.0
    ckpt = torch.load(d0 / "model.pt", weights_only=True)
    a = ckpt["modules"]["generator"]["a"]
    assert a.shape == (16,) and not torch.allclose(a, F.normalize(torch.ones(16), dim=0))
    cos = torch.load(cos_step0, weights_only=True)["model"]["classifier.convs.0.weight"]
    assert not torch.equal(ckpt["model"]["classifier.convs.0.weight"], cos)  # meta-trained too
    assert torch.equal(ckpt["model"]["head.red_conv.weight"],
                       torch.load(cos_step0, weights_only=True)["model"]["head.red_conv.weight"])

    d1 = tmp_path / "dwi1"
    m1 = run_tiny(synth_root, d1, method="DWI", step=1, nshot=1, previous=d0 / "model.pt",
             **NO_TRAINING)
    assert m1["miou_novel"] is not None
    saved = torch.load(d1 / "model.pt", weights_only=True)
    assert torch.equal(saved["modules"]["generator"]["a"], a)  # carried on to later steps
    # the novel weights are a * mean prototype: dividing by a gives vectors that are means of
    # unit vectors (norm <= 1), unlike a random init
    w = saved["model"]["classifier.convs.1.weight"].view(5, -1) / a
    assert (w.norm(dim=1) <= 1 + 1e-5).all()


def test_wi_multi_step_chain_and_wrong_previous_method(synth_root, cos_step0, tmp_path):
    from ifss.errors import IfssError

    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    extra = dict(method="WI", task="5-0m", nshot=1, **NO_TRAINING)
    run_ms = lambda out, **kw: train_run(  # noqa: E731
        build_config(None, tiny_overrides(synth_root, **{**extra, **kw})), out)
    run_ms(s1, step=1, previous=cos_step0)
    m2 = run_ms(s2, step=2, previous=s1 / "model.pt")
    assert len(m2["iou"]) == 18
    a, b = (torch.load(p / "model.pt", weights_only=True)["model"] for p in (s1, s2))
    assert torch.equal(a["classifier.convs.1.weight"], b["classifier.convs.1.weight"])
    assert b["classifier.convs.2.weight"].flatten(1).norm(dim=1).item() == pytest.approx(1.0)
    with pytest.raises(IfssError, match="step 2 of method COS continues its step-1 model, but "
                                        ".* was trained by WI; give the COS step-1 model.pt"):
        run_ms(tmp_path / "x", step=2, method="COS", previous=s1 / "model.pt")
