"""The frozen ImageNet backbone: which torchvision models are supported, where their weights
live, and how they are built (ImageNet IMAGENET1K_V1 weights or, for smoke tests, random)."""

import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.errors import UserError

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
    if backbone not in SUPPORTED_BACKBONES:
        raise UserError(f"backbone '{backbone}' is not supported; choose one of {', '.join(SUPPORTED_BACKBONES)}")
    if not pretrained:
        return torchvision.models.get_model(backbone, weights=None)
    weights = backbone_weights(backbone)
    target = backbone_weights_file(backbone)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a blocked network should fail, not hang
    try:
        return torchvision.models.get_model(backbone, weights=weights)
    except Exception as error:  # URLError, timeouts, a truncated file: all mean "no usable weights"
        raise UserError(
            f"ImageNet weights for {backbone} are not available ({type(error).__name__}): place "
            f"{target.name} from {weights.url} at {target} (TORCH_HOME={Path(torch.hub.get_dir()).parent}), "
            "or set pretrained=false for a smoke test with random weights"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
