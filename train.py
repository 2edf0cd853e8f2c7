"""Train SuperSimpleNet: `python train.py mvtec|visa|ksdd2|sensum|folder|demo [options]`.

Settings are the published defaults of the dataset and --version, then --config FILE.yaml,
then --set key=value (see README.md, "Training").
"""

from pathlib import Path

from common.errors import exit_on_user_error
from engine import cli, signals


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("dataset", choices=cli.DATASET_NAMES)
    cli.add_version(parser)
    cli.add_categories(parser)
    cli.add_run_ids(parser, default=[0])
    cli.add_settings(parser)
    cli.add_datasets_folder(parser)
    parser.add_argument("--results-path", type=Path, default=Path("./results"))
    cli.add_device(parser)
    parser.add_argument("--no-figures", action="store_true", help="skip the per-image figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html (beside last.csv) and its per-unit data")
    parser.add_argument("--resume", choices=["auto", "never"], default="never",
                        help="auto: continue each unit from its resume.pt and skip complete units "
                             "(written every checkpoint_every epochs and on SIGTERM/SIGUSR1)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    signals.install_early_handlers()  # a preemption signal during start-up must not kill the run
    args = cli.settle(parse_args(argv))
    from engine.train_run import run_training  # torch is imported only once the arguments are good

    run_training(args)


if __name__ == "__main__":
    main()
