"""Frozen ImageNet backbone -> upscaled, concatenated, neighbourhood-averaged feature map
(docs/method.md, "Feature extractor")."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from model.backbone import RESNET_STAGES, build_backbone


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
        return run_stages(self.backbone, images, self.layers)

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
