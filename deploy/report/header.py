"""What a run report's header says: the supervision regime of a unit, the settings that differ
from the published defaults, and one value for several units (or each unit's where they differ).

Pure functions of the settings and the training set's counts; they read the catalogue and the
settings table (common/), nothing of the engine."""

from typing import Any, Iterable

from common.catalog import dataset_entry
from common.config import build_config, supervision_regime

BACKBONE_WEIGHTS = {"imagenet": "ImageNet weights", "random": "RANDOM weights (not comparable to the paper)"}


def training_counts(train_samples: Iterable[Any]) -> dict[str, int]:
    """Training samples (each with `.label` 0/1 and `.is_segmented`) -> {"normal", "defective",
    "with_masks", "labels_only"}: how many normal and defective images a unit trains on, and how
    many of the defective ones have a pixel mask."""
    normal = defective = with_masks = 0
    for sample in train_samples:
        if sample.label == 0:
            normal += 1
        else:
            defective += 1
            with_masks += bool(sample.is_segmented)
    return {"normal": normal, "defective": defective, "with_masks": with_masks, "labels_only": defective - with_masks}


def regime(dataset: str, config: dict[str, Any], counts: dict[str, int]) -> str:
    """The supervision regime as last.csv and model.yaml name it (common/config.py
    `supervision_regime`: 'unsupervised', 'weak', 'mixed' or 'full'), then what the unit trained on
    and the dataset's ratio setting."""
    defective, with_masks = counts["defective"], counts["with_masks"]
    name = supervision_regime(dataset, config, with_masks, counts["labels_only"])
    if defective == 0:
        detail = "normal images only"
    elif with_masks == 0:
        detail = f"{defective} defective images with image labels only"
    elif with_masks == defective:
        detail = f"{defective} defective images, all with masks"
    else:
        detail = f"{with_masks} of {defective} defective images with masks, the others with image labels only"
    setting = dataset_entry(dataset).ratio_setting
    ratio = f" ({setting} = {config[setting]})" if setting and setting in config else ""
    return f"{name}: {detail}{ratio}"


def settings_differences(dataset: str, version: str, config: dict[str, Any], run_id: int) -> list[tuple[str, Any, Any]]:
    """(setting, value, published default) for every setting of `config` that differs from the
    published configuration of `dataset` and `version` at the same supervision ratio (the ratio is
    the regime, shown on its own) and seed + run id (run N adds N to the seed)."""
    setting = dataset_entry(dataset).ratio_setting
    overrides = [f"{setting}={config[setting]}"] if setting and setting in config else []
    published = build_config(dataset, None, overrides, version)
    published["seed"] += run_id
    return [(key, value, published.get(key)) for key, value in config.items()
            if key != "version" and value != published.get(key)]


def shared_value(values: dict[str, str]) -> str:
    """{unit: value} -> the value when every unit has the same one, else 'unit: value; ...'."""
    distinct = set(values.values())
    if len(distinct) <= 1:
        return next(iter(distinct), "")
    return "; ".join(f"{unit}: {value}" for unit, value in values.items())
