import pytest
import torch

import numpy as np

from ifss.metrics import (
    ConfusionMatrix, accuracy_per_class, harmonic_mean, iou_per_class, predicted_classes, summarize,
    weakshot_summary,
)


def test_confusion_matrix_counts_and_ignores_void():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.mat, expected)


def test_iou_and_summary_by_hand():
    # rows = ground truth, columns = prediction; 5 classes, 3 base (incl. background)
    mat = torch.tensor([
        [50, 5, 0, 0, 5],   # bkg
        [10, 30, 0, 0, 0],  # base 1
        [0, 0, 0, 0, 0],    # base 2: absent from GT and prediction -> None
        [0, 0, 0, 0, 0],    # novel 3: absent from GT but predicted below? no: column 3 is 0
        [0, 0, 0, 0, 20],   # novel 4
    ])
    iou = iou_per_class(mat)
    assert iou[0] == pytest.approx(50 / (60 + 60 - 50))
    assert iou[1] == pytest.approx(30 / (40 + 35 - 30))
    assert iou[2] is None and iou[3] is None
    assert iou[4] == pytest.approx(20 / (20 + 25 - 20))
    s = summarize(mat, num_base=3)
    base = (iou[0] + iou[1]) / 2
    assert s["miou_base"] == pytest.approx(base)
    assert s["miou_novel"] == pytest.approx(iou[4])
    assert s["miou_all"] == pytest.approx((iou[0] + iou[1] + iou[4]) / 3)
    assert s["hm"] == pytest.approx(2 * base * iou[4] / (base + iou[4]))
    assert s["pixel_accuracy"] == pytest.approx(100 / 120)


def test_false_positives_of_an_absent_class_count_as_zero():
    mat = torch.tensor([[8, 2], [0, 0]])  # class 1 never in GT, predicted twice
    assert iou_per_class(mat) == [pytest.approx(0.8), 0.0]


def test_step0_has_no_novel():
    s = summarize(torch.eye(3, dtype=torch.int64), num_base=3)
    assert s["miou_novel"] is None and s["hm"] is None and s["miou_base"] == 1.0


def test_harmonic_mean():
    assert harmonic_mean(0.6, 0.2) == pytest.approx(0.3)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, None) is None


# ------------------------------------------------------------------ weak-shot (SimFormer) metrics

# rows = ground truth, columns = prediction; 6 classes: 0 = background / ignored "other",
# base 1 and 2, novel 3 (predicted, absent from ground truth), 4, and 5 (absent from both)
WEAKSHOT = torch.tensor([
    [7, 1, 0, 0, 2, 0],  # ground truth 0: ignored, with its predictions
    [1, 8, 1, 0, 0, 0],  # 10 pixels of class 1, 8 right, one predicted background
    [0, 2, 6, 0, 2, 0],  # 10 pixels of class 2
    [0, 0, 0, 0, 0, 0],  # class 3: no pixel, predicted 3 times below
    [0, 0, 0, 3, 5, 0],  # 8 pixels of class 4
    [0, 0, 0, 0, 0, 0],  # class 5: absent from both
])


def test_accuracy_per_class_by_hand():
    assert accuracy_per_class(WEAKSHOT) == [pytest.approx(0.7), pytest.approx(0.8),
                                            pytest.approx(0.6), None, pytest.approx(5 / 8), None]


def test_weakshot_summary_by_hand():
    s = weakshot_summary(WEAKSHOT, base=[1, 2], novel=[3, 4, 5])
    # kept rows 1, 2, 4; column sums over them: 1, 10, 7, 3, 7, 0
    iou = {1: 8 / (10 + 10 - 8), 2: 6 / (10 + 7 - 6), 3: 0.0, 4: 5 / (8 + 7 - 5)}
    acc = {1: 0.8, 2: 0.6, 4: 5 / 8}
    assert s["iou"][0] is None and s["iou"][5] is None  # not kept / absent from both
    assert s["acc"][0] is None and s["acc"][3] is None and s["acc"][5] is None
    for c in iou:
        assert s["iou"][c] == pytest.approx(iou[c])
    for c in acc:
        assert s["acc"][c] == pytest.approx(acc[c])
    assert s["miou_all"] == pytest.approx(sum(iou.values()) / 4)
    assert s["fwiou"] == pytest.approx(10 / 28 * iou[1] + 10 / 28 * iou[2] + 8 / 28 * iou[4])
    assert s["macc"] == pytest.approx((0.8 + 0.6 + 5 / 8) / 3)
    assert s["pacc"] == pytest.approx(19 / 28)
    assert s["miou_base"] == pytest.approx((iou[1] + iou[2]) / 2)
    assert s["miou_novel"] == pytest.approx((0.0 + iou[4]) / 2)  # class 3 counts as 0
    assert s["macc_base"] == pytest.approx(0.7) and s["macc_novel"] == pytest.approx(5 / 8)
    assert s["hm"] == pytest.approx(harmonic_mean(s["miou_base"], s["miou_novel"]))
    # the same IoUs as summarize's convention on the matrix without the ignored row
    kept = WEAKSHOT.clone()
    kept[0] = 0
    for c, v in enumerate(iou_per_class(kept)[1:], start=1):
        assert s["iou"][c] == (None if v is None else pytest.approx(v))


def test_weakshot_summary_matches_simformers_formulas():
    """mIoU, fwIoU, mACC, pACC as SimFormer's evaluator computes them (its matrix is [pred, gt],
    void pixels in the last row and column; every class but background kept)."""
    rng = np.random.default_rng(0)
    n = 7
    mat = rng.integers(0, 50, (n, n))
    mat[3] = 0  # a class absent from the ground truth, still predicted
    conf = np.zeros((n, n), np.int64)  # SimFormer's: classes 1..6 -> 0..5, void (gt 0) -> 6
    conf[:n - 1, :n - 1] = mat[1:, 1:].T
    conf[:n - 1, n - 1] = mat[0, 1:]  # pixels of ground truth 0 are void there
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(0).astype(float)
    pos_pred = conf[:-1, :-1].sum(1).astype(float)
    valid = pos_gt > 0
    iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    expected = {"miou_all": iou.sum() / ((pos_gt + pos_pred) > 0).sum(),
                "fwiou": (iou * (pos_gt / pos_gt.sum())[valid]).sum(),
                "macc": (tp[valid] / pos_gt[valid]).mean(), "pacc": tp.sum() / pos_gt.sum()}
    # background predictions have no column in SimFormer: take them out of the matrix
    mat[:, 0] = 0
    s = weakshot_summary(torch.from_numpy(mat), base=[1, 2, 3], novel=[4, 5, 6])
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key


def test_weakshot_summary_refuses_overlapping_or_outside_classes():
    with pytest.raises(ValueError, match="distinct indices"):
        weakshot_summary(WEAKSHOT, base=[1, 2], novel=[2, 3])
    with pytest.raises(ValueError, match="distinct indices"):
        weakshot_summary(WEAKSHOT, base=[1], novel=[6])
    empty = weakshot_summary(torch.zeros(3, 3, dtype=torch.int64), base=[1], novel=[2])
    assert empty["pacc"] is None and empty["fwiou"] is None and empty["miou_all"] is None


def test_predicted_classes_is_argmax_with_its_tie_rule():
    torch.manual_seed(0)
    logits = torch.randn(3, 21, 17, 19)
    assert torch.equal(predicted_classes(logits), logits.argmax(1))
    tied = torch.zeros(1, 4, 2, 2)
    tied[0, 1:3] = 1.0  # classes 1 and 2 share the maximum everywhere: the first wins
    assert torch.equal(predicted_classes(tied), torch.ones(1, 2, 2, dtype=torch.long))
    assert torch.equal(predicted_classes(tied), tied.argmax(1))


@pytest.mark.parametrize("channels", [1, 2, 21, 256, 257, 300])
def test_predicted_classes_equals_argmax_at_every_channel_count(channels):
    """The CPU path (amax, then the first channel equal to it) is argmax: random scores, integer
    scores with many ties, and channel counts around its uint8 / int32 rank switch."""
    gen = torch.Generator().manual_seed(channels)
    scores = torch.randn(2, channels, 9, 7, generator=gen)
    assert torch.equal(predicted_classes(scores), scores.argmax(1))
    ties = torch.randint(0, 3, (2, channels, 9, 7), generator=gen).float()
    assert torch.equal(predicted_classes(ties), ties.argmax(1))
    assert predicted_classes(ties).dtype == torch.long


def test_predicted_classes_special_values():
    """-0.0 and 0.0 tie (first wins); infinities; a NaN wins where argmax says so (its first
    NaN); bfloat16 scores (CPU autocast); integer scores go to torch's argmax."""
    scores = torch.tensor([-0.0, 0.0, -1.0]).view(1, 3, 1, 1)
    assert predicted_classes(scores).item() == 0
    scores = torch.tensor([1.0, float("inf"), float("inf")]).view(1, 3, 1, 1)
    assert predicted_classes(scores).item() == 1
    scores = torch.full((1, 5, 2, 2), -float("inf"))
    assert torch.equal(predicted_classes(scores), torch.zeros(1, 2, 2, dtype=torch.long))
    nan = torch.randn(1, 6, 3, 3)
    nan[0, 4, 1, 1] = nan[0, 2, 1, 1] = float("nan")
    assert predicted_classes(nan)[0, 1, 1].item() == 2
    assert torch.equal(predicted_classes(nan), nan.argmax(1))
    half = torch.randn(2, 21, 8, 8).to(torch.bfloat16)
    assert torch.equal(predicted_classes(half), half.argmax(1))
    ints = torch.randint(0, 5, (2, 4, 3, 3))
    assert torch.equal(predicted_classes(ints), ints.argmax(1))
