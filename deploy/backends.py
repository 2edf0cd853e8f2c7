"""Inference backends: a batch of preprocessed images (B x 3 x h x w float32, as
`common.image_io.image_to_tensor_array` makes them) in, (probability maps B x h x w, scores B) out,
both sigmoid probabilities in float32, so one threshold rule serves all of them: a value is a defect
when it is strictly greater than its threshold (common/calibration.py).

- `TorchBackend`: a SuperSimpleNet checkpoint (fast inference path or the eager model).
- `TorchScriptBackend`, `OnnxRuntimeBackend`, `OpenVinoBackend`: a file written by export.py, with
  its sidecar JSON (`sidecar_path`, `read_sidecar`); `open_exported` picks the backend for a file.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.device import resolve_device
from common.errors import UserError
from model.fast_inference import build_fast_model
from model.supersimplenet import SuperSimpleNet


class Backend:
    """Preprocessed images B x 3 x h x w float32 -> (probability maps B x h x w, scores B), float32."""

    name = "backend"
    image_size: tuple[int, int]
    fixed_batch: int | None = None  # a model exported without --dynamic-batch takes only this batch

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fixed_batch is None or images.shape[0] == self.fixed_batch:
            return self.run(images)
        parts = [self.run(images[i:i + 1]) for i in range(images.shape[0])]  # fixed batch 1
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class TorchBackend(Backend):
    """A SuperSimpleNet on `device`: the fast inference path (model/fast_inference.py) or the
    published eager model. Sigmoid is applied to both outputs in float32."""

    def __init__(self, model: SuperSimpleNet, device: torch.device, eager: bool = False):
        self.device = torch.device(device)
        self.image_size = tuple(model.image_size)
        self.eager = eager
        self.name = "torch eager" if eager else "torch fast"
        if eager:
            self.model = model.to(self.device).eval()
        else:
            self.model = build_fast_model(model, self.device, torch.float32)
            if self.model.folding_note:  # a backbone whose norms do not all fold (timm): say what runs as is
                self.name = f"torch fast ({self.model.folding_note})"

    @torch.no_grad()
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        anomaly_map, score = self.model(tensor)
        maps = torch.sigmoid(anomaly_map[:, 0].float()).cpu().numpy()
        return maps, torch.sigmoid(score.float()).cpu().numpy()


def sidecar_path(model_file: Path | str) -> Path:
    """The preprocessing sidecar of an exported file: `<file>.json` (model.onnx -> model.onnx.json)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: Path) -> dict[str, Any]:
    path = sidecar_path(model_file)
    if not path.is_file():
        raise UserError(f"{path} not found: an exported model needs the sidecar export.py wrote beside it "
                        "(input size, preprocessing, thresholds); re-export the model")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__}); re-export the model") from None
    if not isinstance(sidecar, dict) or sidecar.get("kind") != "supersimplenet-export":
        raise UserError(f"{path} is not a SuperSimpleNet export sidecar; re-export the model")
    return sidecar


def _optional(module: str, extra: str = "requirements-export.txt"):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"the {module} package is not installed; install the export extras with "
                        f"`.venv/bin/pip install -r {extra}`") from None


class TorchScriptBackend(Backend):
    def __init__(self, path: Path, device: torch.device, sidecar: dict[str, Any]):
        import warnings

        self.name = "torchscript"
        self.device = torch.device(device)
        self.image_size = tuple(sidecar["input"]["image_size"])
        self.fixed_batch = None if sidecar.get("dynamic_batch") else sidecar.get("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
            try:
                self.module = torch.jit.load(str(path), map_location=self.device)
            except (RuntimeError, ValueError) as error:
                raise UserError(f"{path} is not a loadable TorchScript file ({str(error).splitlines()[0][:120]})") from None
        self.half = sidecar.get("precision") == "fp16"

    @torch.no_grad()
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, score = self.module(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return anomaly_map[:, 0].float().cpu().numpy(), score.float().cpu().numpy()


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: Path, device_name: str, sidecar: dict[str, Any], threads: int = 0):
        ort = _optional("onnxruntime")
        self.name = "onnxruntime"
        self.image_size = tuple(sidecar["input"]["image_size"])
        available = ort.get_available_providers()
        wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and "CUDAExecutionProvider" in available)
        if wants_cuda and "CUDAExecutionProvider" not in available:
            raise UserError(f"--device {device_name}: this onnxruntime has no CUDA provider "
                            f"({', '.join(available)}); use --device cpu or install onnxruntime-gpu")
        providers = (["CUDAExecutionProvider"] if wants_cuda else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise UserError(f"{path} cannot be loaded by onnxruntime ({str(error).splitlines()[0][:160]})") from None
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, score = self.session.run(["anomaly_map", "score"], {"images": np.ascontiguousarray(images)})
        return anomaly_map[:, 0].astype(np.float32), score.astype(np.float32).reshape(-1)


class OpenVinoBackend(Backend):
    def __init__(self, path: Path, device_name: str, sidecar: dict[str, Any]):
        ov = _optional("openvino")
        if device_name.startswith("cuda"):
            raise UserError("--backend openvino runs on the CPU here; use --device cpu (or auto)")
        self.name = "openvino"
        self.image_size = tuple(sidecar["input"]["image_size"])
        # full float32 unless the export is fp16: OpenVINO would otherwise compute in bf16 on CPUs that
        # have it (AVX512-BF16, AMX), and the outputs would no longer be the model's up to float rounding
        config = {} if sidecar.get("precision") == "fp16" else {"INFERENCE_PRECISION_HINT": "f32"}
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise UserError(f"{path} cannot be loaded by OpenVINO ({str(error).splitlines()[0][:160]})") from None
        shape = self.compiled.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        self.request = self.compiled.create_infer_request()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({"images": np.ascontiguousarray(images)})
        outputs = {key.get_any_name(): value for key, value in result.items()}
        return (np.asarray(outputs["anomaly_map"])[:, 0].astype(np.float32),
                np.asarray(outputs["score"]).astype(np.float32).reshape(-1))


BACKENDS = ("torch", "onnxruntime", "openvino")
SUFFIX_BACKENDS = {".onnx": "onnxruntime", ".xml": "openvino", ".pt": "torch", ".ts": "torch"}


def open_exported(path: Path, backend: str | None, device_name: str) -> tuple[Backend, dict[str, Any]]:
    """An exported model file and its sidecar -> (backend, sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--model {path}: not found; pass a file written by export.py")
    backend = backend or SUFFIX_BACKENDS.get(path.suffix.lower())
    if backend is None:
        raise UserError(f"--model {path}: cannot tell the backend from '{path.suffix}'; pass --backend")
    sidecar = read_sidecar(path)
    if backend == "torch":
        if sidecar.get("format") != "torchscript":
            raise UserError(f"--backend torch runs TorchScript files; {path} is {sidecar.get('format')}: "
                            "use --backend onnxruntime or openvino, or --weights for the checkpoint")
        return TorchScriptBackend(path, resolve_device(device_name), sidecar), sidecar
    if backend == "onnxruntime":
        if sidecar.get("format") != "onnx":
            raise UserError(f"--backend onnxruntime runs ONNX files; {path} is {sidecar.get('format')}")
        return OnnxRuntimeBackend(path, device_name, sidecar), sidecar
    if sidecar.get("format") not in ("openvino", "onnx"):
        raise UserError(f"--backend openvino runs OpenVINO IR (.xml) or ONNX files; {path} is {sidecar.get('format')}")
    return OpenVinoBackend(path, device_name, sidecar), sidecar


__all__ = [
    "Backend", "TorchBackend", "TorchScriptBackend", "OnnxRuntimeBackend", "OpenVinoBackend", "BACKENDS",
    "SUFFIX_BACKENDS", "sidecar_path", "read_sidecar", "open_exported",
]
