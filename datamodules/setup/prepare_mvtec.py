"""Prepare MVTec AD: the official archive -> `<datasets>/mvtec/<category>/{train/good, test/<type>,
ground_truth/<type>/<name>_mask.png}`, checked to hold all 15 categories.

The archive is unpacked into a hidden sibling folder and moved to `mvtec` only once all categories
are there, so a damaged or wrong archive leaves nothing behind and the next run starts clean.

Usage: python datamodules/setup/prepare_mvtec.py [--datasets-folder ./datasets] [--archive PATH] [--keep-archive]
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # so `python datamodules/setup/prepare_mvtec.py` runs from anywhere

from common.catalog import dataset_entry  # noqa: E402
from common.errors import UserError  # noqa: E402
from datamodules.setup import download  # noqa: E402

# Official archive and its SHA-256 as published in anomalib's MVTec AD datamodule.
MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
    "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
CATEGORIES = dataset_entry("mvtec").categories  # the torch-free catalogue


def missing_categories(*roots: Path) -> list[str]:
    """Categories of CATEGORIES with `train/good`, `test` and `ground_truth` folders under none of `roots`."""
    required = ("train/good", "test", "ground_truth")
    return [c for c in CATEGORIES if not any(all((root / c / sub).is_dir() for sub in required) for root in roots)]


@download.prepare_entry_point
def main(argv: list[str] | None = None) -> None:
    """Extract MVTec AD into `<datasets>/mvtec` unless it is already complete there."""
    args = download.archive_arguments(argv, "Download and extract MVTec AD into <datasets-folder>/mvtec.",
                                      f"Official archive: {MVTEC_URL}\nDataset page (manual download): {MVTEC_PAGE}",
                                      ARCHIVE_NAME)
    root = args.datasets_folder / "mvtec"
    if not download.needs_preparing(args, "MVTec AD", root, f"{len(CATEGORIES)} categories", missing_categories(root)):
        return
    with download.extracted_archive(args, MVTEC_URL, ARCHIVE_NAME, root, sha256=MVTEC_SHA256) as (archive, staging):
        # Categories already complete in `root` count: the archive only has to supply the others.
        missing = missing_categories(staging, root)
        if missing:
            raise UserError(
                f"{archive} lacks the categories {', '.join(missing)} (train/good, test, ground_truth); "
                f"nothing was put in {root}; the archive is not the complete MVTec AD, download the official one again"
            )
        download.move_into_place(staging, root)
    print(f"MVTec AD ready: {len(CATEGORIES)} categories in {root}")


if __name__ == "__main__":
    main()
