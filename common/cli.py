"""Command-line options of train.py, eval.py, predict.py, export.py, perf/ and the Slurm scripts
(torch-free, so that `--help` and argument errors answer at once). One spelling family per option:
`--category` and `--categories` are the same option, and so are `--run-id` and `--run-ids`.
train.py's and eval.py's whole option sets live here (`train_parser`, `eval_parser`) because the
Slurm scripts check the options they pass on to them before anything is submitted."""

import argparse
from pathlib import Path
from typing import Callable

from common.catalog import DATASET_NAMES, PAPER_DATASETS
from common.config import DEFAULT_VERSION, VERSIONS
from common.errors import OneLineArgumentParser, UserError, exit_on_user_error
from common.fileio import check_plain_name

RESUME_CHOICES = ("continue", "auto", "never")  # engine/resume.py RESUME_MODES


def new_parser(description: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    return OneLineArgumentParser(description=description, prog=prog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def path_argument(text: str) -> Path:
    """A path option's value; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


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
    parser.add_argument("--config", type=path_argument, help="YAML file of settings")
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
    parser.add_argument("--datasets-folder", type=path_argument, default=Path("./datasets"))


def train_parser(description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """Every option of train.py."""
    parser = new_parser(description, prog)
    parser.add_argument("dataset", choices=DATASET_NAMES)
    add_version(parser)
    add_categories(parser)
    add_run_ids(parser, default=[0])
    add_settings(parser)
    add_datasets_folder(parser)
    parser.add_argument("--results-path", type=path_argument, default=Path("./results"))
    add_device(parser)
    parser.add_argument("--no-figures", action="store_true", help="skip the per-image figures")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (a line per evaluation step instead)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    parser.add_argument("--no-report", action="store_true", help="skip the report.html page beside each last.csv")
    parser.add_argument("--resume", choices=RESUME_CHOICES, default="continue",
                        help="continue (default): a unit goes on from its resume.pt when that was written with the "
                             "same settings; auto: also skip complete units (Slurm tasks); never: start over "
                             "(an earlier resume.pt is kept until this run has trained more epochs). resume.pt is "
                             "written every checkpoint_every epochs and on SIGTERM/SIGUSR1")
    return parser


def eval_parser(description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """Every option of eval.py."""
    parser = new_parser(description, prog)
    parser.add_argument("--dataset", "--datasets", nargs="+", dest="datasets", default=list(PAPER_DATASETS),
                        choices=DATASET_NAMES, metavar="DATASET",
                        help=f"datasets to evaluate (default: {' '.join(PAPER_DATASETS)})")
    add_version(parser)
    add_categories(parser)
    add_run_ids(parser, default=[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights-path", type=path_argument, default=Path("./weights"),
                        help="published checkpoints: <path>/<run_id>/<dataset>/<category>[/<ratio>]/weights.pt")
    source.add_argument("--from-training", type=path_argument, metavar="RESULTS_PATH",
                        help="a training run's checkpoints: <path>/<setup_name>[_run<N>]/checkpoints/...")
    add_datasets_folder(parser)
    parser.add_argument("--results-path", type=path_argument, default=Path("./eval_res"))
    add_device(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4)
    add_settings(parser)
    parser.add_argument("--save-images", action="store_true", help="write a figure per test image")
    parser.add_argument("--save-scores", action="store_true", help="write per-image scores (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-report", action="store_true",
                        help="skip the report.html pages (beside each last.csv and results_avg_std.json)")
    return parser


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and defaults that argparse cannot express: run ids, category names (they become
    folders), and the version (see resolve_version)."""
    if getattr(args, "run_ids", None) is not None:
        check_run_ids(args.run_ids)
    for category in getattr(args, "categories", None) or []:
        check_plain_name(category, "--category")
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
           "add_device", "add_datasets_folder", "check_run_ids", "settle", "command", "path_argument",
           "train_parser", "eval_parser", "RESUME_CHOICES"]
