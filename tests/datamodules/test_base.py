"""datamodules/base.py: items, flips, and errors raised inside DataLoader workers."""


import cv2
import numpy as np
import pytest
import torch

from common.errors import exit_on_user_error
from datamodules.base import (
    FLIP_HORIZONTAL,
    FLIP_ROTATE_180,
    FLIP_VERTICAL,
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
