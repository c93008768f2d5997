import pytest
import torch

from ifss.metrics import ConfusionMatrix, harmonic_mean, iou_per_class, summarize


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
