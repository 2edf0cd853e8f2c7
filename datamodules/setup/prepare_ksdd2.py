"""Prepare KolektorSDD2: the official zip -> `<datasets>/KolektorSDD2/{train,test}/<id>.png, <id>_GT.png`,
plus the `split_weakly_<N>.pyb` files (published ones from --splits-dir, else generated defaults).

The archive is unpacked into a hidden sibling folder and moved to `KolektorSDD2` only once its
train/ and test/ images are there, so a damaged or wrong archive leaves nothing behind.

Usage: python datamodules/setup/prepare_ksdd2.py [--datasets-folder ./datasets] [--archive PATH]
           [--keep-archive] [--splits-dir DIR]
"""

import argparse
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # so `python datamodules/setup/prepare_ksdd2.py` runs from anywhere

from common.cli import path_argument  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.fileio import atomic_path, check_writable_dir  # noqa: E402
from datamodules.setup import download  # noqa: E402

# The ViCoS short link (it redirects to the zip) and the MD5 that the SuperSimpleNet authors'
# own KSDD2 setup script verifies; ViCoS itself publishes no checksum.
KSDD2_URL = "https://go.vicos.si/kolektorsdd2"
KSDD2_MD5 = "1ed0f628122776ace4965afa30dfe316"
ARCHIVE_NAME = "KolektorSDD2.zip"
DATASET_FOLDER = "KolektorSDD2"
PARTS = ("train", "test")
SPLIT_PATTERN = "split_weakly_*.pyb"
GT_SUFFIX = "_GT"


def image_count(root: Path, part: str) -> int:
    """Number of `<id>.png` images (GT masks not counted) in root/part; 0 when the folder is absent."""
    folder = root / part
    return sum(1 for p in folder.glob("*.png") if not p.stem.endswith(GT_SUFFIX)) if folder.is_dir() else 0


def images_present(root: Path) -> bool:
    return all(image_count(root, part) > 0 for part in PARTS)


def missing_split_files(root: Path) -> list[Path]:
    """The default `split_weakly_<N>.pyb` files (N in 0, 16, 53, 126, 246) absent from `root`."""
    from datamodules.ksdd2 import NUM_SEGMENTED_CHOICES, split_file_path

    return [split_file_path(root, n) for n in NUM_SEGMENTED_CHOICES if not split_file_path(root, n).exists()]


def _check_split_content(path: Path) -> None:
    """A split file must unpickle safely into (train, test) lists of (id, is_segmented) pairs."""
    from datamodules.safe_pickle import load_plain_pickle

    content = load_plain_pickle(path)
    well_formed = isinstance(content, (list, tuple)) and len(content) == 2 and all(
        isinstance(part, (list, tuple)) and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in part)
        for part in content
    )
    if not well_formed:
        raise UserError(
            f"{path} is not a KolektorSDD2 split file ((train, test) lists of (id, is_segmented)); pass the published files"
        )


def published_split_files(splits_dir: Path) -> list[Path]:
    """The `split_weakly_*.pyb` files of `splits_dir`, each checked to be a well-formed split file."""
    if not splits_dir.is_dir():
        raise UserError(f"--splits-dir {splits_dir} is not a directory; pass the folder holding split_weakly_<N>.pyb")
    sources = sorted(splits_dir.glob(SPLIT_PATTERN))
    if not sources:
        raise UserError(
            f"--splits-dir {splits_dir} holds no {SPLIT_PATTERN} files; pass the folder holding the published splits"
        )
    for source in sources:
        _check_split_content(source)
    return sources


def copy_split_files(splits_dir: Path, root: Path) -> list[Path]:
    """Validate every `split_weakly_*.pyb` of `splits_dir`, then copy them into `root` (replacing them);
    returns the copies."""
    sources = published_split_files(splits_dir)  # all checked before any is copied: a bad file changes nothing
    copies = []
    for source in sources:
        with atomic_path(root / source.name) as tmp:
            shutil.copyfile(source, tmp)
        copies.append(root / source.name)
    return copies


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = download.archive_argument_parser(
        "Download and extract KolektorSDD2 into <datasets-folder>/KolektorSDD2 and make its split files.",
        f"Official archive: {KSDD2_URL}\n(ViCoS, University of Ljubljana; CC BY-NC-SA 4.0)",
        ARCHIVE_NAME,
    )
    parser.add_argument(
        "--splits-dir", type=path_argument,
        help="a folder with published split_weakly_<N>.pyb files to use instead of generated ones",
    )
    return parser.parse_args(argv)


@download.prepare_entry_point
def main(argv: list[str] | None = None) -> None:
    """Extract KolektorSDD2 unless its images are there; then copy or generate the split files."""
    args = parse_args(argv)
    root = args.datasets_folder / DATASET_FOLDER
    if images_present(root) and not missing_split_files(root) and args.splits_dir is None:
        print(f"KolektorSDD2 is already prepared in {root} (images and split files); nothing to do")
        return
    check_writable_dir(args.datasets_folder, "--datasets-folder")
    if args.splits_dir is not None:
        published_split_files(args.splits_dir)  # a bad --splits-dir fails before any download
    if images_present(root):
        print(f"using the KolektorSDD2 images already in {root}")
    else:
        with download.extracted_archive(args, KSDD2_URL, ARCHIVE_NAME, root, md5=KSDD2_MD5) as (archive, staging):
            if not images_present(staging):
                raise UserError(
                    f"{archive} has no train/ and test/ images; nothing was put in {root}; "
                    "the archive is not KolektorSDD2, download the official one again"
                )
            download.move_into_place(staging, root)
    if args.splits_dir is not None:
        copies = copy_split_files(args.splits_dir, root)
        print(f"copied {len(copies)} split file(s) from {args.splits_dir}: {', '.join(p.name for p in copies)}")
    if missing_split_files(root):
        from datamodules.ksdd2 import DEFAULT_SPLIT_SEED, write_default_splits

        written = write_default_splits(root)
        print(
            f"generated {len(written)} default split file(s) (seed {DEFAULT_SPLIT_SEED}; not the published ones, "
            f"pass --splits-dir to use those): {', '.join(p.name for p in written)}"
        )
    counts = ", ".join(f"{image_count(root, part)} {part}" for part in PARTS)
    split_names = ", ".join(sorted(p.name for p in root.glob(SPLIT_PATTERN)))
    print(f"KolektorSDD2 ready in {root}: {counts} images; split files {split_names}")


if __name__ == "__main__":
    main()
