"""Shared pieces of the engine tests: tiny random-weight models built from a settings dict,
hand-made batches, and the training loss written out independently of common/loss.py."""

import copy

import cv2
import numpy as np
import torch

from model.supersimplenet import SuperSimpleNet

SIZE = 32  # resnet18 at 32 x 32 px: 384 channels, 8 x 8 features
FEATURES = 8
CPU = torch.device("cpu")

_BUILT: dict = {}


def tiny_model(config: dict, seed: int = 0, **overrides) -> SuperSimpleNet:
    """A resnet18 model at 32 x 32 built through `SuperSimpleNet.from_config` (once per settings,
    then copied), in training mode. `overrides` change the settings dict, e.g. adapt_cls_features."""
    settings = {**config, "image_size": [SIZE, SIZE], **overrides}
    key = (seed, repr(sorted(settings.items())))
    if key not in _BUILT:
        torch.manual_seed(seed)
        _BUILT[key] = SuperSimpleNet.from_config(tuple(settings["image_size"]), settings)
    return copy.deepcopy(_BUILT[key]).train()


def gt_band_mask() -> torch.Tensor:
    """A 32 x 32 GT mask with a 4-row band (rows 1-4, cols 8-23) and a block (rows 16-23, cols 16-31).

    Downsampled to 8 x 8 (bilinear, then >= 0.5), see `expected_feature_mask`."""
    mask = torch.zeros(SIZE, SIZE)
    mask[1:5, 8:24] = 1
    mask[16:24, 16:32] = 1
    return mask


def expected_feature_mask(align_corners: bool) -> torch.Tensor:
    """`gt_band_mask` at 8 x 8, worked out by hand.

    align_corners=False (ICPR): output row i samples source row 4i + 1.5. Row 0 reads rows 1 and 2
    (both in the band) -> 1; row 1 reads rows 5, 6 -> 0. Columns 2-5 read 9.5 ... 21.5 -> in the band.
    align_corners=True (journal): output row i samples source row 31i/7. Row 0 reads row 0 -> 0;
    row 1 reads 4.43 = 0.57 x row 4 + 0.43 x row 5 = 0.57 -> 1. So the band moves from row 0 to row 1.
    The block: rows 4, 5 (17.5 / 17.7 and 21.5 / 22.1) and columns 4-7 under both rules.
    """
    mask = torch.zeros(FEATURES, FEATURES)
    mask[1 if align_corners else 0, 2:6] = 1
    mask[4:6, 4:8] = 1
    return mask


def make_batch(
    labels: list[int],
    masks: list[torch.Tensor] | None = None,
    is_segmented: list[bool] | None = None,
    loss_weight: torch.Tensor | None = None,
    seed: int = 1,
) -> dict:
    """A collated batch as the loaders give it: image B x 3 x 32 x 32, mask B x 32 x 32, label,
    is_segmented (and loss_weight B x 32 x 32 when given)."""
    generator = torch.Generator().manual_seed(seed)
    count = len(labels)
    batch = {
        "image": torch.randn(count, 3, SIZE, SIZE, generator=generator),
        "mask": torch.stack(masks) if masks is not None else torch.zeros(count, SIZE, SIZE),
        "label": torch.tensor(labels),
        "is_segmented": torch.tensor(is_segmented if is_segmented is not None else [True] * count),
        "image_path": [f"/nowhere/{i}.png" for i in range(count)],
        "mask_path": [""] * count,
    }
    if loss_weight is not None:
        batch["loss_weight"] = loss_weight
    return batch


def hand_loss(
    map_logits: torch.Tensor,
    score_logits: torch.Tensor,
    mask: torch.Tensor,
    label: torch.Tensor,
    selected: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> float:
    """docs/method.md "Loss" and "Journal version", written out in float64:
    truncated L1 (threshold 0.5) as mean over normal + mean over anomalous positions, plus the
    mean focal term (gamma 4, no alpha) of sigmoid(map) vs mask, all over the `selected` samples
    with per-pixel `weight`; plus the mean focal term of sigmoid(score) vs label over all samples."""
    m = map_logits.detach().double()
    s = score_logits.detach().double()
    y = mask.detach().double()
    t = label.detach().double()
    n = m.shape[0]
    selected = torch.ones(n, dtype=torch.bool) if selected is None else selected
    weight = torch.ones_like(m) if weight is None else weight.double()

    def focal(p, target):
        bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
        p_t = p * target + (1 - p) * (1 - target)
        return bce * (1 - p_t) ** 4

    l1 = torch.where(y > 0, torch.clamp(0.5 - m, min=0), torch.clamp(m + 0.5, min=0)) * weight
    pixel_focal = focal(torch.sigmoid(m), y) * weight
    l1, y_sel, pixel_focal = l1[selected], y[selected], pixel_focal[selected]
    total = 0.0
    for part in (l1[y_sel == 0], l1[y_sel > 0], pixel_focal):
        if part.numel():
            total += part.mean().item()
    return total + focal(torch.sigmoid(s), t).mean().item()


def write_rgb(path, rgb: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)
