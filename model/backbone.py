"""The frozen ImageNet backbone: which torchvision models are supported, where their weights
live, and how they are built (ImageNet IMAGENET1K_V1 weights or, for smoke tests, random).

The weights file is read here rather than by torchvision's weights API, because that API
unpickles the file without restriction and never checks its hash: a file copied by hand into
the checkpoints folder could run arbitrary code. Here the file is read with
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers, and anything
else is refused. Its SHA-256 is compared with the hash prefix in torchvision's file name; a
mismatch (a different or damaged file) is reported as one warning line, and loading goes on.
A missing file is downloaded to a temporary name next to the final one and only renamed into
place once it has loaded, so an interrupted or truncated download never sits under the final
name.
"""

import os
import pickle
import socket
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.errors import UserError
from common.fileio import file_digest

# ResNet-family stages in execution order; the extractor keeps the stem and the stages it needs.
RESNET_STAGES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
SUPPORTED_BACKBONES = ["wide_resnet50_2", "wide_resnet101_2", "resnet18", "resnet34", "resnet50", "resnet101"]
DOWNLOAD_TIMEOUT_S = 60


def backbone_weights(backbone: str):
    """torchvision's IMAGENET1K_V1 weights enum entry (V1: the noise scale is tuned to V1 features)."""
    return torchvision.models.get_model_weights(backbone).IMAGENET1K_V1


def backbone_weights_file(backbone: str) -> Path:
    """Where torchvision's weights API keeps (and looks for) this backbone's weights."""
    filename = backbone_weights(backbone).url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build_backbone(backbone: str, pretrained: bool) -> nn.Module:
    """The torchvision model, randomly initialised or with its ImageNet weights loaded (strictly)
    from $TORCH_HOME/hub/checkpoints, downloading them first when the file is not there."""
    if backbone not in SUPPORTED_BACKBONES:
        raise UserError(f"backbone '{backbone}' is not supported; choose one of {', '.join(SUPPORTED_BACKBONES)}")
    model = torchvision.models.get_model(backbone, weights=None)
    if not pretrained:
        return model
    url = backbone_weights(backbone).url
    target = backbone_weights_file(backbone)
    if target.exists():
        _warn_on_hash_mismatch(target, shown_as=target)
        try:
            _load_weights(model, target)
        except _UnusableWeights as problem:
            raise UserError(
                f"backbone weights file {target} {problem}; delete it to have it downloaded again, or replace it "
                f"with {target.name} from {url}"
            ) from None
    else:
        _download_and_load(model, backbone, url, target)
    return model


class _UnusableWeights(Exception):
    """Why a weights file cannot be used, worded to follow the file's name in a message."""


def _expected_hash_prefix(path: Path) -> str:
    """torchvision names weights files `<name>-<first hex digits of the SHA-256>.pth`."""
    return path.stem.rsplit("-", 1)[-1].lower()


def _warn_on_hash_mismatch(path: Path, shown_as: Path) -> None:
    """One `warning:` line on stderr when the file's SHA-256 lacks the prefix its name promises."""
    expected = _expected_hash_prefix(shown_as)
    try:
        actual = file_digest(path)
    except OSError:
        return  # unreadable: loading it reports the problem
    if not actual.startswith(expected):
        print(
            f"warning: {shown_as} has SHA-256 {actual[:len(expected)]}..., not {expected}... as its name says "
            "(a different or damaged file); loading it anyway",
            file=sys.stderr,
        )


def _load_weights(model: nn.Module, path: Path) -> None:
    """Read `path` as a plain tensor state dict (no arbitrary unpickling) and load it strictly."""
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The restricted unpickler refuses any global other than tensors and plain containers.
        # A damaged file can fail here too, so the message allows for both.
        raise _UnusableWeights(
            "was refused: it asks to unpickle more than tensors and plain containers (or is damaged), and nothing "
            f"in it was run ({_unpickler_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _UnusableWeights(f"is damaged or truncated ({_first_line(error)})") from None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise _UnusableWeights(f"is not a state dict of tensors (it holds a {type(state_dict).__name__})")
    mismatch = _state_dict_mismatch(model, state_dict)
    if mismatch:
        raise _UnusableWeights(f"does not fit {type(model).__name__} ({mismatch})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # anything the key and shape comparison above did not catch
        raise _UnusableWeights(f"does not fit {type(model).__name__} ({_first_line(error)})") from None


def _state_dict_mismatch(model: nn.Module, state_dict: Mapping) -> str:
    """Missing, unexpected and mis-shaped keys, summarised on one line ('' when it fits)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshaped = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" and {len(items) - 1} more" if len(items) > 1 else ""
            parts.append(f"{len(items)} {label} key{'s' if len(items) > 1 else ''}, e.g. {items[0]}{more}")
    return "; ".join(parts)


def _download_and_load(model: nn.Module, backbone: str, url: str, target: Path) -> None:
    """Download into a temporary file beside `target`, load it, and only then rename it into place."""

    def not_available(reason: str) -> UserError:
        return UserError(
            f"ImageNet weights for {backbone} are not available ({reason}): place "
            f"{target.name} from {url} at {target} (TORCH_HOME={Path(torch.hub.get_dir()).parent}), "
            "or set pretrained=false for a smoke test with random weights"
        )

    partial = None
    previous_timeout = socket.getdefaulttimeout()
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
            os.close(descriptor)
            partial = Path(name)
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a blocked network should fail, not hang
            torch.hub.download_url_to_file(url, str(partial), hash_prefix=None, progress=True)
        except Exception as error:  # URLError, HTTP errors, timeouts, a read-only folder
            raise not_available(type(error).__name__) from None
        finally:
            socket.setdefaulttimeout(previous_timeout)
        _warn_on_hash_mismatch(partial, shown_as=target)
        try:
            # A dropped connection can end the download early without an error; loading catches it.
            _load_weights(model, partial)
        except _UnusableWeights as problem:
            raise not_available(f"the downloaded file {problem}; nothing was saved") from None
        os.replace(partial, target)
        partial = None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _unpickler_reason(error: BaseException) -> str:
    """The restricted unpickler's own reason (e.g. the global it refused), without torch's advice
    on how to load the file unrestricted."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        for line in text.split(marker, 1)[1].splitlines():
            if line.strip():
                return line.strip().split(". ", 1)[0].rstrip(".")
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    """The error's first sentence on one line, after its type name."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
