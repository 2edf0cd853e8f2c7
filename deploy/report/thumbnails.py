"""Small pictures of the report pages: a test image with its anomaly map over it and its
ground-truth outline (run reports, embedded as JPEG data: URIs), and the shrunken overlay that
predict.py keeps beside its full-size one (`thumbnails/<name>.jpg`, referenced by the page)."""

from pathlib import Path

import cv2
import numpy as np

from common.fileio import atomic_path
from common.image_io import read_rgb
from common.visualize import heatmap
from deploy.report.page import data_uri

THUMBNAIL_SIDE = 160  # px, the longest side
JPEG_QUALITY = 82


def thumbnail_size(height: int, width: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """(height, width) of a picture's thumbnail: its own aspect ratio, the longest side `side`
    (never enlarged)."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """RGB uint8 H x W x 3 -> the same picture with its longest side at most `side` px."""
    height, width = thumbnail_size(rgb.shape[0], rgb.shape[1], side)
    if (height, width) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def jpeg_bytes(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return encoded.tobytes()


def map_overlay_thumbnail(image_path: str, map01: np.ndarray, gt_mask: np.ndarray,
                          side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A test image (read from its file, own aspect ratio) with its map (network size, 0..1 scale,
    JET) blended over it and its ground-truth defect outlined in white -> RGB uint8 thumbnail."""
    image = shrink(read_rgb(image_path), side)
    height, width = image.shape[:2]
    map_small = cv2.resize(np.nan_to_num(map01.astype(np.float32)), (width, height), interpolation=cv2.INTER_AREA)
    blended = cv2.addWeighted(image, 0.55, heatmap(map_small), 0.45, 0)
    defect = cv2.resize((np.asarray(gt_mask) > 0.5).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    if defect.any():
        contours, _ = cv2.findContours(defect, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(blended, contours, -1, (255, 255, 255), 1)
    return blended


def thumbnail_data_uri(rgb: np.ndarray) -> str:
    """RGB uint8 picture (already small) -> a JPEG data: URI."""
    return data_uri(jpeg_bytes(rgb), "image/jpeg")


def write_thumbnail(path: Path, rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> None:
    """Write `rgb` shrunk to `side` px as a JPEG file, atomically (predict.py: thumbnails/<name>.jpg)."""
    encoded = jpeg_bytes(shrink(rgb, side))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(encoded)
