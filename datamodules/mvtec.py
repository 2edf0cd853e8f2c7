"""MVTec AD (and any directory in its layout): `<cat>/train/good`, `<cat>/test/<type>`,
`<cat>/ground_truth/<type>/<name><mask_suffix>.png` (docs/method.md, "Datasets")."""

from pathlib import Path

from common.errors import UserError
from common.image_io import list_images
from datamodules.base import ANOMALOUS, NORMAL, DatasetSplit, Sample


def load_mvtec_layout(
    category_root: Path, name: str, category: str, image_size: tuple[int, int], mask_suffix: str = "_mask"
) -> DatasetSplit:
    """A directory in MVTec layout -> DatasetSplit (train: good only; test: good + every defect type)."""
    if not category_root.is_dir():
        raise UserError(
            f"{name} category '{category}' not found at {category_root}; "
            "check --datasets-folder and the dataset layout in docs/datasets.md"
        )
    train_dir = category_root / "train" / "good"
    test_dir = category_root / "test"
    for required in (train_dir, test_dir):
        if not required.is_dir():
            raise UserError(f"{required} is missing: {category_root} is not in MVTec layout (train/good, test/<type>)")
    train = [Sample(str(p), "", NORMAL) for p in list_images(train_dir)]
    test = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for image_path in list_images(type_dir):
            if type_dir.name == "good":
                test.append(Sample(str(image_path), "", NORMAL))
                continue
            mask_path = category_root / "ground_truth" / type_dir.name / f"{image_path.stem}{mask_suffix}.png"
            if not mask_path.is_file():
                raise UserError(f"mask {mask_path} for test image {image_path} is missing; restore it from the archive")
            test.append(Sample(str(image_path), str(mask_path), ANOMALOUS))
    split = DatasetSplit(name=name, category=category, train=train, test=test, image_size=tuple(image_size))
    split.check_not_empty(category_root)
    return split


def load_mvtec(root: Path, category: str, image_size: tuple[int, int]) -> DatasetSplit:
    """root = `<datasets>/mvtec`."""
    return load_mvtec_layout(Path(root) / category, "mvtec", category, image_size)
