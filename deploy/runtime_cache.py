"""predict.py's default path for a checkpoint: the fastest exact runtime that is installed.

On the CPU, the project's exports run faster in OpenVINO and ONNX Runtime than its torch fast path
(docs/deployment.md, "Speed"), and they give the same outputs up to float rounding (the export
is checked against the eager model when it is written). So `predict.py --weights W` exports W once,
beside it (`weights.cache.xml` + `.bin` for OpenVINO, `weights.cache.onnx` for ONNX Runtime, each
with its sidecar JSON), and later runs reuse that file while its `cache_key` matches: the weights'
SHA-256, the settings that shape the model (from model.yaml), the input size and the versions of
torch and of the runtime. Anything else (new weights, an edited card, an upgrade) exports again.

Where no runtime is installed, on a GPU, with `--backend torch` or `--eager`, or when the export
cannot be written or does not reproduce the model (one `warning:` line says why), predict runs
the torch fast path as before.
"""

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.fileio import file_digest, write_json_atomic
from deploy.backends import Backend, OnnxRuntimeBackend, OpenVinoBackend, TorchBackend, read_sidecar, sidecar_path
from deploy.checkpoints import LoadedCheckpoint
from deploy.export import export_model
from model.supersimplenet import MODEL_SETTINGS

# fastest first, as measured at predict's default batch 8 on a 2-core CPU (docs/deployment.md)
RUNTIMES = ("openvino", "onnxruntime")
EXPORT_FORMATS = {"openvino": "openvino", "onnxruntime": "onnx"}
CACHE_SUFFIXES = {"openvino": ".cache.xml", "onnxruntime": ".cache.onnx"}
CACHE_FORMAT = 1


def installed_runtimes() -> list[str]:
    """The runtimes of RUNTIMES whose Python package is installed, fastest first."""
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def cache_path(weights: Path, runtime: str) -> Path:
    """`<weights folder>/<weights stem>.cache.xml|.onnx`."""
    weights = Path(weights)
    return weights.with_name(weights.stem + CACHE_SUFFIXES[runtime])


def cache_key(loaded: LoadedCheckpoint, runtime: str) -> dict[str, Any]:
    """What the cached export must have been made from to stand for `loaded` today."""
    module = importlib.import_module(runtime)
    return {
        "format": CACHE_FORMAT,
        "weights_sha256": file_digest(loaded.weights),
        "settings": {key: loaded.config.get(key) for key in (*MODEL_SETTINGS, "version")},
        "image_size": list(loaded.image_size),
        "torch": torch.__version__,
        runtime: getattr(module, "__version__", "unknown"),
    }


def _open(runtime: str, path: Path, device_name: str, sidecar: dict[str, Any]) -> Backend:
    if runtime == "openvino":
        return OpenVinoBackend(path, device_name, sidecar)
    return OnnxRuntimeBackend(path, device_name, sidecar)


def _cached_sidecar(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a cached export made from `key`, None when there is none (or another one)."""
    if not path.is_file() or not sidecar_path(path).is_file():
        return None
    try:
        sidecar = read_sidecar(path)
    except UserError:
        return None
    return sidecar if sidecar.get("cache_key") == key else None


def _remove(path: Path) -> None:
    for stale in (path, sidecar_path(path), path.with_suffix(".bin") if path.suffix == ".xml" else None):
        if stale is not None and stale.is_file():
            stale.unlink()


def cached_backend(loaded: LoadedCheckpoint, runtime: str, device_name: str) -> Backend:
    """`loaded` running in `runtime`, from the export cached beside its weights (made now when there
    is none that fits). A UserError when the export cannot be made, written or opened."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {RUNTIMES}")
    if runtime not in installed_runtimes():
        raise UserError(f"--backend {runtime}: the {runtime} package is not installed; install the export extras "
                        "with `.venv/bin/pip install -r requirements-export.txt` or use --backend torch")
    path = cache_path(loaded.weights, runtime)
    key = cache_key(loaded, runtime)
    sidecar = _cached_sidecar(path, key)
    if sidecar is None:
        print(f"Exporting {loaded.weights} for {runtime} (once: the export is kept at {path} and reused while the "
              "weights and model.yaml stay as they are; --backend torch skips this)", flush=True)
        try:
            sidecar, _ = export_model(loaded, EXPORT_FORMATS[runtime], "fp32", True, path, check=True)
        except UserError:
            _remove(path)  # a file that does not reproduce the model is not kept as a cache
            raise
        sidecar["cache_key"] = key
        write_json_atomic(sidecar_path(path), sidecar)
    backend = _open(runtime, path, device_name, sidecar)
    backend.name = f"{runtime} (cached export {path.name} of {loaded.weights.name})"
    return backend


def default_backend(loaded: LoadedCheckpoint, device: torch.device, device_name: str) -> Backend:
    """The fastest exact backend for `loaded` on `device`: on the CPU the first installed runtime of
    RUNTIMES through its cached export, else (a GPU, no runtime, or an export that cannot be had:
    one warning line) the torch fast path."""
    if device.type == "cpu":
        for runtime in installed_runtimes():
            try:
                return cached_backend(loaded, runtime, device_name)
            except (UserError, OSError) as error:
                reason = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
                print(f"warning: predicting with the torch fast path: no {runtime} export of {loaded.weights} "
                      f"({' '.join(reason.split())[:300]})", file=sys.stderr)
                break
    return TorchBackend(loaded.model, device)


__all__ = ["RUNTIMES", "installed_runtimes", "cache_path", "cache_key", "cached_backend", "default_backend"]
