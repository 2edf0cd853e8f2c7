"""Small generated dataset trees for the datamodule tests (40 x 24 px PNGs written with cv2)."""

from pathlib import Path

import cv2
import numpy as np

from datamodules.safe_pickle import dump_plain_pickle

HEIGHT, WIDTH = 24, 40


def write_image(path: Path, seed: int, height: int = HEIGHT, width: int = WIDTH) -> Path:
    """A random RGB image, different per seed, written with its extension's codec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write_mask(path: Path, defect: bool, height: int = HEIGHT, width: int = WIDTH) -> Path:
    """A grayscale 0/255 mask: an asymmetric rectangle (rows 2-7, columns 3-12) when `defect`, else empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((height, width), dtype=np.uint8)
    if defect:
        mask[2:8, 3:13] = 255
    assert cv2.imwrite(str(path), mask)
    return path


def make_ksdd2_tree(root: Path, train: tuple[int, int], test: tuple[int, int]) -> dict[str, list[int]]:
    """KolektorSDD2 layout with (normals, positives) per part; ids count up from 10000 per part,
    normals first. Returns the ids: train_normal, train_positive, test_normal, test_positive."""
    ids: dict[str, list[int]] = {}
    for part, (num_normal, num_positive), first_id in (("train", train, 10000), ("test", test, 20000)):
        normal_ids = list(range(first_id, first_id + num_normal))
        positive_ids = list(range(first_id + num_normal, first_id + num_normal + num_positive))
        for sample_id in normal_ids + positive_ids:
            write_image(root / part / f"{sample_id}.png", seed=sample_id)
            write_mask(root / part / f"{sample_id}_GT.png", defect=sample_id in positive_ids)
        ids[f"{part}_normal"], ids[f"{part}_positive"] = normal_ids, positive_ids
    return ids


def make_sensum_category(root: Path, category: str, num_negative: int, num_positive: int) -> None:
    """SensumSODF images of one category: negatives 0..n-1, positives 0..m-1 with annotations."""
    for sample_id in range(num_negative):
        write_image(root / category / "negative" / "data" / f"{sample_id:03d}.png", seed=sample_id)
    for sample_id in range(num_positive):
        write_image(root / category / "positive" / "data" / f"{sample_id:03d}.png", seed=1000 + sample_id)
        write_mask(root / category / "positive" / "annotation" / f"{sample_id:03d}.png", defect=True)


def write_sensum_split(root: Path, category: str, fold: int, part: str, name: str, entries: list) -> Path:
    path = root / "sensum_splits" / category / str(fold) / part / name
    dump_plain_pickle(path, entries)
    return path
