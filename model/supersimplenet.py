"""SuperSimpleNet (ICPR 2024 and its journal version, JIMS 2025), read top to bottom:
feature extractor -> feature adaptor -> anomaly generator (training only)
-> segmentation-detection head (`discriminator`) -> anomaly map generator (inference only).

Submodule and parameter names are the published checkpoint format (docs/method.md, "Checkpoints");
reading and writing checkpoints lives in model/checkpoint.py.
"""

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import SETTINGS
from common.perlin import rand_perlin_2d
from model.checkpoint import load_weights, save_weights
from model.feature_extractor import FeatureExtractor

NOISE_MEAN = 0.0
HIDDEN_DIM = 1024
DEC_CHANNELS = 128
BLUR_SIGMA = 4.0
PERLIN_SCALE_RANGE = (0, 6)  # scales 2**0 .. 2**5, torch.randint's upper bound is exclusive


def init_weights(module: nn.Module) -> None:
    """Xavier-normal weights for Conv2d/Linear, BatchNorm weight 1; biases keep PyTorch defaults."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.constant_(module.weight, 1)


class FeatureAdaptor(nn.Module):
    """B x C x fh x fw -> B x C x fh x fw: a per-position linear layer (1x1 conv with bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(channels, channels, kernel_size=1, stride=1)
        self.apply(init_weights)

    def forward(self, features: Tensor) -> Tensor:
        return self.projection(features)


class Discriminator(nn.Module):
    """Segmentation-detection head.

    (seg_features, cls_features), each B x C x fh x fw -> (map logits B x 1 x fh x fw, score logits B).
    The ICPR model passes the adapted features as both inputs.
    """

    def __init__(self, channels: int, stop_grad: bool, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.stop_grad = stop_grad
        self.seg = nn.Sequential(
            nn.Conv2d(channels, hidden_dim, kernel_size=1, stride=1),
            nn.BatchNorm2d(hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden_dim, 1, kernel_size=1, stride=1, bias=False),
        )
        self.dec_head = nn.Sequential(
            nn.Conv2d(channels + 1, DEC_CHANNELS, kernel_size=5, padding="same"),
            nn.BatchNorm2d(DEC_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.fc_score = nn.Linear(DEC_CHANNELS * 2 + 2, 1)
        self.apply(init_weights)

    def seg_parameters(self) -> list[nn.Parameter]:
        return list(self.seg.parameters())

    def dec_parameters(self) -> list[nn.Parameter]:
        return list(self.dec_head.parameters()) + list(self.fc_score.parameters())

    def forward(self, seg_features: Tensor, cls_features: Tensor) -> tuple[Tensor, Tensor]:
        anomaly_map = self.seg(seg_features)
        # stop_grad keeps the classification loss from shaping the segmentation head
        map_for_dec = anomaly_map.detach() if self.stop_grad else anomaly_map
        dec_out = self.dec_head(torch.cat((cls_features, map_for_dec), dim=1))

        map_max = torch.amax(anomaly_map, dim=(2, 3))
        map_avg = torch.mean(anomaly_map, dim=(2, 3))
        if self.stop_grad:
            map_max, map_avg = map_max.detach(), map_avg.detach()
        pooled = torch.cat((torch.amax(dec_out, dim=(2, 3)), torch.mean(dec_out, dim=(2, 3)), map_max, map_avg), dim=1)
        # reshape, not squeeze: a batch of one must stay a batch
        score = self.fc_score(pooled).reshape(-1)
        return anomaly_map, score


class AnomalyGenerator(nn.Module):
    """Training-time synthetic anomalies in feature space (no parameters; docs/method.md, "Anomaly generator").

    (adapted B x C x fh x fw, mask B x 1 x fh x fw, label B, raw B x C x fh x fw or None) ->
    (noised adapted 2B x C x fh x fw, new mask 2B x 1 x fh x fw, new label 2B, noised raw or None).
    The journal model passes the raw features too: the same noise and noise mask go to both.
    """

    def __init__(
        self,
        feature_height: int,
        feature_width: int,
        noise_std: float,
        perlin: bool,
        perlin_thr: float,
        no_anomaly: str,
        bad: bool,
        overlap: bool,
    ):
        super().__init__()
        self.feature_height = feature_height
        self.feature_width = feature_width
        self.noise_std = noise_std
        self.perlin = perlin
        self.perlin_thr = perlin_thr
        self.no_anomaly = no_anomaly
        self.bad = bad
        self.overlap = overlap
        # Perlin noise is drawn on a power-of-two grid, then resized to the feature size
        self.perlin_height = 1 << (feature_height - 1).bit_length()
        self.perlin_width = 1 << (feature_width - 1).bit_length()

    def perlin_masks(self, count: int) -> Tensor:
        """`count` binarised Perlin masks, count x 1 x fh x fw (int64 0/1), drawn from torch's global RNG."""
        masks = []
        low, high = PERLIN_SCALE_RANGE
        for _ in range(count):
            scale_x = 2 ** int(torch.randint(low, high, (1,)).item())
            scale_y = 2 ** int(torch.randint(low, high, (1,)).item())
            # Feature maps under 32 (inputs under 128 px) cannot hold 32 cells: clamp the scale.
            # The draws stay the same, so runs at the published sizes are unaffected.
            noise = rand_perlin_2d(
                (self.perlin_height, self.perlin_width),
                (min(scale_x, self.perlin_height), min(scale_y, self.perlin_width)),
            )
            noise = F.interpolate(
                noise.reshape(1, 1, self.perlin_height, self.perlin_width),
                size=(self.feature_height, self.feature_width),
                mode="bilinear",
                align_corners=False,
            )
            mask = torch.where(noise > self.perlin_thr, 1, 0)
            if torch.rand(1).item() > 0.5:
                if self.no_anomaly == "full":
                    mask = torch.ones_like(mask)
                elif self.no_anomaly == "empty":
                    mask = torch.zeros_like(mask)
            masks.append(mask)
        return torch.cat(masks)

    def forward(
        self, adapted: Tensor, mask: Tensor, label: Tensor, raw: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        batch, _, height, width = mask.shape
        device = mask.device
        adapted = torch.cat((adapted, adapted))
        raw = torch.cat((raw, raw)) if raw is not None else None
        mask = torch.cat((mask, mask))
        label = torch.cat((label, label))

        # one noise tensor, shared by the adapted and (journal) the raw features
        noise = torch.normal(mean=NOISE_MEAN, std=self.noise_std, size=adapted.shape, device=adapted.device)
        noise_mask = torch.ones(batch * 2, 1, height, width, device=device)
        if not self.bad:
            noise_mask = noise_mask * (1 - label.reshape(batch * 2, 1, 1, 1))
        if not self.overlap:
            noise_mask = noise_mask * (1 - mask)
        if self.perlin:
            noise_mask = noise_mask * self.perlin_masks(batch * 2).to(device)
        else:
            # the original SimpleNet scheme: the first copy stays clean, the second is all noise
            noise_mask[:batch] = 0

        new_mask = torch.where(mask + noise_mask > 0, 1.0, 0.0)
        has_anomaly = new_mask.reshape(batch * 2, -1).any(dim=1).to(torch.float32)
        new_label = torch.where(label + has_anomaly > 0, 1.0, 0.0)
        noised_raw = raw + noise * noise_mask if raw is not None else None
        return adapted + noise * noise_mask, new_mask, new_label, noised_raw


def gaussian_kernel_2d(sigma: float) -> Tensor:
    """The blur kernel of torchvision's GaussianBlur with size 2*ceil(3*sigma)+1, K x K float32."""
    kernel_size = 2 * math.ceil(3 * sigma) + 1
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel_1d = pdf / pdf.sum()
    return torch.mm(kernel_1d[:, None], kernel_1d[None, :])


class AnomalyMapGenerator(nn.Module):
    """B x 1 x fh x fw logits -> B x 1 x H x W: bilinear upscaling, then a sigma-4 Gaussian blur
    (kernel 25, reflect padding) as one fixed convolution."""

    def __init__(self, output_size: tuple[int, int], sigma: float = BLUR_SIGMA):
        super().__init__()
        self.output_size = tuple(output_size)
        kernel = gaussian_kernel_2d(sigma)
        self.padding = kernel.shape[-1] // 2
        # a buffer so it follows .to(device/dtype), but not part of the checkpoint
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, anomaly_map: Tensor) -> Tensor:
        upscaled = F.interpolate(anomaly_map, size=self.output_size, mode="bilinear", align_corners=False)
        padded = F.pad(upscaled, [self.padding] * 4, mode="reflect")
        return F.conv2d(padded, self.kernel.to(padded.dtype))


def _default(name: str) -> Any:
    return SETTINGS[name].default


# The constructor arguments that a run's settings provide (SuperSimpleNet.from_config).
MODEL_SETTINGS = (
    "backbone", "layers", "patch_size", "pretrained", "adapt_cls_features", "stop_grad",
    "noise", "noise_std", "perlin", "perlin_thr", "no_anomaly", "bad", "overlap", "backbone_weights",
)


class SuperSimpleNet(nn.Module):
    """Images B x 3 x H x W (ImageNet-normalised) ->
    eval: (anomaly_map B x 1 x H x W, score_logits B);
    train: (map_logits, score_logits, mask, label) for 2B samples at fh x fw (B without noise).

    Defaults are the published unsupervised configuration (common/config.py `SETTINGS`);
    `adapt_cls_features=False` is the journal model (classification branch on raw features).
    `backbone` is a torchvision name or `timm:<model name>` (docs/backbones.md); `backbone_weights`
    a local state-dict file for it ('' = the library's pretrained weights, or random ones when
    pretrained=False).
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        *,
        backbone: str = _default("backbone"),
        layers: tuple[str, ...] | list[str] | list[int] = tuple(_default("layers")),
        patch_size: int = _default("patch_size"),
        pretrained: bool = _default("pretrained"),
        adapt_cls_features: bool = _default("adapt_cls_features"),
        stop_grad: bool = _default("stop_grad"),
        noise: bool = _default("noise"),
        noise_std: float = _default("noise_std"),
        perlin: bool = _default("perlin"),
        perlin_thr: float = _default("perlin_thr"),
        no_anomaly: str = _default("no_anomaly"),
        bad: bool = _default("bad"),
        overlap: bool = _default("overlap"),
        backbone_weights: str = _default("backbone_weights"),
    ):
        super().__init__()
        self.image_size = tuple(image_size)
        self.backbone_name = backbone
        self.adapt_cls_features = adapt_cls_features
        self.use_noise = noise

        self.feature_extractor = FeatureExtractor(
            backbone=backbone, layers=list(layers), patch_size=patch_size, image_size=self.image_size,
            pretrained=pretrained, backbone_weights=backbone_weights,
        )
        channels, self.fh, self.fw = self.feature_extractor.feature_dim
        self.feature_adaptor = FeatureAdaptor(channels)
        self.discriminator = Discriminator(channels, stop_grad=stop_grad)
        self.anomaly_generator = AnomalyGenerator(
            feature_height=self.fh,
            feature_width=self.fw,
            noise_std=noise_std,
            perlin=perlin,
            perlin_thr=perlin_thr,
            no_anomaly=no_anomaly,
            bad=bad,
            overlap=overlap,
        )
        self.anomaly_map_generator = AnomalyMapGenerator(output_size=self.image_size)

    @classmethod
    def from_config(cls, image_size: tuple[int, int], settings: dict[str, Any]) -> "SuperSimpleNet":
        """A model built from a run's settings (every key of `MODEL_SETTINGS` must be present)."""
        return cls(image_size, **{name: settings[name] for name in MODEL_SETTINGS})

    @property
    def uses_pretrained_backbone(self) -> bool:
        """False only for random backbone weights (pretrained=false)."""
        return self.feature_extractor.weights_source["kind"] != "random"

    def forward(self, images: Tensor, mask: Tensor | None = None, label: Tensor | None = None):
        features = self.feature_extractor(images)
        adapted = self.feature_adaptor(features)

        if not self.training:
            cls_features = adapted if self.adapt_cls_features else features
            anomaly_map, score = self.discriminator(adapted, cls_features)
            return self.anomaly_map_generator(anomaly_map), score

        if mask is None or label is None:
            raise ValueError("training forward needs mask (B x 1 x fh x fw) and label (B)")
        raw = None if self.adapt_cls_features else features
        if self.use_noise:
            adapted, mask, label, raw = self.anomaly_generator(adapted, mask, label, raw)
        cls_features = adapted if self.adapt_cls_features else raw
        anomaly_map, score = self.discriminator(adapted, cls_features)
        return anomaly_map, score, mask, label

    def trainable_state_dict(self) -> "OrderedDict[str, Tensor]":
        """Every state-dict entry except the frozen backbone: the published checkpoint content."""
        return OrderedDict(
            (name, tensor.detach().cpu())
            for name, tensor in self.state_dict().items()
            if not name.startswith("feature_extractor")
        )

    def save_model(self, directory: Path | str) -> Path:
        """Write `directory/weights.pt` atomically (published format); returns its path."""
        return save_weights(self, directory)

    def load_model(self, path: Path | str) -> None:
        """Load a published-format weights.pt strictly (model/checkpoint.py `load_weights`)."""
        load_weights(self, path)


__all__ = [
    "SuperSimpleNet",
    "FeatureAdaptor",
    "Discriminator",
    "AnomalyGenerator",
    "AnomalyMapGenerator",
    "MODEL_SETTINGS",
    "gaussian_kernel_2d",
]
