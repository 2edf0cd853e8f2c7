"""A unit's report data: what the run report shows of one trained or evaluated unit, computed by
the process that evaluated it and kept in `<results dir>/report_units/<unit>.json` beside the
results file, so that whichever process rebuilds the page (under Slurm, the last array task to
finish) finds every unit's.

In (`write_unit_data`): the unit's test predictions (any object with `anomaly_maps` N x H x W,
`gt_masks` N x H x W, `scores` N = sigmoid of the score logits, `labels` N and `image_paths` N,
as engine.evaluate.Predictions), the metric values and notes its results row got, the thresholds
of its model.yaml, its backbone weights tag and a `UnitDescription`. Out: a JSON file (format
UNIT_DATA_FORMAT) with the header facts, the metrics as last.csv holds them and the reason of each
undefined one, the curve points (common/metrics.py, thinned), the plots as PNG data: URIs, the
scores of the histogram, the galleries (JPEG thumbnails) and the detection per defect type.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from common.fileio import write_json_atomic
from common.metrics import METRIC_NAMES, UndefinedMetricError, auroc, compute_metrics_and_curves, normalized_scores
from common.results import KEY_COLUMNS, format_value
from common.visualize import figure_maps
from deploy.report import figures
from deploy.report.header import regime, settings_differences, training_counts
from deploy.report.page import never_fatal, percent
from deploy.report.thumbnails import map_overlay_thumbnail, thumbnail_data_uri

UNIT_DATA_FOLDER = "report_units"
UNIT_DATA_FORMAT = "supersimplenet-report-unit/1"
GALLERY_SIZES = {"false-positives": 6, "false-negatives": 6, "true-positives": 3}
CURVE_METRICS = {"roc": "I-AUROC", "pr": "AP-det", "pro": "AUPRO"}
PIXEL_METRICS = ("P-AUROC", "AUPRO", "AP-loc")


@dataclass(frozen=True)
class UnitDescription:
    """What the engine knows of a unit besides its predictions: its dataset, checkpoint folder name
    (`name`), its results row key (`row`: category, and fold / run_id where the CSV has them, as
    text), the settings it ran with, run id, journal ratio folder ("" under ICPR), the training
    counts (header.training_counts) and where it came from ("training" or the weights evaluated)."""

    dataset: str
    name: str
    row: dict[str, str]
    config: dict[str, Any]
    run_id: int
    ratio: str
    training: dict[str, int]
    source: str


def describe_unit(dataset: str, name: str, row: dict[str, Any], config: dict[str, Any], run_id: int, ratio: str,
                  split: Any, source: str, card: dict[str, Any] | None = None) -> UnitDescription:
    """A UnitDescription from the engine's objects; `split` is the unit's DatasetSplit (its `train`
    samples are counted). `card`: the model.yaml of an evaluated checkpoint, whose training
    settings are then the ones described (the evaluation's own settings do not change the model)."""
    settings = {**config, **(card or {}).get("settings", {})}
    return UnitDescription(dataset, name, {key: str(value) for key, value in row.items()}, settings, run_id,
                           ratio, training_counts(split.train), source)


def unit_data_path(results_dir: Path, unit_name: str) -> Path:
    return Path(results_dir) / UNIT_DATA_FOLDER / f"{unit_name}.json"


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The key of a results row (as common/results.ResultsWriter merges rows)."""
    return tuple(str(row.get(column, "")) for column in KEY_COLUMNS)


def undefined_reasons(values: dict[str, float | None], notes: list[str]) -> dict[str, str]:
    """{metric: why it is n/a} for every undefined metric, from the notes of compute_metrics
    ('<metric> undefined: <reason>') and of engine.evaluate (pixel metrics withheld)."""
    reasons = {}
    for name in METRIC_NAMES:
        if values.get(name) is not None:
            continue
        own = [note.split(": ", 1)[1] for note in notes if note.startswith(f"{name} undefined: ")]
        withheld = [note for note in notes if "withheld" in note] if name in PIXEL_METRICS else []
        reasons[name] = (own or withheld or ["; ".join(notes) or "not recorded"])[0]
    return reasons


def defect_type(image_path: str) -> str | None:
    """The defect type of a test image in MVTec layout (`.../test/<type>/<file>`), else None."""
    path = Path(image_path)
    return path.parent.name if path.parent.parent.name == "test" else None


def gallery_members(scores: np.ndarray, labels: np.ndarray,
                    threshold: float | None) -> dict[str, tuple[list[int], str]]:
    """{gallery: (image indices, the rule that chose them)}. With a calibrated image threshold:
    normal images above it (false positives, highest first), defective images at or below it
    (false negatives, lowest first), defective images above it (true positives, highest first).
    Without one, the ranking errors that lower the AUROC: normal images scored above the lowest
    defective image, defective images scored below the highest normal image, and the defective
    images that are not."""
    normal, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)

    def highest_first(indices: np.ndarray) -> list[int]:
        return [int(i) for i in indices[np.argsort(-scores[indices], kind="stable")]]

    if threshold is not None:
        false_positive = normal[scores[normal] > threshold]
        false_negative = defective[scores[defective] <= threshold]
        rules = (f"normal images scored above the calibrated image threshold {threshold:.4f}, highest first",
                 f"defective images scored at or below the threshold {threshold:.4f}, lowest first",
                 "defective images above the threshold, highest first")
    else:
        lowest_defect = scores[defective].min() if defective.size else np.inf
        highest_normal = scores[normal].max() if normal.size else -np.inf
        false_positive = normal[scores[normal] > lowest_defect]
        false_negative = defective[scores[defective] < highest_normal]
        rules = ("no calibrated threshold: normal images scored above the lowest-scored defective image, "
                 "highest first", "no calibrated threshold: defective images scored below the highest-scored "
                 "normal image, lowest first", "defective images scored above every normal image, highest first")
    true_positive = np.setdiff1d(defective, false_negative)
    chosen = (highest_first(false_positive), highest_first(false_negative)[::-1], highest_first(true_positive))
    return {name: (indices[:GALLERY_SIZES[name]], rule)
            for name, indices, rule in zip(GALLERY_SIZES, chosen, rules)}


def defect_type_rows(image_paths: list[str], normalised: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     threshold: float | None) -> list[dict[str, Any]]:
    """Detection per defect type (MVTec layout only, else []): count, the image AUROC of that type
    against every normal image (normalised scores, as I-AUROC), the mean score and, with a
    calibrated threshold, how many were detected."""
    types = [defect_type(path) for path in image_paths]
    defective = np.flatnonzero(labels == 1)
    if not defective.size or any(types[i] is None for i in defective):
        return []
    normal = labels == 0
    rows = []
    for name in sorted({types[i] for i in defective}):
        members = np.array([i for i in defective if types[i] == name])
        chosen = normal.copy()
        chosen[members] = True
        try:
            value, reason = auroc(normalised[chosen], labels[chosen]), ""
        except UndefinedMetricError as error:
            value, reason = None, error.reason
        rows.append({"type": name, "count": int(members.size), "I-AUROC": value, "reason": reason,
                     "mean_score": float(scores[members].mean()),
                     "detected": None if threshold is None else int((scores[members] > threshold).sum())})
    return rows


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def curve_data(values: dict[str, float | None], reasons: dict[str, str], curves: dict[str, Any],
               positive_share: float) -> tuple[dict[str, Any], dict[str, str]]:
    """({"roc"|"pr"|"pro": points or {"reason": ...}}, {the same keys: PNG data: URI}) of a unit."""
    points: dict[str, Any] = {}
    plots: dict[str, str] = {}
    for key, metric in CURVE_METRICS.items():
        if values.get(metric) is None or metric not in curves:
            points[key] = {"reason": reasons.get(metric, "undefined")}
            continue
        curve = curves[metric]
        title = f"{metric} {percent(values[metric])} %"
        if key == "roc":
            x, y = figures.thin_polyline(*curve.points())
            points[key] = {"fpr": _rounded(x), "tpr": _rounded(y)}
            plots[key] = figures.roc_plot(x, y, f"image ROC, {title}")
        elif key == "pr":  # thresholds ascend, so recall descends: drawn from recall 0 up
            recall, precision = curve.recall[::-1], curve.precision[::-1]
            x, y = figures.thin_polyline(np.r_[0.0, recall], np.r_[precision[0], precision])
            points[key] = {"recall": _rounded(x), "precision": _rounded(y)}
            plots[key] = figures.precision_recall_plot(x, y, positive_share, f"image precision-recall, {title}")
        else:
            x, y = figures.thin_polyline(*curve.points())
            points[key] = {"fpr": _rounded(x), "pro": _rounded(y), "limit": curve.fpr_limit,
                           "pro_at_limit": round(curve.pro_at_limit(), 6)}
            plots[key] = figures.pro_plot(x, y, curve.fpr_limit, f"PRO up to FPR {curve.fpr_limit:g}, {title}")
    return points, plots


@never_fatal("the report data of a unit")
def write_unit_data(results_dir: Path, unit: UnitDescription, predictions: Any, values: dict[str, float | None],
                    notes: list[str], thresholds: dict[str, Any] | None, backbone_weights: str) -> Path:
    """Compute and write the unit's report data (see the module docstring); returns its path (None,
    with a warning, when it cannot be written)."""
    maps, masks = np.asarray(predictions.anomaly_maps), np.asarray(predictions.gt_masks)
    scores, labels = np.asarray(predictions.scores, dtype=np.float64), np.asarray(predictions.labels)
    paths = [str(path) for path in predictions.image_paths]
    thresholds = dict(thresholds or {})
    image_threshold = thresholds.get("image")
    reasons = undefined_reasons(values, notes)
    _, _, curves = compute_metrics_and_curves(maps, masks, predictions.scores, labels)
    points, plots = curve_data(values, reasons, curves, float(labels.mean()) if labels.size else 0.0)
    normal_scores, defective_scores = scores[labels == 0], scores[labels == 1]
    plots["histogram"] = figures.score_histogram(normal_scores, defective_scores, image_threshold, "image scores",
                                                 "calibrated threshold")

    version = unit.config.get("version", "")
    shown = figure_maps(maps, thresholds.get("pixel"), maps_are_probabilities=version == "jims")
    galleries = {}
    for name, (indices, rule) in gallery_members(scores, labels, image_threshold).items():
        items = [{"file": Path(paths[i]).name, "path": paths[i], "type": defect_type(paths[i]) or "",
                  "label": int(labels[i]), "score": float(scores[i]),
                  "thumbnail": thumbnail_data_uri(map_overlay_thumbnail(paths[i], shown.maps[i], masks[i]))}
                 for i in indices]
        galleries[name] = {"rule": rule, "map": shown.scale_name, "items": items}

    normalised, _ = normalized_scores(maps, predictions.scores)
    data = {
        "format": UNIT_DATA_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": unit.dataset, "unit": unit.name, "row": unit.row, "version": version, "ratio": unit.ratio,
        "run_id": unit.run_id, "source": unit.source,
        "header": {
            "backbone": unit.config.get("backbone"), "backbone_weights": backbone_weights,
            "image_size": list(maps.shape[1:]), "seed": unit.config.get("seed"),
            "regime": regime(unit.dataset, unit.config, unit.training), "training": unit.training,
            "differences": [list(item) for item in settings_differences(unit.dataset, version, unit.config,
                                                                        unit.run_id)],
        },
        "metrics": {"csv": {name: format_value(values.get(name)) for name in METRIC_NAMES}, "reasons": reasons,
                    "notes": list(notes)},
        "thresholds": thresholds,
        "test_images": {"normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())},
        "curves": points,
        "histogram": {"normal": _rounded(normal_scores), "defective": _rounded(defective_scores),
                      "threshold": image_threshold},
        "plots": plots,
        "galleries": galleries,
        "defect_types": defect_type_rows(paths, normalised, scores, labels, image_threshold),
    }
    path = unit_data_path(results_dir, unit.name)
    write_json_atomic(path, data)
    return path


def read_unit_data(results_dir: Path) -> tuple[dict[tuple[str, ...], dict[str, Any]], list[str]]:
    """({results row key: unit data} of every data file under `results_dir`, notes on files that
    could not be read). Files are complete or absent (written atomically)."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    problems = []
    for path in sorted((Path(results_dir) / UNIT_DATA_FOLDER).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"{path.name}: unreadable ({type(error).__name__})")
            continue
        if not isinstance(data, dict) or data.get("format") != UNIT_DATA_FORMAT:
            problems.append(f"{path.name}: not a report data file of this version")
            continue
        found[row_key(data.get("row", {}))] = data
    return found, problems
