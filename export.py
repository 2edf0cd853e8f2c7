"""Export a trained model for deployment: `python export.py --weights W --format onnx|openvino|torchscript
[--precision fp32|fp16] [--dynamic-batch] [--output FILE]`.

Exports the fast inference model (traced on the CPU) with input `images` (B x 3 x H x W float32,
RGB, ImageNet-normalised at the model's input size) and outputs `anomaly_map` (B x 1 x H x W)
and `score` (B), both sigmoid probabilities, so model.yaml's thresholds apply directly. Beside
the file, `<file>.json` documents the preprocessing and the thresholds. Default output:
`<weights folder>/model[_fp16].onnx|.xml|.torchscript.pt`. Needs the export extras:
`.venv/bin/pip install -r requirements-export.txt`. See docs/deployment.md.
"""

from pathlib import Path

from common.errors import exit_on_user_error
from engine import cli

FORMATS = ("onnx", "openvino", "torchscript")


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("--weights", type=Path, required=True, help="a weights.pt (model.yaml beside it is read)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: the heavy products in half precision (for GPUs); the interface stays float32")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    parser.add_argument("--output", type=Path, default=None, help="the exported file (default beside the weights)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the exported file against the eager model after export")
    cli.add_version(parser)
    parser.add_argument("--dataset", choices=cli.DATASET_NAMES, default=None,
                        help="for a checkpoint without model.yaml: whose defaults to use (default mvtec: 256x256)")
    cli.add_settings(parser)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cli.resolve_version(args)
    from engine.export import run_export  # torch is imported only once the arguments are good

    run_export(args)


if __name__ == "__main__":
    main()
