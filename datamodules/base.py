"""What every dataset module produces, and the torch Datasets/loaders built from it.

A dataset module turns a directory into a `DatasetSplit` (lists of `Sample`s); this module
turns samples into batches of `image`, `mask`, `label`, `image_path`, `mask_path`,
`is_segmented` and, for journal supervised training, `loss_weight` (docs/method.md,
"Data pipeline" and "Journal version").
"""

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import UserError
from common.image_io import check_mask_sizes, image_to_tensor_array, mask_to_array, read_sample
from common.masks import dilate_mask, distance_weights

NORMAL, ANOMALOUS = 0, 1

# Flip augmentations of supervised positives, in the published order.
FLIP_NONE, FLIP_VERTICAL, FLIP_HORIZONTAL, FLIP_ROTATE_180 = 0, 1, 2, 3
NUM_FLIPS = 4


@dataclass(frozen=True)
class Sample:
    """One image: its path, its GT mask path ('' when it has none), its label (0 normal,
    1 anomalous) and whether its mask may be trained on (False: an image-level label only)."""

    image_path: str
    mask_path: str
    label: int
    is_segmented: bool = True
    mask_rule: str = "published"  # how its mask file is read (common/image_io.read_mask)


@dataclass(frozen=True)
class MaskProcessing:
    """Journal supervised training: dilate masks with a `dilate` x `dilate` square (0 = off) and
    give the loss distance-transform weights `dt` = (weight, power) inside defects (None = off)."""

    dilate: int = 0
    dt: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MaskProcessing":
        return cls(dilate=config["dilate"], dt=tuple(config["dt"]) if config["dt"] else None)


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
        """Every anomalous training sample, with a mask or with an image label only."""
        return [s for s in self.train if s.label == ANOMALOUS]

    @property
    def train_weak(self) -> list[Sample]:
        """Anomalous training samples known by their image label only."""
        return [s for s in self.train if s.label == ANOMALOUS and not s.is_segmented]

    def hold_out_normals(self, fraction: float, seed: int) -> tuple["DatasetSplit", list[Sample]]:
        """(this split without a seeded `fraction` of its normal training images, those images):
        normal images held back from training to calibrate thresholds on. At least one normal
        image stays in training; the draw uses its own generator, not the global ones."""
        normals = [i for i, s in enumerate(self.train) if s.label == NORMAL]
        count = min(int(round(len(normals) * fraction)), len(normals) - 1)
        if count <= 0:
            return self, []
        chosen = set(np.random.default_rng(seed).choice(normals, size=count, replace=False).tolist())
        kept = [s for i, s in enumerate(self.train) if i not in chosen]
        held = [self.train[i] for i in sorted(chosen)]
        return replace(self, train=kept), held

    def check_mask_sizes(self) -> None:
        """Every mask the split will read has its image's size (from the files' headers): a
        mismatch is found before training, not when the test set is read after it."""
        check_mask_sizes([(s.image_path, s.mask_path) for s in self.train + self.test
                          if s.label == ANOMALOUS and s.mask_path and s.is_segmented])

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


def load_item(
    sample: Sample, image_size: tuple[int, int], flip: int = FLIP_NONE, processing: MaskProcessing | None = None
) -> dict[str, Any]:
    """One sample -> item dict at `image_size`. A label-only positive gets an all-zero mask.
    With `processing` (training only), in this order at the image's own resolution: dilate the
    mask, flip, compute the loss weights from the flipped mask; then everything is resized."""
    mask_path = sample.mask_path if sample.is_segmented else ""
    image, mask = read_sample(sample.image_path, mask_path, sample.label, mask_rule=sample.mask_rule)
    if processing is not None and processing.dilate and sample.label == ANOMALOUS:
        mask = dilate_mask(mask, processing.dilate)
    image, mask = apply_flip(image, flip), apply_flip(mask, flip)
    item = {
        "image": torch.from_numpy(image_to_tensor_array(np.ascontiguousarray(image), image_size)),
        "mask": torch.from_numpy(mask_to_array(np.ascontiguousarray(mask), image_size)),
        "label": sample.label,
        "image_path": sample.image_path,
        "mask_path": sample.mask_path,
        "is_segmented": sample.is_segmented,
    }
    if processing is not None and processing.dt is not None:
        weight, power = processing.dt
        if sample.label == NORMAL:
            weights = np.ones(mask.shape, dtype=np.float32)
        else:
            weights = distance_weights(np.ascontiguousarray(mask), weight, power)
        # resized like the mask (nearest neighbour)
        item["loss_weight"] = torch.from_numpy(mask_to_array(weights, image_size))
    return item


class SampleDataset(Dataset):
    """index in [0, len(samples)) -> item dict; used for test sets and unsupervised training."""

    def __init__(self, samples: list[Sample], image_size: tuple[int, int], processing: MaskProcessing | None = None):
        self.samples = list(samples)
        self.image_size = tuple(image_size)
        self.processing = processing

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return load_item(self.samples[index], self.image_size, processing=self.processing)


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
