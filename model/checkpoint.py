"""Reading and writing SuperSimpleNet checkpoints: the published `weights.pt` (a plain state dict
of the 19 trainable tensors; the frozen backbone is not stored; docs/method.md, "Checkpoints"),
and beside it our `model.yaml`, which says how the weights were made (version, settings,
backbone weights, calibrated thresholds) so that nothing has to be repeated to use them."""

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor

from common.errors import UserError
from common.fileio import atomic_path

if TYPE_CHECKING:  # the model imports this module; the type is only needed for annotations
    from model.supersimplenet import SuperSimpleNet

WEIGHTS_NAME = "weights.pt"


def save_weights(model: "SuperSimpleNet", directory: Path | str) -> Path:
    """Write `directory/weights.pt` atomically in the published format; returns its path."""
    path = Path(directory) / WEIGHTS_NAME
    # through a buffer: torch.save names the archive after the file it writes, and a
    # temporary name would make two identical checkpoints differ byte-wise
    buffer = io.BytesIO()
    torch.save(model.trainable_state_dict(), buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
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


def load_weights(model: "SuperSimpleNet", path: Path | str) -> None:
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


# --- model.yaml: how a checkpoint was made -------------------------------------------------------

MODEL_CARD_NAME = "model.yaml"
MODEL_CARD_FORMAT = 1


def model_card_path(weights_path: Path | str) -> Path:
    """The `model.yaml` that describes `weights_path` (the two sit in one folder)."""
    return Path(weights_path).parent / MODEL_CARD_NAME


def write_model_card(directory: Path | str, card: dict[str, Any]) -> Path:
    """Write `directory/model.yaml` atomically (plain YAML: numbers, strings, lists, mappings)."""
    path = Path(directory) / MODEL_CARD_NAME
    text = yaml.safe_dump({"format": MODEL_CARD_FORMAT, **card}, sort_keys=False, default_flow_style=None)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_model_card(weights_path: Path | str) -> dict[str, Any] | None:
    """The `model.yaml` beside `weights_path` as a mapping, None when there is none (published
    checkpoints); a file that is not a model card is one UserError naming it."""
    path = model_card_path(weights_path)
    if not path.is_file():
        return None
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be read ({reason}); delete it to use the version's defaults") from None
    if not isinstance(card, dict) or card.get("format") != MODEL_CARD_FORMAT or not isinstance(card.get("settings"), dict):
        raise UserError(f"{path} is not a SuperSimpleNet model.yaml (format {MODEL_CARD_FORMAT} with settings); "
                        "delete it to use the version's defaults")
    return card
