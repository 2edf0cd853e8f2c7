"""Per-image figures: layout of the four titled panels and atomic PNG writing."""

import os

import cv2
import numpy as np

from common.image_io import read_rgb
from common.visualize import TITLE_HEIGHT, render_panel, save_panel

H, W = 40, 30


def make_inputs(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(50, 64, 3), dtype=np.uint8)
    rgb[:, :, 0] = 250  # strongly red, so an RGB/BGR swap would show
    rgb[:, :, 2] = 5
    path = tmp_path / "image.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    gt = np.zeros((H, W), dtype=np.float32)
    gt[5:15, 10:20] = 1
    anomaly_map = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    return path, rgb, gt, anomaly_map


def test_render_panel_layout(tmp_path):
    path, rgb, gt, anomaly_map = make_inputs(tmp_path)
    panel = render_panel(str(path), gt, anomaly_map, score=0.9, seg_score=0.8, label=1)
    assert TITLE_HEIGHT == 18
    assert panel.dtype == np.uint8
    assert panel.shape == (H + 18, 4 * W, 3)
    # panel 1: the image resized to the map size, RGB
    expected_image = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(panel[18:, :W], expected_image)
    assert panel[18:, :W, 0].mean() > 200 and panel[18:, :W, 2].mean() < 50
    # panel 2: the GT mask in white on black
    assert np.array_equal(panel[18:, W : 2 * W], np.repeat((gt * 255).astype(np.uint8)[..., None], 3, axis=2))
    # panel 3: the predicted mask, map >= 0.5
    predicted = (anomaly_map >= 0.5).astype(np.uint8) * 255
    assert np.array_equal(panel[18:, 2 * W : 3 * W], np.repeat(predicted[..., None], 3, axis=2))
    # title bars are white with some dark text
    bars = panel[:18]
    assert (bars == 255).mean() > 0.5 and (bars < 128).any()


def test_save_panel_writes_png_atomically(tmp_path):
    path, _, gt, anomaly_map = make_inputs(tmp_path)
    panel = render_panel(str(path), gt, anomaly_map, score=0.1, seg_score=0.2, label=0)
    out = tmp_path / "figures" / "x.png"
    save_panel(out, panel)
    assert np.array_equal(read_rgb(out), panel)
    assert os.listdir(out.parent) == ["x.png"]
    save_panel(out, panel)
    assert os.listdir(out.parent) == ["x.png"]


def test_heat_map_panel_is_the_image_half_blended_with_the_jet_colours_of_the_map(tmp_path):
    gray = np.full((H, W, 3), 128, dtype=np.uint8)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    anomaly_map = np.zeros((H, W), dtype=np.float32)
    anomaly_map[:, : W // 2] = 1.0  # hot on the left half
    panel = render_panel(str(path), np.zeros((H, W)), anomaly_map, score=0.5, seg_score=0.5, label=0)
    image = panel[18:, :W].astype(int)
    heat = panel[18:, 3 * W :].astype(int)
    assert np.all(image == 128)
    assert np.abs(heat - image).max() > 50  # not the plain image
    # JET: 1 -> dark red (128, 0, 0), 0 -> dark blue (0, 0, 128); half and half with gray 128
    left, right = heat[:, : W // 2 - 1], heat[:, W // 2 + 1 :]
    assert np.abs(left - [128, 64, 64]).max() <= 1
    assert np.abs(right - [64, 64, 128]).max() <= 1
    # a middle value is green-ish in JET: the blend's green rises above both ends
    anomaly_map[:] = 0.5
    middle = render_panel(str(path), np.zeros((H, W)), anomaly_map, 0.5, 0.5, 0)[18:, 3 * W :].astype(int)
    assert middle[..., 1].min() > 64 + 40
