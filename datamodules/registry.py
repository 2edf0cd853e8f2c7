"""Which models a dataset name stands for: one `Unit` per checkpoint (a category, or a
SensumSODF category-fold), with the function that loads its samples."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.errors import UserError
from datamodules.base import DatasetSplit
from datamodules.mvtec import MVTEC_CATEGORIES, load_mvtec
from datamodules.visa import VISA_CATEGORIES, load_visa

DATASET_NAMES = ("mvtec", "visa", "ksdd2", "sensum", "demo", "folder")
DATASET_DIRS = {"mvtec": "mvtec", "visa": "visa", "ksdd2": "KolektorSDD2", "sensum": "SensumSODF", "demo": "demo"}


@dataclass
class Unit:
    """One model to train or evaluate: `name` is its checkpoint directory, `report_category`
    its row in the results (SensumSODF folds share their category's row)."""

    dataset: str
    name: str
    report_category: str
    load: Callable[[], DatasetSplit]


def _select(available: tuple[str, ...] | list[str], requested: list[str] | None, dataset: str) -> list[str]:
    if not requested:
        return list(available)
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise UserError(f"unknown {dataset} categories {unknown}; choose from {', '.join(available)}")
    return [c for c in available if c in requested]


def dataset_units(
    dataset: str, config: dict[str, Any], datasets_folder: Path, categories: list[str] | None = None
) -> list[Unit]:
    """The units of `dataset` (all categories, or the requested ones) with `config`'s image size and options."""
    folder = Path(datasets_folder)
    size = tuple(config["image_size"]) if config.get("image_size") else None

    if dataset in ("mvtec", "visa", "demo"):
        if dataset == "demo":
            from datamodules.demo import DEMO_CATEGORIES, ensure_demo_dataset

            root, available, loader = ensure_demo_dataset(folder), DEMO_CATEGORIES, load_mvtec
        else:
            root = folder / DATASET_DIRS[dataset]
            available, loader = (MVTEC_CATEGORIES, load_mvtec) if dataset == "mvtec" else (VISA_CATEGORIES, load_visa)
            if not root.is_dir():
                raise UserError(
                    f"{dataset} not found at {root}; prepare it with "
                    f"python datamodules/setup/prepare_{dataset}.py --datasets-folder {folder}"
                )
        return [
            Unit(dataset, c, c, lambda c=c: loader(root, c, size or (256, 256)))
            for c in _select(available, categories, dataset)
        ]

    if dataset == "ksdd2":
        from datamodules.ksdd2 import KSDD2_IMAGE_SIZE, load_ksdd2

        _select(["ksdd2"], categories, dataset)
        root = folder / DATASET_DIRS[dataset]
        return [
            Unit(dataset, "ksdd2", "ksdd2",
                 lambda: load_ksdd2(root, config.get("num_segmented", 246), size or KSDD2_IMAGE_SIZE))
        ]

    if dataset == "sensum":
        from datamodules.sensum import SENSUM_CATEGORIES, SENSUM_FOLDS, SENSUM_IMAGE_SIZES, load_sensum

        root = folder / DATASET_DIRS[dataset]
        folds = config.get("folds", list(SENSUM_FOLDS))
        names = [f"{c}_{f}" for c in SENSUM_CATEGORIES for f in folds]
        # "capsule" selects all its folds, "capsule_1" one fold
        wanted = names if not categories else [
            n for n in names if n in categories or n.rsplit("_", 1)[0] in categories
        ]
        unknown = [c for c in categories or [] if c not in names and c not in SENSUM_CATEGORIES]
        if unknown:
            raise UserError(f"unknown sensum categories {unknown}; choose from {', '.join(SENSUM_CATEGORIES)} or e.g. capsule_0")
        units = []
        for name in wanted:
            category, fold = name.rsplit("_", 1)
            units.append(Unit(dataset, name, category, lambda c=category, f=int(fold): load_sensum(
                root, c, f, config.get("ratio_segmented", 1.0), size or SENSUM_IMAGE_SIZES[c])))
        return units

    if dataset == "folder":
        from datamodules.folder import load_folder, validate_folder

        if not categories:
            raise UserError("the folder dataset needs --category NAME (a directory inside --datasets-folder)")

        def load_checked(category: str) -> DatasetSplit:
            # a user's own folder is checked (and summarised) before anything is trained on it
            print(validate_folder(folder, category))
            return load_folder(folder, category, size or (256, 256))

        return [Unit(dataset, c, c, lambda c=c: load_checked(c)) for c in categories]

    raise UserError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASET_NAMES)}")
