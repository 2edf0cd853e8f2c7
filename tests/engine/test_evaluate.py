"""engine/evaluate.py: `predict` against the model's raw outputs worked through by hand
(scores are the sigmoid of the score logits, maps raw or sigmoid), and `evaluate` withholding
pixel metrics when the split says some test defects have no mask."""

import numpy as np
import pytest
import torch

from common.errors import UserError
from datamodules.base import DatasetSplit
from engine.evaluate import PIXEL_METRICS, Predictions, check_finite, evaluate, predict
from tests.engine.helpers import CPU, SIZE, gt_band_mask, make_batch, tiny_model


@pytest.fixture
def config(tiny_config) -> dict:
    return {**tiny_config, "image_size": [SIZE, SIZE]}


def two_batches():
    """A loader's worth of batches: 3 + 2 images, one anomalous with a mask in each."""
    first = make_batch([0, 1, 0], masks=[torch.zeros(SIZE, SIZE), gt_band_mask(), torch.zeros(SIZE, SIZE)], seed=1)
    second = make_batch([1, 0], masks=[gt_band_mask(), torch.zeros(SIZE, SIZE)], seed=2)
    second["image_path"] = ["/nowhere/3.png", "/nowhere/4.png"]
    return [first, second]


def raw_outputs(model, batches):
    """The eval-mode model's own outputs, float64: maps N x H x W and score logits N."""
    model.eval()
    maps, logits = [], []
    with torch.no_grad():
        for batch in batches:
            anomaly_map, score_logits = model(batch["image"])
            maps.append(anomaly_map[:, 0].double().numpy())
            logits.append(score_logits.double().numpy())
    model.train()
    return np.concatenate(maps), np.concatenate(logits)


@pytest.mark.parametrize("adapt_cls_features", [True, False])
def test_predict_scores_are_the_sigmoid_of_the_score_logits(config, adapt_cls_features):
    model = tiny_model(config, adapt_cls_features=adapt_cls_features)
    batches = two_batches()
    maps, logits = raw_outputs(model, batches)
    assert np.abs(logits).max() > 0.05  # a sigmoid dropped (or doubled) would show

    predictions = predict(model, batches, CPU, progress=False)
    assert model.training  # the mode is restored
    assert predictions.scores.shape == (5,)
    np.testing.assert_allclose(predictions.scores, 1 / (1 + np.exp(-logits)), rtol=1e-6, atol=0)
    assert np.all((predictions.scores > 0) & (predictions.scores < 1))
    # maps are the raw (logit) maps by default
    assert predictions.anomaly_maps.shape == (5, SIZE, SIZE) and predictions.anomaly_maps.dtype == np.float32
    np.testing.assert_allclose(predictions.anomaly_maps, maps, rtol=1e-6, atol=1e-6)
    # the rest comes from the batches
    assert predictions.labels.tolist() == [0, 1, 0, 1, 0]
    assert predictions.gt_masks.dtype == np.uint8
    assert np.array_equal(predictions.gt_masks[1], gt_band_mask().numpy().astype(np.uint8))
    assert predictions.gt_masks[[0, 2, 4]].sum() == 0
    assert predictions.image_paths == ["/nowhere/0.png", "/nowhere/1.png", "/nowhere/2.png",
                                       "/nowhere/3.png", "/nowhere/4.png"]


def test_predict_sigmoid_maps_returns_the_sigmoid_of_the_maps(config):
    model = tiny_model(config, adapt_cls_features=False)
    batches = two_batches()
    maps, logits = raw_outputs(model, batches)
    predictions = predict(model, batches, CPU, progress=False, sigmoid_maps=True)
    np.testing.assert_allclose(predictions.anomaly_maps, 1 / (1 + np.exp(-maps)), rtol=1e-6, atol=1e-7)
    # the scores are unchanged by the option
    np.testing.assert_allclose(predictions.scores, 1 / (1 + np.exp(-logits)), rtol=1e-6, atol=0)
    assert np.abs(maps - predictions.anomaly_maps).max() > 0.1


def hand_predictions() -> Predictions:
    """4 images of 8 x 8: two normal, two anomalous, each anomalous one with a 2 x 2 defect that
    its map marks exactly; image scores rank one normal image above one anomalous one."""
    maps = np.zeros((4, 8, 8), dtype=np.float32)
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    for index in (2, 3):
        masks[index, 2:4, 2:4] = 1
        maps[index, 2:4, 2:4] = 5.0
    maps[1, 6, 6] = 1.0  # a small normal response, below every defect pixel
    return Predictions(
        anomaly_maps=maps,
        gt_masks=masks,
        scores=np.array([0.1, 0.7, 0.6, 0.9], dtype=np.float32),
        labels=np.array([0, 0, 1, 1]),
        image_paths=[f"/x/{i}.png" for i in range(4)],
        mask_paths=[""] * 4,
    )


def split_with(info: dict) -> DatasetSplit:
    return DatasetSplit("tiny", "cat", [], [], (8, 8), info=info)


@pytest.mark.parametrize("info", [{}, {"pixel_metrics": True}])
def test_evaluate_reports_pixel_metrics_when_masks_are_complete(info):
    values, notes = evaluate(hand_predictions(), split_with(info))
    # pairs (anomalous > normal): 0.6 > 0.1, 0.9 > 0.1, 0.9 > 0.7, not 0.6 > 0.7 -> 3/4
    assert values["I-AUROC"] == pytest.approx(0.75)
    # every defect pixel (5) is above every normal pixel (0 or 1): perfect pixel ranking
    assert values["P-AUROC"] == pytest.approx(1.0)
    assert values["AP-loc"] == pytest.approx(1.0)
    assert values["AUPRO"] == pytest.approx(1.0)
    # seg scores (map maxima 0, 1, 5, 5) separate the classes
    assert values["seg-I-AUROC"] == pytest.approx(1.0)
    assert not any("withheld" in note for note in notes)


def test_evaluate_withholds_pixel_metrics_when_some_defects_lack_masks():
    values, notes = evaluate(hand_predictions(), split_with({"pixel_metrics": False}))
    assert PIXEL_METRICS == ("P-AUROC", "AUPRO", "AP-loc")
    for name in PIXEL_METRICS:
        assert name in values and values[name] is None, name
    # image metrics are still reported
    assert values["I-AUROC"] == pytest.approx(0.75)
    assert values["seg-I-AUROC"] == pytest.approx(1.0)
    assert any("pixel metrics withheld" in note for note in notes)


def test_check_finite_stops_on_nan_scores_and_maps():
    predictions = hand_predictions()
    check_finite(predictions, "model")
    predictions.scores[1] = np.nan
    with pytest.raises(UserError, match="1 non-finite value"):
        check_finite(predictions, "model")
    predictions = hand_predictions()
    predictions.anomaly_maps[0, 0, :3] = np.inf
    with pytest.raises(UserError, match="3 non-finite value"):
        check_finite(predictions, "model")
