"""Per-image figures: image | GT mask | predicted mask | anomaly map over the image with a colour
bar, written as PNG with OpenCV (fast: the demo writes about a hundred of them).

Every panel shows the image in its own aspect ratio (the network's square input is resized
back), the titles are wrapped to their panel's width (never clipped, never running into the next
panel), and the map is drawn on a fixed 0..1 colour scale whose bar marks the pixel threshold
that made the predicted mask. `figure_maps` decides which map and threshold a run's figures use.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.fileio import atomic_path
from common.image_io import read_rgb
from common.metrics import min_max_normalize

PREDICTED_MASK_THRESHOLD = 0.5  # maps are min-max normalised over the test set before this cut
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_SCALE = 0.4
LINE_HEIGHT = 15  # px per title line at TITLE_SCALE
TITLE_PADDING = 4  # px above and below the title lines
GAP = 6  # white px between panels
PANEL_SIDE_RANGE = (160, 512)  # the longest side of a panel is the map's, kept within this range
MIN_PANEL_WIDTH, MAX_PANEL_HEIGHT = 120, 1024  # narrow images are widened (within that height) for their titles
BAR_WIDTH = 52  # px right of the map panel: the colour bar and its labels
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class FigureMaps:
    """What a run's figures show: `maps` N x H x W on the 0..1 colour scale, `masks` N x H x W bool
    (the predicted masks), the `threshold` that made them on that scale, the mask panel's title and
    the name of the map's scale."""

    maps: np.ndarray
    masks: np.ndarray
    threshold: float
    mask_title: str
    scale_name: str


def figure_maps(anomaly_maps: np.ndarray, pixel_threshold: float | None = None,
                maps_are_probabilities: bool = False) -> FigureMaps:
    """Raw maps N x H x W of a test set -> what its figures show. Without a calibrated
    `pixel_threshold`: the maps min-max normalised over the test set (NaN as 0), cut at 0.5.
    With one (model.yaml): the sigmoid probabilities (the maps themselves when
    `maps_are_probabilities`, journal), cut where p > threshold, as predict.py cuts them."""
    anomaly_maps = np.asarray(anomaly_maps)
    if pixel_threshold is None:
        maps = np.nan_to_num(min_max_normalize(anomaly_maps), nan=0.0)
        return FigureMaps(maps, maps >= PREDICTED_MASK_THRESHOLD, PREDICTED_MASK_THRESHOLD,
                          "mask: min-max map >= 0.5", "min-max over the test set")
    probabilities = anomaly_maps if maps_are_probabilities else 1 / (1 + np.exp(-anomaly_maps.astype(np.float64)))
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return FigureMaps(probabilities, probabilities > pixel_threshold, float(pixel_threshold),
                      f"mask: calibrated p > {pixel_threshold:.3f}", "p = sigmoid(map)")


def heatmap(map01: np.ndarray) -> np.ndarray:
    """H x W values on the fixed 0..1 scale -> RGB uint8 (JET; clipped outside 0..1)."""
    levels = (np.clip(np.nan_to_num(map01, nan=0.0), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def panel_size(image_height: int, image_width: int, map_height: int, map_width: int) -> tuple[int, int]:
    """(height, width) of each panel: the image's own aspect ratio, its longest side the map's
    longest side kept within PANEL_SIDE_RANGE (so small maps are enlarged enough for their titles);
    a tall narrow image is then widened to MIN_PANEL_WIDTH unless its height would pass MAX_PANEL_HEIGHT."""
    low, high = PANEL_SIDE_RANGE
    side = min(max(max(map_height, map_width), low), high)
    scale = side / max(image_height, image_width)
    if image_width * scale < MIN_PANEL_WIDTH:
        scale = min(MIN_PANEL_WIDTH / image_width, MAX_PANEL_HEIGHT / image_height)
    return max(1, round(image_height * scale)), max(1, round(image_width * scale))


def wrap_title(text: str, width: int) -> list[str]:
    """`text` in lines that each fit `width` px at the title font (a word longer than the width is
    cut into pieces that fit)."""
    def fits(line: str) -> bool:
        return cv2.getTextSize(line, FONT, TITLE_SCALE, 1)[0][0] <= width - 4

    lines: list[str] = []
    for word in text.split():
        while not fits(word) and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            if lines and fits(lines[-1] + " " + word[:cut]):
                lines[-1] += " " + word[:cut]
            else:
                lines.append(word[:cut])
            word = word[cut:]
        if lines and fits(lines[-1] + " " + word):
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _title_strip(lines: list[str], width: int, line_count: int) -> np.ndarray:
    strip = np.full((line_count * LINE_HEIGHT + 2 * TITLE_PADDING, width, 3), 255, dtype=np.uint8)
    for index, line in enumerate(lines):
        baseline = TITLE_PADDING + (index + 1) * LINE_HEIGHT - 4
        cv2.putText(strip, line, (2, baseline), FONT, TITLE_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _gray_to_rgb(gray01: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray01, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def colour_bar(height: int, threshold: float) -> np.ndarray:
    """RGB uint8 height x BAR_WIDTH: the 0..1 JET scale (1 at the top), ticks 0, 0.5, 1, and the
    threshold as a black line across the bar labelled with its value."""
    bar = np.full((height, BAR_WIDTH, 3), 255, dtype=np.uint8)
    margin, left, right = 6, 4, 14
    top, bottom = margin, height - margin
    if bottom - top < 10:
        return bar
    levels = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(right - left, axis=1)
    bar[top:bottom, left:right] = heatmap(levels)

    def y_of(value: float) -> int:
        return top + round((1 - min(max(value, 0.0), 1.0)) * (bottom - top - 1))

    threshold_y = y_of(threshold)
    for value in (1.0, 0.5, 0.0):
        y = y_of(value)
        if abs(y - threshold_y) >= 11:  # the threshold's label wins where they would overlap
            cv2.putText(bar, f"{value:.1f}", (right + 3, min(max(y + 4, 9), height - 2)), FONT, 0.32, (0, 0, 0), 1,
                        cv2.LINE_AA)
    cv2.line(bar, (left - 3, threshold_y), (right + 2, threshold_y), (0, 0, 0), 2)
    cv2.putText(bar, f"{threshold:.2f}", (right + 3, min(max(threshold_y + 4, 9), height - 2)), FONT, 0.32,
                (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def render_panel(
    image_path: str, gt_mask: np.ndarray, anomaly_map: np.ndarray, score: float, seg_score: float, label: int,
    predicted_mask: np.ndarray | None = None, mask_title: str = "mask: min-max map >= 0.5",
    threshold: float = PREDICTED_MASK_THRESHOLD, scale_name: str = "min-max over the test set",
) -> np.ndarray:
    """One test image's figure, RGB uint8: four titled panels (image, GT mask, predicted mask, map
    over the image) in the image's own aspect ratio (`panel_size`), GAP px apart, and a colour bar.

    In: the image file, the GT mask H x W in {0, 1} and the map H x W on the 0..1 scale (network
    size, see `figure_maps`), the image's normalised score and seg score, its label, the predicted
    mask H x W bool (default: map >= 0.5) with its title, the `threshold` marked on the colour bar
    and the name of the map's scale."""
    image = read_rgb(image_path)
    map_height, map_width = anomaly_map.shape
    height, width = panel_size(image.shape[0], image.shape[1], map_height, map_width)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if width < image.shape[1]
                       else cv2.INTER_LINEAR)
    predicted = anomaly_map >= PREDICTED_MASK_THRESHOLD if predicted_mask is None else predicted_mask

    def nearest(mask: np.ndarray) -> np.ndarray:
        return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(np.float32)

    map_display = cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    panels = [
        (image, "image"),
        (_gray_to_rgb(nearest(gt_mask > 0.5)), "GT: " + ("anomalous" if label else "normal")),
        (_gray_to_rgb(nearest(predicted)), mask_title),
        (cv2.addWeighted(image, 0.5, heatmap(map_display), 0.5, 0),
         f"map ({scale_name}); score {score:.3f}, seg {seg_score:.3f}"),
    ]
    wrapped = [wrap_title(title, width) for _, title in panels]
    line_count = max(len(lines) for lines in wrapped)
    gap = np.full((height + line_count * LINE_HEIGHT + 2 * TITLE_PADDING, GAP, 3), 255, dtype=np.uint8)
    columns = []
    for (panel, _), lines in zip(panels, wrapped):
        columns += [np.vstack([_title_strip(lines, width, line_count), panel]), gap]
    bar = colour_bar(height, threshold)
    columns.append(np.vstack([np.full((gap.shape[0] - height, BAR_WIDTH, 3), 255, np.uint8), bar]))
    return np.hstack(columns)


def save_panel(path: Path, panel_rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(panel_rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        tmp.write_bytes(encoded.tobytes())
