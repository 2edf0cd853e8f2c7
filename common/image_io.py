"""The one image reader and preprocessing used by every dataset, train, eval and perf.

Order matters for matching the published numbers (SPEC §3): the image is resized
as uint8 with OpenCV bilinear, then normalised; masks use OpenCV nearest neighbour.
"""

from pathlib import Path

import cv2
import numpy as np

from common.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (splits never depend on the file system); [] if absent."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def read_rgb(path: Path | str) -> np.ndarray:
    """Read an image file as RGB uint8, H x W x 3."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: the file is missing, empty or not an image; replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path | str) -> np.ndarray:
    """Read a ground-truth mask as float32 in [0, 1], H x W (grayscale / 255)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise UserError(f"cannot read mask {path}: the file is missing, empty or not an image; replace or remove it")
    return mask.astype(np.float32) / 255.0


def image_to_tensor_array(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 H x W x 3 -> normalised float32 3 x h x w, resized as uint8 with INTER_LINEAR."""
    height, width = image_size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    normalised = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def mask_to_array(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Mask float32 H x W in [0, 1] -> float32 h x w, resized with INTER_NEAREST."""
    height, width = image_size
    if mask.shape[:2] != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(mask.astype(np.float32))


def read_sample(image_path: Path | str, mask_path: Path | str | None, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample at its stored size: (RGB uint8 H x W x 3, mask float32 H x W).

    A normal sample (label 0) or one without a mask file gets an all-zero mask.
    A mask whose size differs from its image is an error, never silently resized.
    """
    image = read_rgb(image_path)
    if label == 0 or not mask_path:
        return image, np.zeros(image.shape[:2], dtype=np.float32)
    mask = read_mask(mask_path)
    if mask.shape[:2] != image.shape[:2]:
        raise UserError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; masks must have the size of their image"
        )
    return image, mask
