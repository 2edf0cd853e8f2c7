"""The training loss (SPEC §2) and the mask downsampling (SPEC §3) on hand-computed cases."""

import math

import pytest
import torch

from common.loss import downsample_mask, focal_loss, supersimplenet_loss, truncated_l1_loss




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
