"""Backbone weights read from a file without running any code in it, checked against the keys a
feature extractor uses, and loaded (docs/backbones.md).

A file is either a PyTorch file, read with `torch.load(..., weights_only=True)` (only tensors
and plain containers are rebuilt; anything else is refused and nothing in it runs), or a
`.safetensors` file (a header and raw tensors: nothing to run). It must hold the state dict of
the whole model as its own library saves it (torchvision or timm, classifier head included):
keys the feature extractor does not use (the head, stages after the last used layer) are
ignored, while a used key that is missing, a key the model does not have, or a tensor of another
shape is an error naming them. `num_batches_tracked` counters may be absent (eval BatchNorm never
reads them).
"""

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from common.errors import UserError

SAFETENSORS_SUFFIX = ".safetensors"
OPTIONAL_SUFFIX = "num_batches_tracked"


class UnusableWeights(Exception):
    """Why a weights file cannot be used, worded to follow the file's name in a message."""


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    """The tensors of `path` by key, read without running code; `mmap` maps a PyTorch zip file instead
    of reading it (cheap: for a check of keys and shapes). Raises UnusableWeights."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not mmap or "mmap" not in str(error):
                    raise
                # a legacy (non-zip) file cannot be mapped: read it whole
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The restricted unpickler refuses any global other than tensors and plain containers.
        # A damaged file can fail here too, so the message allows for both.
        raise UnusableWeights(
            "was refused: it asks to unpickle more than tensors and plain containers (or is damaged), and nothing "
            f"in it was run ({unpickler_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UnusableWeights(f"is damaged or truncated ({first_line(error)})") from None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state_dict.items()
    ):
        raise UnusableWeights(f"is not a state dict of tensors (it holds a {type(state_dict).__name__})")
    return dict(state_dict)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError, and torch dtype errors
        raise UnusableWeights(f"is damaged or not a safetensors file ({first_line(error)})") from None


def state_dict_mismatch(
    state_dict: Mapping[str, Tensor], used: Mapping[str, torch.Size], known: Mapping[str, torch.Size]
) -> str:
    """Used keys that are missing, keys the model does not know, and used keys of another shape, on
    one line ('' when the file fits). `used` and `known` map library key -> shape."""
    missing = [key for key in used if key not in state_dict and not key.endswith(OPTIONAL_SUFFIX)]
    unexpected = [key for key in state_dict if key not in known]
    misshaped = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(shape)}"
        for key, shape in used.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" and {len(items) - 1} more" if len(items) > 1 else ""
            parts.append(f"{len(items)} {label} key{'s' if len(items) > 1 else ''}, e.g. {items[0]}{more}")
    return "; ".join(parts)


def load_used_weights(
    target: nn.Module, library_keys: Mapping[str, str], state_dict: Mapping[str, Tensor],
    known: Mapping[str, torch.Size],
) -> None:
    """Load `state_dict` (library key -> tensor) into `target`, whose state-dict key k holds the library's
    key `library_keys[k]`. Raises UnusableWeights (see `state_dict_mismatch`)."""
    own = target.state_dict()
    used = {library_keys[key]: tensor.shape for key, tensor in own.items()}
    mismatch = state_dict_mismatch(state_dict, used, known)
    if mismatch:
        raise UnusableWeights(f"does not fit the backbone ({mismatch})")
    values = {key: state_dict.get(library_keys[key], own[key]) for key in own}  # only counters may be absent
    target.load_state_dict(values, strict=True)


def unpickler_reason(error: BaseException) -> str:
    """The restricted unpickler's own reason (e.g. the global it refused), without torch's advice
    on how to load the file unrestricted."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        for line in text.split(marker, 1)[1].splitlines():
            if line.strip():
                return line.strip().split(". ", 1)[0].rstrip(".")
    return first_line(error)


def first_line(error: BaseException) -> str:
    """The error's first sentence on one line, after its type name."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def check_weights_file(backbone_weights: str, used: Mapping, known: Mapping) -> None:
    """`backbone_weights` is a readable state dict that holds every `used` key at its shape and no key
    outside `known` (both map library key -> shape); a UserError naming the file otherwise."""
    path = weights_file_path(backbone_weights)
    try:
        mismatch = state_dict_mismatch(read_state_dict(path, mmap=True), used, known)
    except UnusableWeights as problem:
        raise UserError(f"backbone_weights file {path} {problem}; give a state dict saved by the backbone's "
                        "library (torch.save(model.state_dict(), ...) or .safetensors)") from None
    if mismatch:
        raise UserError(f"backbone_weights file {path} does not fit the backbone ({mismatch}); give the state dict "
                        "of this very architecture, saved by its library")


def weights_file_path(backbone_weights: str) -> Path:
    """The absolute path of the `backbone_weights` setting; a UserError when it names no file."""
    path = Path(backbone_weights).expanduser().absolute()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise UserError(f"backbone_weights file {path}: {what}; give a state-dict file of the backbone "
                        "(or backbone_weights='' for the library's pretrained weights)")
    return path
