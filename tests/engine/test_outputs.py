"""engine/outputs.py: the per-image figures (the heat-map panel shows the map's colours over the
image, where the map is), the scores file, and the layouts' paths."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.image_io import read_rgb
from common.visualize import GAP, panel_size
from engine.evaluate import Predictions
from engine.outputs import EvalLayout, TrainLayout, write_figures, write_scores_json
from tests.engine.helpers import write_rgb

H, W = 24, 32
GRAY = 128
PANEL_H, PANEL_W = panel_size(H, W, H, W)  # the figures enlarge the 24 x 32 panels, same aspect


def gray_predictions(root: Path) -> Predictions:
    """Two plain gray images: the normal one's map is high on its left half, the anomalous one's
    on its right half (raw values 3 and -1, i.e. 1 and 0 after the test-set normalisation)."""
    image = np.full((H, W, 3), GRAY, dtype=np.uint8)
    paths = [write_rgb(root / "good" / "000.png", image), write_rgb(root / "crack" / "001.png", image)]
    maps = np.full((2, H, W), -1.0, dtype=np.float32)
    maps[0, :, : W // 2] = 3.0
    maps[1, :, W // 2 :] = 3.0
    masks = np.zeros((2, H, W), dtype=np.uint8)
    masks[1, 4:10, 20:28] = 1
    return Predictions(maps, masks, np.array([0.2, 0.9], dtype=np.float32), np.array([0, 1]), paths, ["", ""])


def panel(figure: np.ndarray, index: int) -> np.ndarray:
    """Panel `index` (0 image, 1 GT, 2 predicted mask, 3 map) of a figure, without its title."""
    left = index * (PANEL_W + GAP)
    return figure[-PANEL_H:, left: left + PANEL_W].astype(np.int64)


@pytest.mark.parametrize("pixel_threshold", [None, 0.5])
def test_figures_heat_map_panel_follows_the_map(tmp_path, pixel_threshold):
    predictions = gray_predictions(tmp_path / "images")
    write_figures(tmp_path / "visual", predictions, progress=False, pixel_threshold=pixel_threshold)
    normal = read_rgb(tmp_path / "visual" / "good" / "Normal" / "000.png")
    anomalous = read_rgb(tmp_path / "visual" / "crack" / "Anomalous" / "001.png")
    assert normal.shape == anomalous.shape and normal.shape[0] > PANEL_H
    assert (PANEL_H, PANEL_W) == (120, 160)

    half = PANEL_W // 2
    for figure, hot_left in ((normal, True), (anomalous, False)):
        image_panel = panel(figure, 0)
        assert np.all(image_panel == GRAY)  # the first panel is the plain image
        heat = panel(figure, 3)
        assert np.abs(heat - image_panel).max() > 50  # the heat-map panel is not the plain image
        hot = heat[:, 4: half - 4] if hot_left else heat[:, half + 4: -4]
        cold = heat[:, half + 4: -4] if hot_left else heat[:, 4: half - 4]
        if pixel_threshold is None:
            # half gray, half JET of the min-max map: 1 is dark red (128, 0, 0), 0 dark blue (0, 0, 128),
            # so the hot half is about (128, 64, 64) and the cold half about (64, 64, 128)
            assert np.abs(hot.mean(axis=(0, 1)) - [128, 64, 64]).max() <= 2
            assert np.abs(cold.mean(axis=(0, 1)) - [64, 64, 128]).max() <= 2
        else:  # calibrated: the probabilities sigmoid(3) = 0.95 and sigmoid(-1) = 0.27 on the fixed scale
            assert hot[..., 0].mean() > 120 and cold[..., 2].mean() > 120 and cold[..., 0].mean() < 80
        # the predicted-mask panel marks the hot half
        predicted = panel(figure, 2)[..., 0]
        assert np.all(predicted[:, : half] == (255 if hot_left else 0))
        assert np.all(predicted[:, half:] == (0 if hot_left else 255))
    # the GT panel shows the anomalous image's mask
    gt = panel(anomalous, 1)[..., 0]
    expected = cv2.resize(predictions.gt_masks[1] * 255, (PANEL_W, PANEL_H), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(gt, expected)


def test_scores_json_holds_normalised_scores_by_type_and_class(tmp_path):
    predictions = gray_predictions(tmp_path / "images")
    path = tmp_path / "scores" / "scores.json"
    write_scores_json(path, predictions, "random", "icpr")
    data = json.loads(path.read_text())
    assert data["version"] == "icpr" and data["backbone_weights"] == "random"
    # scores 0.2, 0.9 -> 0, 1 after min-max; seg scores are the map maxima 3, 3 -> both 0
    assert data["scores"] == {
        "good": {"good": {"000": {"score": 0.0, "seg_score": 0.0}}, "bad": {}},
        "crack": {"good": {}, "bad": {"001": {"score": 1.0, "seg_score": 0.0}}},
    }


@pytest.mark.parametrize("ratio", ["", "0.5"])
def test_layout_paths(tmp_path, ratio):
    train = TrainLayout(tmp_path, "sensum", ratio)
    tail = [ratio] if ratio else []
    assert train.checkpoint_dir("capsule_0") == tmp_path.joinpath("checkpoints", "sensum", "capsule_0", *tail)
    assert train.scores_path("capsule_0") == tmp_path.joinpath("scores", "sensum", "capsule_0", *tail, "scores.json")
    assert train.figures_dir("capsule_0") == tmp_path.joinpath("visual", "sensum", "capsule_0", *tail)
    assert train.results_dir() == tmp_path.joinpath("sensum", *tail)
    evaluation = EvalLayout(tmp_path / "weights", tmp_path / "out", "run1", "sensum", ratio)
    assert evaluation.weights_path("capsule_0") == tmp_path.joinpath(
        "weights", "sensum", "capsule_0", *tail, "weights.pt"
    )
    assert evaluation.results_dir() == tmp_path.joinpath("out", "run1", *tail, "sensum")
