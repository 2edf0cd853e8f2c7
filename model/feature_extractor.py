"""Frozen ImageNet backbone -> upscaled, concatenated, neighbourhood-averaged feature map (SPEC §1)."""

import socket
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

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


class FeatureExtractor(nn.Module):
    """Images B x 3 x H x W -> features B x C x fh x fw.

    Every chosen layer is resized (bilinear, align_corners=True) to twice the size of the
    first (largest) one, concatenated on channels and averaged over a patch_size neighbourhood.
    The backbone is frozen and always in eval mode.
    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        patch_size: int,
        image_size: tuple[int, int],
        pretrained: bool = True,
    ):
        super().__init__()
        unknown = [name for name in layers if name not in RESNET_STAGES]
        if unknown:
            raise UserError(f"layers {unknown} are not stages of {backbone}; use names like layer2, layer3")
        self.layers = list(layers)
        self.pretrained = pretrained
        full_model = build_backbone(backbone, pretrained)
        last_needed = max(RESNET_STAGES.index(name) for name in self.layers)
        # keep only the stages up to the deepest one used: layer4 and fc are dead weight here
        self.backbone = nn.ModuleDict({name: getattr(full_model, name) for name in RESNET_STAGES[: last_needed + 1]})
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.pooler = nn.AvgPool2d(kernel_size=patch_size, stride=1, padding=patch_size // 2)
        self.feature_dim = self._feature_dim(image_size)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics of the backbone must never move
        return self

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """The chosen layers' outputs, in the order of `layers`."""
        outputs = {}
        x = images
        for name, stage in self.backbone.items():
            x = stage(x)
            if name in self.layers:
                outputs[name] = x
        return [outputs[name] for name in self.layers]

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.backbone_features(images)
        height, width = features[0].shape[-2:]
        resized = [
            F.interpolate(f, size=(height * 2, width * 2), mode="bilinear", align_corners=True) for f in features
        ]
        return self.pooler(torch.cat(resized, dim=1))

    def _feature_dim(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        # The published code probes with torch.rand; doing the same keeps a seeded run's RNG stream
        # (and so the head's initial weights) identical to it.
        with torch.no_grad():
            features = self.backbone_features(torch.rand(1, 3, *image_size))
        channels = sum(f.shape[1] for f in features)
        height, width = features[0].shape[-2:]
        return channels, height * 2, width * 2
