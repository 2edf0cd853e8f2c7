"""GT-mask preparation of the journal version's supervised training (docs/method.md, "Journal version").

Both functions work on one mask at the image's original resolution, before resizing:
the mask is dilated, flipped (by the dataset) and then turned into a loss-weight map.
numpy, OpenCV and SciPy only.
"""

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt


def dilate_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """Dilate a 0/1 float H x W mask with a size x size square: `cv2.dilate(mask, np.ones((size, size)))`.

    Pixels outside the image do not spread into it. size None, 0 or 1 -> an unchanged
    copy (OpenCV would read an empty kernel as 3 x 3). Returns H x W, mask's dtype.
    """
    if size is None or size <= 1:
        return np.array(mask, copy=True)
    return cv2.dilate(mask, np.ones((size, size)))


def distance_weights(mask: np.ndarray, max_weight: float, power: float) -> np.ndarray:
    """Loss-weight map of a 0/1 float H x W mask; returns float32 H x W.

    For each 8-connected region of the mask (`cv2.connectedComponents` of uint8(mask*255),
    connectivity 8): the Euclidean distance transform of the region (distance of each of
    its pixels to the nearest pixel outside it; the image border is not "outside"),
    divided by its maximum, raised to `power`, times `max_weight`; the regions' maps are
    summed. Every pixel where the mask is 0 gets weight 1. An empty mask gives all ones.
    `dt: [w, p]` in a configuration means max_weight=w, power=p (docs/method.md,
    "Journal version").
    """
    mask = np.asarray(mask)
    height, width = mask.shape[:2]
    weights = np.zeros((height, width), dtype=np.float64)
    num_labels, labels = cv2.connectedComponents((mask * 255.0).astype(np.uint8), connectivity=8)
    for index in range(1, num_labels):
        region = (labels == index).astype(np.float64)
        distance = distance_transform_edt(region)
        peak = distance.max()
        if peak > 0:
            distance = (distance / peak) ** power * max_weight
        weights += distance
    weights[mask == 0] = 1
    return weights.astype(np.float32)
