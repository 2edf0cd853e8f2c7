"""SuperSimpleNet inference speed, measured the paper's way (docs/method.md, "Speed protocol"), for the published eager
model ("reference") and for our fast path ("fast", model/fast_inference.py) in the same run.

In: a name for the machine (`<gpu_model>`, used in the file names) and options.
Out: perf_<gpu_model>.csv (reference) and perf_<gpu_model>_fast.csv (fast), one row per kept
cycle in the published format `time;throughput;memory;tflops` (ms at batch 1; images/s at
batch 16, 4 by default on CPU; peak reserved GPU memory in MB, nan on CPU; profiler GFLOPs of
one batch-1 forward, named "tflops" in the paper's file), and a table beside the paper's V100S
means (of the same --version) with the fast/reference ratios.

Run from the repository root or from inside perf/:
    python perf/perf_main.py v100s                               # the paper's protocol (GPU, fp16)
    python perf/perf_main.py cpu --device cpu                    # a quick CPU look (CPU-sized repetitions)
"""

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the published script is run from inside perf/

from common.cli import path_argument  # noqa: E402
from common.config import VERSIONS  # noqa: E402
from common.errors import OneLineArgumentParser, UserError, exit_on_user_error  # noqa: E402
from perf.protocol import CPU_CYCLES, CPU_REPS, GPU_CYCLES, GPU_REPS, PATH_NAMES, PRECISION_NAMES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("gpu_model", help="name of the machine, used in perf_<gpu_model>.csv (e.g. v100s, h100, cpu)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=list(PRECISION_NAMES), default=None,
                        help="fp16 on CUDA (the paper's), fp32 on CPU by default")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"timed repetitions, after as many warm-up ones ({GPU_REPS} on CUDA, {CPU_REPS} on CPU)")
    parser.add_argument("--cycles", type=int, default=None,
                        help=f"cycles; the first is dropped ({GPU_CYCLES} on CUDA, {CPU_CYCLES} on CPU)")
    parser.add_argument("--version", choices=VERSIONS, default=None,
                        help="model version (jims, the default: classification branch on raw features; icpr) and "
                             "paper table; a --weights with model.yaml sets it")
    parser.add_argument("--path", choices=["both", *PATH_NAMES], default="both", help="which inference path to time")
    parser.add_argument("--check", action="store_true",
                        help="first compare the fast path's maps and scores to the fp32 eager model")
    parser.add_argument("--weights", type=path_argument, default=None,
                        help="a SuperSimpleNet weights.pt (then the ImageNet backbone is needed); default: random")
    parser.add_argument("--backbone", default=None, help="backbone (default wide_resnet50_2, the paper's)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="default 256 256")
    parser.add_argument("--throughput-batch", type=int, default=None,
                        help="batch of the throughput test: 16 (the paper's) on CUDA, 4 on CPU to keep a CPU run short")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="fast path without CUDA graphs")
    parser.add_argument("--output-dir", type=path_argument, default=Path("."), help="where the CSVs go (current directory)")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.gpu_model):
        raise UserError(f"gpu_model '{args.gpu_model}' goes into a file name: use letters, digits, '.', '_' or '-'")
    if args.reps is not None and args.reps < 1:
        raise UserError(f"--reps must be at least 1, got {args.reps}")
    if args.cycles is not None and args.cycles < 2:
        raise UserError(f"--cycles must be at least 2 (the first cycle is dropped), got {args.cycles}")
    if args.throughput_batch is not None and args.throughput_batch < 1:
        raise UserError(f"--throughput-batch must be at least 1, got {args.throughput_batch}")
    if args.image_size is not None and min(args.image_size) < 32:
        raise UserError(f"--image-size must be at least 32 x 32, got {args.image_size[0]} x {args.image_size[1]}")
    if args.weights is not None and not args.weights.is_file():
        raise UserError(f"--weights {args.weights}: file not found; give a SuperSimpleNet weights.pt")
    if args.check and args.path == "reference":
        raise UserError("--check compares the fast path; drop --path reference or --check")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate(args)
    from perf.benchmark import run_benchmark  # torch is imported only once the arguments are good

    run_benchmark(args)


if __name__ == "__main__":
    main()
