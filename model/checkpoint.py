"""Reading and writing SuperSimpleNet checkpoints: the published `weights.pt`, a plain state dict
of the 19 trainable tensors (the frozen backbone is not stored; docs/method.md, "Checkpoints").
The model.yaml beside it is model/card.py's.

The functions take any module with `trainable_state_dict()` (a SuperSimpleNet), so the model
file can use them without this module importing it back."""

import io
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from common.errors import UserError
from common.fileio import write_bytes_atomic

WEIGHTS_NAME = "weights.pt"


def save_weights(model: nn.Module, directory: Path | str) -> Path:
    """Write `directory/weights.pt` atomically in the published format; returns its path."""
    path = Path(directory) / WEIGHTS_NAME
    # through a buffer: torch.save names the archive after the file it writes, and a
    # temporary name would make two identical checkpoints differ byte-wise
    buffer = io.BytesIO()
    torch.save(model.trainable_state_dict(), buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_checkpoint(path: Path | str) -> dict[str, Tensor]:
    """torch.load with weights_only=True; every failure is one UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; see weights/README.md for the expected layout")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, io.UnsupportedOperation) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"checkpoint {path} is corrupt or not a plain state dict ({first_line[:160]}); re-download or re-train it"
        ) from None
    except Exception as error:  # the unpickler raises assorted types for foreign objects
        raise UserError(
            f"checkpoint {path} could not be loaded safely ({type(error).__name__}); "
            "only plain tensor state dicts are accepted"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise UserError(f"checkpoint {path} is not a state dict of tensors; use a SuperSimpleNet weights.pt")
    return state_dict


def _listed(keys: list[str]) -> str:
    return f"{keys[:4]}{'...' if len(keys) > 4 else ''}"


def load_weights(model: nn.Module, path: Path | str) -> None:
    """Load a published-format checkpoint into `model` strictly: a missing, unexpected or
    mis-shaped key is a UserError naming the file."""
    state_dict = read_checkpoint(path)
    expected = model.trainable_state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_listed(missing)}"] if missing else []) + (
            [f"unexpected keys {_listed(unexpected)}"] if unexpected else []
        )
        raise UserError(
            f"checkpoint {path} does not fit this model ({'; '.join(parts)}); "
            "check backbone, layers and adapt_cls_features, or use a SuperSimpleNet weights.pt"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"checkpoint {path}: '{key}' has shape {tuple(state_dict[key].shape)}, "
                f"the model expects {tuple(tensor.shape)}; check backbone and layers"
            )
    missing_after, unexpected_after = model.load_state_dict(state_dict, strict=False)
    # only the frozen backbone may be absent from a checkpoint
    assert not unexpected_after and all(k.startswith("feature_extractor") for k in missing_after)
