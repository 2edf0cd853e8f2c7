"""Per-image figures: image | GT mask | predicted mask | anomaly map (normalised), written as PNG with OpenCV."""

from pathlib import Path

import cv2
import numpy as np

from common.fileio import atomic_path
from common.image_io import read_rgb

PREDICTED_MASK_THRESHOLD = 0.5  # maps are min-max normalised over the test set before this cut
TITLE_HEIGHT = 18


def _titled(panel_rgb: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((TITLE_HEIGHT, panel_rgb.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (3, TITLE_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel_rgb])


def _gray_to_rgb(gray01: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray01, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _heatmap(map01: np.ndarray) -> np.ndarray:
    colored = cv2.applyColorMap((np.clip(map01, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


def render_panel(
    image_path: str, gt_mask: np.ndarray, anomaly_map: np.ndarray, score: float, seg_score: float, label: int,
    predicted_mask: np.ndarray | None = None, mask_title: str = "predicted mask",
) -> np.ndarray:
    """(H x W GT mask in {0,1}, H x W normalised map) -> RGB uint8 panel of four titled images.
    `predicted_mask` (H x W bool; default: the normalised map >= 0.5) is the third panel, under
    `mask_title` (which says what threshold made it)."""
    height, width = anomaly_map.shape
    image = cv2.resize(read_rgb(image_path), (width, height), interpolation=cv2.INTER_LINEAR)
    overlay = cv2.addWeighted(image, 0.5, _heatmap(anomaly_map), 0.5, 0)
    predicted = anomaly_map >= PREDICTED_MASK_THRESHOLD if predicted_mask is None else predicted_mask
    panels = [
        _titled(image, "image"),
        _titled(_gray_to_rgb(gt_mask), "GT: " + ("anomalous" if label else "normal")),
        _titled(_gray_to_rgb(predicted.astype(np.float32)), mask_title),
        _titled(overlay, f"score {score:.3f} seg {seg_score:.3f}"),
    ]
    return np.hstack(panels)


def save_panel(path: Path, panel_rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(panel_rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        tmp.write_bytes(encoded.tobytes())
