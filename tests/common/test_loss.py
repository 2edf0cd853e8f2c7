"""The training loss and the mask downsampling, ICPR and journal versions, on hand-computed cases."""

import math

import pytest
import torch

from common.loss import downsample_mask, downsample_weights, focal_loss, supersimplenet_loss, truncated_l1_loss




def test_focal_loss_hand_computed():
    p = torch.tensor([0.9, 0.2, 0.6, 0.5])
    t = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # p_t = [0.9, 0.8, 0.4, 0.5]; term = -ln(p_t) * (1 - p_t)^4
    terms = [
        -math.log(0.9) * 0.1**4,
        -math.log(0.8) * 0.2**4,
        -math.log(0.4) * 0.6**4,
        -math.log(0.5) * 0.5**4,
    ]
    expected = sum(terms) / 4
    assert expected == pytest.approx(0.0406101, abs=1e-6)
    assert focal_loss(p, t).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_gamma_zero_is_bce_and_no_alpha():
    p = torch.tensor([0.3, 0.7, 0.99])
    t = torch.tensor([1.0, 1.0, 0.0])
    bce = -(math.log(0.3) + math.log(0.7) + math.log(0.01)) / 3
    assert focal_loss(p, t, gamma=0).item() == pytest.approx(bce, rel=1e-5)
    # symmetric: swapping the classes with p -> 1 - p gives the same value (no alpha weighting)
    assert focal_loss(1 - p, 1 - t).item() == pytest.approx(focal_loss(p, t).item(), rel=1e-5)


def test_focal_loss_default_gamma_is_four():
    p = torch.tensor([0.35])
    t = torch.tensor([1.0])
    assert focal_loss(p, t).item() == pytest.approx(-math.log(0.35) * 0.65**4, rel=1e-5)


def naive_truncated_l1(map_logits: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> float:
    normal, anomalous = [], []
    flat_map, flat_mask = map_logits.flatten().tolist(), mask.flatten().tolist()
    for value, is_anomalous in zip(flat_map, flat_mask):
        if is_anomalous:
            anomalous.append(max(-value + threshold, 0.0))
        else:
            normal.append(max(value + threshold, 0.0))
    total = 0.0
    if normal:
        total += sum(normal) / len(normal)
    if anomalous:
        total += sum(anomalous) / len(anomalous)
    return total


def test_truncated_l1_against_naive_loop():
    generator = torch.Generator().manual_seed(0)
    map_logits = torch.randn(3, 1, 5, 4, generator=generator)
    mask = (torch.rand(3, 1, 5, 4, generator=generator) > 0.7).float()
    assert 0 < mask.sum() < mask.numel()
    assert truncated_l1_loss(map_logits, mask).item() == pytest.approx(naive_truncated_l1(map_logits, mask), rel=1e-5)


def test_truncated_l1_hand_computed():
    map_logits = torch.tensor([[-1.0, 0.25], [0.0, 2.0]]).reshape(1, 1, 2, 2)
    mask = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    # normal: clip(-0.5) = 0, clip(0.75) = 0.75 -> 0.375; anomalous: clip(0.5) = 0.5, clip(-1.5) = 0 -> 0.25
    assert truncated_l1_loss(map_logits, mask).item() == pytest.approx(0.625)


def test_truncated_l1_empty_terms_are_zero():
    map_logits = torch.tensor([0.1, -0.2, 0.3, -0.9]).reshape(1, 1, 2, 2)
    all_normal = torch.zeros(1, 1, 2, 2)
    assert truncated_l1_loss(map_logits, all_normal).item() == pytest.approx((0.6 + 0.3 + 0.8 + 0.0) / 4)
    all_anomalous = torch.ones(1, 1, 2, 2)
    assert truncated_l1_loss(map_logits, all_anomalous).item() == pytest.approx((0.4 + 0.7 + 0.2 + 1.4) / 4)
    assert not math.isnan(truncated_l1_loss(map_logits, all_normal).item())


def test_total_loss_is_the_sum_of_three_terms():
    generator = torch.Generator().manual_seed(1)
    map_logits = torch.randn(4, 1, 3, 3, generator=generator)
    mask = (torch.rand(4, 1, 3, 3, generator=generator) > 0.6).float()
    score_logits = torch.randn(4, generator=generator)
    label = torch.tensor([0.0, 1.0, 1.0, 0.0])
    expected = (
        naive_truncated_l1(map_logits, mask)
        + focal_loss(torch.sigmoid(map_logits), mask).item()
        + focal_loss(torch.sigmoid(score_logits), label).item()
    )
    assert supersimplenet_loss(map_logits, score_logits, mask, label).item() == pytest.approx(expected, rel=1e-5)


def test_total_loss_is_differentiable():
    map_logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    score_logits = torch.randn(2, requires_grad=True)
    supersimplenet_loss(map_logits, score_logits, torch.zeros(2, 1, 3, 3), torch.tensor([0.0, 1.0])).backward()
    assert map_logits.grad is not None and score_logits.grad is not None


def test_downsample_mask_half_counts_as_defect():
    # 4x4 -> 2x2 bilinear (align_corners=False) averages each 2x2 block
    mask = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0],  # top-left block 2/4 = 0.5 (defect); top-right 1/4 = 0.25
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],  # bottom-left 3/4; bottom-right 0
        ]
    )[None]
    resized = torch.nn.functional.interpolate(mask[:, None], size=(2, 2), mode="bilinear", align_corners=False)
    assert resized[0, 0].tolist() == [[0.5, 0.25], [0.75, 0.0]]
    out = downsample_mask(mask, 2, 2)
    assert out.shape == (1, 1, 2, 2)
    assert out.dtype == torch.float32
    assert out[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # other conventions pick other values here: align_corners=True samples the corners, nearest the
    # top-left pixels, a strict "> 0.5" drops the half-covered block
    corners = torch.nn.functional.interpolate(mask[:, None], size=(2, 2), mode="bilinear", align_corners=True)
    assert corners[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    nearest = torch.nn.functional.interpolate(mask[:, None], size=(2, 2), mode="nearest")
    assert nearest[0, 0].tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_downsample_mask_matches_bilinear_threshold_on_random_masks():
    generator = torch.Generator().manual_seed(2)
    masks = (torch.rand(3, 24, 20, generator=generator) > 0.5).float()
    out = downsample_mask(masks, 6, 5)
    resized = torch.nn.functional.interpolate(masks[:, None], size=(6, 5), mode="bilinear", align_corners=False)
    assert out.shape == (3, 1, 6, 5)
    assert torch.equal(out, (resized >= 0.5).float())
    assert set(out.unique().tolist()) <= {0.0, 1.0}


# --- journal version: per-sample is_segmented, per-pixel loss weights -------------------------
# Expected values below are written out term by term with `math`; pixels with logit -100 (mask 0)
# or +100 (mask 1) are "neutral": in float32 sigmoid gives exactly 0 or 1 there, so their truncated
# L1 and focal values are exactly 0, but they still count in the means' denominators.


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def focal_value(logit: float, target: float) -> float:
    """Focal term (gamma 4) of sigmoid(logit) vs a 0/1 target, by hand."""
    p_t = sig(logit) if target else sig(-logit)
    return -math.log(p_t) * (1 - p_t) ** 4


def as_map(values, n=1, h=2, w=2):
    return torch.tensor(values, dtype=torch.float32).reshape(n, 1, h, w)


def test_journal_l1_normal_term_with_weights_and_empty_anomalous_part():
    map_logits = as_map([0.25, -0.7, -100.0, -100.0])
    mask = as_map([0.0, 0.0, 0.0, 0.0])
    weight = as_map([2.0, 5.0, 1.0, 1.0])
    # L1 at normal pixels: 2 * clip(0.75) = 1.5, 5 * clip(-0.2) = 0, 0, 0 -> mean over 4 = 0.375
    l1_normal = (2 * 0.75 + 0 + 0 + 0) / 4
    # no anomalous pixel: that part counts 0 (not NaN)
    focal_map = (2 * focal_value(0.25, 0) + 5 * focal_value(-0.7, 0)) / 4
    score = torch.tensor([-100.0])  # label 0: score focal exactly 0
    loss = supersimplenet_loss(map_logits, score, mask, torch.tensor([0.0]), torch.tensor([True]), weight)
    assert loss.item() == pytest.approx(l1_normal + focal_map, rel=1e-6)


def test_journal_l1_anomalous_term_with_weights_and_empty_normal_part():
    map_logits = as_map([0.1, 0.9, 100.0, 100.0])
    mask = as_map([1.0, 1.0, 1.0, 1.0])
    weight = as_map([4.0, 2.0, 1.0, 1.0])
    # L1 at anomalous pixels: 4 * clip(-0.1 + 0.5) = 1.6, 2 * clip(-0.4) = 0, 0, 0 -> mean over 4 = 0.4
    l1_anomalous = (4 * 0.4) / 4
    focal_map = (4 * focal_value(0.1, 1) + 2 * focal_value(0.9, 1)) / 4
    score = torch.tensor([100.0])  # label 1: score focal exactly 0
    loss = supersimplenet_loss(map_logits, score, mask, torch.tensor([1.0]), torch.tensor([True]), weight)
    assert loss.item() == pytest.approx(l1_anomalous + focal_map, rel=1e-6)


def test_journal_focal_map_term_alone():
    # -0.6 on a normal pixel and 0.8 on an anomalous one are past the truncation: L1 is 0 there,
    # so only the weighted focal values remain, averaged over all 4 segmented pixels
    map_logits = as_map([-0.6, 0.8, -100.0, 100.0])
    mask = as_map([0.0, 1.0, 0.0, 1.0])
    weight = as_map([3.0, 0.5, 7.0, 7.0])
    focal_map = (3 * focal_value(-0.6, 0) + 0.5 * focal_value(0.8, 1)) / 4
    loss = supersimplenet_loss(
        map_logits, torch.tensor([100.0]), mask, torch.tensor([1.0]), torch.tensor([True]), weight
    )
    assert loss.item() == pytest.approx(focal_map, rel=1e-6)


def test_journal_no_segmented_sample_leaves_only_the_score_focal():
    # maps far from their masks would give large map terms if they were counted
    map_logits = as_map([3.0, -2.0, 1.0, 0.5, 2.0, 2.0, -1.0, 0.0], n=2)
    mask = as_map([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], n=2)
    score = torch.tensor([0.0, 1.0])
    label = torch.tensor([1.0, 0.0])
    # sample 0: p = 0.5 vs 1 -> ln 2 * 0.5^4; sample 1: p = sig(1) vs 0 -> -ln sig(-1) * sig(1)^4; mean over N = 2
    score_focal = (math.log(2) * 0.5**4 + (-math.log(sig(-1.0))) * sig(1.0) ** 4) / 2
    for weight in (None, as_map([1.0] * 8, n=2), as_map([9.0] * 8, n=2)):
        loss = supersimplenet_loss(map_logits, score, mask, label, torch.tensor([False, False]), weight)
        assert loss.item() == pytest.approx(score_focal, rel=1e-6)


def test_journal_unsegmented_samples_and_weights_together():
    # N = 3 samples of 1 x 2 pixels; the third is a label-only positive (not segmented, all-zero mask)
    map_logits = as_map([0.5, -100.0, -0.25, -100.0, 1.0, 2.0], n=3, h=1, w=2)
    mask = as_map([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], n=3, h=1, w=2)
    weight = as_map([2.0, 1.0, 3.0, 1.0, 1.0, 1.0], n=3, h=1, w=2)
    is_segmented = torch.tensor([True, True, False])
    score = torch.tensor([-100.0, 100.0, 0.0])
    label = torch.tensor([0.0, 1.0, 1.0])
    # segmented normal pixels: (0.5, w 2), (-100), (-100): L1 2 * 1.0 = 2 -> mean 2/3
    l1_normal = 2.0 / 3
    # segmented anomalous pixel: (-0.25, w 3): 3 * 0.75 -> mean 2.25
    l1_anomalous = 2.25
    # focal over the 4 segmented pixels
    focal_map = (2 * focal_value(0.5, 0) + 3 * focal_value(-0.25, 1)) / 4
    # score focal over all 3 samples: only the third (p = 0.5 vs 1) is non-zero
    score_focal = math.log(2) * 0.5**4 / 3
    expected = l1_normal + l1_anomalous + focal_map + score_focal
    loss = supersimplenet_loss(map_logits, score, mask, label, is_segmented, weight)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # is_segmented given as 0/1 floats (as a batch may carry it) selects the same samples
    loss_float_flag = supersimplenet_loss(map_logits, score, mask, label, torch.tensor([1.0, 1.0, 0.0]), weight)
    assert loss_float_flag.item() == pytest.approx(expected, rel=1e-6)


def icpr_reference(map_logits, score_logits, mask, label):
    """The ICPR loss exactly as common/loss.py computed it before the journal version was added."""

    def focal(p, t):
        p, t = p.float(), t.float()
        bce = torch.nn.functional.binary_cross_entropy(p, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        return (bce * (1 - p_t) ** 4.0).mean()

    normal = map_logits[mask == 0]
    anomalous = map_logits[mask > 0]
    l1 = map_logits.new_zeros(())
    if normal.numel():
        l1 = l1 + torch.clip(normal + 0.5, min=0).mean()
    if anomalous.numel():
        l1 = l1 + torch.clip(-anomalous + 0.5, min=0).mean()
    return l1 + focal(torch.sigmoid(map_logits), mask) + focal(torch.sigmoid(score_logits), label)


def test_journal_loss_reduces_to_icpr_loss():
    generator = torch.Generator().manual_seed(3)
    map_logits = torch.randn(6, 1, 5, 7, generator=generator) * 2
    mask = (torch.rand(6, 1, 5, 7, generator=generator) > 0.7).float()
    score = torch.randn(6, generator=generator)
    label = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    reference = icpr_reference(map_logits, score, mask, label)
    by_loop = (
        naive_truncated_l1(map_logits, mask)
        + focal_loss(torch.sigmoid(map_logits), mask).item()
        + focal_loss(torch.sigmoid(score), label).item()
    )
    assert reference.item() == pytest.approx(by_loop, rel=1e-5)
    # both None: the ICPR code path, bit for bit
    assert torch.equal(supersimplenet_loss(map_logits, score, mask, label), reference)
    assert torch.equal(supersimplenet_loss(map_logits, score, mask, label, None, None), reference)
    # all segmented and / or all weights 1: the journal path, same value
    all_true = torch.ones(6, dtype=torch.bool)
    ones = torch.ones(6, 1, 5, 7)
    for is_segmented, weight in ((all_true, None), (None, ones), (all_true, ones)):
        loss = supersimplenet_loss(map_logits, score, mask, label, is_segmented, weight)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_journal_loss_is_differentiable_and_label_only_maps_get_no_gradient():
    map_logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    score_logits = torch.randn(2, requires_grad=True)
    loss = supersimplenet_loss(
        map_logits,
        score_logits,
        torch.zeros(2, 1, 3, 3),
        torch.tensor([0.0, 1.0]),
        torch.tensor([True, False]),
        torch.full((2, 1, 3, 3), 2.0),
    )
    loss.backward()
    assert map_logits.grad[0].abs().sum() > 0
    assert torch.equal(map_logits.grad[1], torch.zeros(1, 3, 3))
    assert score_logits.grad.abs().min() > 0


def test_downsample_mask_align_corners_true_vs_false():
    # same 4x4 mask as above: align_corners=False averages 2x2 blocks -> [[0.5, 0.25], [0.75, 0]];
    # align_corners=True samples exactly the corner pixels (0,0)=0, (0,3)=1, (3,0)=0, (3,3)=0
    mask = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
        ]
    )[None]
    assert downsample_mask(mask, 2, 2)[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert downsample_mask(mask, 2, 2, align_corners=False)[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    corners = downsample_mask(mask, 2, 2, align_corners=True)
    assert corners.shape == (1, 1, 2, 2) and corners.dtype == torch.float32
    assert corners[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_downsample_weights_bilinear_align_corners_not_binarised():
    # 2 x 4 -> 2 x 3 with align_corners=True: rows map 1:1, columns sample x = 0, 1.5, 3
    weights = torch.tensor([[0.2, 3.0, 1.0, 1.0], [1.0, 1.0, 5.0, 1.0]])[None]
    out = downsample_weights(weights, 2, 3)
    assert out.shape == (1, 1, 2, 3) and out.dtype == torch.float32
    # row 0: 0.2, (3 + 1) / 2 = 2, 1; row 1: 1, (1 + 5) / 2 = 3, 1
    assert out[0, 0].flatten().tolist() == pytest.approx([0.2, 2.0, 1.0, 1.0, 3.0, 1.0], abs=1e-6)
    # (align_corners=False would sample x = 1/6, 1.5, 17/6 and give 0.2 + 2.8/6 at (0, 0))
