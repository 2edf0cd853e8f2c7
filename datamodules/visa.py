"""VisA in the MVTec-like `visa_pytorch` layout built by datamodules/setup/prepare_visa.py (docs/method.md, "Datasets"):
`visa/visa_pytorch/<cat>/{train/good, test/good, test/bad, ground_truth/bad/<stem>.png}`."""

from pathlib import Path

from datamodules.base import DatasetSplit
from datamodules.mvtec import load_mvtec_layout


def load_visa(root: Path, category: str, image_size: tuple[int, int]) -> DatasetSplit:
    """root = `<datasets>/visa`; masks are named like their image (no suffix)."""
    return load_mvtec_layout(Path(root) / "visa_pytorch" / category, "visa", category, image_size, mask_suffix="")
