"""Evaluate checkpoints: `python eval.py [--datasets mvtec visa ksdd2 sensum] [--run-ids 0 1 ...]`.

Reads the published checkpoints `<weights-path>/<run_id>/<dataset>/<category>/<ratio>/weights.pt`
(journal; `--version icpr`: without `<ratio>/`), or a training run's with `--from-training
RESULTS_PATH`; writes `<results-path>/<run_id>/<ratio>/<dataset>/last.csv` + `avg.csv` (icpr:
`<results-path>/<run_id>/<dataset>/`) and `<results-path>/results_avg_std.json` (mean and std
over the run ids, laid out as the official code lays it out) and prints each figure beside the paper's.
"""

from common import cli


def parse_args(argv: list[str] | None = None):
    return cli.settle(cli.eval_parser(__doc__).parse_args(argv))


def run(args) -> None:
    from engine.eval_run import run_evaluation  # torch is imported only once the arguments are good

    run_evaluation(args)


main = cli.command(parse_args, run)

if __name__ == "__main__":
    main()
