"""Training loaders: shuffled normals (unsupervised) or the balanced supervised epoch
(docs/method.md, "Supervised sampling").

Supervised epoch: every positive, with a mask or (journal) an image label only (x4 with flips: none, vertical, horizontal,
180-degree rotation) plus as many normal images, the normals drawn favouring those seen
least so far (the published inverse-frequency rule). The published code kept the draw
counts inside the dataset and so forbade DataLoader workers; here the sampler owns them
and decides the whole epoch in the main process, while the dataset stays stateless, so
the batches are identical with 0 or many workers.
"""

import math
from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import UserError
from datamodules.base import NUM_FLIPS, DatasetSplit, MaskProcessing, Sample, SampleDataset, load_item, make_loader


class SupervisedTrainDataset(Dataset):
    """index -> item dict. [0, 4P): positive i with flip f, (f, i) = divmod(index, P)
    (0 none, 1 vertical, 2 horizontal, 3 rotate 180); [4P, 4P + N): normal index - 4P, unflipped."""

    def __init__(
        self,
        positives: list[Sample],
        normals: list[Sample],
        image_size: tuple[int, int],
        processing: MaskProcessing | None = None,
    ):
        self.positives = list(positives)
        self.normals = list(normals)
        self.image_size = tuple(image_size)
        self.processing = processing

    @property
    def normal_offset(self) -> int:
        return NUM_FLIPS * len(self.positives)

    def __len__(self) -> int:
        return self.normal_offset + len(self.normals)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.normal_offset:
            flip, positive_index = divmod(index, len(self.positives))
            return load_item(self.positives[positive_index], self.image_size, flip, self.processing)
        return load_item(self.normals[index - self.normal_offset], self.image_size, processing=self.processing)


def inverse_frequency_probabilities(draw_counts: np.ndarray) -> np.ndarray:
    """Draw counts f of N normal images -> sampling probabilities (N,), summing to 1.

    The published rule: p = 1 - f / max(f); p = p - median(p) + 1; p = p ** (4 ln N); normalised.
    Images drawn least get the highest probability.
    """
    counts = np.asarray(draw_counts, dtype=np.float64)
    if counts.max() == 0:  # nothing drawn yet: every image equally likely
        return np.full(len(counts), 1.0 / len(counts))
    probabilities = 1.0 - counts / counts.max()
    probabilities = probabilities - np.median(probabilities) + 1.0
    probabilities = probabilities ** (4.0 * math.log(len(counts)))
    return probabilities / probabilities.sum()


class BalancedSupervisedSampler(Sampler[int]):
    """Yields one epoch of `SupervisedTrainDataset` indices, shuffled: the K positive items
    (K = 4P with flips, else P) and K normal items drawn by inverse frequency. len = 2K.

    Each `iter()` draws a new epoch and updates `normal_draw_counts` at once, in the process
    that iterates (the DataLoader's main process), so the plan does not depend on workers.
    """

    def __init__(self, num_positive: int, num_normal: int, flips: bool, seed: int):
        if num_positive < 1 or num_normal < 1:
            raise ValueError(f"need positives and normals, got {num_positive} and {num_normal}")
        self.num_positive = num_positive
        self.num_normal = num_normal
        self.flips = flips
        self.num_items_per_half = num_positive * (NUM_FLIPS if flips else 1)
        # More draws than images forces drawing with replacement (published rule).
        self.replace = self.num_items_per_half > num_normal
        self.rng = np.random.default_rng(seed)
        self.normal_draw_counts = np.zeros(num_normal, dtype=np.int64)
        self.epochs_drawn = 0

    def __len__(self) -> int:
        return 2 * self.num_items_per_half

    def _draw_first_epoch_normals(self) -> np.ndarray:
        # Published: a permutation of all normals (or K draws with replacement), first K used.
        size = self.num_items_per_half if self.replace else self.num_normal
        drawn = self.rng.choice(self.num_normal, size=size, replace=self.replace)
        return drawn[: self.num_items_per_half]

    def _draw_weighted_normals(self) -> np.ndarray:
        probabilities = inverse_frequency_probabilities(self.normal_draw_counts)
        wanted = self.num_items_per_half
        possible = np.flatnonzero(probabilities > 0)
        if self.replace or len(possible) >= wanted:
            return self.rng.choice(self.num_normal, size=wanted, p=probabilities, replace=self.replace)
        # Fewer images with non-zero probability than needed without replacement (only when
        # the power underflows to 0): take all of those, fill up uniformly from the rest.
        rest = np.flatnonzero(probabilities <= 0)
        first = self.rng.permutation(possible)
        fill = self.rng.choice(rest, size=wanted - len(possible), replace=False)
        return np.concatenate([first, fill])

    def draw_epoch(self) -> np.ndarray:
        """Decide the next epoch: a shuffled array of 2K dataset indices; updates the draw counts."""
        if self.epochs_drawn == 0:
            normals = self._draw_first_epoch_normals()
        else:
            normals = self._draw_weighted_normals()
        np.add.at(self.normal_draw_counts, normals, 1)
        self.epochs_drawn += 1
        positives = np.arange(self.num_items_per_half)  # flip-0 block first, so no flips = [0, P)
        normal_indices = NUM_FLIPS * self.num_positive + normals
        return self.rng.permutation(np.concatenate([positives, normal_indices]))

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw_epoch().tolist())


def make_train_loader(
    split: DatasetSplit,
    batch_size: int,
    num_workers: int,
    flips: bool,
    seed: int,
    processing: MaskProcessing | None = None,
) -> DataLoader:
    """DatasetSplit -> training DataLoader of item dicts: shuffled normals when unsupervised,
    balanced positives (segmented or label-only alike) + inverse-frequency normals when
    `split.supervised`. `processing`: the journal's mask dilation and loss weights."""
    normals = split.train_normal
    if not normals:
        raise UserError(f"{split.name}/{split.category}: no normal training images; add defect-free images to train on")
    if not split.supervised:
        dataset = SampleDataset(normals, split.image_size, processing)
        return make_loader(dataset, batch_size, num_workers, shuffle=True, seed=seed)
    positives = split.train_anomalous
    if not positives:
        raise UserError(
            f"{split.name}/{split.category}: supervised training was asked for but no labelled anomalous "
            "training image was found; add defect images or train unsupervised"
        )
    dataset = SupervisedTrainDataset(positives, normals, split.image_size, processing)
    sampler = BalancedSupervisedSampler(len(positives), len(normals), flips, seed)
    return make_loader(dataset, batch_size, num_workers, sampler=sampler, seed=seed)
