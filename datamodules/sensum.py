"""SensumSODF: `<root>/<cat>/{negative/data, positive/data, positive/annotation}/<id:03>.png`
and fold splits `<root>/sensum_splits/<cat>/<fold>/<train|test>/*.pckl` -> DatasetSplit
(docs/method.md, "Datasets" and "Journal version").

Each split pickle is a list of (id, is_segmented). Training uses every listed negative (always
segmented) and the positives of `pos_<percent>.pckl`. ICPR: only the positives marked
segmented; ratio 0 is the unsupervised setting (`pos_0.pckl` not needed). Journal
(`weak_labels`): every listed positive, those not marked segmented with their image label
only; ratio 0 (`pos_0.pckl`) is the weakly supervised regime. The test set is every sample
listed in `test/neg.pckl` and `test/pos.pckl`.
"""

from pathlib import Path
from typing import Any

from common.errors import UserError
from common.catalog import SENSUM_FOLDS, dataset_entry
from datamodules.base import ANOMALOUS, NORMAL, DatasetSplit, Sample
from datamodules.safe_pickle import load_plain_pickle

SENSUM_CATEGORIES = dataset_entry("sensum").categories
SENSUM_IMAGE_SIZES = dataset_entry("sensum").category_image_sizes
SPLITS_DIR = "sensum_splits"
NEGATIVE_IMAGES = "negative/data"
POSITIVE_IMAGES = "positive/data"
POSITIVE_MASKS = "positive/annotation"
# The split file of the default configuration (100 % segmented); check_sensum asks for it.
DEFAULT_TRAIN_POSITIVES = "pos_100.pckl"


def train_positives_file(ratio_segmented: float) -> str:
    """0.5 -> 'pos_50.pckl' (rounded to a whole percent)."""
    return f"pos_{int(round(ratio_segmented * 100))}.pckl"


def _fold_dir(root: Path, category: str, fold: int, part: str) -> Path:
    return root / SPLITS_DIR / category / str(fold) / part


def check_sensum(root: Path) -> list[str]:
    """Every folder or split file of the expected layout that is missing under `root` (empty when complete)."""
    root = Path(root)
    if not root.is_dir():
        return [str(root)]
    missing = []
    for category in SENSUM_CATEGORIES:
        for folder in (NEGATIVE_IMAGES, POSITIVE_IMAGES, POSITIVE_MASKS):
            if not (root / category / folder).is_dir():
                missing.append(str(root / category / folder))
        for fold in SENSUM_FOLDS:
            needed = [
                _fold_dir(root, category, fold, "train") / "neg.pckl",
                _fold_dir(root, category, fold, "train") / DEFAULT_TRAIN_POSITIVES,
                _fold_dir(root, category, fold, "test") / "neg.pckl",
                _fold_dir(root, category, fold, "test") / "pos.pckl",
            ]
            missing.extend(str(path) for path in needed if not path.is_file())
    return missing


def _read_entries(path: Path) -> list[tuple[int, bool]]:
    """Split pickle -> list of (integer id, is_segmented)."""
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.pckl")) if path.parent.is_dir() else []
        hint = f" (found: {', '.join(available)})" if available else ""
        raise UserError(f"SensumSODF split file {path} not found{hint}; check the dataset and ratio_segmented")
    content = load_plain_pickle(path)
    malformed = UserError(
        f"split file {path} must hold a list of (id, is_segmented) pairs; replace it with the published file"
    )
    if not isinstance(content, (list, tuple)):
        raise malformed
    entries = []
    for entry in content:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise malformed
        entries.append((_integer_id(entry[0], path), bool(entry[1])))
    return entries


def _integer_id(sample_id: Any, path: Path) -> int:
    # Images are named by the id zero-padded to 3 digits, so ids must be whole numbers ("7" or 7).
    if isinstance(sample_id, int) and not isinstance(sample_id, bool):
        return sample_id
    if isinstance(sample_id, str) and sample_id.isdigit():
        return int(sample_id)
    raise UserError(f"split file {path} lists id {sample_id!r}, expected a whole number; replace it with the published file")


def _sample(
    folder: Path, sample_id: int, mask_folder: Path | None, label: int, split_file: Path, is_segmented: bool = True
) -> Sample:
    image_path = folder / f"{sample_id:03d}.png"
    if not image_path.is_file():
        raise UserError(f"SensumSODF image {image_path} listed in {split_file} not found; re-extract the dataset")
    if mask_folder is None:
        return Sample(str(image_path), "", label)
    mask_path = mask_folder / f"{sample_id:03d}.png"
    if not mask_path.is_file():
        raise UserError(f"SensumSODF image {image_path} has no annotation {mask_path}; re-extract the dataset")
    return Sample(str(image_path), str(mask_path), label, is_segmented)


def load_sensum(
    root: Path,
    category: str,
    fold: int,
    ratio_segmented: float,
    image_size: tuple[int, int],
    weak_labels: bool = False,
) -> DatasetSplit:
    """SensumSODF root, category, fold 0-2, segmented ratio in [0, 1] -> DatasetSplit ("sensum", "<category>_<fold>").
    `weak_labels` (journal): positives not marked segmented are kept with their image label."""
    root = Path(root)
    if category not in SENSUM_CATEGORIES:
        raise UserError(f"unknown SensumSODF category '{category}'; choose one of {', '.join(SENSUM_CATEGORIES)}")
    if fold not in SENSUM_FOLDS:
        raise UserError(f"SensumSODF fold must be one of {', '.join(map(str, SENSUM_FOLDS))}, got {fold}")
    if not 0.0 <= ratio_segmented <= 1.0:
        raise UserError(f"ratio_segmented must be between 0 and 1, got {ratio_segmented}")
    if not root.is_dir():
        raise UserError(
            f"SensumSODF directory {root} not found; prepare it with "
            f"python datamodules/setup/prepare_sensum.py --datasets-folder {root.parent} --source YOUR_COPY"
        )

    negatives = root / category / NEGATIVE_IMAGES
    positives = root / category / POSITIVE_IMAGES
    masks = root / category / POSITIVE_MASKS
    train_dir = _fold_dir(root, category, fold, "train")
    test_dir = _fold_dir(root, category, fold, "test")

    neg_file = train_dir / "neg.pckl"
    train = [_sample(negatives, i, None, NORMAL, neg_file) for i, _ in _read_entries(neg_file)]
    supervised = weak_labels or ratio_segmented > 0
    if supervised:
        pos_file = train_dir / train_positives_file(ratio_segmented)
        entries = _read_entries(pos_file)
        if weak_labels:
            train += [_sample(positives, i, masks, ANOMALOUS, pos_file, seg) for i, seg in entries]
        else:
            train += [_sample(positives, i, masks, ANOMALOUS, pos_file) for i, seg in entries if seg]

    neg_file, pos_file = test_dir / "neg.pckl", test_dir / "pos.pckl"
    test = [_sample(negatives, i, None, NORMAL, neg_file) for i, _ in _read_entries(neg_file)]
    test += [_sample(positives, i, masks, ANOMALOUS, pos_file) for i, _ in _read_entries(pos_file)]

    split = DatasetSplit(
        name="sensum",
        category=f"{category}_{fold}",
        train=train,
        test=test,
        image_size=tuple(image_size),
        supervised=supervised,
        info={"fold": fold, "ratio_segmented": ratio_segmented},
    )
    split.check_not_empty(root)
    return split
