"""datamodules/base.py: items, flips, journal mask processing, and errors raised inside DataLoader workers."""


import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from common.errors import exit_on_user_error
from datamodules.base import (
    FLIP_HORIZONTAL,
    FLIP_NONE,
    FLIP_ROTATE_180,
    FLIP_VERTICAL,
    MaskProcessing,
    Sample,
    SampleDataset,
    apply_flip,
    load_item,
    make_loader,
)


def write_png(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


def test_item_keys_types_and_normal_mask(tmp_path):
    image = write_png(tmp_path / "a.png", np.full((30, 40, 3), 128, np.uint8))
    item = load_item(Sample(image, "", 0), (16, 24))
    assert set(item) == {"image", "mask", "label", "image_path", "mask_path", "is_segmented"}
    assert item["is_segmented"] is True
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 24) and float(item["mask"].sum()) == 0.0
    assert item["label"] == 0 and item["image_path"] == image and item["mask_path"] == ""


def test_flips_are_exact():
    array = np.arange(12).reshape(3, 4)
    assert np.array_equal(apply_flip(array, FLIP_VERTICAL), array[::-1])
    assert np.array_equal(apply_flip(array, FLIP_HORIZONTAL), array[:, ::-1])
    assert np.array_equal(apply_flip(array, FLIP_ROTATE_180), np.rot90(array, 2))


def test_loader_handles_a_last_batch_of_one(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", np.full((8, 8, 3), i, np.uint8)) for i in range(5)]
    loader = make_loader(SampleDataset([Sample(p, "", 0) for p in paths], (8, 8)), batch_size=4, num_workers=0)
    sizes = [len(batch["label"]) for batch in loader]
    assert sizes == [4, 1]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_is_one_line_even_from_a_worker(tmp_path, capsys, num_workers):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    loader = make_loader(SampleDataset([Sample(str(bad), "", 0)], (8, 8)), batch_size=1, num_workers=num_workers)

    @exit_on_user_error
    def main():
        for _ in loader:
            pass

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.count("\n") == 0, stderr
    assert stderr.startswith("error: cannot read image ") and str(bad) in stderr and "Traceback" not in stderr


# --- journal mask processing: dilate -> flip -> weights -> resize (docs/method.md, "Journal version") ---

ORIGINAL = (24, 40)  # stored image size (h, w)
RESIZED = (12, 20)  # exactly half: nearest neighbour keeps rows/columns 0, 2, 4, ...


def asymmetric_mask() -> np.ndarray:
    """Two 8-connected defects of different size at the stored resolution (0/1 float32):
    an L near the top-left and a single pixel near the bottom-right."""
    mask = np.zeros(ORIGINAL, np.float32)
    mask[3:6, 4:9] = 1
    mask[6:10, 4:6] = 1
    mask[20, 33] = 1
    return mask


def dilate_by_hand(mask: np.ndarray, size: int) -> np.ndarray:
    """Square dilation as OpenCV defines it (anchor size // 2, nothing spreads in from outside):
    out[y, x] = max mask[y + dy, x + dx] for dy, dx in [-(size // 2), size - 1 - size // 2]."""
    height, width = mask.shape
    low, high = -(size // 2), size - 1 - size // 2
    out = np.zeros_like(mask)
    for y, x in np.argwhere(mask > 0):
        # a pixel at (y, x) reaches outputs (y - dy, x - dx)
        out[max(0, y - high): y - low + 1, max(0, x - high): x - low + 1] = 1
    return out


def weights_by_hand(mask: np.ndarray, max_weight: float, power: float) -> np.ndarray:
    """Per 8-connected region: EDT / its max, ** power, * max_weight; 1 outside the mask (scipy only)."""
    regions, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    weights = np.zeros(mask.shape, np.float64)
    for index in range(1, count + 1):
        distance = ndimage.distance_transform_edt(regions == index)
        weights += (distance / distance.max()) ** power * max_weight
    weights[mask == 0] = 1
    return weights.astype(np.float32)


def flip_by_hand(array: np.ndarray, flip: int) -> np.ndarray:
    return {0: array, 1: array[::-1], 2: array[:, ::-1], 3: array[::-1, ::-1]}[flip]


@pytest.fixture
def positive(tmp_path):
    image = write_png(tmp_path / "pos.png", np.random.default_rng(0).integers(0, 256, (*ORIGINAL, 3), dtype=np.uint8))
    mask = write_png(tmp_path / "pos_mask.png", (asymmetric_mask() * 255).astype(np.uint8))
    return image, mask


def test_hand_dilation_matches_opencv_and_is_not_flip_symmetric_for_even_sizes():
    mask = asymmetric_mask()
    for size in (3, 4, 7):
        assert np.array_equal(dilate_by_hand(mask, size), cv2.dilate(mask, np.ones((size, size))))
    # 4 x 4: one row/column up-left, two down-right, so dilating before or after a flip differs
    assert np.argwhere(dilate_by_hand(mask, 4)[18:, 30:]).min(0).tolist() == [1, 2]
    assert not np.array_equal(dilate_by_hand(mask[::-1], 4), dilate_by_hand(mask, 4)[::-1])


def test_hand_weights_on_a_known_region():
    # a 1 x 5 bar: EDT 1 everywhere inside (the image border is not outside) -> weight 3 on the bar
    mask = np.zeros((3, 7), np.float32)
    mask[1, 1:6] = 1
    expected = np.ones((3, 7), np.float32)
    expected[1, 1:6] = 3
    np.testing.assert_array_equal(weights_by_hand(mask, 3, 2), expected)
    # a 3 x 3 block touching the top edge: distances 1, 2, 1 / 1, 1, 1 / ... -> centre-top gets 3
    mask = np.zeros((5, 5), np.float32)
    mask[0:3, 1:4] = 1
    weights = weights_by_hand(mask, 3, 2)
    # EDT: (0, 2) and (1, 2) are 2 from columns 0/4 (row 3 is 3 and 2 away), (2, 2) and (0, 1) are 1
    assert weights[0, 2] == 3 and weights[1, 2] == 3
    assert weights[2, 2] == pytest.approx(0.75) and weights[0, 1] == pytest.approx(0.75)
    assert weights[4, 4] == 1 and weights[3, 2] == 1


@pytest.mark.parametrize("size", [7, 4])
@pytest.mark.parametrize("flip", [FLIP_NONE, FLIP_VERTICAL, FLIP_HORIZONTAL, FLIP_ROTATE_180])
def test_positive_item_is_dilated_then_flipped_then_weighted_then_resized(positive, flip, size):
    image_path, mask_path = positive
    processing = MaskProcessing(dilate=size, dt=(3.0, 2.0))
    item = load_item(Sample(image_path, mask_path, 1), RESIZED, flip, processing)

    processed = flip_by_hand(dilate_by_hand(asymmetric_mask(), size), flip)
    expected_mask = processed[::2, ::2]
    expected_weights = weights_by_hand(processed, 3.0, 2.0)[::2, ::2]
    assert item["mask"].dtype == torch.float32 and item["loss_weight"].dtype == torch.float32
    np.testing.assert_array_equal(item["mask"].numpy(), expected_mask)
    np.testing.assert_allclose(item["loss_weight"].numpy(), expected_weights, rtol=1e-6)
    assert item["is_segmented"] is True and item["label"] == 1
    # the weights peak at 3 inside each region and are 1 wherever the processed mask is 0
    assert float(item["loss_weight"].max()) == pytest.approx(3.0)
    assert torch.all(item["loss_weight"][item["mask"] == 0] == 1)
    assert torch.all(item["loss_weight"][item["mask"] > 0] < 3.0 + 1e-6)
    # the image is flipped the same way (a 2x bilinear downscale commutes with flips)
    plain = load_item(Sample(image_path, mask_path, 1), RESIZED)
    axes = {FLIP_NONE: [], FLIP_VERTICAL: [1], FLIP_HORIZONTAL: [2], FLIP_ROTATE_180: [1, 2]}[flip]
    assert torch.equal(item["image"], plain["image"].flip(axes) if axes else plain["image"])
    if flip != FLIP_NONE:
        assert not torch.equal(item["image"], plain["image"])


def test_item_weights_are_resized_with_nearest_neighbour_not_bilinear(positive):
    image_path, mask_path = positive
    item = load_item(Sample(image_path, mask_path, 1), RESIZED, FLIP_NONE, MaskProcessing(7, (3.0, 2.0)))
    full = weights_by_hand(dilate_by_hand(asymmetric_mask(), 7), 3.0, 2.0)
    bilinear = cv2.resize(full, RESIZED[::-1], interpolation=cv2.INTER_LINEAR)
    assert not np.allclose(item["loss_weight"].numpy(), bilinear)
    # every resized weight is one of the stored-resolution weights (no interpolated values)
    assert set(np.unique(item["loss_weight"].numpy())) <= set(np.unique(full))


def test_without_dilation_or_weights(positive):
    image_path, mask_path = positive
    item = load_item(Sample(image_path, mask_path, 1), RESIZED, FLIP_HORIZONTAL, MaskProcessing(dilate=0, dt=None))
    np.testing.assert_array_equal(item["mask"].numpy(), asymmetric_mask()[:, ::-1][::2, ::2])
    assert "loss_weight" not in item


def test_normal_item_gets_all_one_weights_and_no_dilation(tmp_path):
    image = write_png(tmp_path / "n.png", np.full((*ORIGINAL, 3), 90, np.uint8))
    item = load_item(Sample(image, "", 0), RESIZED, processing=MaskProcessing(7, (3.0, 2.0)))
    assert torch.equal(item["loss_weight"], torch.ones(RESIZED))
    assert float(item["mask"].abs().sum()) == 0 and item["is_segmented"] is True


def test_label_only_positive_gets_zero_mask_and_all_one_weights(positive):
    image_path, mask_path = positive
    weak = Sample(image_path, mask_path, 1, is_segmented=False)  # its GT file exists but must not be used
    for flip in (FLIP_NONE, FLIP_ROTATE_180):
        item = load_item(weak, RESIZED, flip, MaskProcessing(7, (3.0, 2.0)))
        assert item["is_segmented"] is False and item["label"] == 1
        assert torch.equal(item["mask"], torch.zeros(RESIZED))
        assert torch.equal(item["loss_weight"], torch.ones(RESIZED))
        assert item["mask_path"] == mask_path


def test_test_items_carry_no_loss_weight(positive):
    image_path, mask_path = positive
    dataset = SampleDataset([Sample(image_path, mask_path, 1)], RESIZED)
    item = dataset[0]
    assert "loss_weight" not in item
    # test masks are not dilated
    np.testing.assert_array_equal(item["mask"].numpy(), asymmetric_mask()[::2, ::2])
    batch = next(iter(make_loader(dataset, batch_size=1, num_workers=0)))
    assert "loss_weight" not in batch and batch["is_segmented"].tolist() == [True]
