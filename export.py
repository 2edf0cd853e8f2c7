"""Export a trained model for deployment: `python export.py --weights W --format onnx|openvino|torchscript
[--precision fp32|fp16] [--dynamic-batch] [--output FILE]`.

Exports the fast inference model (traced on the CPU) with input `images` (B x 3 x H x W float32,
RGB, ImageNet-normalised at the model's input size) and outputs `anomaly_map` (B x 1 x H x W)
and `score` (B), both sigmoid probabilities, so model.yaml's thresholds apply directly. Beside
the file, `<file>.json` documents the preprocessing and the thresholds. Default output:
`<weights folder>/model[_fp16].onnx|.xml|.torchscript.pt`. Needs the export extras:
`.venv/bin/pip install -r requirements-export.txt`. See docs/deployment.md.
"""

from common import cli
from deploy.formats import FORMATS, PRECISIONS, check_output, default_output


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("--weights", type=cli.path_argument, required=True, help="a weights.pt (model.yaml beside it is read)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16: the heavy products in half precision (for GPUs); the interface stays float32")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    parser.add_argument("--output", type=cli.path_argument, default=None, help="the exported file (default beside the weights)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the exported file against the eager model after export")
    cli.add_checkpoint_settings(parser)
    args = cli.settle(parser.parse_args(argv))
    check_options(args)
    return args


def check_options(args) -> None:
    """What argparse cannot say, checked before torch is imported (and long before the export): the
    output's suffix fits --format and its folder can be written."""
    check_output(args.output or default_output(args.weights, args.format, args.precision), args.format)


def run(args) -> None:
    from deploy.export import run_export  # torch is imported only once the arguments are good

    run_export(args)


main = cli.command(parse_args, run)

if __name__ == "__main__":
    main()
