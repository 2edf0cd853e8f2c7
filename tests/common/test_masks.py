"""Mask dilation and distance-transform loss weights of the journal version, on hand-checked cases."""

import numpy as np
import pytest

from common.masks import dilate_mask, distance_weights


def test_dilate_single_pixel_gives_7x7_block():
    mask = np.zeros((11, 11))
    mask[5, 5] = 1.0
    expected = np.zeros((11, 11))
    expected[2:9, 2:9] = 1.0  # rows and columns 5-3 .. 5+3
    out = dilate_mask(mask, 7)
    assert out.shape == (11, 11) and out.dtype == mask.dtype
    assert np.array_equal(out, expected)
    assert mask.sum() == 1  # input untouched


def test_dilate_is_clipped_at_the_border():
    mask = np.zeros((6, 8))
    mask[0, 1] = 1.0
    mask[5, 7] = 1.0
    expected = np.zeros((6, 8))
    expected[0:4, 0:5] = 1.0  # rows 0..3 (0+3), columns 0..4 (1-3 clipped to 0, 1+3)
    expected[2:6, 4:8] = 1.0  # rows 2..5, columns 4..7
    assert np.array_equal(dilate_mask(mask, 7), expected)


def test_dilate_size_3_and_no_dilation_sizes():
    mask = np.zeros((5, 5))
    mask[2, 2] = 1.0
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = 1.0
    assert np.array_equal(dilate_mask(mask, 3), expected)
    for size in (None, 0, 1):
        out = dilate_mask(mask, size)
        assert np.array_equal(out, mask)
        assert out is not mask  # a copy


def test_distance_weights_regions_connectivity_and_border():
    mask = np.zeros((8, 10))
    mask[0:2, 0:2] = 1.0  # A: 2x2 block in the top-left corner
    mask[3:6, 4:7] = 1.0  # B: 3x3 block ...
    mask[6, 7] = 1.0  # ... plus a pixel touching its corner (5, 6) only diagonally: same region (8-conn.)
    mask[1, 8] = 1.0  # C: a lone pixel
    out = distance_weights(mask, 3, 2)
    assert out.shape == (8, 10) and out.dtype == np.float32

    expected = np.ones((8, 10))  # background: weight 1
    # A: the image border is not background, so the corner pixel (0, 0) is 2 away from the nearest
    # zero ((2, 0) or (0, 2)), the other three 1 away; max 2 -> 3 * (2/2)^2 = 3 and 3 * (1/2)^2 = 0.75
    expected[0:2, 0:2] = 0.75
    expected[0, 0] = 3.0
    # B: centre (4, 5) is 2 away from a zero, the other block pixels and the diagonal pixel 1 away;
    # one region with max 2 -> centre 3, the other nine 0.75 (as its own region the diagonal pixel would get 3)
    expected[3:6, 4:7] = 0.75
    expected[4, 5] = 3.0
    expected[6, 7] = 0.75
    # C: distance 1, max 1 -> 3
    expected[1, 8] = 3.0
    assert out == pytest.approx(expected.astype(np.float32), abs=1e-6)


def test_distance_weights_power_and_weight_parameters():
    mask = np.zeros((7, 7))
    mask[1:6, 1:6] = 1.0  # 5x5 block: distances 3 (centre), 2 (inner ring), 1 (outer ring)
    out = distance_weights(mask, 2, 1)
    expected = np.ones((7, 7))
    expected[1:6, 1:6] = 2 * 1 / 3
    expected[2:5, 2:5] = 2 * 2 / 3
    expected[3, 3] = 2.0
    assert out == pytest.approx(expected, abs=1e-6)
    out = distance_weights(mask, 3, 2)
    expected[1:6, 1:6] = 3 * (1 / 3) ** 2
    expected[2:5, 2:5] = 3 * (2 / 3) ** 2
    expected[3, 3] = 3.0
    assert out == pytest.approx(expected, abs=1e-6)


def test_distance_weights_empty_mask_is_all_ones():
    out = distance_weights(np.zeros((4, 6)), 3, 2)
    assert out.shape == (4, 6) and out.dtype == np.float32
    assert np.array_equal(out, np.ones((4, 6), dtype=np.float32))
