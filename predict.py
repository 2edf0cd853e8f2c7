"""Use a trained model: `python predict.py --weights W IMAGE_OR_FOLDER... [--output DIR]`.

For every image (folders are searched recursively): the raw score (sigmoid of the score logit),
the decision at the image threshold, the anomaly map at the image's own size (heatmap PNG;
--save-maps adds float32 .npy), the defect mask at the pixel threshold, an overlay, and a row of
`<output>/predictions.csv`. Settings come from the model.yaml beside W (published checkpoints
without one: the --version defaults, --set as in eval.py).

Thresholds: `--calibrate NORMAL_DIR [--fpr 0.01]` (false-positive rate on normal images) or
`--calibrate-labelled DIR` (good/, defect/, optional masks/: F1-optimal) store them in model.yaml;
without them the decision uses 0.5 on score and pixels and every output says "uncalibrated".
Exported models (export.py): `--model FILE [--backend torch|onnxruntime|openvino]`.
See docs/deployment.md.
"""

from pathlib import Path

from common import cli
from common.errors import UserError

BACKENDS = ("torch", "onnxruntime", "openvino")


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("inputs", nargs="*", type=cli.path_argument, metavar="IMAGE_OR_FOLDER",
                        help="images and folders to predict (folders recursively)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=cli.path_argument, help="a weights.pt (model.yaml beside it is read when present)")
    source.add_argument("--model", type=cli.path_argument, help="a file written by export.py (.onnx, .xml, .pt)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="with --weights: the fastest installed by default (openvino, else onnxruntime, through "
                             "an export made once and cached beside the weights; the torch fast path on a GPU or "
                             "without them), or one of them; with --model: torch runs TorchScript, the default "
                             "comes from the file's suffix")
    parser.add_argument("--output", type=cli.path_argument, default=Path("./predictions"), help="output folder (default ./predictions)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    cli.add_device(parser)
    parser.add_argument("--eager", action="store_true",
                        help="run the published eager model instead of the fast inference path")
    parser.add_argument("--save-maps", action="store_true", help="also write each anomaly map as float32 .npy")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="skip (and list in skipped.csv) images with more pixels than this, read from the "
                             "file's header before decoding (default 100000000: 100 megapixels)")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--calibrate", type=cli.path_argument, metavar="NORMAL_DIR",
                             help="set the thresholds at --fpr on these normal (defect-free) images")
    calibration.add_argument("--calibrate-labelled", type=cli.path_argument, metavar="DIR",
                             help="F1-optimal thresholds on DIR/good, DIR/defect (and DIR/masks when present)")
    parser.add_argument("--fpr", type=float, default=0.01,
                        help="false-positive rate allowed on the normal images (default 0.01)")
    parser.add_argument("--pixel-fpr", type=float, default=None,
                        help="false-positive rate for the pixel threshold (default: --fpr)")
    cli.add_checkpoint_settings(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html and thumbnails/ in the output folder")
    args = cli.settle(parser.parse_args(argv))
    check_options(args)
    return args


def check_options(args) -> None:
    """What argparse cannot say, checked before torch is imported: ranges and options that do not go together."""
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    for name in ("fpr", "pixel_fpr"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
    if not args.inputs and not args.calibrate and not args.calibrate_labelled:
        raise UserError("nothing to do: pass images or folders to predict, or --calibrate / --calibrate-labelled")
    if args.eager and args.backend not in (None, "torch"):
        raise UserError(f"--eager runs the PyTorch model; it does not go with --backend {args.backend}")
    if args.model is not None:
        if args.eager:
            raise UserError("--eager applies to --weights (the PyTorch checkpoint), not to an exported --model")
        if args.set or args.config or args.version_chosen or args.dataset:
            raise UserError("--set, --config, --version and --dataset apply to --weights; an exported model "
                            "carries its settings (re-export to change them)")


def run(args) -> None:
    from deploy.predict import run_prediction  # torch is imported only once the arguments are good

    run_prediction(args)


main = cli.command(parse_args, run)

if __name__ == "__main__":
    main()
