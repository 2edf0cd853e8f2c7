"""Time the metrics on a synthetic MVTec-sized test set, on one CPU thread.

In: nothing (seeded synthetic data: 150 smooth 256x256 maps, blob masks in about half).
Out: seconds per metric printed (best and median of --repeats runs).
Run: `python perf/bench_metrics.py [--images 150] [--size 256] [--repeats 3] [--sklearn]`.
"""

import os
import sys
from pathlib import Path

# One thread for every numeric library; must be set before they are imported.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common.metrics import aupro, auroc, average_precision, compute_metrics, rank_pixels  # noqa: E402


def synthetic_test_set(
    image_count: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> maps N x size x size float32, masks N x size x size 0/1 float32, scores N, labels N."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(image_count) < 0.5).astype(np.int64)
    maps = np.empty((image_count, size, size), dtype=np.float32)
    masks = np.zeros((image_count, size, size), dtype=np.float32)
    for index in range(image_count):
        if labels[index]:
            for _ in range(rng.integers(1, 4)):
                center = tuple(int(c) for c in rng.integers(0, size, 2))
                axes = tuple(int(a) for a in rng.integers(4, size // 5, 2))
                cv2.ellipse(masks[index], center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        noise = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 4)
        maps[index] = noise + 0.05 * cv2.GaussianBlur(masks[index], (0, 0), 4)
    scores = (1 / (1 + np.exp(-(rng.normal(size=image_count) + 2 * labels)))).astype(np.float32)
    return maps, masks, scores, labels


def time_call(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """-> (best, median) wall-clock seconds of `repeats` calls."""
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return min(durations), statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sklearn", action="store_true", help="also time sklearn's pixel AUROC and AP")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    maps, masks, scores, labels = synthetic_test_set(args.images, args.size)
    flat_maps, flat_labels = maps.reshape(-1), (masks.reshape(-1) > 0.5).astype(np.int64)
    print(
        f"{args.images} maps of {args.size}x{args.size} = {flat_maps.size / 1e6:.1f}M pixels, "
        f"{flat_labels.mean():.1%} anomalous, {int(labels.sum())} anomalous images; one thread"
    )
    benchmarks: dict[str, Callable[[], object]] = {
        "rank_pixels (shared sort)": lambda: rank_pixels(maps, masks),
        "aupro": lambda: aupro(maps, masks),
        "pixel auroc": lambda: auroc(flat_maps, flat_labels),
        "pixel average_precision": lambda: average_precision(flat_maps, flat_labels),
        "compute_metrics (all 7)": lambda: compute_metrics(maps, masks, scores, labels),
    }
    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        benchmarks["sklearn roc_auc_score"] = lambda: roc_auc_score(flat_labels, flat_maps)
        benchmarks["sklearn average_precision_score"] = lambda: average_precision_score(flat_labels, flat_maps)

    print(f"{'what':34s} {'best s':>8s} {'median s':>9s}")
    for name, function in benchmarks.items():
        best, median = time_call(function, args.repeats)
        print(f"{name:34s} {best:8.3f} {median:9.3f}")


if __name__ == "__main__":
    main()
