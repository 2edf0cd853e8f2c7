"""Prepare VisA: the official archive -> raw `<datasets>/visa/` -> the MVTec-like
`<datasets>/visa/visa_pytorch/<cat>/{train/good, test/good, test/bad, ground_truth/bad}` of the
one-class split `split_csv/1cls.csv`.

Images are copied unchanged (name and extension kept); VisA's 0/1 masks are stored as 0/255 PNGs
at `ground_truth/bad/<image stem>.png`.

The archive is unpacked into a hidden sibling folder, visa_pytorch is built inside it, and the
whole moves to `visa` only once every category came out complete; a damaged or wrong archive
leaves nothing behind and the next run starts clean.

Usage: python datamodules/setup/prepare_visa.py [--datasets-folder ./datasets] [--archive PATH] [--keep-archive]
"""

import csv
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # so `python datamodules/setup/prepare_visa.py` runs from anywhere

from common.catalog import dataset_entry  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.fileio import make_temporary_dir  # noqa: E402
from datamodules.setup import download  # noqa: E402

# Official archive and its SHA-256 (the checksum anomalib's VisA datamodule verifies).
VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
VISA_SHA256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
ARCHIVE_NAME = "VisA_20220922.tar"
SPLIT_CSV = Path("split_csv") / "1cls.csv"
OUTPUT_FOLDER = "visa_pytorch"
CATEGORIES = dataset_entry("visa").categories  # the torch-free catalogue
REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
LABEL_FOLDERS = {"normal": "good", "anomaly": "bad"}
SPLITS = ("train", "test")
LAYOUT_FOLDERS = ("train/good", "test/good", "test/bad", "ground_truth/bad")
_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def read_split_rows(csv_path: Path) -> list[dict[str, str]]:
    """`split_csv/1cls.csv` -> its rows as dicts (columns object, split, label, image, mask), checked."""
    if not csv_path.is_file():
        raise UserError(f"VisA split file {csv_path} not found; extract the official {ARCHIVE_NAME} there")
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            absent = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                columns = ", ".join(absent)
                raise UserError(f"VisA split file {csv_path} lacks columns {columns}; use the archive's own 1cls.csv")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(
            f"VisA split file {csv_path} is not a readable CSV ({error}); use the archive's own 1cls.csv"
        ) from None
    if not rows:
        raise UserError(f"VisA split file {csv_path} has no rows; use the archive's own 1cls.csv")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        problem = _row_problem(row)
        if problem:
            raise UserError(f"{csv_path} line {line}: {problem}; use the archive's own 1cls.csv")
    return rows


def _row_problem(row: dict[str, str]) -> str | None:
    if not _SIMPLE_NAME.fullmatch(row["object"] or "") or row["object"] in (".", ".."):
        return f"object {row['object']!r} is not a plain folder name"
    if row["split"] not in SPLITS:
        return f"split {row['split']!r} is neither train nor test"
    if row["label"] not in LABEL_FOLDERS:
        return f"label {row['label']!r} is neither normal nor anomaly"
    if not row["image"]:
        return "empty image path"
    if row["label"] == "anomaly" and not row["mask"]:
        return "an anomaly row without a mask path"
    return None


def write_binary_mask(source: Path, destination: Path) -> None:
    """A VisA mask (0 = normal, nonzero = defect; 0/1 in the archive) -> a 0/255 grayscale PNG."""
    try:
        with Image.open(source) as image:
            values = np.asarray(image)  # palette images give indices, which is what 0/1 means here
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read VisA mask {source}: {error}; re-extract the archive") from None
    if values.ndim == 3:  # colour masks: defect where any colour channel (not alpha) is set
        values = values[..., :3].max(axis=2) if values.shape[2] >= 3 else values[..., 0]
    Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8)).save(destination, format="PNG")


def _existing_source(raw_root: Path, relative: str, csv_path: Path) -> Path:
    path = raw_root / relative
    if not path.is_file():
        raise UserError(f"{path} (listed in {csv_path}) is missing; re-extract the official {ARCHIVE_NAME}")
    return path


def _unused(path: Path) -> Path:
    if path.exists():
        raise UserError(f"two rows of the VisA split file map to {path}; use the archive's own 1cls.csv")
    return path


def _build_into(rows: list[dict[str, str]], raw_root: Path, csv_path: Path, output: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in tqdm(rows, unit=" images", desc="building visa_pytorch"):
        category_root = output / row["object"]
        if row["object"] not in counts:
            for folder in LAYOUT_FOLDERS:
                (category_root / folder).mkdir(parents=True, exist_ok=True)
            counts[row["object"]] = {folder: 0 for folder in LAYOUT_FOLDERS[:3]}
        image = _existing_source(raw_root, row["image"], csv_path)
        folder = f"{row['split']}/{LABEL_FOLDERS[row['label']]}"
        (category_root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, _unused(category_root / folder / image.name))
        counts[row["object"]][folder] = counts[row["object"]].get(folder, 0) + 1
        if row["label"] == "anomaly":
            mask = _existing_source(raw_root, row["mask"], csv_path)
            write_binary_mask(mask, _unused(category_root / "ground_truth" / "bad" / f"{image.stem}.png"))
    return counts


def build_visa_pytorch(
    raw_root: Path, output_root: Path, required: Sequence[str] = ()
) -> dict[str, dict[str, int]]:
    """Extracted VisA at `raw_root` -> `output_root/<cat>/...` (built aside, then swapped in whole);
    returns image counts per category: {"train/good": n, "test/good": n, "test/bad": n}.

    When a category of `required` does not come out complete, nothing is swapped in (UserError)."""
    raw_root, output_root = Path(raw_root), Path(output_root)
    csv_path = raw_root / SPLIT_CSV
    rows = read_split_rows(csv_path)
    output_root.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 would stay on visa_pytorch after the rename.
    staging = make_temporary_dir(output_root.parent, f".{output_root.name}.building-")
    try:
        counts = _build_into(rows, raw_root, csv_path, staging)
        incomplete = [c for c in required if not all((staging / c / f).is_dir() for f in LAYOUT_FOLDERS)]
        if incomplete:
            raise UserError(
                f"{csv_path} lists no complete {', '.join(incomplete)} ({', '.join(LAYOUT_FOLDERS)}); "
                "the archive is not the complete VisA, download the official one again"
            )
        if output_root.exists():  # an older build: move it aside so the swap itself is one rename
            old = make_temporary_dir(output_root.parent, f".{output_root.name}.old-")
            os.replace(output_root, old / output_root.name)
            os.replace(staging, output_root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def missing_categories(output_root: Path) -> list[str]:
    """Categories of CATEGORIES whose visa_pytorch folders are not all present under `output_root`."""
    return [c for c in CATEGORIES if not all((output_root / c / f).is_dir() for f in LAYOUT_FOLDERS)]


@download.prepare_entry_point
def main(argv: list[str] | None = None) -> None:
    """Extract VisA (unless already extracted) and build visa_pytorch (unless already complete)."""
    args = download.archive_arguments(
        argv, "Download and extract VisA into <datasets-folder>/visa, then build visa/visa_pytorch from "
        "split_csv/1cls.csv.", f"Official archive: {VISA_URL}", ARCHIVE_NAME)
    raw_root = args.datasets_folder / "visa"
    output_root = raw_root / OUTPUT_FOLDER
    if not download.needs_preparing(args, "VisA", output_root, f"{len(CATEGORIES)} categories",
                                    missing_categories(output_root)):
        return
    if (raw_root / SPLIT_CSV).is_file() and args.archive is None:
        print(f"using the VisA already extracted in {raw_root}")
        counts = build_visa_pytorch(raw_root, output_root, required=CATEGORIES)
    else:
        with download.extracted_archive(args, VISA_URL, ARCHIVE_NAME, raw_root,
                                        sha256=VISA_SHA256) as (archive, staging):
            if not (staging / SPLIT_CSV).is_file():
                raise UserError(
                    f"{archive} has no {SPLIT_CSV.as_posix()}; nothing was put in {raw_root}; "
                    "the archive is not VisA, download the official one again"
                )
            counts = build_visa_pytorch(staging, staging / OUTPUT_FOLDER, required=CATEGORIES)
            # Raw files merge with an earlier extraction; the old (incomplete) visa_pytorch is replaced.
            download.move_into_place(staging, raw_root, replace_whole=(OUTPUT_FOLDER,))
    for category, numbers in sorted(counts.items()):
        print(f"  {category}: " + ", ".join(f"{n} {folder}" for folder, n in numbers.items()))
    print(f"VisA ready: {len(counts)} categories in {output_root} (raw files kept in {raw_root})")


if __name__ == "__main__":
    main()
