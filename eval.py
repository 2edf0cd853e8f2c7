"""Evaluate checkpoints: `python eval.py [--datasets mvtec visa ksdd2 sensum] [--run-ids 0 1 ...]`.

Reads the published checkpoints `<weights-path>/<run_id>/<dataset>/<category>/<ratio>/weights.pt`
(journal; `--version icpr`: without `<ratio>/`), or a training run's with `--from-training
RESULTS_PATH`; writes `<results-path>/<run_id>/<ratio>/<dataset>/last.csv` + `avg.csv` (icpr:
`<results-path>/<run_id>/<dataset>/`) and `<results-path>/results_avg_std.json` (mean and std
over the run ids, laid out as the official code lays it out) and prints each figure beside the paper's.
"""

from pathlib import Path

from common.catalog import PAPER_DATASETS
from common.errors import exit_on_user_error
from engine import cli


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("--dataset", "--datasets", nargs="+", dest="datasets", default=list(PAPER_DATASETS),
                        choices=cli.DATASET_NAMES, metavar="DATASET",
                        help=f"datasets to evaluate (default: {' '.join(PAPER_DATASETS)})")
    cli.add_version(parser)
    cli.add_categories(parser)
    cli.add_run_ids(parser, default=[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights-path", type=Path, default=Path("./weights"),
                        help="published checkpoints: <path>/<run_id>/<dataset>/<category>[/<ratio>]/weights.pt")
    source.add_argument("--from-training", type=Path, metavar="RESULTS_PATH",
                        help="a training run's checkpoints: <path>/<setup_name>[_run<N>]/checkpoints/...")
    cli.add_datasets_folder(parser)
    parser.add_argument("--results-path", type=Path, default=Path("./eval_res"))
    cli.add_device(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4)
    cli.add_settings(parser)
    parser.add_argument("--save-images", action="store_true", help="write a figure per test image")
    parser.add_argument("--save-scores", action="store_true", help="write per-image scores (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-report", action="store_true",
                        help="skip the report.html pages (beside each last.csv and results_avg_std.json)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = cli.settle(parse_args(argv))
    from engine.eval_run import run_evaluation  # torch is imported only once the arguments are good

    run_evaluation(args)


if __name__ == "__main__":
    main()
