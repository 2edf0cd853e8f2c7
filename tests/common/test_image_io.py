"""Image and mask reading and preprocessing (docs/method.md, "Data pipeline"), against hand computations with OpenCV."""

import cv2
import numpy as np
import pytest

from common.errors import UserError
from common.image_io import (
    defect_pixels,
    image_to_tensor_array,
    mask_storage,
    mask_to_array,
    read_mask,
    read_raw_mask,
    read_rgb,
    read_sample,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def write_rgb_png(path, rgb: np.ndarray):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_read_rgb_returns_rgb_uint8(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)  # red
    rgb[1, 1] = (0, 255, 0)  # green
    rgb[2, 2] = (0, 0, 255)  # blue
    rgb[3, 5] = (10, 120, 230)
    bgr = rgb[..., ::-1].copy()
    assert cv2.imwrite(str(tmp_path / "x.png"), bgr)  # cv2 writes BGR arrays
    image = read_rgb(tmp_path / "x.png")
    assert image.dtype == np.uint8
    assert image.shape == (4, 6, 3)
    assert np.array_equal(image, rgb)
    assert tuple(image[0, 0]) == (255, 0, 0)


def test_read_rgb_of_a_grayscale_file_has_three_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    image = read_rgb(tmp_path / "g.png")
    assert image.shape == (3, 4, 3)
    assert all(np.array_equal(image[..., c], gray) for c in range(3))


@pytest.mark.parametrize("reader", [read_rgb, read_mask])
def test_missing_and_unreadable_files_are_user_errors(tmp_path, reader):
    missing = tmp_path / "missing_file.png"
    with pytest.raises(UserError, match="missing_file.png"):
        reader(missing)
    garbage = tmp_path / "garbage_file.png"
    garbage.write_bytes(b"not a png at all" * 10)
    with pytest.raises(UserError, match="garbage_file.png"):
        reader(garbage)
    empty = tmp_path / "empty_file.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty_file.png"):
        reader(empty)


def test_image_to_tensor_array_matches_hand_computation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    out = image_to_tensor_array(image, (24, 40))
    resized = cv2.resize(image, (40, 24), interpolation=cv2.INTER_LINEAR)  # uint8 in, uint8 out
    assert resized.dtype == np.uint8
    expected = ((resized.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    assert out.shape == (3, 24, 40)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert np.allclose(out, expected, rtol=0, atol=1e-6)
    # resizing as floats (no uint8 rounding) would give other values: the order is pinned
    as_float = cv2.resize(image.astype(np.float32) / 255.0, (40, 24), interpolation=cv2.INTER_LINEAR)
    float_first = ((as_float - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(out - float_first).max() > 1e-3


def test_image_to_tensor_array_upscale_and_same_size():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(10, 7, 3), dtype=np.uint8)
    out = image_to_tensor_array(image, (25, 16))
    expected = ((cv2.resize(image, (16, 25), interpolation=cv2.INTER_LINEAR) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    assert np.allclose(out, expected, atol=1e-5)
    same = image_to_tensor_array(image, (10, 7))
    # channel 0 is red, normalised with the red mean/std
    assert same[0, 3, 2] == pytest.approx((image[3, 2, 0] / 255.0 - 0.485) / 0.229, abs=1e-5)
    assert same[2, 9, 6] == pytest.approx((image[9, 6, 2] / 255.0 - 0.406) / 0.225, abs=1e-5)


def test_mask_to_array_uses_inter_nearest():
    mask = np.arange(49, dtype=np.float32).reshape(7, 7) / 48.0
    out = mask_to_array(mask, (5, 5))
    nearest = cv2.resize(mask, (5, 5), interpolation=cv2.INTER_NEAREST)
    exact = cv2.resize(mask, (5, 5), interpolation=cv2.INTER_NEAREST_EXACT)
    assert out.dtype == np.float32 and out.shape == (5, 5)
    assert np.array_equal(out, nearest)
    assert not np.array_equal(out, exact)  # the two conventions pick other pixels here
    # rectangular, upscaling
    out = mask_to_array(mask, (10, 12))
    assert np.array_equal(out, cv2.resize(mask, (12, 10), interpolation=cv2.INTER_NEAREST))
    # values stay exactly the mask's (no interpolation)
    assert set(np.unique(out)) <= set(np.unique(mask))


def test_read_mask_scales_to_unit_range(tmp_path):
    gray = np.zeros((4, 4), dtype=np.uint8)
    gray[1:3, 1:3] = 255
    gray[0, 0] = 51
    cv2.imwrite(str(tmp_path / "m.png"), gray)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.float32
    assert mask[1, 1] == 1.0 and mask[3, 3] == 0.0 and mask[0, 0] == pytest.approx(0.2)


def test_read_sample(tmp_path):
    rgb = np.full((6, 8, 3), 100, dtype=np.uint8)
    image_path = write_rgb_png(tmp_path / "img.png", rgb)
    gray = np.zeros((6, 8), dtype=np.uint8)
    gray[2:4, 3:6] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), gray)

    image, mask = read_sample(image_path, None, 0)
    assert np.array_equal(image, rgb)
    assert mask.shape == (6, 8) and mask.dtype == np.float32 and not mask.any()

    image, mask = read_sample(image_path, "", 0)
    assert not mask.any()

    image, mask = read_sample(image_path, tmp_path / "mask.png", 1)
    assert np.array_equal(mask, gray.astype(np.float32) / 255.0)


def test_read_sample_mask_size_mismatch(tmp_path):
    image_path = write_rgb_png(tmp_path / "img.png", np.zeros((6, 8, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "mask.png"), np.zeros((8, 6), dtype=np.uint8))
    with pytest.raises(UserError, match="mask.png"):
        read_sample(image_path, tmp_path / "mask.png", 1)


def test_read_sample_missing_mask_for_anomalous(tmp_path):
    image_path = write_rgb_png(tmp_path / "img.png", np.zeros((6, 8, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="nomask.png"):
        read_sample(image_path, tmp_path / "nomask.png", 1)


# --- mask rules: "published" (mask / 255) and "nonzero" (the user's own folders) ----------------

DEFECT = (slice(1, 3), slice(2, 5))  # rows 1-2, columns 2-4 of a 4 x 6 mask


def expected_defect() -> np.ndarray:
    expected = np.zeros((4, 6), dtype=np.float32)
    expected[DEFECT] = 1.0
    return expected


def write_stored_mask(path, dtype, value, channels: int = 0):
    """A 4 x 6 mask with `value` (a number or a BGR(A) tuple) on DEFECT and zeros elsewhere."""
    shape = (4, 6, channels) if channels else (4, 6)
    stored = np.zeros(shape, dtype=dtype)
    stored[DEFECT] = value
    assert cv2.imwrite(str(path), stored)
    return path


@pytest.mark.parametrize("dtype, value, channels, storage", [
    (np.uint8, 255, 0, "0/255"),
    (np.uint8, 1, 0, "0/1"),
    (np.uint8, 7, 0, "8-bit grey levels"),
    (np.uint16, 1, 0, "16-bit"),
    (np.uint16, 65535, 0, "16-bit"),
    (np.uint8, (0, 0, 200), 3, "colour"),  # a red defect (BGR)
    (np.uint8, (0, 1, 0), 3, "colour"),
    (np.uint8, (0, 200, 0, 255), 4, "colour with alpha"),
])
def test_nonzero_rule_reads_every_storage_as_the_same_defect(tmp_path, dtype, value, channels, storage):
    path = write_stored_mask(tmp_path / "m.png", dtype, value, channels)
    mask = read_mask(path, "nonzero")
    assert mask.dtype == np.float32 and mask.shape == (4, 6)
    assert np.array_equal(mask, expected_defect())
    assert mask_storage(read_raw_mask(path)) == storage


def test_published_rule_is_unchanged_and_misreads_what_the_nonzero_rule_fixes(tmp_path):
    # the published datasets keep grayscale / 255 bit for bit
    gray = np.zeros((4, 6), dtype=np.uint8)
    gray[DEFECT] = 255
    gray[0, 0] = 51
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert np.array_equal(read_mask(tmp_path / "g.png"), gray.astype(np.float32) / 255.0)
    assert np.array_equal(read_mask(tmp_path / "g.png", "published"), read_mask(tmp_path / "g.png"))
    # 0/1 and 16-bit 0/1 masks: nearly or fully empty under the published rule (what the folder rule fixes)
    ones = write_stored_mask(tmp_path / "ones.png", np.uint8, 1)
    assert read_mask(ones).max() < 0.5  # every metric thresholds at 0.5: read as "no defect"
    sixteen = write_stored_mask(tmp_path / "sixteen.png", np.uint16, 1)
    assert not read_mask(sixteen).any()


def test_nonzero_rule_with_alpha(tmp_path):
    # opaque black background, coloured defect: the background is not defect
    opaque = np.zeros((4, 6, 4), dtype=np.uint8)
    opaque[..., 3] = 255
    opaque[DEFECT] = (0, 0, 255, 255)
    assert np.array_equal(defect_pixels(opaque), expected_defect() > 0)
    # a coloured pixel that is fully transparent is background
    transparent = opaque.copy()
    transparent[0, 0] = (255, 255, 255, 0)
    assert np.array_equal(defect_pixels(transparent), expected_defect() > 0)
    # black strokes on a transparent canvas: the alpha channel is the mask
    strokes = np.zeros((4, 6, 4), dtype=np.uint8)
    strokes[DEFECT] = (0, 0, 0, 255)
    assert np.array_equal(defect_pixels(strokes), expected_defect() > 0)
    cv2.imwrite(str(tmp_path / "strokes.png"), strokes)
    assert np.array_equal(read_mask(tmp_path / "strokes.png", "nonzero"), expected_defect())


def test_nonzero_rule_on_an_empty_mask_and_unknown_rule(tmp_path):
    empty = write_stored_mask(tmp_path / "e.png", np.uint8, 0)
    assert not read_mask(empty, "nonzero").any()
    assert mask_storage(read_raw_mask(empty)) == "0/255"
    with pytest.raises(ValueError, match="unknown mask rule"):
        read_mask(empty, "bogus")
    for name in ("missing.png", "garbage.png"):
        if name == "garbage.png":
            (tmp_path / name).write_bytes(b"\x89PNG but not really")
        with pytest.raises(UserError, match=name):
            read_mask(tmp_path / name, "nonzero")


def test_read_sample_passes_the_mask_rule(tmp_path):
    image_path = write_rgb_png(tmp_path / "img.png", np.full((4, 6, 3), 100, dtype=np.uint8))
    ones = write_stored_mask(tmp_path / "ones.png", np.uint8, 1)
    _, published = read_sample(image_path, ones, 1)
    _, nonzero = read_sample(image_path, ones, 1, mask_rule="nonzero")
    assert np.allclose(published, expected_defect() / 255.0)
    assert np.array_equal(nonzero, expected_defect())
    _, normal = read_sample(image_path, ones, 0, mask_rule="nonzero")  # a normal sample's mask stays zero
    assert not normal.any()
