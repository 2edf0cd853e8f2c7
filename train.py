"""Train SuperSimpleNet: `python train.py mvtec|visa|ksdd2|sensum|folder|demo [options]`.

Settings are the published defaults of the dataset and --version, then --config FILE.yaml,
then --set key=value (see docs/training.md).
"""

from common import cli
from common.errors import exit_on_user_error
from engine import signals


def parse_args(argv: list[str] | None = None):
    return cli.settle(cli.train_parser(__doc__).parse_args(argv))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    signals.install_early_handlers()  # a preemption signal during start-up must not kill the run
    args = parse_args(argv)
    from engine.train_run import run_training  # torch is imported only once the arguments are good

    run_training(args)


if __name__ == "__main__":
    main()
