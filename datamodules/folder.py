"""The user's own images: `<root>/<category>` -> DatasetSplit ("folder", category).

Two layouts are accepted:
(a) MVTec: `train/good/`, `test/<type>/` (`test/good` normal, other types defects), masks in
    `ground_truth/<type>/<name>_mask.<ext>` (or `<name>.<ext>`). Unsupervised training.
(b) simple: `good/`, optional `defect/`, optional `masks/` (the mask of `defect/x.jpg` is
    `masks/x.<ext>` or `masks/x_mask.<ext>`). A fixed seeded split (seed 42, `ceil` of the
    fraction, positions drawn by a numpy permutation) holds out 20 % of the good images (at
    least one stays for training) and 50 % of the defects with masks for testing; the other
    defects with masks switch on supervised training. Defects without masks are test-only
    under ICPR; with `weak_labels` (journal) they are split the same way, and the training
    half is trained on with its image label only (weakly supervised).

A test defect without a mask is scored against an all-zero mask, which would make every
pixel metric wrong, so then `info["pixel_metrics"]` is False and only image metrics count.
Images keep their aspect: they are resized to `image_size`, never cropped.

Masks are read with the "nonzero" rule (common/image_io.py): any non-zero pixel is defect, so
0/1 masks, 16-bit masks and coloured masks from labelling tools all count (the published
datasets keep the published mask / 255). The summary says how the masks are stored and lists
every defect whose mask is empty.
"""

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.errors import UserError
from common.image_io import NONZERO_MASK_RULE, defect_pixels, is_image_file, list_images, mask_storage, read_raw_mask
from datamodules.base import ANOMALOUS, NORMAL, DatasetSplit, Sample

FOLDER_SPLIT_SEED = 42
GOOD_TEST_FRACTION = 0.2
MASKED_DEFECT_TEST_FRACTION = 0.5
MVTEC_LAYOUT, SIMPLE_LAYOUT = "mvtec", "simple"
MAX_PROBLEMS_IN_ERROR = 3
TINY_IMAGE_SIDE = 8  # a side under this (a 1-pixel image, a thumbnail strip) carries next to nothing


@dataclass(frozen=True)
class FolderSample(Sample):
    """A sample of the user's own folder: its mask is read with the "nonzero" rule."""

    mask_rule: str = NONZERO_MASK_RULE


@dataclass
class FolderListing:
    """What the directory holds: samples per split, and defects that have no mask."""

    layout: str
    train: list[Sample]
    test: list[Sample]
    defects_without_mask: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)  # masks that belong to no image


def _ignored_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_image_file(p) and not p.name.startswith("."))


def _masks_by_stem(mask_folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for mask in list_images(mask_folder):
        by_stem.setdefault(mask.stem, mask)  # sorted listing: the same stem twice always resolves the same way
    return by_stem


def _orphans(masks_by_stem: dict[str, Path], used: list[Path | None]) -> list[str]:
    taken = {Path(m) for m in used if m}
    return [str(mask) for mask in masks_by_stem.values() if mask not in taken]


def _find_mask(masks_by_stem: dict[str, Path], image: Path, name_suffixes: tuple[str, ...]) -> Path | None:
    """First mask named `<image stem><suffix>.<any image extension>`, trying the suffixes in order."""
    for suffix in name_suffixes:
        if image.stem + suffix in masks_by_stem:
            return masks_by_stem[image.stem + suffix]
    return None


def _held_out(count: int, fraction: float, keep_for_train: int) -> set[int]:
    """Positions (of `count` sorted files) held out for testing: ceil(count * fraction), seeded."""
    num_test = max(0, min(math.ceil(count * fraction), count - keep_for_train))
    permutation = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(count)
    return set(permutation[:num_test].tolist())


def _list_mvtec(base: Path) -> FolderListing:
    listing = FolderListing(MVTEC_LAYOUT, [], [])
    listing.train = [FolderSample(str(p), "", NORMAL) for p in list_images(base / "train" / "good")]
    listing.ignored_files = [str(p) for p in _ignored_files(base / "train" / "good")]
    type_dirs = sorted(p for p in (base / "test").iterdir() if p.is_dir()) if (base / "test").is_dir() else []
    for type_dir in type_dirs:
        listing.ignored_files += [str(p) for p in _ignored_files(type_dir)]
        masks = _masks_by_stem(base / "ground_truth" / type_dir.name)
        used = []
        for image in list_images(type_dir):
            if type_dir.name == "good":
                listing.test.append(FolderSample(str(image), "", NORMAL))
                continue
            mask = _find_mask(masks, image, ("_mask", ""))
            used.append(mask)
            if mask is None:
                listing.defects_without_mask.append(str(image))
            listing.test.append(FolderSample(str(image), str(mask) if mask else "", ANOMALOUS))
        listing.orphan_masks += _orphans(masks, used)
    return listing


def _list_simple(base: Path, weak_labels: bool) -> FolderListing:
    listing = FolderListing(SIMPLE_LAYOUT, [], [])
    goods = list_images(base / "good")
    held_out_goods = _held_out(len(goods), GOOD_TEST_FRACTION, keep_for_train=1)
    for position, image in enumerate(goods):
        (listing.test if position in held_out_goods else listing.train).append(FolderSample(str(image), "", NORMAL))

    masks = _masks_by_stem(base / "masks")
    masked: list[tuple[Path, Path]] = []
    for image in list_images(base / "defect"):
        mask = _find_mask(masks, image, ("", "_mask"))
        if mask is None:
            listing.defects_without_mask.append(str(image))
        else:
            masked.append((image, mask))
    listing.orphan_masks = _orphans(masks, [mask for _, mask in masked])
    held_out_defects = _held_out(len(masked), MASKED_DEFECT_TEST_FRACTION, keep_for_train=0)
    for position, (image, mask) in enumerate(masked):
        target = listing.test if position in held_out_defects else listing.train
        target.append(FolderSample(str(image), str(mask), ANOMALOUS))
    unmasked = listing.defects_without_mask
    held_out_unmasked = _held_out(len(unmasked), MASKED_DEFECT_TEST_FRACTION, 0) if weak_labels else set(range(len(unmasked)))
    for position, path in enumerate(unmasked):
        if position in held_out_unmasked:
            listing.test.append(FolderSample(path, "", ANOMALOUS))
        else:
            listing.train.append(FolderSample(path, "", ANOMALOUS, is_segmented=False))
    listing.defects_without_mask = [unmasked[k] for k in sorted(held_out_unmasked)]
    listing.ignored_files = [str(p) for name in ("good", "defect", "masks") for p in _ignored_files(base / name)]
    return listing


def list_folder(root: Path, category: str, weak_labels: bool = False) -> FolderListing:
    """`root/category` -> its samples, in whichever of the two layouts it uses; `weak_labels`
    (journal) trains on half of the simple layout's defects without masks with their image label."""
    base = Path(root) / category
    if not base.is_dir():
        raise UserError(
            f"folder dataset {base} not found; pass --datasets-folder DIR and --category NAME of a directory inside it"
        )
    if (base / "train").is_dir():
        listing = _list_mvtec(base)
    elif (base / "good").is_dir():
        listing = _list_simple(base, weak_labels)
    else:
        raise UserError(f"folder dataset {base} has neither train/good/ (MVTec layout) nor good/ (simple layout); add one")
    if not any(s.label == NORMAL for s in listing.train):
        where = "train/good/" if listing.layout == MVTEC_LAYOUT else "good/"
        raise UserError(f"folder dataset {base} has no good training images in {where}; add defect-free images")
    return listing


def load_folder(
    root: Path, category: str, image_size: tuple[int, int], weak_labels: bool = False
) -> DatasetSplit:
    """`root/category` (MVTec or simple layout) -> DatasetSplit ("folder", category)."""
    listing = list_folder(root, category, weak_labels)
    split = DatasetSplit(
        name="folder",
        category=category,
        train=listing.train,
        test=listing.test,
        image_size=tuple(image_size),
        supervised=any(s.label == ANOMALOUS for s in listing.train),
        info={
            "layout": listing.layout,
            "pixel_metrics": not listing.defects_without_mask,
            "test_defects_without_mask": len(listing.defects_without_mask),
        },
    )
    split.check_not_empty(Path(root) / category)
    return split


def _image_size(path: str) -> tuple[int, int] | None:
    """(height, width) of a readable image file as training reads it, None when it cannot be decoded."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if image is None or image.size == 0 else image.shape[:2]


@dataclass
class FileCheck:
    """What decoding every file of a folder found: problems that stop training, image sizes,
    how the masks are stored, and the defects whose mask has no defect pixel."""

    problems: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (height, width)
    mask_storage: Counter = field(default_factory=Counter)
    empty_masks: list[tuple[str, str]] = field(default_factory=list)  # (mask, image), relative to the folder


def _check_files(samples: list[Sample], base: Path) -> FileCheck:
    """Decode every image and mask (masks with the "nonzero" rule, as training reads them)."""
    check = FileCheck()
    for sample in samples:
        image_name = Path(sample.image_path).relative_to(base)
        image_size = _image_size(sample.image_path)
        if image_size is None:
            check.problems.append(f"unreadable image {image_name}")
            continue
        check.sizes[image_size] += 1
        check.image_sizes[sample.image_path] = image_size
        if not sample.mask_path:
            continue
        mask_name = Path(sample.mask_path).relative_to(base)
        try:
            raw = read_raw_mask(sample.mask_path)
        except UserError:
            check.problems.append(f"unreadable mask {mask_name}")
            continue
        mask_size = raw.shape[:2]
        if mask_size != image_size:
            check.problems.append(
                f"mask {mask_name} is {mask_size[1]}x{mask_size[0]} but its image is {image_size[1]}x{image_size[0]}"
            )
            continue
        check.mask_storage[mask_storage(raw)] += 1
        if not defect_pixels(raw).any():
            check.empty_masks.append((str(mask_name), str(image_name)))
    return check


def _count_row(split_name: str, kind: str, samples: list[Sample], label: int) -> str:
    chosen = [s for s in samples if s.label == label]
    masks = "-" if label == NORMAL else str(sum(1 for s in chosen if s.mask_path))
    return f"{split_name:<6} {kind:<7} {len(chosen):>6} {masks:>6}"


def training_regime(train: list[Sample]) -> str:
    """In words: which supervision regime a folder's training samples give, and why."""
    segmented = sum(1 for s in train if s.label == ANOMALOUS and s.is_segmented)
    weak = sum(1 for s in train if s.label == ANOMALOUS and not s.is_segmented)
    if segmented and weak:
        return f"mixed supervision ({segmented} defects with masks, {weak} with image labels only, in train)"
    if segmented:
        return f"fully supervised ({segmented} defects with masks in train)"
    if weak:
        return f"weakly supervised ({weak} defects without masks in train, trained on their image label)"
    return "unsupervised (good images only)"


def validate_folder(root: Path, category: str, weak_labels: bool = False) -> str:
    """Check `root/category` and return a printable summary: counts per split and kind, image
    sizes, defects without masks, how the masks are stored, empty masks and ignored files.
    Raises UserError when it cannot be trained on: no good images, or an unreadable image or
    mask, or a mask whose size differs from its image."""
    base = Path(root) / category
    listing = list_folder(root, category, weak_labels)
    check = _check_files(listing.train + listing.test, base)
    problems, sizes = check.problems, check.sizes
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_IN_ERROR])
        more = f" (+{len(problems) - MAX_PROBLEMS_IN_ERROR} more)" if len(problems) > MAX_PROBLEMS_IN_ERROR else ""
        raise UserError(f"folder dataset {base} cannot be used: {shown}{more}; fix or remove these files")

    lines = [
        f"folder dataset {base} ({listing.layout} layout)",
        f"{'split':<6} {'kind':<7} {'images':>6} {'masks':>6}",
        _count_row("train", "good", listing.train, NORMAL),
        _count_row("train", "defect", listing.train, ANOMALOUS),
        _count_row("test", "good", listing.test, NORMAL),
        _count_row("test", "defect", listing.test, ANOMALOUS),
        "image sizes (h x w): " + ", ".join(f"{h}x{w} ({n})" for (h, w), n in sizes.most_common()),
        f"training: {training_regime(listing.train)}",
    ]
    if listing.defects_without_mask:
        lines.append(f"pixel metrics: off, {len(listing.defects_without_mask)} test defect(s) have no mask:")
        lines += [f"  no mask: {Path(p).relative_to(base)}" for p in listing.defects_without_mask]
    else:
        lines.append("pixel metrics: on")
    if check.mask_storage:
        stored = ", ".join(f"{kind} ({count})" for kind, count in sorted(check.mask_storage.items()))
        lines.append(f"masks: any non-zero pixel is defect; stored as {stored}")
    if check.empty_masks:
        lines.append(f"warning: {len(check.empty_masks)} defect mask(s) are empty (no non-zero pixel): "
                     "every pixel of these defects counts as defect-free; fix the masks or remove them")
        lines += [f"  empty mask: {mask} (of {image})" for mask, image in check.empty_masks]
    if listing.orphan_masks:
        shown = ", ".join(str(Path(p).relative_to(base)) for p in listing.orphan_masks[:3])
        more = f" and {len(listing.orphan_masks) - 3} more" if len(listing.orphan_masks) > 3 else ""
        lines.append(f"warning: {len(listing.orphan_masks)} mask(s) belong to no defect image and are not used: "
                     f"{shown}{more}; check their names (masks/<stem>.png or <stem>_mask.png)")
    tiny = sorted((Path(path).relative_to(base), size) for path, size in check.image_sizes.items()
                  if min(size) < TINY_IMAGE_SIDE)
    if tiny:
        (first, (height, width)), more = tiny[0], f" and {len(tiny) - 1} more" if len(tiny) > 1 else ""
        lines.append(f"warning: {len(tiny)} image(s) have a side under {TINY_IMAGE_SIDE} px ({first} is "
                     f"{width}x{height}{more}): they are blown up to the input size and carry almost no detail")
    if not any(s.label == NORMAL for s in listing.test) or not any(s.label == ANOMALOUS for s in listing.test):
        lines.append("warning: the test set needs both good and defect images for detection metrics")
    lines += [f"  ignored (not an image): {Path(p).relative_to(base)}" for p in listing.ignored_files]
    return "\n".join(lines)
