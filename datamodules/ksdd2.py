"""KolektorSDD2: `<root>/{train,test}/<id>.png, <id>_GT.png` + `split_weakly_<N>.pyb` -> DatasetSplit
(docs/method.md, "Datasets" and "Journal version").

A split file is a pickle of (train, test), each a list of (id, is_segmented). A sample is
normal when its GT mask is all zero. ICPR: training uses only the samples marked segmented
(unsegmented positives are dropped, never used as normal); N = 0 is the unsupervised setting.
Journal (`weak_labels`): every listed training sample is used with its flag, so unsegmented
positives train with their image label only; N = 0 is the weakly supervised regime. The
test set is every listed sample, always treated as segmented.
"""

from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.image_io import read_mask
from common.catalog import KSDD2_NUM_SEGMENTED, dataset_entry
from datamodules.base import ANOMALOUS, NORMAL, DatasetSplit, Sample
from datamodules.safe_pickle import dump_plain_pickle, load_plain_pickle

NUM_SEGMENTED_CHOICES = KSDD2_NUM_SEGMENTED
KSDD2_IMAGE_SIZE = dataset_entry("ksdd2").size_of("ksdd2")
DEFAULT_SPLIT_SEED = 42
PARTS = ("train", "test")
GT_SUFFIX = "_GT"


def split_file_path(root: Path, num_segmented: int) -> Path:
    return Path(root) / f"split_weakly_{num_segmented}.pyb"


def _check_layout(root: Path) -> None:
    if not root.is_dir():
        raise UserError(
            f"KolektorSDD2 directory {root} not found; prepare it with "
            f"python datamodules/setup/prepare_ksdd2.py --datasets-folder {root.parent}"
        )
    for part in PARTS:
        if not (root / part).is_dir():
            raise UserError(f"KolektorSDD2 directory {root} has no {part}/ folder; expected {root}/{part}/<id>.png")


def _image_and_mask_paths(root: Path, part: str, sample_id: Any) -> tuple[Path, Path]:
    return root / part / f"{sample_id}.png", root / part / f"{sample_id}{GT_SUFFIX}.png"


def _has_defect(mask_path: Path) -> bool:
    return bool(np.any(read_mask(mask_path) > 0))


def _checked_paths(root: Path, part: str, sample_id: Any, split_file: Path | None) -> tuple[Path, Path]:
    """(image path, GT path) of one id, both checked to exist."""
    image_path, mask_path = _image_and_mask_paths(root, part, sample_id)
    listed_in = f", listed in {split_file}" if split_file else ""
    if not image_path.is_file():
        raise UserError(f"KolektorSDD2 image {image_path} not found{listed_in}; re-extract the dataset")
    if not mask_path.is_file():
        raise UserError(f"KolektorSDD2 image {image_path} has no GT mask {mask_path.name}; re-extract the dataset")
    return image_path, mask_path


def _sample(root: Path, part: str, sample_id: Any, split_file: Path | None, is_segmented: bool = True) -> Sample:
    """One listed id -> Sample labelled by its GT mask (normal when all zero); the GT path is kept for both."""
    image_path, mask_path = _checked_paths(root, part, sample_id, split_file)
    label = ANOMALOUS if _has_defect(mask_path) else NORMAL
    return Sample(str(image_path), str(mask_path), label, is_segmented)


def _listed_ids(root: Path, part: str) -> list[str]:
    """Ids of the images in root/part (files `<id>.png` that are not GT masks), numeric order first."""
    stems = [p.stem for p in (root / part).glob("*.png") if not p.stem.endswith(GT_SUFFIX)]
    return sorted(stems, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def write_default_splits(root: Path, seed: int = DEFAULT_SPLIT_SEED) -> list[Path]:
    """Create the missing `split_weakly_<N>.pyb` files of `root` from its directory listing; returns
    the paths written (existing files are never overwritten).

    Rule: every train normal is segmented; the train positives, sorted by id, are shuffled with a
    numpy Generator seeded with `seed` and the first N are segmented, so the sets are nested
    (the 16 are within the 53, ...); N above the number of positives marks them all. The test list
    holds every test sample, segmented. Ids are stored as the file-name strings.
    """
    root = Path(root)
    _check_layout(root)
    train_ids = _listed_ids(root, "train")
    test_ids = _listed_ids(root, "test")
    is_positive = {i: _sample(root, "train", i, None).label == ANOMALOUS for i in train_ids}
    positives = [i for i in train_ids if is_positive[i]]
    shuffled = [positives[k] for k in np.random.default_rng(seed).permutation(len(positives))]
    for i in test_ids:  # every test image needs its GT
        _checked_paths(root, "test", i, None)
    test_list = [(i, True) for i in test_ids]
    written = []
    for num_segmented in NUM_SEGMENTED_CHOICES:
        path = split_file_path(root, num_segmented)
        if path.exists():
            continue
        segmented = set(shuffled[:num_segmented])
        train_list = [(i, (not is_positive[i]) or i in segmented) for i in train_ids]
        dump_plain_pickle(path, (train_list, test_list))
        written.append(path)
    return written


def _read_split(path: Path) -> tuple[list[tuple[Any, bool]], list[tuple[Any, bool]]]:
    """Split file -> (train entries, test entries), each a list of (id, is_segmented)."""
    content = load_plain_pickle(path)
    malformed = UserError(
        f"split file {path} must hold (train, test) lists of (id, is_segmented) pairs; replace it or delete it to regenerate"
    )
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise malformed
    parts = []
    for entries in content:
        if not isinstance(entries, (tuple, list)):
            raise malformed
        for entry in entries:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], (int, str))):
                raise malformed
        parts.append([(sample_id, bool(flag)) for sample_id, flag in entries])
    return parts[0], parts[1]


def load_ksdd2(root: Path, num_segmented: int, image_size: tuple[int, int], weak_labels: bool = False) -> DatasetSplit:
    """KolektorSDD2 root + number of segmented training positives -> DatasetSplit ("ksdd2", "ksdd2").
    `weak_labels` (journal): unsegmented training positives are kept with their image label."""
    root = Path(root)
    if num_segmented not in NUM_SEGMENTED_CHOICES:
        choices = ", ".join(map(str, NUM_SEGMENTED_CHOICES))
        raise UserError(f"KolektorSDD2 num_segmented must be one of {choices}, got {num_segmented}")
    _check_layout(root)
    split_file = split_file_path(root, num_segmented)
    if not split_file.exists():
        written = write_default_splits(root)
        print(
            f"KolektorSDD2: {split_file.name} not found; wrote {len(written)} default split file(s) "
            f"to {root} (seed {DEFAULT_SPLIT_SEED})"
        )
    train_entries, test_entries = _read_split(split_file)

    if weak_labels:
        train = [_sample(root, "train", i, split_file, segmented) for i, segmented in train_entries]
    else:
        train = [_sample(root, "train", i, split_file) for i, segmented in train_entries if segmented]
        if num_segmented == 0:
            train = [s for s in train if s.label == NORMAL]  # unsupervised: never train on positives
    test = [_sample(root, "test", i, split_file) for i, _ in test_entries]
    split = DatasetSplit(
        name="ksdd2",
        category="ksdd2",
        train=train,
        test=test,
        image_size=tuple(image_size),
        supervised=any(s.label == ANOMALOUS for s in train),
        info={"num_segmented": num_segmented, "split_file": str(split_file)},
    )
    split.check_not_empty(root)
    return split
