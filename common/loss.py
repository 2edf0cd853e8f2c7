"""SuperSimpleNet's training loss (SPEC §2): truncated L1 + focal on the map, focal on the score."""

import torch
import torch.nn.functional as F
from torch import Tensor

TRUNCATION_THRESHOLD = 0.5
FOCAL_GAMMA = 4.0


def focal_loss(probabilities: Tensor, targets: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Mean of BCE(p, t) * (1 - p_t) ** gamma with p_t = p*t + (1-p)*(1-t); no alpha weighting."""
    probabilities = probabilities.float()
    targets = targets.float()
    bce = F.binary_cross_entropy(probabilities, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    return (bce * (1 - p_t) ** gamma).mean()


def truncated_l1_loss(map_logits: Tensor, mask: Tensor, threshold: float = TRUNCATION_THRESHOLD) -> Tensor:
    """mean(clip(map + th, 0)) over normal positions + mean(clip(-map + th, 0)) over anomalous ones.

    A term with no positions contributes 0.
    """
    normal = map_logits[mask == 0]
    anomalous = map_logits[mask > 0]
    loss = map_logits.new_zeros(())
    if normal.numel():
        loss = loss + torch.clip(normal + threshold, min=0).mean()
    if anomalous.numel():
        loss = loss + torch.clip(-anomalous + threshold, min=0).mean()
    return loss


def supersimplenet_loss(map_logits: Tensor, score_logits: Tensor, mask: Tensor, label: Tensor) -> Tensor:
    """Total loss of one step; map_logits and mask are N x 1 x fh x fw, score_logits and label N."""
    return (
        truncated_l1_loss(map_logits, mask)
        + focal_loss(torch.sigmoid(map_logits), mask)
        + focal_loss(torch.sigmoid(score_logits), label)
    )


def downsample_mask(mask: Tensor, feature_height: int, feature_width: int) -> Tensor:
    """GT masks B x H x W -> B x 1 x fh x fw: bilinear (align_corners=False), then < 0.5 -> 0 else 1."""
    resized = F.interpolate(
        mask.float().unsqueeze(1), size=(feature_height, feature_width), mode="bilinear", align_corners=False
    )
    return torch.where(resized < 0.5, torch.zeros_like(resized), torch.ones_like(resized))
