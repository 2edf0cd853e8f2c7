"""Per-image outputs of a prediction: an image (RGB uint8 at its own size), its probability map at
network size, its score and the `Thresholds` in; the map resized to the image's size, the heatmap
PNG, the binary mask PNG at the pixel threshold, the overlay PNG (image blended with its heatmap,
mask outline, colour bar, title with score, decision, thresholds and whether they are calibrated)
and optionally the float32 .npy map out, with an `ImageResult` row describing them."""

from dataclasses import dataclass
from pathlib import Path
import cv2
import numpy as np

from common.fileio import atomic_path
from deploy.calibrate import Thresholds
from deploy.images import Loaded
from deploy.report import thumbnail_path, write_thumbnail


def overlay_layout(height: int, width: int) -> tuple[int, int]:
    """(title strip height, colour-bar strip width) of an overlay for an H x W image. With
    u = max(1, max(H, W) / 512): the colour bar is round(56 u) px wide on the right; the title on
    top has 2 lines of round(18 u) px when W + bar >= round(300 u), else 6 shorter lines (narrow
    images). The overlay is (H + title) x (W + bar): the image keeps its own pixels and aspect."""
    unit = max(1.0, max(height, width) / 512)
    bar = round(56 * unit)
    lines = 2 if width + bar >= round(300 * unit) else 6
    return lines * round(18 * unit), bar


def heatmap_rgb(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities H x W in [0, 1] -> RGB uint8 (JET), on the fixed 0..1 scale: maps of different
    images and runs are comparable by colour."""
    levels = np.round(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _fitted_scale(text: str, width: int, height: int, wanted: float) -> float:
    (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, wanted, 1)
    return max(0.2, min(wanted, wanted * (width - 6) / max(text_width, 1), wanted * height / max(text_height, 1)))


def _put(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=(0, 0, 0)) -> None:
    thickness = 1 if scale < 0.9 else 2
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def title_lines(score: float, defect: bool, area_fraction: float, thresholds: Thresholds, count: int) -> list[str]:
    """The overlay title in `count` (2 or 6) lines: decision, score, both thresholds, defect area,
    and whether the thresholds are calibrated."""
    verdict = "DEFECT" if defect else "normal"
    state = "calibrated" if thresholds.calibrated else "uncalibrated"
    area = f"area {100 * area_fraction:.2f}%"
    if count == 2:
        return [f"{verdict}: score {score:.4f} {'>' if defect else '<='} {thresholds.image:.4f}",
                f"pixel thr {thresholds.pixel:.4f}, {area} ({state})"]
    return [verdict, f"score {score:.4f}", f"image thr {thresholds.image:.4f}", f"pixel thr {thresholds.pixel:.4f}",
            area, state]


def render_overlay(image: np.ndarray, probabilities: np.ndarray, mask: np.ndarray, score: float, defect: bool,
                   thresholds: Thresholds) -> np.ndarray:
    """RGB uint8 (H + title) x (W + bar) x 3 (see `overlay_layout`): the image blended with its
    heatmap, the defect mask outlined in white, a colour bar 0..1 with the pixel threshold marked,
    and a title with the score, the decision, both thresholds and whether they are calibrated."""
    height, width = image.shape[:2]
    title_height, bar_width = overlay_layout(height, width)
    unit = max(1.0, max(height, width) / 512)
    canvas = np.full((height + title_height, width + bar_width, 3), 255, dtype=np.uint8)
    blended = cv2.addWeighted(image, 0.55, heatmap_rgb(probabilities), 0.45, 0)
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(blended, contours, -1, (255, 255, 255), max(1, round(unit)))
    canvas[title_height:, :width] = blended

    # title: 2 or 6 lines, each shrunk to fit the overlay's width when needed
    line_height = round(18 * unit)
    lines = title_lines(score, defect, float(mask.mean()), thresholds, title_height // line_height)
    for index, text in enumerate(lines):
        scale = _fitted_scale(text, width + bar_width, int(line_height * 0.7), 0.45 * unit)
        colour = (200, 0, 0) if (index == 0 and defect) else (0, 0, 0)
        _put(canvas, text, (3, line_height * (index + 1) - max(2, line_height // 5)), scale, colour)

    # colour bar: 1 at the top, 0 at the bottom, ticks 0, 0.5, 1 and the pixel threshold
    margin = max(2, round(6 * unit))
    top, bottom = title_height + margin, title_height + height - margin
    if bottom - top >= 8:
        left, right = width + max(2, round(4 * unit)), width + max(6, round(16 * unit))
        levels = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(right - left, axis=1)
        canvas[top:bottom, left:right] = heatmap_rgb(levels)
        tick_scale = 0.3 * unit
        for value in (1.0, 0.5, 0.0):
            y = top + round((1 - value) * (bottom - top - 1))
            _put(canvas, f"{value:.1f}", (right + 2, min(max(y + 4, top + 8), bottom)), tick_scale)
        y = top + round((1 - min(max(thresholds.pixel, 0.0), 1.0)) * (bottom - top - 1))
        cv2.line(canvas, (left - 2, y), (right + 1, y), (0, 0, 0), max(1, round(unit)))
    return canvas


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array.astype(np.float32))


@dataclass
class ImageResult:
    path: str
    name: str
    score: float
    defect: bool
    defect_pixels: int
    height: int
    width: int
    max_pixel: float

    @property
    def area_fraction(self) -> float:
        return self.defect_pixels / (self.height * self.width)


def full_size_map(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map at network size -> the image's own size (bilinear), float32 in [0, 1]."""
    if probabilities.shape != (height, width):
        probabilities = cv2.resize(probabilities.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(probabilities, 0.0, 1.0).astype(np.float32)


def write_image_outputs(output: Path, entry: Loaded, probabilities: np.ndarray, score: float,
                        thresholds: Thresholds, save_maps: bool, overlays: bool = True,
                        thumbnails: bool = False) -> ImageResult:
    """Every per-image file of one image; returns its row. `thumbnails`: also the overlay's image
    part shrunk for the report page (thumbnails/<name>.jpg)."""
    height, width = entry.image.shape[:2]
    full = full_size_map(probabilities, height, width)
    mask = full > thresholds.pixel
    defect = bool(score > thresholds.image)
    name = entry.item.name
    _write_png(output / "heatmaps" / f"{name}.png", heatmap_rgb(full))
    _write_png(output / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
    if overlays:
        overlay = render_overlay(entry.image, full, mask, score, defect, thresholds)
        _write_png(output / "overlays" / f"{name}.png", overlay)
        if thumbnails:
            write_thumbnail(thumbnail_path(output, name), overlay[-height:, :width])
    if save_maps:
        _write_npy(output / "maps" / f"{name}.npy", full)
    return ImageResult(str(entry.item.path), name, float(score), defect, int(mask.sum()), height, width,
                       float(full.max()))


__all__ = [
    "overlay_layout", "heatmap_rgb", "title_lines", "render_overlay", "ImageResult", "full_size_map",
    "write_image_outputs",
]
