"""Aggregate a batch submission once its tasks have ended (engine/aggregate.py; docs/slurm.md):

    python slurm/aggregate.py MANIFEST_FOLDER [--log-pattern 'logs/ssn-train-demo-12_%a.out']

Prints the units that are not complete and the table beside the paper's, writes each run's
last.csv/avg.csv and results_avg_std.json; exit status 0 when every unit is complete, 1 otherwise.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from common.errors import exit_on_user_error  # noqa: E402
from engine.aggregate import aggregate  # noqa: E402


@exit_on_user_error
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--log-pattern", default="", help="task log path with %%a for the task index")
    args = parser.parse_args(argv)
    code, report = aggregate(args.folder, args.log_pattern)
    print(report)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
