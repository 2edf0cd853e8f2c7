"""Inference over a test set, metrics, and the per-image outputs (scores JSON, figures).
Shared by train.py (final and periodic evaluation) and eval.py (published checkpoints)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.fileio import write_json_atomic
from common.metrics import compute_metrics, min_max_normalize, normalized_scores
from common.visualize import render_panel, save_panel
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
def predict(model: SuperSimpleNet, loader, device: torch.device, progress: bool = True) -> Predictions:
    """Run the eval-mode model over `loader`; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    maps, masks, scores, labels, image_paths, mask_paths = [], [], [], [], [], []
    for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not progress):
        anomaly_map, score_logits = model(batch["image"].to(device))
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


def evaluate(predictions: Predictions, split: DatasetSplit) -> tuple[dict[str, float | None], list[str]]:
    """SPEC §5 metrics; pixel metrics are withheld when some test defects have no mask."""
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


def write_scores_json(path: Path, predictions: Predictions, backbone_weights: str) -> None:
    """Normalised image and seg scores per image, grouped as {type: {"good"|"bad": {stem: ...}}}."""
    score, seg_score = normalized_scores(predictions.anomaly_maps, predictions.scores)
    grouped: dict[str, Any] = {}
    for image_path, s, seg, label in zip(predictions.image_paths, score, seg_score, predictions.labels):
        image_path = Path(image_path)
        kind = "bad" if label == 1 else "good"  # SensumSODF reuses names across good and bad
        grouped.setdefault(image_path.parent.name, {"good": {}, "bad": {}})[kind][image_path.stem] = {
            "score": float(s),
            "seg_score": float(seg),
        }
    write_json_atomic(path, {"backbone_weights": backbone_weights, "scores": grouped})


def write_figures(directory: Path, predictions: Predictions, progress: bool = True) -> None:
    """One PNG per test image under `<directory>/<type>/<Normal|Anomalous>/<stem>.png`."""
    maps = min_max_normalize(predictions.anomaly_maps)
    maps = np.nan_to_num(maps, nan=0.0)
    score, seg_score = normalized_scores(predictions.anomaly_maps, predictions.scores)
    items = zip(predictions.image_paths, predictions.gt_masks, maps, score, seg_score, predictions.labels)
    for image_path, gt_mask, anomaly_map, s, seg, label in tqdm(
        items, total=len(predictions.labels), desc="figures", leave=False, disable=not progress
    ):
        image_path = Path(image_path)
        kind = "Anomalous" if label == 1 else "Normal"
        panel = render_panel(str(image_path), gt_mask, anomaly_map, float(s), float(seg), int(label))
        save_panel(Path(directory) / image_path.parent.name / kind / f"{image_path.stem}.png", panel)
