"""Using a trained model on new images (what predict.py does; docs/deployment.md).

- Loading: a checkpoint with its model.yaml (image size, backbone, version, thresholds), a
  published checkpoint with the version's defaults, or an exported file (ONNX, OpenVINO,
  TorchScript) with its sidecar JSON (engine/export.py).
- Backends: every backend maps a batch of preprocessed images (B x 3 x h x w float32, as
  `common.image_io.image_to_tensor_array` makes them) to (maps B x h x w, scores B), both
  sigmoid probabilities, so one threshold rule serves all of them: a value is a defect when it
  is strictly greater than its threshold (common/calibration.py).
- Outputs per image: the raw score (sigmoid of the score logit, never normalised over a set),
  the decision at the image threshold, the probability map resized to the image's own size
  (heatmap PNG, optional float32 .npy), the binary mask at the pixel threshold, and an overlay
  with a colour bar and a title that gives the score, the thresholds and whether they are
  calibrated; `predictions.csv` lists them all. Unreadable images are reported and skipped.
- Calibration: thresholds at a chosen false-positive rate on normal images, or F1-optimal on a
  labelled folder, stored in model.yaml (or the export sidecar).
"""

import argparse
import json
import math
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from common.calibration import f1_optimal_threshold, threshold_at_fpr
from common.catalog import DATASET_NAMES
from common.config import build_config, chosen_settings
from common.device import resolve_device
from common.errors import UserError
from common.fileio import atomic_path, check_writable_dir, write_csv_atomic, write_json_atomic
from common.image_io import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, image_to_tensor_array, read_rgb
from engine.fit import seed_everything
from engine.model_card import apply_card, make_card
from engine.outputs import backbone_description, backbone_weights_tag
from model.checkpoint import model_card_path, read_checkpoint, read_model_card, write_model_card
from model.fast_inference import build_fast_model
from model.supersimplenet import SuperSimpleNet

# ---------------------------------------------------------------- thresholds

UNCALIBRATED_THRESHOLD = 0.5  # on sigmoid probabilities, for scores and pixels alike
DEFAULT_FPR = 0.01
PREDICT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".webp", ".pgm", ".ppm", ".pnm")
DEFAULT_DATASET = "mvtec"  # version defaults for a checkpoint without model.yaml (256 x 256)


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds on sigmoid probabilities: defect when value > threshold."""

    image: float = UNCALIBRATED_THRESHOLD
    pixel: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False
    details: dict = field(default_factory=dict)  # what model.yaml's `thresholds` holds

    @classmethod
    def from_mapping(cls, stored: dict | None) -> "Thresholds":
        """From a card's or sidecar's `thresholds`; empty or absent = uncalibrated (0.5 / 0.5)."""
        if not stored or "image" not in stored or "pixel" not in stored:
            return cls()
        return cls(float(stored["image"]), float(stored["pixel"]), True, dict(stored))

    @property
    def label(self) -> str:
        """'uncalibrated' or how the thresholds were set, e.g. 'calibrated: fpr 0.01 on 32 normal images'."""
        if not self.calibrated:
            return "uncalibrated"
        method = self.details.get("method")
        count = self.details.get("count")
        if method == "fpr":
            return f"calibrated: fpr {self.details.get('fpr')} on {count} normal images"
        if method == "f1":
            return f"calibrated: F1-optimal on {count} labelled images"
        return "calibrated"


def thresholds_from_normal(scores: np.ndarray, maps: list[np.ndarray], fpr: float, pixel_fpr: float,
                           source: str = "") -> dict[str, Any]:
    """Image and pixel thresholds at the false-positive rates `fpr` / `pixel_fpr` on normal images
    (the quantile rule of common/calibration.py; pixels pooled over every map at network size)."""
    pixels = np.concatenate([m.reshape(-1) for m in maps])
    result = {
        "image": threshold_at_fpr(scores, fpr),
        "pixel": threshold_at_fpr(pixels, pixel_fpr),
        "method": "fpr",
        "fpr": float(fpr),
        "pixel_fpr": float(pixel_fpr),
        "count": int(len(scores)),
    }
    if source:
        result["source"] = source
    return result


def fpr_notes(count: int, fpr: float) -> list[str]:
    """A note when there are too few normal images for the requested rate to be resolved."""
    if fpr > 0 and count * fpr < 1:
        return [f"with {count} normal images the smallest non-zero false-positive rate is 1/{count} = "
                f"{1 / count:.3g} > fpr {fpr}: the image threshold is the highest normal score "
                f"(use at least {math.ceil(1 / fpr)} images for fpr {fpr})"]
    return []


# ---------------------------------------------------------------- loading a checkpoint


@dataclass
class LoadedCheckpoint:
    model: SuperSimpleNet
    config: dict[str, Any]
    card: dict[str, Any] | None
    weights: Path
    dataset: str

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)


def resolve_checkpoint_config(
    weights: Path, version: str, version_chosen: bool, config_file: Path | None, overrides: list[str],
    dataset: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, str, tuple[int, int]]:
    """(settings, card or None, dataset, image size) of `weights`: the card's values win over the
    version's defaults; a --set or --version that contradicts the card is a UserError."""
    card = read_model_card(weights)
    if card is not None and not version_chosen and card.get("version") in ("jims", "icpr"):
        version = card["version"]
    if dataset is None:
        dataset = card.get("dataset") if card is not None and card.get("dataset") in DATASET_NAMES else DEFAULT_DATASET
    config = build_config(dataset, config_file, overrides, version)
    chosen = chosen_settings(dataset, config_file, overrides, version)
    config = apply_card(config, card, chosen, weights, version_chosen)
    if card is not None and isinstance(card.get("image_size"), list) and len(card["image_size"]) == 2:
        if "image_size" in chosen and list(chosen["image_size"]) != list(card["image_size"]):
            raise UserError(f"--set image_size={chosen['image_size']} contradicts {model_card_path(weights)} "
                            f"(image_size: {card['image_size']}); drop the setting")
        image_size = tuple(int(v) for v in card["image_size"])
    elif config["image_size"]:
        image_size = tuple(config["image_size"])
    else:
        raise UserError(f"{weights} has no model.yaml and the {dataset} defaults give no image size; "
                        "pass --set image_size=[H,W] (the size the model was trained at)")
    return config, card, dataset, image_size


def load_checkpoint(
    weights: Path, version: str, version_chosen: bool = False, config_file: Path | None = None,
    overrides: list[str] | None = None, dataset: str | None = None, verbose: bool = True,
) -> LoadedCheckpoint:
    """The eval-mode model of `weights` (CPU, float32), built as training built it (same seed, so
    a random backbone is rebuilt identically), with its card."""
    weights = Path(weights)
    if not weights.is_file():
        what = "is a folder, not a weights.pt file" if weights.is_dir() else "not found"
        raise UserError(f"--weights {weights}: {what}; pass the weights.pt of a trained or published model")
    read_checkpoint(weights)  # a damaged file is reported before any backbone is built (or downloaded)
    config, card, dataset, image_size = resolve_checkpoint_config(
        weights, version, version_chosen, config_file, overrides or [], dataset)
    seed_everything(config["seed"])
    model = SuperSimpleNet.from_config(image_size, config)
    model.load_model(weights)
    model.eval()
    if verbose:
        source = "model.yaml beside it" if card is not None else (
            f"no model.yaml: the {config['version']} defaults ({dataset} settings)")
        print(f"Model: {weights} ({source}); version {config['version']}, input {image_size[0]}x{image_size[1]}, "
              f"backbone {backbone_description(model)}")
    return LoadedCheckpoint(model, config, card, weights, dataset)


# ---------------------------------------------------------------- backends


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
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU")
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


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageItem:
    path: Path
    name: str  # output name: relative path without extension, unique within the run


def find_images(inputs: Iterable[Path], exclude: Path | None = None) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Image files of `inputs` (files as given; folders searched recursively for image suffixes,
    hidden files and anything under `exclude` left out), in order, with unique output names;
    plus (path, reason) for inputs that do not exist."""
    exclude = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            files = sorted(
                p for p in given.rglob("*")
                if p.is_file() and p.suffix.lower() in PREDICT_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
                and not (exclude is not None and p.resolve().is_relative_to(exclude))
            )
            prefix = given.resolve().name or "root"
            found += [(p, str(Path(prefix) / p.relative_to(given).with_suffix(""))) for p in files]
        elif given.is_file():
            found.append((given, given.stem))
        else:
            missing.append((str(given), "no such file or folder"))
    items, used = [], set()
    for path, name in found:
        unique = name
        if unique in used:
            unique = f"{name}_{path.suffix.lstrip('.').lower()}"
            counter = 2
            while unique in used:
                unique, counter = f"{name}_{counter}", counter + 1
        used.add(unique)
        items.append(ImageItem(path, unique))
    return items, missing


def load_image(path: Path, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3 at its own size, network input 3 x h x w float32). Grayscale, RGBA
    (alpha dropped) and 16-bit files (scaled to 8 bit) are read as training reads them."""
    image = read_rgb(path)
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise UserError(f"cannot read image {path}: empty image")
    return image, image_to_tensor_array(image, image_size)


@dataclass
class Loaded:
    item: ImageItem
    image: np.ndarray | None = None
    array: np.ndarray | None = None
    error: str | None = None


def _load(item: ImageItem, image_size: tuple[int, int]) -> Loaded:
    try:
        image, array = load_image(item.path, image_size)
    except UserError as error:
        return Loaded(item, error=str(error))
    except (cv2.error, OSError, ValueError, MemoryError) as error:
        return Loaded(item, error=f"cannot read image {item.path}: {type(error).__name__}: {str(error).strip()[:120]}")
    return Loaded(item, image, array)


def loaded_batches(items: list[ImageItem], image_size: tuple[int, int], batch: int,
                   pool: ThreadPoolExecutor, prefetch: int = 2) -> Iterator[list[Loaded]]:
    """Batches of decoded and resized images, decoded by `pool` ahead of time (in order)."""
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    pending: deque[list[Future]] = deque()
    for chunk in chunks[:prefetch]:
        pending.append([pool.submit(_load, item, image_size) for item in chunk])
    next_chunk = prefetch
    while pending:
        futures = pending.popleft()
        if next_chunk < len(chunks):
            pending.append([pool.submit(_load, item, image_size) for item in chunks[next_chunk]])
            next_chunk += 1
        yield [f.result() for f in futures]


def infer_loaded(backend: Backend, loaded: list[Loaded]) -> tuple[list[Loaded], np.ndarray, np.ndarray]:
    """Run the readable images of one batch: (those images, maps N x h x w, scores N)."""
    good = [entry for entry in loaded if entry.error is None]
    if not good:
        return [], np.zeros((0, *backend.image_size), np.float32), np.zeros(0, np.float32)
    maps, scores = backend(np.stack([entry.array for entry in good]))
    return good, maps, scores


# ---------------------------------------------------------------- figures


def overlay_layout(height: int, width: int) -> tuple[int, int]:
    """(title strip height, colour-bar strip width) of an overlay for an H x W image. With
    u = max(1, max(H, W) / 512): the colour bar is round(56 u) px wide on the right; the title on
    top has 2 lines of round(18 u) px when W + bar >= round(300 u), else 6 shorter lines (narrow
    images). The overlay is (H + title) x (W + bar): the image keeps its own pixels and aspect."""
    unit = max(1.0, max(height, width) / 512)
    bar = round(56 * unit)
    lines = 2 if width + bar >= round(300 * unit) else 6
    return lines * round(18 * unit), bar


def heatmap_rgb(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities H x W in [0, 1] -> RGB uint8 (JET), on the fixed 0..1 scale: maps of different
    images and runs are comparable by colour."""
    levels = np.round(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _fitted_scale(text: str, width: int, height: int, wanted: float) -> float:
    (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, wanted, 1)
    return max(0.2, min(wanted, wanted * (width - 6) / max(text_width, 1), wanted * height / max(text_height, 1)))


def _put(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=(0, 0, 0)) -> None:
    thickness = 1 if scale < 0.9 else 2
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def title_lines(score: float, defect: bool, area_fraction: float, thresholds: Thresholds, count: int) -> list[str]:
    """The overlay title in `count` (2 or 6) lines: decision, score, both thresholds, defect area,
    and whether the thresholds are calibrated."""
    verdict = "DEFECT" if defect else "normal"
    state = "calibrated" if thresholds.calibrated else "uncalibrated"
    area = f"area {100 * area_fraction:.2f}%"
    if count == 2:
        return [f"{verdict}: score {score:.4f} {'>' if defect else '<='} {thresholds.image:.4f}",
                f"pixel thr {thresholds.pixel:.4f}, {area} ({state})"]
    return [verdict, f"score {score:.4f}", f"image thr {thresholds.image:.4f}", f"pixel thr {thresholds.pixel:.4f}",
            area, state]


def render_overlay(image: np.ndarray, probabilities: np.ndarray, mask: np.ndarray, score: float, defect: bool,
                   thresholds: Thresholds) -> np.ndarray:
    """RGB uint8 (H + title) x (W + bar) x 3 (see `overlay_layout`): the image blended with its
    heatmap, the defect mask outlined in white, a colour bar 0..1 with the pixel threshold marked,
    and a title with the score, the decision, both thresholds and whether they are calibrated."""
    height, width = image.shape[:2]
    title_height, bar_width = overlay_layout(height, width)
    unit = max(1.0, max(height, width) / 512)
    canvas = np.full((height + title_height, width + bar_width, 3), 255, dtype=np.uint8)
    blended = cv2.addWeighted(image, 0.55, heatmap_rgb(probabilities), 0.45, 0)
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(blended, contours, -1, (255, 255, 255), max(1, round(unit)))
    canvas[title_height:, :width] = blended

    # title: 2 or 6 lines, each shrunk to fit the overlay's width when needed
    line_height = round(18 * unit)
    lines = title_lines(score, defect, float(mask.mean()), thresholds, title_height // line_height)
    for index, text in enumerate(lines):
        scale = _fitted_scale(text, width + bar_width, int(line_height * 0.7), 0.45 * unit)
        colour = (200, 0, 0) if (index == 0 and defect) else (0, 0, 0)
        _put(canvas, text, (3, line_height * (index + 1) - max(2, line_height // 5)), scale, colour)

    # colour bar: 1 at the top, 0 at the bottom, ticks 0, 0.5, 1 and the pixel threshold
    margin = max(2, round(6 * unit))
    top, bottom = title_height + margin, title_height + height - margin
    if bottom - top >= 8:
        left, right = width + max(2, round(4 * unit)), width + max(6, round(16 * unit))
        levels = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(right - left, axis=1)
        canvas[top:bottom, left:right] = heatmap_rgb(levels)
        tick_scale = 0.3 * unit
        for value in (1.0, 0.5, 0.0):
            y = top + round((1 - value) * (bottom - top - 1))
            _put(canvas, f"{value:.1f}", (right + 2, min(max(y + 4, top + 8), bottom)), tick_scale)
        y = top + round((1 - min(max(thresholds.pixel, 0.0), 1.0)) * (bottom - top - 1))
        cv2.line(canvas, (left - 2, y), (right + 1, y), (0, 0, 0), max(1, round(unit)))
    return canvas


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array.astype(np.float32))


@dataclass
class ImageResult:
    path: str
    name: str
    score: float
    defect: bool
    defect_pixels: int
    height: int
    width: int
    max_pixel: float

    @property
    def area_fraction(self) -> float:
        return self.defect_pixels / (self.height * self.width)


def full_size_map(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map at network size -> the image's own size (bilinear), float32 in [0, 1]."""
    if probabilities.shape != (height, width):
        probabilities = cv2.resize(probabilities.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(probabilities, 0.0, 1.0).astype(np.float32)


def write_image_outputs(output: Path, entry: Loaded, probabilities: np.ndarray, score: float,
                        thresholds: Thresholds, save_maps: bool, overlays: bool = True) -> ImageResult:
    """Every per-image file of one image; returns its row."""
    height, width = entry.image.shape[:2]
    full = full_size_map(probabilities, height, width)
    mask = full > thresholds.pixel
    defect = bool(score > thresholds.image)
    name = entry.item.name
    _write_png(output / "heatmaps" / f"{name}.png", heatmap_rgb(full))
    _write_png(output / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
    if overlays:
        _write_png(output / "overlays" / f"{name}.png", render_overlay(entry.image, full, mask, score, defect, thresholds))
    if save_maps:
        _write_npy(output / "maps" / f"{name}.npy", full)
    return ImageResult(str(entry.item.path), name, float(score), defect, int(mask.sum()), height, width,
                       float(full.max()))


PREDICTION_COLUMNS = ("path", "score", "decision", "defect_area_px", "defect_area_percent", "max_pixel",
                      "image_threshold", "pixel_threshold", "calibration", "width", "height", "output_name")


def prediction_row(result: ImageResult, thresholds: Thresholds) -> list[Any]:
    return [result.path, f"{result.score:.6f}", "defect" if result.defect else "normal", result.defect_pixels,
            f"{100 * result.area_fraction:.4f}", f"{result.max_pixel:.6f}", f"{thresholds.image:.6f}",
            f"{thresholds.pixel:.6f}", thresholds.label, result.width, result.height, result.name]


# ---------------------------------------------------------------- the prediction run


@dataclass
class RunSummary:
    results: list[ImageResult]
    skipped: list[tuple[str, str]]
    seconds: float


def predict_images(backend: Backend, items: list[ImageItem], thresholds: Thresholds, output: Path,
                   batch: int = 8, save_maps: bool = False, progress: bool = True, workers: int = 4,
                   overlays: bool = True, report: Callable[[str], None] | None = None) -> RunSummary:
    """Predict every image of `items` and write its files under `output`; unreadable images are
    reported (through `report`) and skipped. `predictions.csv` (and `skipped.csv`) are written last."""
    report = report or (lambda message: tqdm.write(message, file=sys.stderr))
    start = time.perf_counter()
    results: list[ImageResult] = []
    skipped: list[tuple[str, str]] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max(1, workers)) as readers, ThreadPoolExecutor(max(1, workers)) as writers:
        bar = tqdm(total=len(items), desc="predicting", unit="img", disable=not progress)
        for loaded in loaded_batches(items, backend.image_size, batch, readers):
            for entry in loaded:
                if entry.error is not None:
                    skipped.append((str(entry.item.path), entry.error))
                    report(f"skipped: {entry.error}")
            good, maps, scores = infer_loaded(backend, loaded)
            for entry, probabilities, score in zip(good, maps, scores):
                pending.append(writers.submit(write_image_outputs, output, entry, probabilities, float(score),
                                              thresholds, save_maps, overlays))
            while len(pending) > 2 * max(batch, workers):
                results.append(_written(pending.popleft()))
            bar.update(len(loaded))
        while pending:
            results.append(_written(pending.popleft()))
        bar.close()
    write_csv_atomic(output / "predictions.csv", PREDICTION_COLUMNS, [prediction_row(r, thresholds) for r in results])
    if skipped:
        write_csv_atomic(output / "skipped.csv", ("path", "reason"), skipped)
    return RunSummary(results, skipped, time.perf_counter() - start)


def _written(future: Future) -> ImageResult:
    try:
        return future.result()
    except OSError as error:
        raise UserError(f"cannot write the outputs ({error.strerror or error}); check the --output folder "
                        "and the free disk space") from None


# ---------------------------------------------------------------- calibration


def infer_paths(backend: Backend, paths: list[Path], batch: int, progress: bool, desc: str,
                workers: int = 4) -> tuple[list[Path], np.ndarray, list[np.ndarray], list[tuple[str, str]]]:
    """(readable paths, scores N, maps at network size, skipped (path, reason)) of `paths`."""
    items = [ImageItem(Path(p), str(i)) for i, p in enumerate(paths)]
    done, scores, maps, skipped = [], [], [], []
    with ThreadPoolExecutor(max(1, workers)) as readers:
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
        for loaded in loaded_batches(items, backend.image_size, batch, readers):
            skipped += [(str(e.item.path), e.error) for e in loaded if e.error is not None]
            good, batch_maps, batch_scores = infer_loaded(backend, loaded)
            done += [e.item.path for e in good]
            maps += list(batch_maps)
            scores += list(batch_scores)
            bar.update(len(loaded))
        bar.close()
    return done, np.asarray(scores, dtype=np.float64), maps, skipped


def _images_under(folder: Path) -> list[Path]:
    items, _ = find_images([folder])
    return [item.path for item in items]


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    for _, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)


def check_finite_outputs(scores: np.ndarray, maps: list[np.ndarray], source: str) -> None:
    if not np.all(np.isfinite(scores)) or not all(np.all(np.isfinite(m)) for m in maps):
        raise UserError(f"{source} gives NaN or infinite outputs; the checkpoint is damaged or diverged")


def calibrate_normal_folder(backend: Backend, folder: Path, fpr: float, pixel_fpr: float, batch: int,
                            progress: bool) -> tuple[dict[str, Any], list[str]]:
    """Thresholds at `fpr` (images) and `pixel_fpr` (pixels) on the normal images under `folder`."""
    paths = _images_under(folder)
    if not paths:
        raise UserError(f"--calibrate {folder}: no images found (searched recursively for {', '.join(PREDICT_EXTENSIONS)})")
    done, scores, maps, skipped = infer_paths(backend, paths, batch, progress, "calibrating")
    _report_skipped(skipped)
    if not done:
        raise UserError(f"--calibrate {folder}: none of its {len(paths)} images could be read")
    check_finite_outputs(scores, maps, "the model")
    return thresholds_from_normal(scores, maps, fpr, pixel_fpr, str(folder)), fpr_notes(len(done), fpr)


def read_defect_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A labelling mask at network size (h, w), bool: any non-zero value (in any channel) is defect,
    so 0/1, 0/255, 16-bit and coloured masks all work; resized with nearest neighbour."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise UserError(f"cannot read mask {path}: the file is missing, empty or not an image")
    defect = raw != 0 if raw.ndim == 2 else np.any(raw[..., :3] != 0, axis=2)
    height, width = size
    return cv2.resize(defect.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def find_mask(masks_dir: Path, image: Path) -> Path | None:
    """masks/<stem>.<ext> or masks/<stem>_mask.<ext> (as the folder dataset names them)."""
    if not masks_dir.is_dir():
        return None
    for stem in (image.stem, image.stem + "_mask"):
        for candidate in sorted(masks_dir.glob(f"{stem}.*")):
            if candidate.suffix.lower() in PREDICT_EXTENSIONS:
                return candidate
    return None


def calibrate_labelled_folder(backend: Backend, folder: Path, fpr: float, batch: int,
                              progress: bool) -> tuple[dict[str, Any], list[str]]:
    """F1-optimal image threshold on `folder/good` + `folder/defect`; F1-optimal pixel threshold when
    `folder/masks` holds masks (good pixels count as normal; defects without a mask are left out of
    the pixel search), else the pixel threshold at `fpr` on the good images' pixels."""
    good_paths, defect_paths = _images_under(folder / "good"), _images_under(folder / "defect")
    if not good_paths or not defect_paths:
        raise UserError(f"--calibrate-labelled {folder}: needs images in both good/ and defect/ "
                        f"(found {len(good_paths)} and {len(defect_paths)})")
    good_done, good_scores, good_maps, skipped = infer_paths(backend, good_paths, batch, progress, "calibrating good")
    bad_done, bad_scores, bad_maps, more = infer_paths(backend, defect_paths, batch, progress, "calibrating defect")
    _report_skipped(skipped + more)
    if not good_done or not bad_done:
        raise UserError(f"--calibrate-labelled {folder}: no readable image in good/ or defect/")
    check_finite_outputs(np.r_[good_scores, bad_scores], good_maps + bad_maps, "the model")
    scores = np.r_[good_scores, bad_scores]
    labels = np.r_[np.zeros(len(good_scores)), np.ones(len(bad_scores))]
    image_threshold, image_f1 = f1_optimal_threshold(scores, labels)
    notes = []
    pixel_maps, pixel_labels = list(good_maps), [np.zeros(m.shape, bool) for m in good_maps]
    with_masks = 0
    for path, anomaly_map in zip(bad_done, bad_maps):
        mask_path = find_mask(folder / "masks", path)
        if mask_path is None:
            continue
        pixel_maps.append(anomaly_map)
        pixel_labels.append(read_defect_mask(mask_path, anomaly_map.shape))
        with_masks += 1
    result: dict[str, Any] = {"image": image_threshold, "method": "f1", "f1_image": image_f1}
    if with_masks and any(label.any() for label in pixel_labels):
        pixel_threshold, pixel_f1 = f1_optimal_threshold(
            np.concatenate([m.reshape(-1) for m in pixel_maps]), np.concatenate([l.reshape(-1) for l in pixel_labels]))
        result.update(pixel=pixel_threshold, pixel_method="f1", f1_pixel=pixel_f1)
        if with_masks < len(bad_done):
            notes.append(f"{len(bad_done) - with_masks} defect image(s) have no mask in masks/: left out of the "
                         "pixel threshold")
    else:
        pixels = np.concatenate([m.reshape(-1) for m in good_maps])
        result.update(pixel=threshold_at_fpr(pixels, fpr), pixel_method="fpr", pixel_fpr=float(fpr))
        notes.append(f"no usable masks in {folder / 'masks'}: the pixel threshold is set at fpr {fpr} on the "
                     "good images' pixels")
    result.update(fpr=float(fpr), count=len(scores), count_good=len(good_scores), count_defect=len(bad_scores),
                  source=str(folder))
    return {key: result[key] for key in ("image", "pixel", "method", "fpr", "count", *sorted(set(result) - {
        "image", "pixel", "method", "fpr", "count"}))}, notes


def calibrate_on_normal_images(model: SuperSimpleNet, image_paths: list[Path | str], image_size: tuple[int, int],
                               device: torch.device | str, fpr: float = DEFAULT_FPR, journal: bool = True,
                               batch: int = 8, progress: bool = False) -> dict[str, Any]:
    """For training (`calibration_split`): the thresholds of model.yaml from held-out normal images,
    at `fpr` for images and pixels, with the eager model (its mode is restored afterwards).

    Thresholds are on sigmoid probabilities for both versions (`journal` is accepted so training
    can pass its version flag; it does not change the rule). Unreadable images are skipped with a
    message; none readable is a UserError."""
    if tuple(model.image_size) != tuple(image_size):
        raise ValueError(f"image_size {tuple(image_size)} differs from the model's {tuple(model.image_size)}")
    was_training = model.training
    try:
        backend = TorchBackend(model, torch.device(device), eager=True)
        done, scores, maps, skipped = infer_paths(backend, [Path(p) for p in image_paths], batch, progress,
                                                  "calibrating")
    finally:
        model.train(was_training)
    _report_skipped(skipped)
    if not done:
        raise UserError("calibration: none of the held-out normal images could be read")
    check_finite_outputs(scores, maps, "the trained model")
    return thresholds_from_normal(scores, maps, fpr, fpr, "calibration_split")


def store_thresholds_in_card(loaded: LoadedCheckpoint, thresholds: dict[str, Any]) -> Path:
    """Write `thresholds` into the model.yaml beside the weights, keeping the rest of the card; a
    checkpoint without a card gets one with the settings it was loaded with."""
    card = loaded.card
    if card is None:
        card = make_card(loaded.config, loaded.model, loaded.dataset, loaded.weights.parent.name,
                         backbone_weights_tag(loaded.model))
    card = {key: value for key, value in card.items() if key != "format"}
    card["thresholds"] = thresholds
    loaded.card = card
    return write_model_card(loaded.weights.parent, card)


def store_thresholds_in_sidecar(model_file: Path, sidecar: dict[str, Any], thresholds: dict[str, Any]) -> Path:
    sidecar["thresholds"] = {**thresholds, "calibrated": True}
    path = sidecar_path(model_file)
    write_json_atomic(path, sidecar)
    return path


# ---------------------------------------------------------------- the command


def _workers() -> int:
    import os

    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run_prediction(args: argparse.Namespace) -> None:
    """predict.py: optional calibration, then prediction of every input image."""
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    for name in ("fpr", "pixel_fpr"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
    if not args.inputs and not args.calibrate and not args.calibrate_labelled:
        raise UserError("nothing to do: pass images or folders to predict, or --calibrate / --calibrate-labelled")
    output = None
    if args.inputs:
        output = check_writable_dir(args.output, "--output")
    progress = not args.no_progress

    loaded: LoadedCheckpoint | None = None
    sidecar: dict[str, Any] | None = None
    if args.weights is not None:
        if args.backend not in (None, "torch"):
            raise UserError(f"--backend {args.backend} runs an exported file: pass --model FILE (see export.py)")
        loaded = load_checkpoint(args.weights, args.version, args.version_chosen, args.config, args.set, args.dataset)
        backend: Backend = TorchBackend(loaded.model, resolve_device(args.device), eager=args.eager)
        stored = (loaded.card or {}).get("thresholds")
    else:
        if args.eager:
            raise UserError("--eager applies to --weights (the PyTorch checkpoint), not to an exported --model")
        if args.set or args.config or args.version_chosen or args.dataset:
            raise UserError("--set, --config, --version and --dataset apply to --weights; an exported model "
                            "carries its settings (re-export to change them)")
        backend, sidecar = open_exported(args.model, args.backend, args.device)
        stored = sidecar.get("thresholds") if sidecar.get("thresholds", {}).get("calibrated") else None
        print(f"Model: {args.model} ({sidecar.get('format')}, {sidecar.get('precision')}); "
              f"input {backend.image_size[0]}x{backend.image_size[1]}")
    print(f"Backend: {backend.name}")
    thresholds = Thresholds.from_mapping(stored)

    calibration = None
    if args.calibrate:
        calibration, notes = calibrate_normal_folder(backend, args.calibrate, args.fpr,
                                                     args.pixel_fpr if args.pixel_fpr is not None else args.fpr,
                                                     args.batch, progress)
    elif args.calibrate_labelled:
        calibration, notes = calibrate_labelled_folder(backend, args.calibrate_labelled, args.fpr, args.batch, progress)
    if calibration is not None:
        for note in notes:
            print(f"note: {note}")
        if loaded is not None:
            where = store_thresholds_in_card(loaded, calibration)
        else:
            where = store_thresholds_in_sidecar(args.model, sidecar, calibration)
        thresholds = Thresholds.from_mapping(calibration)
        print(f"Thresholds: image {thresholds.image:.6f}, pixel {thresholds.pixel:.6f} ({thresholds.label}); "
              f"stored in {where}")
    elif not thresholds.calibrated:
        print(f"Thresholds: uncalibrated (image {UNCALIBRATED_THRESHOLD}, pixel {UNCALIBRATED_THRESHOLD}); "
              "calibrate with --calibrate NORMAL_DIR or --calibrate-labelled DIR")
    else:
        print(f"Thresholds: image {thresholds.image:.6f}, pixel {thresholds.pixel:.6f} ({thresholds.label})")

    if not args.inputs:
        return
    items, missing = find_images(args.inputs, exclude=output)
    for path, reason in missing:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    if not items:
        raise UserError(f"no images found in {' '.join(map(str, args.inputs))} "
                        f"(folders are searched recursively for {', '.join(PREDICT_EXTENSIONS)})")
    summary = predict_images(backend, items, thresholds, output, args.batch, args.save_maps, progress, _workers())
    summary.skipped[:0] = missing
    if missing:
        write_csv_atomic(output / "skipped.csv", ("path", "reason"), summary.skipped)
    defects = sum(r.defect for r in summary.results)
    write_json_atomic(output / "summary.json", {
        "model": str(args.weights or args.model), "backend": backend.name,
        "thresholds": {"image": thresholds.image, "pixel": thresholds.pixel, "calibrated": thresholds.calibrated,
                       "label": thresholds.label, **({"details": thresholds.details} if thresholds.details else {})},
        "decision_rule": "defect when score > image threshold; mask pixel when map value > pixel threshold",
        "images": len(summary.results), "defects": defects, "skipped": len(summary.skipped),
        "seconds": round(summary.seconds, 3),
    })
    rate = len(summary.results) / summary.seconds if summary.seconds > 0 else float("nan")
    print(f"Predicted {len(summary.results)} image(s): {defects} defect, {len(summary.results) - defects} normal "
          f"({thresholds.label}); {len(summary.skipped)} skipped; {rate:.1f} images/s")
    print(f"Results: {output / 'predictions.csv'} (overlays/, heatmaps/, masks/{', maps/' if args.save_maps else ''})")
    if not summary.results:
        raise UserError("no image could be read; see the skipped list above")


__all__ = [
    "Thresholds", "UNCALIBRATED_THRESHOLD", "LoadedCheckpoint", "load_checkpoint", "Backend", "TorchBackend",
    "OnnxRuntimeBackend", "OpenVinoBackend", "TorchScriptBackend", "open_exported", "sidecar_path", "find_images",
    "overlay_layout", "render_overlay", "heatmap_rgb", "predict_images", "calibrate_normal_folder",
    "calibrate_labelled_folder", "calibrate_on_normal_images", "store_thresholds_in_card", "run_prediction",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
