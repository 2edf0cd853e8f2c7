"""Export the fast inference model (model/fast_inference.py) for deployment (what export.py does;
docs/deployment.md, "Export").

The exported graph takes `images` (B x 3 x H x W float32, RGB, ImageNet-normalised at the
model's input size) and returns `anomaly_map` (B x 1 x H x W) and `score` (B), both SIGMOID
PROBABILITIES in [0, 1], so the thresholds of model.yaml apply directly (defect when value >
threshold). Beside the file, `<file>.json` (the sidecar) documents the preprocessing, the
outputs and the thresholds; predict.py --model reads it.

Formats: ONNX (torch.onnx's exporter; opset chosen by torch), OpenVINO IR (.xml + .bin,
converted from that ONNX graph) and TorchScript (torch.jit.trace; deprecated upstream but still
loaded by torch.jit.load). Precision: fp32, or fp16 for the heavy backbone and head products
(the tail stays fp32, as on the fast path; the interface stays float32). OpenVINO fp16 stores
the weights in fp16 and lets the device choose its compute precision.
Everything is traced on the CPU.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.errors import UserError
from common.fileio import atomic_path, file_digest, write_json_atomic
from common.image_io import IMAGENET_MEAN, IMAGENET_STD
from deploy.backends import OnnxRuntimeBackend, OpenVinoBackend, TorchScriptBackend, sidecar_path
from deploy.calibrate import UNCALIBRATED_THRESHOLD, Thresholds
from deploy.checkpoints import LoadedCheckpoint, load_checkpoint
from deploy.formats import FORMATS, PRECISIONS, check_output, default_output
from model.card import backbone_weights_tag
from model.fast_inference import FastSuperSimpleNet, build_fast_model
from model.supersimplenet import SuperSimpleNet

INPUT_NAME, OUTPUT_NAMES = "images", ("anomaly_map", "score")
# largest difference from the eager fp32 model accepted by the check after export
CHECK_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class ExportedSuperSimpleNet(nn.Module):
    """images -> (sigmoid(anomaly map logits) B x 1 x H x W, sigmoid(score logits) B), float32.

    Wraps `FastSuperSimpleNet.compute` (plain tensor ops; its forward's inference_mode and CUDA
    graph branch are left out, which tracers cannot follow)."""

    def __init__(self, fast: FastSuperSimpleNet):
        super().__init__()
        self.fast = fast

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        anomaly_map, score = self.fast.compute(images)
        return torch.sigmoid(anomaly_map.float()), torch.sigmoid(score.float())


def exportable(model: SuperSimpleNet, precision: str) -> ExportedSuperSimpleNet:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return ExportedSuperSimpleNet(build_fast_model(model, "cpu", dtype)).eval()


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"exporting needs the {module} package: install the export extras with "
                        "`.venv/bin/pip install -r requirements-export.txt`") from None


def export_onnx(module: nn.Module, example: Tensor, path: Path, dynamic_batch: bool) -> None:
    """torch.onnx (torch.export-based) -> one self-contained .onnx file."""
    _require("onnx")
    _require("onnxscript")
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic_shapes, dynamo=True, verbose=False, external_data=False,
            )
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"ONNX export failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def export_openvino(module: nn.Module, example: Tensor, path: Path, dynamic_batch: bool, precision: str) -> None:
    """The ONNX graph converted to OpenVINO IR: `path` (.xml) and its .bin."""
    ov = _require("openvino")
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_onnx(module, example, onnx_path, dynamic_batch)
        try:
            converted = ov.convert_model(str(onnx_path))
        except Exception as error:
            raise UserError(f"OpenVINO conversion failed ({str(error).splitlines()[0][:200]})") from None
        staged = Path(folder) / "staged.xml"
        ov.save_model(converted, str(staged), compress_to_fp16=precision == "fp16")
        # .bin first, then .xml: a reader that finds the new .xml finds its weights
        with atomic_path(path.with_suffix(".bin")) as tmp:
            tmp.write_bytes(staged.with_suffix(".bin").read_bytes())
        text = staged.read_text(encoding="utf-8")
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")


def export_torchscript(module: nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer warnings
        try:
            traced = torch.jit.trace(module, (example,), check_trace=False)
        except Exception as error:
            raise UserError(f"TorchScript tracing failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
        with atomic_path(path) as tmp:
            traced.save(str(tmp))


def make_sidecar(loaded: LoadedCheckpoint, export_format: str, precision: str, dynamic_batch: bool,
                 model_file: Path) -> dict[str, Any]:
    """What a deployment needs to feed the exported model and read its outputs."""
    height, width = loaded.image_size
    batch = "batch" if dynamic_batch else 1
    card = loaded.card or {}
    stored = Thresholds.from_mapping(card.get("thresholds"))
    thresholds = {"image": stored.image, "pixel": stored.pixel, "calibrated": stored.calibrated}
    thresholds.update({k: v for k, v in stored.details.items() if k not in thresholds})
    return {
        "kind": "supersimplenet-export",
        "format_version": 1,
        "format": export_format,
        "file": model_file.name,
        "precision": precision,
        "dynamic_batch": dynamic_batch,
        "batch": None if dynamic_batch else 1,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, 3, height, width],
            "dtype": "float32",
            "layout": "NCHW",
            "image_size": [height, width],
            "channel_order": "RGB",
            "value_range": "(pixel / 255 - mean) / std per channel, pixel in 0..255 (8-bit; 16-bit files "
                           "are reduced to 8 bit first, grayscale repeated to 3 channels, alpha dropped)",
            "resize": {"size": [height, width], "interpolation": "bilinear",
                       "how": "OpenCV cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) on the "
                              "uint8 RGB image, before normalising; any aspect ratio, no crop, no padding"},
            "scale": 1 / 255,
            "mean": [float(v) for v in IMAGENET_MEAN],
            "std": [float(v) for v in IMAGENET_STD],
        },
        "outputs": {
            "anomaly_map": {"shape": [batch, 1, height, width], "dtype": "float32",
                            "meaning": "per-pixel defect probability, sigmoid of the map logits, at the input "
                                       "size; resize it bilinearly to the image's own size"},
            "score": {"shape": [batch], "dtype": "float32",
                      "meaning": "image defect probability, sigmoid of the score logit (raw, not normalised)"},
        },
        "decision": "defect when score > thresholds.image; a pixel is defect when anomaly_map > thresholds.pixel",
        "thresholds": thresholds if stored.calibrated else {**thresholds, "image": UNCALIBRATED_THRESHOLD,
                                                            "pixel": UNCALIBRATED_THRESHOLD},
        "model": {key: card.get(key, loaded.config.get(key)) for key in
                  ("version", "dataset", "unit", "backbone", "layers", "patch_size", "adapt_cls_features", "seed")}
                 | {"image_size": [height, width], "backbone_weights": card.get(
                     "backbone_weights", backbone_weights_tag(loaded.model))},
        "source": {"weights": str(loaded.weights), "weights_sha256": file_digest(loaded.weights),
                   "exported_with": f"torch {torch.__version__}"},
    }


def check_export(loaded: LoadedCheckpoint, model_file: Path, sidecar: dict[str, Any], batch: int) -> tuple[float, float] | None:
    """Largest |difference| of the exported file's maps and scores from the eager fp32 model
    (both as probabilities) on a seeded random batch; None when the runtime is not installed."""
    height, width = loaded.image_size
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_map, expected_score = loaded.model.eval()(images)
    expected_map, expected_score = torch.sigmoid(expected_map[:, 0]).numpy(), torch.sigmoid(expected_score).numpy()
    try:
        if sidecar["format"] == "onnx":
            backend = OnnxRuntimeBackend(model_file, "cpu", sidecar)
        elif sidecar["format"] == "openvino":
            backend = OpenVinoBackend(model_file, "cpu", sidecar)
        else:
            backend = TorchScriptBackend(model_file, torch.device("cpu"), sidecar)
    except UserError as error:
        if "not installed" in str(error):
            return None
        raise
    maps, scores = backend(images.numpy())
    return float(np.abs(maps - expected_map).max()), float(np.abs(scores - expected_score).max())


def export_model(loaded: LoadedCheckpoint, export_format: str, precision: str, dynamic_batch: bool,
                 output: Path, check: bool = True) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """Export `loaded` to `output` (+ sidecar); returns (sidecar, check differences or None)."""
    if export_format not in FORMATS or precision not in PRECISIONS:
        raise UserError(f"format must be one of {FORMATS} and precision one of {PRECISIONS}")
    output = check_output(output, export_format)
    height, width = loaded.image_size
    example = torch.randn(2 if dynamic_batch else 1, 3, height, width, generator=torch.Generator().manual_seed(1))
    module = exportable(loaded.model, precision if export_format != "openvino" else "fp32")
    if export_format == "onnx":
        export_onnx(module, example, output, dynamic_batch)
    elif export_format == "openvino":
        export_openvino(module, example, output, dynamic_batch, precision)
    else:
        export_torchscript(module, example, output)
    sidecar = make_sidecar(loaded, export_format, precision, dynamic_batch, output)
    write_json_atomic(sidecar_path(output), sidecar)
    differences = check_export(loaded, output, sidecar, 2 if dynamic_batch else 1) if check else None
    if differences is not None and max(differences) > CHECK_TOLERANCE[precision]:
        raise UserError(f"{output} does not reproduce the model: largest difference {max(differences):.2e} > "
                        f"{CHECK_TOLERANCE[precision]:.0e} ({precision}); the file is kept for inspection")
    return sidecar, differences


def run_export(args: argparse.Namespace) -> None:
    """export.py."""
    output = args.output or default_output(args.weights, args.format, args.precision)  # export.py checked it
    loaded = load_checkpoint(args.weights, args.version, args.version_chosen, args.config, args.set, args.dataset)
    start = time.perf_counter()
    print(f"Exporting to {args.format} ({args.precision}, {'dynamic' if args.dynamic_batch else 'fixed'} batch) on the CPU ...")
    sidecar, differences = export_model(loaded, args.format, args.precision, args.dynamic_batch, output,
                                        check=not args.no_check)
    extra = f" + {output.with_suffix('.bin').name}" if args.format == "openvino" else ""
    print(f"Wrote {output}{extra} and {sidecar_path(output)} in {time.perf_counter() - start:.1f} s")
    print(f"  input 'images' {sidecar['input']['shape']} float32 RGB, (x/255 - mean)/std; outputs 'anomaly_map' "
          f"{sidecar['outputs']['anomaly_map']['shape']} and 'score' {sidecar['outputs']['score']['shape']}, "
          "sigmoid probabilities")
    state = "calibrated" if sidecar["thresholds"]["calibrated"] else "uncalibrated"
    print(f"  thresholds: image {sidecar['thresholds']['image']:.6f}, pixel {sidecar['thresholds']['pixel']:.6f} ({state})")
    if differences is not None:
        print(f"  check against the eager fp32 model: max |difference| maps {differences[0]:.2e}, "
              f"scores {differences[1]:.2e}")
    elif not args.no_check:
        print("  check skipped: the runtime for this format is not installed")


__all__ = ["ExportedSuperSimpleNet", "exportable", "export_model", "make_sidecar", "default_output", "run_export",
           "FORMATS", "PRECISIONS"]
