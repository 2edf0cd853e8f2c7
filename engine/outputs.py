"""What a unit leaves behind, and where: the checkpoint, per-image scores, figures and result
rows, laid out as the published code lays them out.

Training: `<results>/<setup>/checkpoints/<dataset>/<unit>[/<ratio>]/weights.pt`,
`<results>/<setup>/<dataset>[/<ratio>]/last.csv`, `scores/` and `visual/` beside them.
Evaluation: `<results>/<run_id>[/<ratio>]/<dataset>/last.csv`. The `<ratio>` folder is the
journal layout (docs/method.md, "Journal version"); ICPR runs have none.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.fileio import write_json_atomic
from common.metrics import min_max_normalize, normalized_scores
from common.visualize import render_panel, save_panel
from engine.evaluate import Predictions
from model.supersimplenet import SuperSimpleNet


def backbone_description(model: SuperSimpleNet) -> str:
    source = model.feature_extractor.weights_source  # model/feature_extractor.py; docs/backbones.md
    if source["kind"] == "file":
        return f"{model.backbone_name} with weights from {source['path']} (SHA-256 {source['sha256'][:12]}...)"
    if source["kind"] == "timm":
        return f"{model.backbone_name} with timm's {source['name']} weights ({source['path']})"
    if model.uses_pretrained_backbone:
        return f"{model.backbone_name} with ImageNet IMAGENET1K_V1 weights"
    return f"{model.backbone_name} with RANDOM weights (pretrained=false): not comparable to the paper"


def backbone_weights_tag(model: SuperSimpleNet) -> str:
    """imagenet (torchvision's), random, file:<first 8 hex digits of its SHA-256> or timm:<pretrained tag>."""
    source = model.feature_extractor.weights_source
    if source["kind"] == "file":
        return f"file:{source['sha256'][:8]}"
    if source["kind"] == "timm":
        return f"timm:{source['name'].partition('.')[2] or source['name']}"
    return "imagenet" if model.uses_pretrained_backbone else "random"


@dataclass(frozen=True)
class TrainLayout:
    """Where a training run writes: `root` = `<results>/<setup>`; `ratio` = "" under ICPR."""

    root: Path
    dataset: str
    ratio: str = ""

    def _unit_dir(self, kind: str, unit_name: str) -> Path:
        path = self.root / kind / self.dataset / unit_name
        return path / self.ratio if self.ratio else path

    def checkpoint_dir(self, unit_name: str) -> Path:
        return self._unit_dir("checkpoints", unit_name)

    def scores_path(self, unit_name: str) -> Path:
        return self._unit_dir("scores", unit_name) / "scores.json"

    def figures_dir(self, unit_name: str) -> Path:
        return self._unit_dir("visual", unit_name)

    def results_dir(self) -> Path:
        path = self.root / self.dataset
        return path / self.ratio if self.ratio else path

    def unit_folders(self, unit_name: str) -> list[Path]:
        """Every folder a unit writes files in (its figures' type subfolders included)."""
        figures = self.figures_dir(unit_name)
        subfolders = sorted(p for p in figures.rglob("*") if p.is_dir()) if figures.is_dir() else []
        return [self.checkpoint_dir(unit_name), self.results_dir(), self.scores_path(unit_name).parent,
                figures, *subfolders]


@dataclass(frozen=True)
class EvalLayout:
    """Where eval.py reads checkpoints and writes results for one run id; `ratio` = "" under ICPR.
    `weights_base` holds `<dataset>/<unit>[/<ratio>]/weights.pt`: `weights/<run_id>` for the
    published checkpoints, `<results>/<setup>/checkpoints` for a training run's."""

    weights_base: Path
    results_root: Path
    run_id: str
    dataset: str
    ratio: str = ""

    def weights_path(self, unit_name: str, ratio: str | None = None) -> Path:
        ratio = self.ratio if ratio is None else ratio
        path = self.weights_base / self.dataset / unit_name
        return (path / ratio if ratio else path) / "weights.pt"

    def results_dir(self) -> Path:
        path = self.results_root / self.run_id
        return (path / self.ratio if self.ratio else path) / self.dataset

    def scores_path(self, unit_name: str) -> Path:
        return self.results_root / self.run_id / "scores" / self.dataset / unit_name / "scores.json"

    def figures_dir(self, unit_name: str) -> Path:
        return self.results_root / self.run_id / "visual" / self.dataset / unit_name


def write_scores_json(path: Path, predictions: Predictions, backbone_weights: str, version: str) -> None:
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
    write_json_atomic(path, {"version": version, "backbone_weights": backbone_weights, "scores": grouped})


def write_figures(
    directory: Path, predictions: Predictions, progress: bool = True, pixel_threshold: float | None = None,
    maps_are_probabilities: bool = False,
) -> None:
    """One PNG per test image under `<directory>/<type>/<Normal|Anomalous>/<stem>.png`. The
    predicted-mask panel uses the calibrated `pixel_threshold` on sigmoid probabilities when there
    is one (model.yaml), else 0.5 on the min-max normalised map; its title says which."""
    maps = min_max_normalize(predictions.anomaly_maps)
    maps = np.nan_to_num(maps, nan=0.0)
    score, seg_score = normalized_scores(predictions.anomaly_maps, predictions.scores)
    if pixel_threshold is None:
        masks = [None] * len(maps)
        title = "mask: min-max map >= 0.5"
    else:
        probabilities = predictions.anomaly_maps if maps_are_probabilities else 1 / (1 + np.exp(-predictions.anomaly_maps))
        masks = list(probabilities > pixel_threshold)
        title = f"mask: calibrated p > {pixel_threshold:.3f}"
    items = zip(predictions.image_paths, predictions.gt_masks, maps, score, seg_score, predictions.labels, masks)
    for image_path, gt_mask, anomaly_map, s, seg, label, mask in tqdm(
        items, total=len(predictions.labels), desc="figures", leave=False, disable=not progress
    ):
        image_path = Path(image_path)
        kind = "Anomalous" if label == 1 else "Normal"
        panel = render_panel(str(image_path), gt_mask, anomaly_map, float(s), float(seg), int(label), mask, title)
        save_panel(Path(directory) / image_path.parent.name / kind / f"{image_path.stem}.png", panel)
