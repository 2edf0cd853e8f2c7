"""Command-line options shared by train.py, eval.py, predict.py and perf/ (torch-free, so that
`--help` and argument errors answer at once). One spelling family per option: `--category`
and `--categories` are the same option, and so are `--run-id` and `--run-ids`."""

import argparse
from pathlib import Path
from typing import Callable

from common.catalog import DATASET_NAMES
from common.config import DEFAULT_VERSION, VERSIONS
from common.errors import OneLineArgumentParser, UserError, exit_on_user_error


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


def add_checkpoint_settings(parser: argparse.ArgumentParser) -> None:
    """How a --weights file was built when it has no model.yaml (published checkpoints): the version,
    whose dataset defaults, and settings (predict.py, export.py)."""
    add_version(parser)
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                        help="for a checkpoint without model.yaml: whose defaults to use (default mvtec: 256x256)")
    add_settings(parser)


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


def command(parse_args: Callable[[list[str] | None], argparse.Namespace],
            run: Callable[[argparse.Namespace], None]) -> Callable[..., None]:
    """An entry point's `main(argv=None)`: parse and check the options with `parse_args` (torch-free,
    so --help and option errors answer at once), then `run` them; `run` imports what it needs, so
    torch comes in only once the options are good. A UserError is one `error:` line and exit 2."""

    @exit_on_user_error
    def main(argv: list[str] | None = None) -> None:
        run(parse_args(argv))

    return main


def check_run_ids(run_ids: list[int]) -> list[int]:
    if any(run_id < 0 for run_id in run_ids):
        raise UserError(f"--run-id must be >= 0, got {' '.join(map(str, run_ids))}")
    if len(set(run_ids)) != len(run_ids):
        raise UserError(f"--run-id lists a run twice: {' '.join(map(str, run_ids))}")
    return run_ids


__all__ = ["DATASET_NAMES", "new_parser", "add_version", "resolve_version", "add_categories", "add_run_ids", "add_settings",
           "add_checkpoint_settings",
           "add_device", "add_datasets_folder", "check_run_ids", "settle", "command"]
