"""SuperSimpleNet's training loss: truncated L1 + focal on the map, focal on the score.

Two versions (docs/method.md):
- ICPR: every sample segmented, every pixel weighted 1 (`supersimplenet_loss` with
  `is_segmented=None` and `loss_weight=None`; this path is kept unchanged so ICPR runs
  stay bit-identical);
- journal ("Journal version" section): per-pixel weights and a per-sample
  `is_segmented` flag; the map terms use the segmented samples only, the score term
  all of them.

Also the downsampling of GT masks and loss-weight maps to the feature resolution.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

TRUNCATION_THRESHOLD = 0.5
FOCAL_GAMMA = 4.0


def focal_terms(probabilities: Tensor, targets: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-element BCE(p, t) * (1 - p_t) ** gamma with p_t = p*t + (1-p)*(1-t); no alpha weighting.

    probabilities and targets have the same shape; the result has that shape, float32.
    """
    probabilities = probabilities.float()
    targets = targets.float()
    bce = F.binary_cross_entropy(probabilities, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    return bce * (1 - p_t) ** gamma


def focal_loss(probabilities: Tensor, targets: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Mean of BCE(p, t) * (1 - p_t) ** gamma with p_t = p*t + (1-p)*(1-t); no alpha weighting."""
    return focal_terms(probabilities, targets, gamma).mean()


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


def truncated_l1_terms(map_logits: Tensor, mask: Tensor, threshold: float = TRUNCATION_THRESHOLD) -> Tensor:
    """Per-position truncated L1: clip(map + th, 0) where mask == 0, clip(-map + th, 0) where mask > 0.

    map_logits and mask have the same shape; so does the result (in map_logits' dtype).
    """
    return torch.where(
        mask > 0,
        torch.clip(-map_logits + threshold, min=0),
        torch.clip(map_logits + threshold, min=0),
    )


def _mean_or_zero(values: Tensor, zero: Tensor) -> Tensor:
    return values.mean() if values.numel() else zero


def supersimplenet_loss(
    map_logits: Tensor,
    score_logits: Tensor,
    mask: Tensor,
    label: Tensor,
    is_segmented: Tensor | None = None,
    loss_weight: Tensor | None = None,
) -> Tensor:
    """Total loss of one training step (a 0-dim tensor).

    Args:
        map_logits: N x 1 x fh x fw anomaly-map logits.
        score_logits: N anomaly-score logits.
        mask: N x 1 x fh x fw binary (0/1) GT mask at feature resolution.
        label: N image labels (0/1).
        is_segmented: N bools (or 0/1); False marks a label-only sample, whose map is not
            trained. None = every sample segmented.
        loss_weight: N x 1 x fh x fw per-pixel weights of the map terms. None = all ones.

    With both None this is the ICPR loss (docs/method.md): mean truncated L1 over normal
    positions + mean over anomalous positions + mean focal loss of sigmoid(map) vs mask +
    mean focal loss of sigmoid(score) vs label.

    Otherwise the journal loss (docs/method.md, "Journal version"): per-pixel truncated L1
    and per-pixel focal loss of sigmoid(map) vs mask, both multiplied by loss_weight; over
    the segmented samples only, the mean of the L1 values at anomalous pixels + their mean
    at normal pixels + the mean focal value (means over the selected elements, a part
    with no elements counting 0); plus the focal loss of sigmoid(score) vs label over all
    N samples. With every sample segmented and all weights 1 it equals the ICPR loss.
    """
    if is_segmented is None and loss_weight is None:
        return (
            truncated_l1_loss(map_logits, mask)
            + focal_loss(torch.sigmoid(map_logits), mask)
            + focal_loss(torch.sigmoid(score_logits), label)
        )

    seg_focal = focal_terms(torch.sigmoid(map_logits), mask)
    seg_l1 = truncated_l1_terms(map_logits, mask)
    if loss_weight is not None:
        loss_weight = loss_weight.to(seg_focal.device)
        seg_focal = seg_focal * loss_weight
        seg_l1 = seg_l1 * loss_weight
    if is_segmented is None:
        is_segmented = torch.ones(map_logits.shape[0], dtype=torch.bool, device=map_logits.device)
    selected = is_segmented.to(device=map_logits.device, dtype=torch.bool)

    seg_mask = mask[selected]
    seg_l1 = seg_l1[selected]
    zero = seg_focal.new_zeros(())
    normal_part = _mean_or_zero(seg_l1[seg_mask == 0], zero)
    anomalous_part = _mean_or_zero(seg_l1[seg_mask > 0], zero)
    focal_part = _mean_or_zero(seg_focal[selected], zero)
    return normal_part + anomalous_part + focal_part + focal_loss(torch.sigmoid(score_logits), label)


def downsample_mask(mask: Tensor, fh: int, fw: int, align_corners: bool = False) -> Tensor:
    """GT masks B x H x W -> B x 1 x fh x fw float32: bilinear, then < 0.5 -> 0 else 1.

    align_corners=False is the ICPR version, True the journal version (docs/method.md).
    """
    resized = F.interpolate(mask.float().unsqueeze(1), size=(fh, fw), mode="bilinear", align_corners=align_corners)
    return torch.where(resized < 0.5, torch.zeros_like(resized), torch.ones_like(resized))


def downsample_weights(weights: Tensor, fh: int, fw: int) -> Tensor:
    """Loss-weight maps B x H x W -> B x 1 x fh x fw float32: bilinear, align_corners=True, not binarised.

    Journal version (docs/method.md, "Journal version").
    """
    return F.interpolate(weights.float().unsqueeze(1), size=(fh, fw), mode="bilinear", align_corners=True)
