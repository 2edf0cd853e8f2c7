"""Prepare SensumSODF from a user's copy: `--source DIR` -> `<datasets>/SensumSODF`, then report what
the expected layout lacks (exit 2) or the image counts per category.

SensumSODF (Sensum Solid Oral Dosage Forms dataset) is not freely downloadable; it is given on
request by its authors.

A copy is checked first and made into a hidden sibling folder that gets the final name only once
complete, so a failed copy leaves nothing behind and the next run starts clean.

Usage: python datamodules/setup/prepare_sensum.py [--datasets-folder ./datasets] [--source DIR]
"""

import argparse
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # so `python datamodules/setup/prepare_sensum.py` runs from anywhere

from common.catalog import dataset_entry  # noqa: E402
from common.cli import path_argument  # noqa: E402
from common.errors import OneLineArgumentParser, UserError  # noqa: E402
from common.fileio import check_writable_dir  # noqa: E402
from datamodules.setup import download  # noqa: E402

DATASET_FOLDER = "SensumSODF"
HOW_TO_OBTAIN = (
    "SensumSODF (Sensum Solid Oral Dosage Forms dataset) cannot be downloaded without a request: "
    "ask its authors for a copy, then pass it with --source DIR"
)


def find_dataset_folder(source: Path) -> Path:
    """The SensumSODF folder itself: `source`, or `source/SensumSODF` when given its parent."""
    if not source.is_dir():
        raise UserError(f"--source {source} is not a directory; pass the folder of your SensumSODF copy")
    nested = source / DATASET_FOLDER
    if nested.is_dir() and not any((source / c).is_dir() for c in _categories()):
        return nested
    return source


def _categories() -> tuple[str, ...]:
    return dataset_entry("sensum").categories


def copy_dataset(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a staging folder, so a failed or interrupted copy leaves no `target`."""
    resolved_source = source.resolve()
    if resolved_source == target.resolve() or resolved_source in target.resolve().parents:
        raise UserError(f"--source {source} contains the destination {target}; pass the folder of your copy itself")
    with download.staging_folder(target) as staging:
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        except shutil.Error as error:  # one (source, destination, reason) per file that failed
            failures = error.args[0] if error.args and isinstance(error.args[0], list) else []
            first = f"; first: {failures[0][0]}: {failures[0][2]}" if failures and len(failures[0]) == 3 else ""
            raise UserError(
                f"cannot copy {len(failures) or 'some'} file(s) of {source}{first}; nothing was put in {target}; "
                "check the files' permissions and the free disk space"
            ) from None
        download.move_into_place(staging, target)


def report_missing(missing: list[str], root: Path, fix: str) -> UserError:
    """List `missing` on stderr, one per line; the UserError to raise after that list."""
    print(f"SensumSODF in {root} is incomplete; missing:", file=sys.stderr)
    for item in missing:
        print(f"  {item}", file=sys.stderr)
    return UserError(f"{len(missing)} folders/files listed above are missing from {root}; {fix}")


def image_counts(root: Path) -> dict[str, dict[str, int]]:
    """PNG counts per category: {"negative": n, "positive": n, "annotations": n}."""
    from datamodules.sensum import NEGATIVE_IMAGES, POSITIVE_IMAGES, POSITIVE_MASKS

    folders = {"negative": NEGATIVE_IMAGES, "positive": POSITIVE_IMAGES, "annotations": POSITIVE_MASKS}
    return {
        category: {name: len(list((root / category / folder).glob("*.png"))) for name, folder in folders.items()}
        for category in _categories()
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep URLs in the epilog unbroken
        description="Copy a SensumSODF copy into <datasets-folder>/SensumSODF and check it.",
        epilog=(
            "SensumSODF (Sensum Solid Oral Dosage Forms dataset) cannot be downloaded without a request:\n"
            "ask its authors for a copy, then pass it with --source DIR."
        ),
    )
    parser.add_argument("--datasets-folder", type=path_argument, default=Path("./datasets"), help="default: ./datasets")
    parser.add_argument(
        "--source", type=path_argument, help="your SensumSODF copy (the folder with capsule/, softgel/, sensum_splits/)"
    )
    return parser.parse_args(argv)


@download.prepare_entry_point
def main(argv: list[str] | None = None) -> None:
    """Copy the user's SensumSODF in (when absent), then list what is missing or summarise it."""
    from datamodules.sensum import check_sensum

    args = parse_args(argv)
    target = args.datasets_folder / DATASET_FOLDER
    if args.source is not None:
        source = find_dataset_folder(args.source.expanduser())
        if target.exists():
            same = source.resolve() == target.resolve()
            action = "nothing to copy" if same else "not copying over it (delete it to copy again)"
            print(f"SensumSODF is already in {target}; {action}")
        else:
            check_writable_dir(args.datasets_folder, "--datasets-folder")
            missing = check_sensum(source)
            if missing:  # checked before copying: an incomplete copy is never put in place
                raise report_missing(
                    missing, source, f"nothing was copied to {target}; complete your copy from the authors' files"
                )
            print(f"copying {source}\n  -> {target}")
            copy_dataset(source, target)
    elif not target.exists():
        raise UserError(f"SensumSODF not found at {target}; {HOW_TO_OBTAIN}")
    missing = check_sensum(target)
    if missing:
        raise report_missing(missing, target, "complete your copy from the authors' files")
    for category, numbers in image_counts(target).items():
        print(f"  {category}: " + ", ".join(f"{n} {name}" for name, n in numbers.items()))
    print(f"SensumSODF ready in {target}")


if __name__ == "__main__":
    main()
