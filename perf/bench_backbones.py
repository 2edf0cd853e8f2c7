"""Speed of SuperSimpleNet per backbone: for each backbone at one image size, the eager model and
the fast path (model/fast_inference.py) on one device, with random weights (speed does not depend
on their values; the output says so). docs/backbones.md shows the CPU table.

Per backbone: the layers used (torchvision: layer2 + layer3; timm: the feature indices of stride
8 and 16 unless given as `timm:<name>@i,j`), the extractor's channels and feature size, the
parameter count of the eager model and the numbers the fast path stores (folded weights and head
matrices), GFLOPs of one image counted by torch.utils.flop_counter (every convolution and matrix
product, 2 FLOPs per multiply-add; unlike torch.profiler it also counts the dec head's
padding='same' convolution), latency at batch 1 (ms) and throughput at batch 8 (images/s), each
from the fastest of --reps timed runs after as many warm-up runs (other jobs only add time), the
largest |fast - eager| on the anomaly map, and whether the fast path folded the whole backbone
(and what runs as it is when not).

    python perf/bench_backbones.py                                   # the default list, 256 x 256, CPU
    python perf/bench_backbones.py --backbones resnet18 timm:convnext_tiny@1,2 --size 320 320 --device cuda

Writes paper_results/backbones_<cpu|cuda>.csv (or --output), the device named in each row.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from anywhere

from common.errors import OneLineArgumentParser, UserError, exit_on_user_error  # noqa: E402  (torch-free)

DEFAULT_BACKBONES = ["wide_resnet50_2", "resnet18", "timm:wide_resnet50_2", "timm:resnet18", "timm:efficientnet_b0",
                     "timm:mobilenetv3_large_100", "timm:convnext_tiny"]
LATENCY_BATCH, THROUGHPUT_BATCH = 1, 8
TIMM_STRIDES = (8, 16)  # the strides of torchvision's layer2 and layer3
CSV_HEADER = ["backbone", "layers", "channels", "feature_size", "params_eager_M", "params_fast_M", "gflops_eager",
              "gflops_fast", "latency_ms_eager", "latency_ms_fast", "throughput_eager", "throughput_fast",
              "max_map_difference", "fast_path", "image_size", "device", "weights"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                                   epilog="Backbones: torchvision names or timm:<model name>[@i,j].")
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, metavar="BACKBONE",
                        help=f"default: {' '.join(DEFAULT_BACKBONES)}")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"), help="default 256 256")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per measurement, after as many warm-up ones")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 is steadiest on a machine shared with other jobs")
    parser.add_argument("--output", type=Path, default=None, help="default paper_results/backbones_<device>.csv")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.reps < 1:
        raise UserError(f"--reps must be at least 1, got {args.reps}")
    if min(args.size) < 32:
        raise UserError(f"--size must be at least 32 x 32, got {args.size[0]} x {args.size[1]}")
    return args


def backbone_and_layers(text: str) -> tuple[str, list]:
    """'timm:convnext_tiny@1,2' -> ('timm:convnext_tiny', [1, 2]); without '@', the default layers."""
    from common.config import is_timm_backbone

    backbone, _, given = text.partition("@")
    if given:
        try:
            return backbone, [int(v) for v in given.split(",")]
        except ValueError:
            raise UserError(f"--backbones {text}: the layers after '@' are feature indices, e.g. @2,3") from None
    if not is_timm_backbone(backbone):
        return backbone, ["layer2", "layer3"]
    from model.timm_backbone import feature_info

    strides = [info["reduction"] for info in feature_info(backbone[len("timm:"):])]
    layers = [strides.index(s) for s in TIMM_STRIDES if s in strides]
    if len(layers) != len(TIMM_STRIDES):
        raise UserError(f"--backbones {text}: no features of stride 8 and 16 (strides {strides}); give them, e.g. @2,3")
    return backbone, layers


def best_seconds(run, images, reps: int, synchronize) -> float:
    """The fastest of `reps` timed runs, after `reps` warm-up ones: on a shared machine the other
    jobs only ever add time, so the minimum is the figure least disturbed by them."""
    import time

    for _ in range(reps):
        run(images)
    synchronize()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        run(images)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def gflops(run, images) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run(images)
    return counter.get_total_flops() / 1e9


def stored_numbers(fast) -> int:
    """Numbers the fast path keeps: its backbone's parameters and buffers, and every head matrix."""
    import torch

    backbone = sum(t.numel() for t in [*fast.stages.parameters(), *fast.stages.buffers()])
    attributes = vars(fast).values()
    head = [value for value in attributes if isinstance(value, torch.Tensor)]
    head += [t for value in attributes if isinstance(value, list) for t in value if isinstance(t, torch.Tensor)]
    return backbone + sum(t.numel() for t in head)


def measure(text: str, size: tuple[int, int], device, reps: int) -> list:
    import torch

    from model.fast_inference import build_fast_model
    from model.supersimplenet import SuperSimpleNet

    backbone, layers = backbone_and_layers(text)
    torch.manual_seed(0)
    model = SuperSimpleNet(size, backbone=backbone, layers=layers, pretrained=False, stop_grad=False).eval()
    fast = build_fast_model(model, device, torch.float32)
    eager = model.to(device)

    def run_eager(images):
        with torch.inference_mode():
            return eager(images)

    def run_fast(images):
        with torch.inference_mode():
            return fast.compute(images)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    single = torch.randn(LATENCY_BATCH, 3, *size, device=device)
    batch = torch.randn(THROUGHPUT_BATCH, 3, *size, device=device)
    difference = (run_fast(batch)[0] - run_eager(batch)[0]).abs().max().item()
    row = [backbone, " ".join(map(str, layers)), model.feature_extractor.feature_dim[0], f"{model.fh}x{model.fw}",
           sum(p.numel() for p in model.parameters()) / 1e6, stored_numbers(fast) / 1e6,
           gflops(run_eager, single), gflops(run_fast, single)]
    row += [1000 * best_seconds(run, single, reps, synchronize) for run in (run_eager, run_fast)]
    row += [THROUGHPUT_BATCH / best_seconds(run, batch, reps, synchronize) for run in (run_eager, run_fast)]
    note = fast.folding_note.split(": ", 1)[-1] if fast.folding_note else "every BatchNorm folded"
    return row + [difference, f"yes ({note})"]


def format_row(row: list) -> str:
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row[:12]]
    return "| " + " | ".join([*cells, f"{row[12]:.1e}", row[13]]) + " |"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from common.device import resolve_device
    from common.fileio import write_csv_atomic
    from model.backbone import check_backbone
    from perf.report import device_name

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    chosen = [backbone_and_layers(text) for text in args.backbones]
    for backbone, layers in chosen:  # every name and index before any timing
        check_backbone(backbone, layers)
    output = args.output or REPO_ROOT / "paper_results" / f"backbones_{device.type}.csv"
    where = f"{device.type}: {device_name(device)}"
    print(f"{where}; image {args.size[0]}x{args.size[1]}; fp32; RANDOM weights (speed does not depend on them); "
          f"latency at batch {LATENCY_BATCH}, throughput at batch {THROUGHPUT_BATCH}, the fastest of {args.reps} "
          f"timed runs after {args.reps} warm-up ones")
    print("| backbone | layers | channels | features | params eager (M) | params fast (M) | GFLOPs eager | GFLOPs fast "
          "| latency eager (ms) | latency fast (ms) | img/s eager | img/s fast | max map diff | fast path |")
    print("|" + "---|" * 14)
    rows = []
    for text in args.backbones:
        row = measure(text, tuple(args.size), device, args.reps)
        print(format_row(row), flush=True)
        rows.append([f"{v:.4g}" if isinstance(v, float) else v for v in row]
                    + [f"{args.size[0]}x{args.size[1]}", where, "random"])
    write_csv_atomic(output, CSV_HEADER, rows)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
