"""Per-image figures: four titled panels in the image's own aspect ratio, titles wrapped inside
their panel, the map on the fixed 0..1 scale with a colour bar marking the threshold, atomic PNGs."""

import os

import cv2
import numpy as np
import pytest

from common.image_io import read_rgb
from common.visualize import (
    BAR_WIDTH, GAP, LINE_HEIGHT, TITLE_PADDING, colour_bar, figure_maps, panel_size, render_panel, save_panel,
    wrap_title,
)

H, W = 40, 30  # the map (network) size


def make_inputs(tmp_path, image_shape=(50, 64)):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(*image_shape, 3), dtype=np.uint8)
    rgb[:, :, 0] = 250  # strongly red, so an RGB/BGR swap would show
    rgb[:, :, 2] = 5
    path = tmp_path / "image.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    gt = np.zeros((H, W), dtype=np.float32)
    gt[5:15, 10:20] = 1
    anomaly_map = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    return path, rgb, gt, anomaly_map


def split_panels(figure: np.ndarray, width: int) -> list[np.ndarray]:
    return [figure[:, i * (width + GAP): i * (width + GAP) + width] for i in range(4)]


def test_panels_keep_the_image_aspect_ratio_and_are_apart(tmp_path):
    path, rgb, gt, anomaly_map = make_inputs(tmp_path)  # a 50 x 64 image, a 40 x 30 map
    figure = render_panel(str(path), gt, anomaly_map, score=0.9, seg_score=0.8, label=1)
    height, width = panel_size(50, 64, H, W)
    assert (height, width) == (125, 160)  # 64:50 as the image, enlarged so titles fit
    assert figure.dtype == np.uint8 and figure.shape[1] == 4 * (width + GAP) + BAR_WIDTH
    title_height = figure.shape[0] - height
    assert (title_height - 2 * TITLE_PADDING) % LINE_HEIGHT == 0 and title_height > 0
    image, gt_panel, predicted, _ = [p[title_height:] for p in split_panels(figure, width)]
    np.testing.assert_array_equal(image, cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR))
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50  # RGB, not BGR
    expected_gt = cv2.resize((gt * 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(gt_panel[..., 0], expected_gt)
    expected_mask = cv2.resize((anomaly_map >= 0.5).astype(np.uint8) * 255, (width, height),
                               interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(predicted[..., 0], expected_mask)
    for index in range(4):  # the gaps stay white: nothing runs from one panel into the next
        gap = figure[:, index * (width + GAP) + width: (index + 1) * (width + GAP)]
        assert (gap == 255).all()


def test_long_titles_wrap_inside_their_panel(tmp_path):
    path, _, gt, anomaly_map = make_inputs(tmp_path, image_shape=(300, 60))  # tall and narrow
    long_title = "mask: calibrated p > 0.123 on a rather long description of it"
    figure = render_panel(str(path), gt, anomaly_map, 0.5, 0.5, 0, anomaly_map > 0.3, long_title)
    height, width = panel_size(300, 60, H, W)
    assert (height, width) == (600, 120)  # widened from 32 px (160 px tall) so that titles fit, same aspect
    lines = wrap_title(long_title, width)
    assert len(lines) >= 3
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] <= width - 4 for line in lines)
    assert " ".join(lines) == long_title  # nothing lost
    assert figure.shape[0] >= height + len(lines) * LINE_HEIGHT + 2 * TITLE_PADDING
    for index in range(4):
        gap = figure[:, index * (width + GAP) + width: (index + 1) * (width + GAP)]
        assert (gap == 255).all()
    # a word wider than the panel is cut into pieces that fit, and nothing of it is lost
    pieces = wrap_title("calibration_split_threshold", 40)
    assert len(pieces) > 1 and "".join(pieces) == "calibration_split_threshold"
    assert all(cv2.getTextSize(piece, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] <= 36 for piece in pieces)


def test_map_panel_is_the_image_half_blended_with_the_fixed_scale_jet_colours(tmp_path):
    gray = np.full((H, W, 3), 128, dtype=np.uint8)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    anomaly_map = np.zeros((H, W), dtype=np.float32)
    anomaly_map[:, : W // 2] = 1.0  # hot on the left half
    figure = render_panel(str(path), np.zeros((H, W)), anomaly_map, score=0.5, seg_score=0.5, label=0)
    height, width = panel_size(H, W, H, W)
    heat = split_panels(figure, width)[3][-height:].astype(int)
    # JET: 1 -> dark red (128, 0, 0), 0 -> dark blue (0, 0, 128); half and half with gray 128
    assert np.abs(heat[:, : width // 2 - 2] - [128, 64, 64]).max() <= 1
    assert np.abs(heat[:, width // 2 + 2:] - [64, 64, 128]).max() <= 1
    # a fixed scale: a map of 0.5 everywhere is green-ish, not stretched to the ends
    middle = render_panel(str(path), np.zeros((H, W)), np.full((H, W), 0.5, np.float32), 0.5, 0.5, 0)
    assert split_panels(middle, width)[3][-height:, :, 1].astype(int).min() > 64 + 40


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.9])
def test_colour_bar_runs_from_red_to_blue_and_marks_the_threshold(threshold):
    bar = colour_bar(200, threshold).astype(int)
    column = bar[:, 9]  # inside the coloured strip
    coloured = np.flatnonzero((column != 255).any(axis=1))
    top, bottom = column[coloured[0] + 1], column[coloured[-1] - 1]
    assert top[0] > 100 and top[2] < 50 and bottom[2] > 100 and bottom[0] < 50
    black_rows = np.flatnonzero((bar[:, 2] == 0).all(axis=1))  # the threshold line sticks out on the left
    expected = 6 + round((1 - threshold) * (200 - 12 - 1))
    assert black_rows.size and abs(black_rows.mean() - expected) <= 1


def test_figure_maps_min_max_without_threshold_and_probabilities_with_one():
    raw = np.array([[[-2.0, 0.0], [2.0, 6.0]]], dtype=np.float32)
    shown = figure_maps(raw)
    np.testing.assert_allclose(shown.maps, (raw + 2) / 8)
    assert shown.threshold == 0.5 and shown.masks.tolist() == [[[False, False], [True, True]]]
    calibrated = figure_maps(raw, pixel_threshold=0.7)
    np.testing.assert_allclose(calibrated.maps, 1 / (1 + np.exp(-raw)), rtol=1e-6)
    assert calibrated.masks.tolist() == [[[False, False], [True, True]]] and "0.700" in calibrated.mask_title
    probabilities = np.array([[[0.1, 0.69], [0.71, 0.9]]], dtype=np.float32)
    journal = figure_maps(probabilities, 0.7, maps_are_probabilities=True)
    np.testing.assert_array_equal(journal.maps, probabilities)
    assert journal.masks.tolist() == [[[False, False], [True, True]]]


def test_save_panel_writes_png_atomically(tmp_path):
    path, _, gt, anomaly_map = make_inputs(tmp_path)
    panel = render_panel(str(path), gt, anomaly_map, score=0.1, seg_score=0.2, label=0)
    out = tmp_path / "figures" / "x.png"
    save_panel(out, panel)
    assert np.array_equal(read_rgb(out), panel)
    assert os.listdir(out.parent) == ["x.png"]
    save_panel(out, panel)
    assert os.listdir(out.parent) == ["x.png"]
