"""Inference over a test set and its metrics; shared by training (periodic and final
evaluation) and eval.py (published checkpoints)."""

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UserError
from common.metrics import compute_metrics
from datamodules.base import DatasetSplit, SampleDataset, make_loader
from model.supersimplenet import SuperSimpleNet

PIXEL_METRICS = ("P-AUROC", "AUPRO", "AP-loc")


@dataclass
class Predictions:
    """Everything a test pass produces: maps N x H x W (float32), GT masks N x H x W (uint8 0/1),
    scores N (sigmoid of the score logits), labels N, and the paths."""

    anomaly_maps: np.ndarray
    gt_masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    image_paths: list[str]
    mask_paths: list[str]


def make_test_loader(split: DatasetSplit, batch_size: int, num_workers: int):
    return make_loader(SampleDataset(split.test, split.image_size), batch_size, num_workers, shuffle=False)


@torch.no_grad()
def predict(
    model: SuperSimpleNet, loader, device: torch.device, progress: bool = True, sigmoid_maps: bool = False
) -> Predictions:
    """Run the eval-mode model over `loader`; the model's mode is restored afterwards.
    `sigmoid_maps` (journal): the maps are passed through a sigmoid, a monotone change that
    the min-max normalised metrics do not see but the stored maps do."""
    was_training = model.training
    model.eval()
    maps, masks, scores, labels, image_paths, mask_paths = [], [], [], [], [], []
    for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not progress):
        anomaly_map, score_logits = model(batch["image"].to(device))
        if sigmoid_maps:
            anomaly_map = torch.sigmoid(anomaly_map)
        maps.append(anomaly_map[:, 0].float().cpu().numpy())
        scores.append(torch.sigmoid(score_logits.float()).cpu().numpy())
        masks.append((batch["mask"].numpy() > 0.5).astype(np.uint8))
        labels.append(np.asarray(batch["label"]).astype(np.int64))
        image_paths.extend(batch["image_path"])
        mask_paths.extend(batch["mask_path"])
    model.train(was_training)
    return Predictions(
        anomaly_maps=np.concatenate(maps),
        gt_masks=np.concatenate(masks),
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
        image_paths=image_paths,
        mask_paths=mask_paths,
    )


def check_finite(predictions: Predictions, source: str) -> None:
    """Non-finite maps or scores would give meaningless metrics (NaN ranks as anything): stop."""
    for name, values in (("anomaly maps", predictions.anomaly_maps), ("scores", predictions.scores)):
        if not np.all(np.isfinite(values)):
            count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise UserError(
                f"{source} gives {count} non-finite value(s) in its {name} (NaN or inf); the checkpoint is "
                "damaged or was trained to divergence: re-train it or use another checkpoint"
            )


def evaluate(predictions: Predictions, split: DatasetSplit) -> tuple[dict[str, float | None], list[str]]:
    """The metrics of docs/method.md, "Evaluation"; pixel metrics are withheld when some test
    defects have no mask."""
    values, notes = compute_metrics(
        predictions.anomaly_maps, predictions.gt_masks, predictions.scores, predictions.labels
    )
    if split.info.get("pixel_metrics") is False:
        for name in PIXEL_METRICS:
            values[name] = None
        notes.append("pixel metrics withheld: some anomalous test images have no mask")
    return values, notes


def format_metrics(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {'n/a' if v is None else f'{100 * v:.2f}'}" for k, v in values.items())
