"""What every dataset module produces, and the torch Datasets/loaders built from it.

A dataset module turns a directory into a `DatasetSplit` (lists of `Sample`s); this module
turns samples into batches of `image`, `mask`, `label`, `image_path`, `mask_path` (SPEC §3).
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import UserError
from common.image_io import image_to_tensor_array, mask_to_array, read_sample

NORMAL, ANOMALOUS = 0, 1

# Flip augmentations of supervised positives, in the published order.
FLIP_NONE, FLIP_VERTICAL, FLIP_HORIZONTAL, FLIP_ROTATE_180 = 0, 1, 2, 3
NUM_FLIPS = 4


@dataclass(frozen=True)
class Sample:
    """One image: its path, its GT mask path ('' when it has none) and its label (0 normal, 1 anomalous)."""

    image_path: str
    mask_path: str
    label: int


@dataclass
class DatasetSplit:
    """A category's train and test samples. `supervised` means labelled anomalous train samples
    with masks are present and trained on with the balanced sampler."""

    name: str
    category: str
    train: list[Sample]
    test: list[Sample]
    image_size: tuple[int, int]
    supervised: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_normal(self) -> list[Sample]:
        return [s for s in self.train if s.label == NORMAL]

    @property
    def train_anomalous(self) -> list[Sample]:
        return [s for s in self.train if s.label == ANOMALOUS]

    def check_not_empty(self, root: Any) -> None:
        if not self.train:
            raise UserError(f"{self.name}/{self.category}: no training images found under {root}; check the layout")
        if not self.test:
            raise UserError(f"{self.name}/{self.category}: no test images found under {root}; check the layout")


def apply_flip(array: np.ndarray, flip: int) -> np.ndarray:
    """Flip an H x W (x C) array: vertical, horizontal or 180-degree rotation (exact, no resampling)."""
    if flip == FLIP_NONE:
        return array
    if flip == FLIP_VERTICAL:
        return array[::-1]
    if flip == FLIP_HORIZONTAL:
        return array[:, ::-1]
    if flip == FLIP_ROTATE_180:
        return array[::-1, ::-1]
    raise ValueError(f"unknown flip {flip}")


def load_item(sample: Sample, image_size: tuple[int, int], flip: int = FLIP_NONE) -> dict[str, Any]:
    image, mask = read_sample(sample.image_path, sample.mask_path, sample.label)
    image, mask = apply_flip(image, flip), apply_flip(mask, flip)
    return {
        "image": torch.from_numpy(image_to_tensor_array(np.ascontiguousarray(image), image_size)),
        "mask": torch.from_numpy(mask_to_array(np.ascontiguousarray(mask), image_size)),
        "label": sample.label,
        "image_path": sample.image_path,
        "mask_path": sample.mask_path,
    }


class SampleDataset(Dataset):
    """index in [0, len(samples)) -> item dict; used for test sets and unsupervised training."""

    def __init__(self, samples: list[Sample], image_size: tuple[int, int]):
        self.samples = list(samples)
        self.image_size = tuple(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return load_item(self.samples[index], self.image_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    seed: int = 0,
) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
        drop_last=False,
    )
