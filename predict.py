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

from common.errors import exit_on_user_error
from engine import cli

BACKENDS = ("torch", "onnxruntime", "openvino")


def parse_args(argv: list[str] | None = None):
    parser = cli.new_parser(__doc__)
    parser.add_argument("inputs", nargs="*", type=Path, metavar="IMAGE_OR_FOLDER",
                        help="images and folders to predict (folders recursively)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="a weights.pt (model.yaml beside it is read when present)")
    source.add_argument("--model", type=Path, help="a file written by export.py (.onnx, .xml, .pt)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch (default for --weights; TorchScript for --model), onnxruntime, openvino "
                             "(default for --model: from the file's suffix)")
    parser.add_argument("--output", type=Path, default=Path("./predictions"), help="output folder (default ./predictions)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    cli.add_device(parser)
    parser.add_argument("--eager", action="store_true",
                        help="run the published eager model instead of the fast inference path")
    parser.add_argument("--save-maps", action="store_true", help="also write each anomaly map as float32 .npy")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--calibrate", type=Path, metavar="NORMAL_DIR",
                             help="set the thresholds at --fpr on these normal (defect-free) images")
    calibration.add_argument("--calibrate-labelled", type=Path, metavar="DIR",
                             help="F1-optimal thresholds on DIR/good, DIR/defect (and DIR/masks when present)")
    parser.add_argument("--fpr", type=float, default=0.01,
                        help="false-positive rate allowed on the normal images (default 0.01)")
    parser.add_argument("--pixel-fpr", type=float, default=None,
                        help="false-positive rate for the pixel threshold (default: --fpr)")
    cli.add_version(parser)
    parser.add_argument("--dataset", choices=cli.DATASET_NAMES, default=None,
                        help="for a checkpoint without model.yaml: whose defaults to use (default mvtec: 256x256)")
    cli.add_settings(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html and thumbnails/ in the output folder")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cli.resolve_version(args)
    from engine.predict import run_prediction  # torch is imported only once the arguments are good

    run_prediction(args)


if __name__ == "__main__":
    main()
