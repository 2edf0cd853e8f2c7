"""The units a run covers: one model per (dataset, category) and, for SensumSODF, per fold.

A unit knows its checkpoint name, the row it reports under, and how to load its DatasetSplit;
the facts behind it (folders, categories, image sizes, loaders) come from common/catalog.py.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common.catalog import DatasetEntry, dataset_entry
from common.errors import UserError
from datamodules.base import DatasetSplit


@dataclass
class Unit:
    """One model to train or evaluate: `name` is its checkpoint directory, `report_category`
    its row in the results (SensumSODF folds share their category's row)."""

    dataset: str
    name: str
    report_category: str
    load: Callable[[], DatasetSplit]
    row_extra: dict[str, Any] = field(default_factory=dict)  # SensumSODF: its fold, a column of the results


def _loader(entry: DatasetEntry) -> Callable[..., DatasetSplit]:
    module, function = entry.loader.split(":")
    return getattr(importlib.import_module(module), function)


def _select(available: tuple[str, ...], requested: list[str] | None, dataset: str) -> list[str]:
    if not requested:
        return list(available)
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise UserError(f"unknown {dataset} categories {unknown}; choose from {', '.join(available)}")
    return [c for c in available if c in requested]


def _image_size(entry: DatasetEntry, config: dict[str, Any], category: str) -> tuple[int, int]:
    """The configured image size, or the dataset's own size for the category when none is set."""
    return tuple(config["image_size"]) if config["image_size"] else entry.size_of(category)


def fold_column(dataset: str) -> tuple[str, ...]:
    """The results column that tells apart units sharing a category (SensumSODF folds)."""
    return ("fold",) if dataset == "sensum" else ()


def dataset_root(dataset: str, datasets_folder: Path) -> Path:
    """Where `dataset` lives under --datasets-folder; a missing folder names the script that prepares it."""
    entry = dataset_entry(dataset)
    root = Path(datasets_folder) / entry.folder
    if entry.prepare and not root.is_dir():
        raise UserError(
            f"{entry.title} not found at {root}; prepare it with "
            f"python datamodules/setup/{entry.prepare} --datasets-folder {datasets_folder}"
        )
    return root


def dataset_units(
    dataset: str, config: dict[str, Any], datasets_folder: Path, categories: list[str] | None = None,
    generate_demo: bool = True,
) -> list[Unit]:
    """The units of `dataset` (all categories, or the requested ones) with `config`'s image size,
    supervision ratio and version. The demo dataset is generated when missing, unless
    `generate_demo` is false (a dry run lists units without writing anything)."""
    try:
        entry = dataset_entry(dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    load = _loader(entry)
    weak_labels = config["version"] == "jims"  # journal: label-only positives are trained on

    if dataset == "demo" and generate_demo:
        from datamodules.demo import ensure_demo_dataset

        root = ensure_demo_dataset(Path(datasets_folder))
    elif dataset == "demo":
        root = Path(datasets_folder) / entry.folder
    else:
        root = dataset_root(dataset, datasets_folder)

    if dataset in ("mvtec", "visa", "demo"):
        return [
            Unit(dataset, c, c, lambda c=c: load(root, c, _image_size(entry, config, c)))
            for c in _select(entry.categories, categories, dataset)
        ]

    if dataset == "ksdd2":
        _select(entry.categories, categories, dataset)
        return [Unit(dataset, "ksdd2", "ksdd2", lambda: load(
            root, config["num_segmented"], _image_size(entry, config, "ksdd2"), weak_labels=weak_labels))]

    if dataset == "sensum":
        names = [f"{c}_{f}" for c in entry.categories for f in config["folds"]]
        unknown = [c for c in categories or [] if c not in names and c not in entry.categories]
        if unknown:
            raise UserError(
                f"unknown sensum categories {unknown}; choose from {', '.join(entry.categories)} or e.g. capsule_0"
            )
        # "capsule" selects all its folds, "capsule_1" one fold
        wanted = [n for n in names if not categories or n in categories or n.rsplit("_", 1)[0] in categories]
        units = []
        for name in wanted:
            category, fold = name.rsplit("_", 1)
            units.append(Unit(dataset, name, category, lambda c=category, f=int(fold): load(
                root, c, f, config["ratio_segmented"], _image_size(entry, config, c), weak_labels=weak_labels),
                row_extra={"fold": int(fold)}))
        return units

    # the user's own folders
    from datamodules.folder import validate_folder

    if not categories:
        raise UserError("the folder dataset needs --category NAME (a directory inside --datasets-folder)")

    def load_checked(category: str) -> DatasetSplit:
        # a user's own folder is checked (and summarised) before anything is trained on it
        print(validate_folder(root, category, weak_labels=weak_labels))
        return load(root, category, _image_size(entry, config, category), weak_labels=weak_labels)

    return [Unit(dataset, c, c, lambda c=c: load_checked(c)) for c in categories]
