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

`check_backbone` checks any backbone (torchvision or `timm:<name>`, model/timm_backbone.py), its
layers and a `backbone_weights` file before any work; `build_resnet_stages` builds the stages the
torchvision extractor runs, with the ImageNet weights, a local file's (model/weights_file.py) or
random ones (docs/backbones.md).
"""

import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.config import TIMM_PREFIX, is_timm_backbone
from common.errors import UserError
from common.fileio import file_digest
from model.weights_file import UnusableWeights as _UnusableWeights
from model.weights_file import (check_weights_file, load_used_weights, read_state_dict, state_dict_mismatch,
                                weights_file_path)
from model.weights_file import first_line as _first_line

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
    state_dict = read_state_dict(path)
    shapes = {key: tensor.shape for key, tensor in model.state_dict().items()}
    mismatch = state_dict_mismatch(state_dict, shapes, shapes)
    if mismatch:
        raise _UnusableWeights(f"does not fit {type(model).__name__} ({mismatch})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # anything the key and shape comparison above did not catch
        raise _UnusableWeights(f"does not fit {type(model).__name__} ({_first_line(error)})") from None


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


# ---------------------------------------------------------------- every backbone: checks, extractor stages


def check_backbone(backbone: str, layers: list, backbone_weights: str = "") -> None:
    """Whether `backbone` (a torchvision name or `timm:<model name>`), its `layers` (stage names or timm
    feature indices) and `backbone_weights` (a state-dict file, '' for none) can be built, before any
    data is loaded: a UserError of one line naming what is available otherwise. Cheap: nothing is
    allocated (timm models and a weights file's check are built on the meta device), no random number
    is drawn, and a weights file is only mapped to read its keys and shapes."""
    if is_timm_backbone(backbone):
        from model.timm_backbone import check_timm_backbone

        check_timm_backbone(backbone[len(TIMM_PREFIX):], layers, backbone_weights)
        return
    if backbone not in SUPPORTED_BACKBONES:
        raise UserError(f"backbone '{backbone}' is not supported; choose one of {', '.join(SUPPORTED_BACKBONES)}, "
                        f"or {TIMM_PREFIX}<model name> for a timm backbone")
    unknown = [name for name in layers if name not in RESNET_STAGES]
    if unknown or not layers:
        raise UserError(f"layers {unknown or layers} are not stages of {backbone}; use names like layer2, layer3")
    if len(set(layers)) != len(layers):
        raise UserError(f"layers {layers} of {backbone} repeat a stage; use each stage once")
    if backbone_weights:
        with torch.device("meta"):
            full_model = torchvision.models.get_model(backbone, weights=None)
        stages = _kept_stages(full_model, layers)
        known = {key: tensor.shape for key, tensor in full_model.state_dict().items()}
        used = {key: tensor.shape for key, tensor in stages.state_dict().items()}
        check_weights_file(backbone_weights, used, known)


def _kept_stages(full_model: nn.Module, layers: list[str]) -> nn.ModuleDict:
    """The stem and the stages up to the deepest one used: layer4 and fc are dead weight here."""
    last_needed = max(RESNET_STAGES.index(name) for name in layers)
    return nn.ModuleDict({name: getattr(full_model, name) for name in RESNET_STAGES[: last_needed + 1]})


def build_resnet_stages(
    backbone: str, layers: list[str], pretrained: bool, backbone_weights: str = ""
) -> tuple[nn.ModuleDict, dict[str, str]]:
    """The torchvision stages the extractor runs (names as in the torchvision model) and where their
    weights came from (`weights_source`: kind torchvision, file or random; file: path and sha256)."""
    full_model = build_backbone(backbone, pretrained and not backbone_weights)
    stages = _kept_stages(full_model, layers)
    if backbone_weights:
        path = weights_file_path(backbone_weights)
        known = {key: tensor.shape for key, tensor in full_model.state_dict().items()}
        try:
            load_used_weights(stages, {key: key for key in stages.state_dict()}, read_state_dict(path), known)
        except _UnusableWeights as problem:
            raise UserError(f"backbone_weights file {path} {problem}; give the state dict of {backbone} saved "
                            "by torchvision") from None
        return stages, {"kind": "file", "path": str(path), "sha256": file_digest(path)}
    if pretrained:
        return stages, {"kind": "torchvision", "weights": "IMAGENET1K_V1", "file": backbone_weights_file(backbone).name}
    return stages, {"kind": "random"}
