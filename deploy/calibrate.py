"""Decision thresholds and their calibration: model outputs (sigmoid probabilities) on normal or
labelled images in, thresholds out (`Thresholds`; a dict as model.yaml's or the export sidecar's
`thresholds` stores it). A value is a defect when it is strictly greater than its threshold.

- `calibrate_normal_folder`: image and pixel thresholds at a false-positive rate on normal images.
- `calibrate_labelled_folder`: F1-optimal thresholds on good/ + defect/ (+ masks/).
- `calibrate_on_normal_images`: for training (`calibration_split`), with the eager model.
- `store_thresholds_in_card` / `store_thresholds_in_sidecar`: write them beside the model.
"""

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from common.calibration import f1_optimal_threshold, threshold_at_fpr
from common.errors import UserError
from common.fileio import write_json_atomic
from deploy.backends import Backend, TorchBackend, sidecar_path
from deploy.checkpoints import LoadedCheckpoint
from deploy.images import DEFAULT_MAX_PIXELS, PREDICT_EXTENSIONS, images_under, infer_paths
from model.card import backbone_weights_tag, make_card, write_model_card
from model.supersimplenet import SuperSimpleNet

UNCALIBRATED_THRESHOLD = 0.5  # on sigmoid probabilities, for scores and pixels alike
DEFAULT_FPR = 0.01


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds on sigmoid probabilities: defect when value > threshold."""

    image: float = UNCALIBRATED_THRESHOLD
    pixel: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False
    details: dict = field(default_factory=dict)  # what model.yaml's `thresholds` holds

    @classmethod
    def from_mapping(cls, stored: dict | None) -> "Thresholds":
        """From a card's or sidecar's `thresholds`; empty or absent = uncalibrated (0.5 / 0.5)."""
        if not stored or "image" not in stored or "pixel" not in stored:
            return cls()
        return cls(float(stored["image"]), float(stored["pixel"]), True, dict(stored))

    @property
    def label(self) -> str:
        """'uncalibrated' or how the thresholds were set, e.g. 'calibrated: fpr 0.01 on 32 normal images'."""
        if not self.calibrated:
            return "uncalibrated"
        method = self.details.get("method")
        count = self.details.get("count")
        if method == "fpr":
            return f"calibrated: fpr {self.details.get('fpr')} on {count} normal images"
        if method == "f1":
            return f"calibrated: F1-optimal on {count} labelled images"
        return "calibrated"


def thresholds_from_normal(scores: np.ndarray, maps: list[np.ndarray], fpr: float, pixel_fpr: float,
                           source: str = "") -> dict[str, Any]:
    """Image and pixel thresholds at the false-positive rates `fpr` / `pixel_fpr` on normal images
    (the quantile rule of common/calibration.py; pixels pooled over every map at network size)."""
    pixels = np.concatenate([m.reshape(-1) for m in maps])
    result = {
        "image": threshold_at_fpr(scores, fpr),
        "pixel": threshold_at_fpr(pixels, pixel_fpr),
        "method": "fpr",
        "fpr": float(fpr),
        "pixel_fpr": float(pixel_fpr),
        "count": int(len(scores)),
    }
    if source:
        result["source"] = source
    return result


def fpr_notes(count: int, fpr: float) -> list[str]:
    """A note when there are too few normal images for the requested rate to be resolved."""
    if fpr > 0 and count * fpr < 1:
        return [f"with {count} normal images the smallest non-zero false-positive rate is 1/{count} = "
                f"{1 / count:.3g} > fpr {fpr}: the image threshold is the highest normal score "
                f"(use at least {math.ceil(1 / fpr)} images for fpr {fpr})"]
    return []


# ---------------------------------------------------------------- calibration


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    for _, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)


def check_finite_outputs(scores: np.ndarray, maps: list[np.ndarray], source: str) -> None:
    if not np.all(np.isfinite(scores)) or not all(np.all(np.isfinite(m)) for m in maps):
        raise UserError(f"{source} gives NaN or infinite outputs; the checkpoint is damaged or diverged")


def calibrate_normal_folder(backend: Backend, folder: Path, fpr: float, pixel_fpr: float, batch: int,
                            progress: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, Any], list[str]]:
    """Thresholds at `fpr` (images) and `pixel_fpr` (pixels) on the normal images under `folder`."""
    paths = images_under(folder)
    if not paths:
        raise UserError(f"--calibrate {folder}: no images found (searched recursively for {', '.join(PREDICT_EXTENSIONS)})")
    done, scores, maps, skipped = infer_paths(backend, paths, batch, progress, "calibrating", max_pixels=max_pixels)
    _report_skipped(skipped)
    if not done:
        raise UserError(f"--calibrate {folder}: none of its {len(paths)} images could be read")
    check_finite_outputs(scores, maps, "the model")
    return thresholds_from_normal(scores, maps, fpr, pixel_fpr, str(folder)), fpr_notes(len(done), fpr)


def read_defect_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A labelling mask at network size (h, w), bool: any non-zero value (in any channel) is defect,
    so 0/1, 0/255, 16-bit and coloured masks all work; resized with nearest neighbour."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise UserError(f"cannot read mask {path}: the file is missing, empty or not an image")
    defect = raw != 0 if raw.ndim == 2 else np.any(raw[..., :3] != 0, axis=2)
    height, width = size
    return cv2.resize(defect.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def find_mask(masks_dir: Path, image: Path) -> Path | None:
    """masks/<stem>.<ext> or masks/<stem>_mask.<ext> (as the folder dataset names them)."""
    if not masks_dir.is_dir():
        return None
    for stem in (image.stem, image.stem + "_mask"):
        for candidate in sorted(masks_dir.glob(f"{stem}.*")):
            if candidate.suffix.lower() in PREDICT_EXTENSIONS:
                return candidate
    return None


def calibrate_labelled_folder(backend: Backend, folder: Path, fpr: float, batch: int, progress: bool,
                              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, Any], list[str]]:
    """F1-optimal image threshold on `folder/good` + `folder/defect`; F1-optimal pixel threshold when
    `folder/masks` holds masks (good pixels count as normal; defects without a mask are left out of
    the pixel search), else the pixel threshold at `fpr` on the good images' pixels."""
    good_paths, defect_paths = images_under(folder / "good"), images_under(folder / "defect")
    if not good_paths or not defect_paths:
        raise UserError(f"--calibrate-labelled {folder}: needs images in both good/ and defect/ "
                        f"(found {len(good_paths)} and {len(defect_paths)})")
    good_done, good_scores, good_maps, skipped = infer_paths(backend, good_paths, batch, progress, "calibrating good",
                                                             max_pixels=max_pixels)
    bad_done, bad_scores, bad_maps, more = infer_paths(backend, defect_paths, batch, progress, "calibrating defect",
                                                       max_pixels=max_pixels)
    _report_skipped(skipped + more)
    if not good_done or not bad_done:
        raise UserError(f"--calibrate-labelled {folder}: no readable image in good/ or defect/")
    check_finite_outputs(np.r_[good_scores, bad_scores], good_maps + bad_maps, "the model")
    scores = np.r_[good_scores, bad_scores]
    labels = np.r_[np.zeros(len(good_scores)), np.ones(len(bad_scores))]
    image_threshold, image_f1 = f1_optimal_threshold(scores, labels)
    notes = []
    pixel_maps, pixel_labels = list(good_maps), [np.zeros(m.shape, bool) for m in good_maps]
    with_masks = 0
    for path, anomaly_map in zip(bad_done, bad_maps):
        mask_path = find_mask(folder / "masks", path)
        if mask_path is None:
            continue
        pixel_maps.append(anomaly_map)
        pixel_labels.append(read_defect_mask(mask_path, anomaly_map.shape))
        with_masks += 1
    result: dict[str, Any] = {"image": image_threshold, "method": "f1", "f1_image": image_f1}
    if with_masks and any(label.any() for label in pixel_labels):
        pixel_threshold, pixel_f1 = f1_optimal_threshold(
            np.concatenate([m.reshape(-1) for m in pixel_maps]), np.concatenate([l.reshape(-1) for l in pixel_labels]))
        result.update(pixel=pixel_threshold, pixel_method="f1", f1_pixel=pixel_f1)
        if with_masks < len(bad_done):
            notes.append(f"{len(bad_done) - with_masks} defect image(s) have no mask in masks/: left out of the "
                         "pixel threshold")
    else:
        pixels = np.concatenate([m.reshape(-1) for m in good_maps])
        result.update(pixel=threshold_at_fpr(pixels, fpr), pixel_method="fpr", pixel_fpr=float(fpr))
        notes.append(f"no usable masks in {folder / 'masks'}: the pixel threshold is set at fpr {fpr} on the "
                     "good images' pixels")
    result.update(fpr=float(fpr), count=len(scores), count_good=len(good_scores), count_defect=len(bad_scores),
                  source=str(folder))
    return {key: result[key] for key in ("image", "pixel", "method", "fpr", "count", *sorted(set(result) - {
        "image", "pixel", "method", "fpr", "count"}))}, notes


def calibrate_on_normal_images(model: SuperSimpleNet, image_paths: list[Path | str], image_size: tuple[int, int],
                               device: torch.device | str, fpr: float = DEFAULT_FPR, journal: bool = True,
                               batch: int = 8, progress: bool = False) -> dict[str, Any]:
    """For training (`calibration_split`): the thresholds of model.yaml from held-out normal images,
    at `fpr` for images and pixels, with the eager model (its mode is restored afterwards).

    Thresholds are on sigmoid probabilities for both versions (`journal` is accepted so training
    can pass its version flag; it does not change the rule). Unreadable images are skipped with a
    message; none readable is a UserError."""
    if tuple(model.image_size) != tuple(image_size):
        raise ValueError(f"image_size {tuple(image_size)} differs from the model's {tuple(model.image_size)}")
    was_training = model.training
    try:
        backend = TorchBackend(model, torch.device(device), eager=True)
        done, scores, maps, skipped = infer_paths(backend, [Path(p) for p in image_paths], batch, progress,
                                                  "calibrating")
    finally:
        model.train(was_training)
    _report_skipped(skipped)
    if not done:
        raise UserError("calibration: none of the held-out normal images could be read")
    check_finite_outputs(scores, maps, "the trained model")
    return thresholds_from_normal(scores, maps, fpr, fpr, "calibration_split")


def store_thresholds_in_card(loaded: LoadedCheckpoint, thresholds: dict[str, Any]) -> Path:
    """Write `thresholds` into the model.yaml beside the weights, keeping the rest of the card; a
    checkpoint without a card gets one with the settings it was loaded with."""
    card = loaded.card
    if card is None:
        card = make_card(loaded.config, loaded.model, loaded.dataset, loaded.weights.parent.name,
                         backbone_weights_tag(loaded.model))
    card = {key: value for key, value in card.items() if key != "format"}
    card["thresholds"] = thresholds
    loaded.card = card
    return write_model_card(loaded.weights.parent, card)


def store_thresholds_in_sidecar(model_file: Path, sidecar: dict[str, Any], thresholds: dict[str, Any]) -> Path:
    sidecar["thresholds"] = {**thresholds, "calibrated": True}
    path = sidecar_path(model_file)
    write_json_atomic(path, sidecar)
    return path


__all__ = [
    "UNCALIBRATED_THRESHOLD", "DEFAULT_FPR", "Thresholds", "thresholds_from_normal",
    "fpr_notes", "check_finite_outputs", "calibrate_normal_folder", "read_defect_mask", "find_mask",
    "calibrate_labelled_folder", "calibrate_on_normal_images", "store_thresholds_in_card",
    "store_thresholds_in_sidecar",
]
