"""SuperSimpleNet inference speed, measured the paper's way: see perf/benchmark.py (this commit only
moves the code; the next one makes this file the torch-free command line)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the published script is run from inside perf/

from perf.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
