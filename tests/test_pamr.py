"""PAMR, the pseudo mask and ℓ_SSS against hand / plain-loop computations
(research/wilson_sdr_gfss_simformer.md §A.3-A.4 and §G)."""

import math
import statistics

import pytest
import torch

from ifss.errors import IfssError
from ifss.pamr import balanced_self_supervision, denormalize, pamr, pseudo_mask


def loop_pamr(image, masks, iterations, dilations):
    """PAMR for one image with Python loops over pixels and neighbours (K x H x W nested lists)."""
    k_n, h, w = len(image), len(image[0]), len(image[0][0])
    c_n = len(masks)

    def at(t, k, y, x):  # replicate padding = clamp the coordinates
        return t[k][min(max(y, 0), h - 1)][min(max(x, 0), w - 1)]

    window = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neigh = [o for o in window if o != (0, 0)]
    alpha = {}
    for y in range(h):
        for x in range(w):
            sig = [
                statistics.stdev([at(image, k, y + oy, x + ox) for oy, ox in window])
                for k in range(k_n)
            ]
            a = []
            for oy, ox in neigh:
                a.append(
                    sum(
                        -abs(image[k][y][x] - at(image, k, y + oy, x + ox)) / (1e-8 + 0.1 * sig[k])
                        for k in range(k_n)
                    )
                    / k_n
                )
            top = max(a)
            e = [math.exp(v - top) for v in a]
            alpha[y, x] = [v / sum(e) for v in e]
    for _ in range(iterations):
        masks = [
            [
                [
                    sum(
                        alpha[y, x][j] * at(masks, c, y + oy, x + ox)
                        for j, (oy, ox) in enumerate(neigh)
                    )
                    for x in range(w)
                ]
                for y in range(h)
            ]
            for c in range(c_n)
        ]
    return torch.tensor(masks, dtype=torch.float64)


@pytest.mark.parametrize(
    "shape,iterations,dilations", [((3, 3), 1, (1,)), ((4, 5), 2, (1, 2)), ((3, 4), 1, (4,))]
)
def test_pamr_matches_loop_reference(shape, iterations, dilations):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *shape, generator=g, dtype=torch.float64)
    masks = torch.rand(1, 2, *shape, generator=g, dtype=torch.float64)
    out = pamr(image, masks, iterations=iterations, dilations=dilations)
    ref = loop_pamr(image[0].tolist(), masks[0].tolist(), iterations, dilations)
    assert out.shape == masks.shape
    torch.testing.assert_close(out[0], ref, atol=1e-6, rtol=0)


def test_pamr_constant_image_gives_uniform_affinities():
    from ifss.pamr import _affinity

    image = torch.full((2, 3, 5, 4), 0.3)
    alpha = _affinity(image, [1, 2])
    assert alpha.shape == (2, 16, 5, 4)
    torch.testing.assert_close(alpha, torch.full_like(alpha, 1 / 16))
    # with uniform weights, one step at dilation 1 gives the centre of a 3 x 3 the mean of its
    # 8 neighbours
    masks = torch.arange(9.0).view(1, 1, 3, 3)
    out = pamr(image[:1, :, :3, :3], masks, iterations=1, dilations=(1,))
    assert out[0, 0, 1, 1].item() == pytest.approx((36 - 4) / 8)


def test_pamr_keeps_constant_masks_and_batch_independence():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 6, 7, generator=g)
    masks = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1).expand(2, 2, 6, 7).contiguous()
    torch.testing.assert_close(pamr(image, masks, iterations=3, dilations=(1, 2, 4, 8, 12)), masks)
    varied = torch.rand(2, 2, 6, 7, generator=g)
    both = pamr(image, varied, iterations=2, dilations=(1, 3))
    torch.testing.assert_close(
        both[1:], pamr(image[1:], varied[1:], iterations=2, dilations=(1, 3))
    )


def test_pamr_respects_edges():
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # left half black, right half white
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., 4:] = 1.0
    masks = torch.cat([1 - fg, fg], dim=1)
    out = pamr(image, masks, iterations=10, dilations=(1, 2))
    assert out[0, 1, :, :4].max().item() < 1e-4
    assert out[0, 1, :, 4:].min().item() > 1 - 1e-4
    # a blurred copy of the same mask on a constant image must leak across (the affinities matter)
    flat = pamr(torch.zeros_like(image), masks, iterations=10, dilations=(1, 2))
    assert flat[0, 1, :, 3].min().item() > 0.1


def test_pamr_lets_gradients_through():
    image = torch.rand(1, 3, 4, 4)
    masks = torch.rand(1, 2, 4, 4, requires_grad=True)
    pamr(image, masks, iterations=2, dilations=(1,)).sum().backward()
    assert masks.grad is not None and masks.grad.abs().sum() > 0


def test_pamr_rejects_bad_shapes():
    with pytest.raises(IfssError, match="masks"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 5))
    with pytest.raises(IfssError, match="masks"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(2, 2, 4, 4))
    with pytest.raises(IfssError, match="image"):
        pamr(torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4))
    with pytest.raises(IfssError, match="dilations"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), dilations=())


def test_denormalize_undoes_imagenet_normalisation():
    raw = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # 0.406, not the original's 0.4069
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(denormalize((raw - mean) / std), raw)
    assert denormalize(torch.zeros(3, 1, 1)).flatten().tolist() == pytest.approx(
        [0.485, 0.456, 0.406]
    )
    with pytest.raises(IfssError, match="image"):
        denormalize(torch.zeros(1, 4, 2, 2))


def test_pseudo_mask_thresholds_floor_strictness_and_ambiguity():
    # pixels in order p00, p01, p10, p11 of a 2 x 2 image
    bg = [1.0, 0.65, 0.0, 0.0]  # max 1 -> t = 0.7: p00; p01 (0.65) would pass a 0.6 cutoff
    c1 = [0.0, 0.0, 0.9, 0.6]  # max 0.9 -> t = 0.54: p10, p11
    c2 = [0.0, 0.2, 0.0, 0.3]  # max 0.3 -> 0.18 floored to 0.2: p11 only (0.2 is not > 0.2)
    first = torch.tensor([bg, c1, c2], dtype=torch.float64).view(1, 3, 2, 2)
    second = first * 0.5  # thresholds 0.35, 0.27, and 0.2 (floor: c2's max 0.15 claims nothing)
    out = pseudo_mask(torch.cat([first, second]))
    assert out.dtype == torch.float64 and out.shape == (2, 3, 2, 2)
    # image 1: p11 claimed by classes 1 and 2 -> dropped; p01 unclaimed
    assert out[0].view(3, 4).tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # image 2: c2 falls under the floor, so p11 stays with class 1
    assert out[1].view(3, 4).tolist() == [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    with pytest.raises(IfssError, match="masks"):
        pseudo_mask(torch.rand(3, 2, 2))


def _ce(logits, target):
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def test_balanced_self_supervision_by_hand():
    # pixels p00 -> class 0, p01 -> 1, p10 -> 1, p11 ignored: M = (1, 2, 0), |I| = 3
    pseudo = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32).view(
        1, 3, 2, 2
    )
    pix = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1], [3.0, -2.0, 0.0]]
    logits = torch.tensor(pix).T.reshape(1, 3, 2, 2)
    w = [(3 - 1) / 4, (3 - 2) / 4, (3 - 0) / 4]
    expected = (w[0] * _ce(pix[0], 0) + w[1] * _ce(pix[1], 1) + w[1] * _ce(pix[2], 1) + 0.0) / 4
    labels = torch.tensor(
        [[1.0, 0.0]]
    )  # one foreground label + background = the two pseudo classes
    loss = balanced_self_supervision(logits, pseudo, labels)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the ignored pixel is a zero in a mean over all 4 pixels, not left out of it
    assert loss.item() != pytest.approx(expected * 4 / 3, rel=1e-3)


def test_balanced_self_supervision_gate_zeroes_incomplete_images():
    pseudo = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32).view(
        1, 3, 2, 2
    )
    pseudo = pseudo.expand(2, 3, 2, 2)
    logits = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # image 0 claims 2 classes, pseudo holds 1
    loss = balanced_self_supervision(logits, pseudo, labels)
    assert loss[0].item() == 0.0
    assert loss[1].item() > 0.0


def test_balanced_self_supervision_rejects_bad_shapes():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(IfssError, match="image_labels"):
        balanced_self_supervision(logits, torch.zeros(1, 3, 2, 2), torch.zeros(1, 3))
    with pytest.raises(IfssError, match="pseudo"):
        balanced_self_supervision(logits, torch.zeros(1, 3, 2, 3), torch.zeros(1, 2))
