"""Frozen ImageNet backbone -> upscaled, concatenated, neighbourhood-averaged feature map
(docs/method.md, "Feature extractor"; the backbones: docs/backbones.md)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import TIMM_PREFIX, is_timm_backbone
from common.errors import UserError
from model.backbone import build_resnet_stages, check_backbone


def run_stages(stages: nn.ModuleDict, images: Tensor, layers: list[str]) -> list[Tensor]:
    """The backbone walk: run `stages` in order on `images`; the outputs of `layers`, in the order of `layers`.

    Shared by `FeatureExtractor.backbone_features` and the fast inference path (whose stages have
    their BatchNorms folded away), so both read the same layers the same way.
    """
    outputs = {}
    x = images
    for name, stage in stages.items():
        x = stage(x)
        if name in layers:
            outputs[name] = x
    return [outputs[name] for name in layers]


def backbone_layers(backbone: nn.Module, images: Tensor, layers: list) -> list[Tensor]:
    """The chosen layers' outputs, in the order of `layers`, each B x C_l x h_l x w_l: the torchvision
    stages (an nn.ModuleDict) walked by `run_stages`, or a timm backbone (model/timm_backbone.py
    `TimmFeatureLayers`), which gives them itself. Shared by the extractor and the fast path."""
    if isinstance(backbone, nn.ModuleDict):
        return run_stages(backbone, images, layers)
    return backbone(images)


class FeatureExtractor(nn.Module):
    """Images B x 3 x H x W -> features B x C x fh x fw.

    Every chosen layer is resized (bilinear, align_corners=True) to twice the size of the
    first (largest) one, concatenated on channels and averaged over a patch_size neighbourhood.
    The backbone is frozen and always in eval mode.
    """

    def __init__(
        self,
        backbone: str,
        layers: list[str] | list[int],
        patch_size: int,
        image_size: tuple[int, int],
        pretrained: bool = True,
        backbone_weights: str = "",
    ):
        super().__init__()
        if backbone_weights and not pretrained:
            raise UserError(f"backbone_weights={backbone_weights} loads weights from a file and pretrained=false "
                            "asks for random ones: drop one of the two")
        check_backbone(backbone, list(layers), backbone_weights)
        self.layers = list(layers)
        self.pretrained = pretrained
        self.backbone_name = backbone
        # torchvision: only the stages up to the deepest one used (layer4 and fc are dead weight here)
        if is_timm_backbone(backbone):
            from model.timm_backbone import build_timm_layers

            self.backbone, weights_source = build_timm_layers(
                backbone[len(TIMM_PREFIX):], self.layers, pretrained, backbone_weights)
        else:
            self.backbone, weights_source = build_resnet_stages(backbone, self.layers, pretrained, backbone_weights)
        # where the backbone's weights came from (model.yaml): kind torchvision | timm | file | random,
        # and for a file its path and sha256
        self.weights_source: dict[str, str] = weights_source
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
        return backbone_layers(self.backbone, images, self.layers)

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
        probe = torch.rand(1, 3, *image_size)
        with torch.no_grad():
            try:
                features = self.backbone_features(probe)
            except Exception as error:  # a timm model that needs another input size, or too small an input
                if isinstance(self.backbone, nn.ModuleDict):
                    raise
                detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
                raise UserError(f"backbone {self.backbone_name} cannot take a {image_size[0]}x{image_size[1]} input "
                                f"({detail}); choose another image_size or backbone") from None
        if any(f.dim() != 4 for f in features):
            raise UserError(f"backbone {self.backbone_name} gives no B x C x h x w feature maps at layers "
                            f"{self.layers}; choose a convolutional backbone")
        channels = sum(f.shape[1] for f in features)
        height, width = features[0].shape[-2:]
        return channels, height * 2, width * 2
