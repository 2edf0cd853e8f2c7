"""The dataset catalogue: one entry per dataset the project knows, and nothing else knows these facts.

Torch-free on purpose: the settings loader, the unit lists of the engine, the download scripts
and the docs all read it, and `--help` must not wait for torch. Each entry says where a dataset
lives under `--datasets-folder`, its categories (units), its image size (per category where the
dataset fixes one), the settings its published runs use, how its supervision ratio is named,
and which function (`module:function`, imported only when used) turns it into a DatasetSplit.
"""

from dataclasses import dataclass, field
from typing import Any

# The published supervised configuration, shared by KolektorSDD2 and SensumSODF (docs/method.md, "Datasets").
SUPERVISED_SETTINGS: dict[str, Any] = {
    "seed": 456654,
    "perlin_thr": 0.6,
    "overlap": False,
    "flips": True,
    "stop_grad": False,
    "clip_grad": True,
}

KSDD2_NUM_SEGMENTED = (0, 16, 53, 126, 246)
SENSUM_FOLDS = (0, 1, 2)


@dataclass(frozen=True)
class DatasetEntry:
    """What the project knows about one dataset."""

    name: str  # the command-line name: `python train.py <name>`
    title: str  # how people call it
    folder: str  # under --datasets-folder ("" = the folder itself, for the user's own data)
    categories: tuple[str, ...]  # the units; () = chosen by the user (--category)
    image_size: tuple[int, int] | None  # (height, width) of every category, None = per category
    category_image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # the published runs' settings
    loader: str = ""  # "module:function" building a DatasetSplit
    prepare: str = ""  # the script under datamodules/setup/ that prepares it
    ratio_setting: str = ""  # the setting naming how many positives are segmented ("" = none)
    supervised: bool = False  # positives in training (published configuration)

    def size_of(self, category: str) -> tuple[int, int]:
        """(height, width) the published runs use for `category`."""
        if category in self.category_image_sizes:
            return self.category_image_sizes[category]
        if self.image_size is None:
            raise KeyError(f"{self.name} has no image size for {category}")
        return self.image_size


CATALOG: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            name="mvtec",
            title="MVTec AD",
            folder="mvtec",
            categories=(
                "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
            ),
            image_size=(256, 256),
            settings={"perlin_thr": 0.2},
            loader="datamodules.mvtec:load_mvtec",
            prepare="prepare_mvtec.py",
        ),
        DatasetEntry(
            name="visa",
            title="VisA",
            folder="visa",
            categories=(
                "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
            ),
            image_size=(256, 256),
            settings={"perlin_thr": 0.6},
            loader="datamodules.visa:load_visa",
            prepare="prepare_visa.py",
        ),
        DatasetEntry(
            name="ksdd2",
            title="KolektorSDD2",
            folder="KolektorSDD2",
            categories=("ksdd2",),
            image_size=(640, 232),
            settings={**SUPERVISED_SETTINGS, "num_segmented": 246},
            loader="datamodules.ksdd2:load_ksdd2",
            prepare="prepare_ksdd2.py",
            ratio_setting="num_segmented",
            supervised=True,
        ),
        DatasetEntry(
            name="sensum",
            title="SensumSODF",
            folder="SensumSODF",
            categories=("capsule", "softgel"),
            image_size=None,
            category_image_sizes={"capsule": (320, 192), "softgel": (144, 144)},
            settings={**SUPERVISED_SETTINGS, "ratio_segmented": 1.0, "folds": list(SENSUM_FOLDS)},
            loader="datamodules.sensum:load_sensum",
            prepare="prepare_sensum.py",
            ratio_setting="ratio_segmented",
            supervised=True,
        ),
        DatasetEntry(
            name="folder",
            title="your own images",
            folder="",
            categories=(),
            image_size=(256, 256),
            loader="datamodules.folder:load_folder",
        ),
        DatasetEntry(
            name="demo",
            title="the generated demo",
            folder="demo",
            categories=("fabric", "metal"),
            image_size=(128, 128),
            # A CPU-sized run: small backbone, no downloads. Random resnet18 features vary about
            # ten times more than ImageNet WRN50 ones, so the noise is scaled up.
            settings={
                "backbone": "resnet18",
                "pretrained": False,
                "noise_std": 0.15,
                "batch": 4,
                "epochs": 10,
                "eval_step_size": 10,
                "num_workers": 0,
                "setup_name": "demo",
            },
            loader="datamodules.mvtec:load_mvtec",
        ),
    )
}

DATASET_NAMES = tuple(CATALOG)
# The datasets of the papers' tables (what eval.py evaluates by default).
PAPER_DATASETS = ("mvtec", "visa", "ksdd2", "sensum")


def dataset_entry(name: str) -> DatasetEntry:
    """The catalogue entry of `name`; an unknown name is a ValueError listing the known ones."""
    if name not in CATALOG:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(CATALOG)}")
    return CATALOG[name]


def ratio_folder(dataset: str, settings: dict[str, Any]) -> str:
    """The journal layout's ratio folder of a run (docs/method.md, "Journal version"):
    `1` for datasets without a supervision ratio, the `num_segmented` value for KolektorSDD2,
    the SensumSODF ratio printed as Python prints a float without a trailing `.0` (1, 0.9, ..., 0)."""
    setting = dataset_entry(dataset).ratio_setting
    if not setting:
        return "1"
    value = settings[setting]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
