"""SuperSimpleNet (ICPR 2024), read top to bottom:
feature extractor -> feature adaptor -> anomaly generator (training only)
-> segmentation-detection head (`discriminator`) -> anomaly map generator (inference only).

Submodule and parameter names are the published checkpoint format (SPEC §1).
"""

import io
import math
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from common.fileio import atomic_path
from common.perlin import rand_perlin_2d
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
    """Training-time synthetic anomalies in feature space (no parameters).

    (features 2 x [B x C x fh x fw] or 1, mask B x 1 x fh x fw, label B) ->
    (noised features for 2B samples, new mask 2B x 1 x fh x fw, new label 2B).
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
        self, features: list[Tensor], mask: Tensor, label: Tensor
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        batch, _, height, width = mask.shape
        device = mask.device
        features = [torch.cat((f, f)) for f in features]
        mask = torch.cat((mask, mask))
        label = torch.cat((label, label))

        # one noise tensor, shared by every feature tensor (journal variant: raw and adapted)
        noise = torch.normal(
            mean=NOISE_MEAN, std=self.noise_std, size=features[0].shape, device=features[0].device
        )
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
        noised = [f + noise * noise_mask for f in features]
        return noised, new_mask, new_label


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


class SuperSimpleNet(nn.Module):
    """Images B x 3 x H x W (ImageNet-normalised) ->
    eval: (anomaly_map B x 1 x H x W, score_logits B);
    train: (map_logits, score_logits, mask, label) for 2B samples at fh x fw (B without noise).
    """

    def __init__(self, image_size: tuple[int, int], config: dict[str, Any]):
        super().__init__()
        self.image_size = tuple(image_size)
        self.config = config
        self.adapt_cls_features = bool(config.get("adapt_cls_features", True))
        self.use_noise = bool(config.get("noise", True))

        self.feature_extractor = FeatureExtractor(
            backbone=config.get("backbone", "wide_resnet50_2"),
            layers=list(config.get("layers", ["layer2", "layer3"])),
            patch_size=config.get("patch_size", 3),
            image_size=self.image_size,
            pretrained=config.get("pretrained", True),
        )
        channels, self.fh, self.fw = self.feature_extractor.feature_dim
        self.feature_adaptor = FeatureAdaptor(channels)
        self.discriminator = Discriminator(channels, stop_grad=bool(config.get("stop_grad", False)))
        self.anomaly_generator = AnomalyGenerator(
            feature_height=self.fh,
            feature_width=self.fw,
            noise_std=config.get("noise_std", 0.015),
            perlin=config.get("perlin", True),
            perlin_thr=config.get("perlin_thr", 0.2),
            no_anomaly=config.get("no_anomaly", "empty"),
            bad=config.get("bad", True),
            overlap=config.get("overlap", True),
        )
        self.anomaly_map_generator = AnomalyMapGenerator(output_size=self.image_size)

    @property
    def uses_pretrained_backbone(self) -> bool:
        return self.feature_extractor.pretrained

    def forward(self, images: Tensor, mask: Tensor | None = None, label: Tensor | None = None):
        features = self.feature_extractor(images)
        adapted = self.feature_adaptor(features)

        if not self.training:
            cls_features = adapted if self.adapt_cls_features else features
            anomaly_map, score = self.discriminator(adapted, cls_features)
            return self.anomaly_map_generator(anomaly_map), score

        if mask is None or label is None:
            raise ValueError("training forward needs mask (B x 1 x fh x fw) and label (B)")
        if self.use_noise:
            if self.adapt_cls_features:
                (adapted,), mask, label = self.anomaly_generator([adapted], mask, label)
                features = adapted
            else:
                (features, adapted), mask, label = self.anomaly_generator([features, adapted], mask, label)
        cls_features = adapted if self.adapt_cls_features else features
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
        path = Path(directory) / "weights.pt"
        # through a buffer: torch.save names the archive after the file it writes, and a
        # temporary name would make two identical checkpoints differ byte-wise
        buffer = io.BytesIO()
        torch.save(self.trainable_state_dict(), buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path

    def load_model(self, path: Path | str) -> None:
        """Load a published-format checkpoint strictly: a missing, unexpected or mis-shaped key is a UserError."""
        state_dict = read_checkpoint(path)
        expected = self.trainable_state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
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
        self.load_state_dict(state_dict, strict=False)  # backbone keys are deliberately absent


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


def build_optimizer(
    model: SuperSimpleNet, config: dict[str, Any]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.MultiStepLR]:
    """AdamW with the three published parameter groups, and MultiStepLR stepped once per epoch.

    Milestones: we pass the float products 0.8*epochs and 0.9*epochs exactly as the published
    code does. MultiStepLR compares them to the integer epoch counter, so when a product is not
    a whole number that milestone is never reached (e.g. 12 epochs: 9.6 and 10.8 never decay).
    Keeping this rule keeps published configurations bit-compatible.
    """
    optimizer = torch.optim.AdamW(
        [
            {"params": model.feature_adaptor.parameters(), "lr": config["adapt_lr"]},
            {"params": model.discriminator.seg_parameters(), "lr": config["seg_lr"], "weight_decay": 1e-5},
            {"params": model.discriminator.dec_parameters(), "lr": config["dec_lr"], "weight_decay": 1e-5},
        ]
    )
    epochs = config["epochs"]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[epochs * 0.8, epochs * 0.9], gamma=config["gamma"]
    )
    return optimizer, scheduler


def load_model(path: Path | str, image_size: tuple[int, int], config: dict[str, Any]) -> SuperSimpleNet:
    """Build a SuperSimpleNet for `image_size` / `config` and load `path` (a weights.pt) into it."""
    model = SuperSimpleNet(image_size=image_size, config=config)
    model.load_model(path)
    return model


__all__ = [
    "SuperSimpleNet",
    "FeatureAdaptor",
    "Discriminator",
    "AnomalyGenerator",
    "AnomalyMapGenerator",
    "build_optimizer",
    "load_model",
    "read_checkpoint",
    "gaussian_kernel_2d",
]
