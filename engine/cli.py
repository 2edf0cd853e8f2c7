"""Command-line options shared by train.py, eval.py, predict.py and perf/ (torch-free, so that
`--help` and argument errors answer at once). One spelling family per option: `--category`
and `--categories` are the same option, and so are `--run-id` and `--run-ids`."""

import argparse
from pathlib import Path

from common.catalog import DATASET_NAMES
from common.config import DEFAULT_VERSION, VERSIONS
from common.errors import OneLineArgumentParser, UserError


def new_parser(description: str | None) -> argparse.ArgumentParser:
    return OneLineArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", choices=VERSIONS, default=None,
                        help="method version: jims (journal 2025, default) or icpr (ICPR 2024)")


def resolve_version(args: argparse.Namespace) -> None:
    """`args.version` becomes the version to use and `args.version_chosen` says whether the user
    named it (a checkpoint's model.yaml may otherwise set it)."""
    args.version_chosen = args.version is not None
    args.version = args.version or DEFAULT_VERSION


def add_categories(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", "--categories", nargs="+", dest="categories", metavar="CATEGORY",
                        help="only these categories (default: all)")


def add_run_ids(parser: argparse.ArgumentParser, default: list[int]) -> None:
    parser.add_argument("--run-id", "--run-ids", nargs="+", type=int, dest="run_ids", default=default,
                        metavar="N", help="run N uses seed + N; several run ids run one after the other")


def add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (value parsed as YAML), e.g. --set epochs=10")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_datasets_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets-folder", type=Path, default=Path("./datasets"))


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and defaults that argparse cannot express: run ids, and the version (see resolve_version)."""
    if getattr(args, "run_ids", None) is not None:
        check_run_ids(args.run_ids)
    if hasattr(args, "version"):
        resolve_version(args)
    return args


def check_run_ids(run_ids: list[int]) -> list[int]:
    if any(run_id < 0 for run_id in run_ids):
        raise UserError(f"--run-id must be >= 0, got {' '.join(map(str, run_ids))}")
    if len(set(run_ids)) != len(run_ids):
        raise UserError(f"--run-id lists a run twice: {' '.join(map(str, run_ids))}")
    return run_ids


__all__ = ["DATASET_NAMES", "new_parser", "add_version", "resolve_version", "add_categories", "add_run_ids", "add_settings",
           "add_device", "add_datasets_folder", "check_run_ids", "settle"]
