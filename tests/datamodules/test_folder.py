import math
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from datamodules.folder import load_folder, validate_folder
from tests.datamodules.tree_helpers import write_image, write_mask

SIZE = (32, 48)


def names(samples, base: Path) -> list[str]:
    return [str(Path(s.image_path).relative_to(base)) for s in samples]


@pytest.fixture
def simple(tmp_path) -> Path:
    """10 good (one .JPG), 5 defects: d0 masks/d0.png, d1 masks/d1_mask.png, d2, d3 masked, d4 no mask."""
    base = tmp_path / "parts"
    for i in range(9):
        write_image(base / "good" / f"g{i}.png", seed=i)
    write_image(base / "good" / "g9.JPG", seed=9)
    (base / "good" / "notes.txt").write_text("not an image")
    for i in range(5):
        write_image(base / "defect" / f"d{i}.png", seed=100 + i)
    for name in ("d0", "d1_mask", "d2", "d3"):
        write_mask(base / "masks" / f"{name}.png", defect=True)
    return base


def held_out_positions(count: int, num_test: int) -> set[int]:
    # The documented rule: seed 42, the first ceil(fraction * count) positions of a permutation.
    return set(np.random.default_rng(42).permutation(count)[:num_test].tolist())


def test_simple_layout_with_masks_is_supervised(simple):
    split = load_folder(simple.parent, "parts", SIZE)
    assert (split.name, split.category, split.image_size) == ("folder", "parts", SIZE)
    goods = [f"good/g{i}.png" for i in range(9)] + ["good/g9.JPG"]
    test_goods = held_out_positions(10, 2)
    assert names(split.train_normal, simple) == [g for k, g in enumerate(goods) if k not in test_goods]
    masked = ["defect/d0.png", "defect/d1.png", "defect/d2.png", "defect/d3.png"]
    test_defects = held_out_positions(4, 2)
    assert names(split.train_anomalous, simple) == [d for k, d in enumerate(masked) if k not in test_defects]
    assert names(split.test, simple) == (
        [g for k, g in enumerate(goods) if k in test_goods]
        + [d for k, d in enumerate(masked) if k in test_defects]
        + ["defect/d4.png"]
    )
    assert [s.label for s in split.test] == [0, 0, 1, 1, 1]
    assert split.supervised
    assert split.info["pixel_metrics"] is False and split.info["test_defects_without_mask"] == 1
    masks = {Path(s.image_path).name: s.mask_path for s in split.train + split.test if s.label == 1}
    assert masks == {
        "d0.png": str(simple / "masks/d0.png"),
        "d1.png": str(simple / "masks/d1_mask.png"),
        "d2.png": str(simple / "masks/d2.png"),
        "d3.png": str(simple / "masks/d3.png"),
        "d4.png": "",
    }
    assert load_folder(simple.parent, "parts", SIZE) == split  # deterministic


def test_good_only_is_unsupervised(tmp_path):
    base = tmp_path / "plain"
    for i in range(6):
        write_image(base / "good" / f"{i}.bmp", seed=i)
    split = load_folder(tmp_path, "plain", SIZE)
    assert not split.supervised
    assert len(split.train) == 4 and len(split.test) == 2  # ceil(0.2 * 6) = 2 held out
    assert split.info["pixel_metrics"] is True


def test_single_good_image_stays_in_training(tmp_path):
    base = tmp_path / "one"
    write_image(base / "good" / "a.png", seed=0)
    write_image(base / "defect" / "b.png", seed=1)
    split = load_folder(tmp_path, "one", SIZE)
    assert names(split.train, base) == ["good/a.png"]
    assert names(split.test, base) == ["defect/b.png"]


def test_all_defects_masked_keeps_pixel_metrics(simple):
    write_mask(simple / "masks" / "d4_mask.png", defect=True)
    split = load_folder(simple.parent, "parts", SIZE)
    assert split.info["pixel_metrics"] is True
    assert len(split.train_anomalous) == 2 and sum(s.label for s in split.test) == 3  # ceil(0.5 * 5)


@pytest.fixture
def mvtec_like(tmp_path) -> Path:
    base = tmp_path / "widget"
    for i in range(3):
        write_image(base / "train" / "good" / f"{i:03d}.png", seed=i)
    for i in range(2):
        write_image(base / "test" / "good" / f"{i:03d}.png", seed=10 + i)
        write_image(base / "test" / "crack" / f"{i:03d}.png", seed=20 + i)
    write_mask(base / "ground_truth" / "crack" / "000_mask.png", defect=True)
    return base


def test_mvtec_layout_is_unsupervised(mvtec_like):
    split = load_folder(mvtec_like.parent, "widget", SIZE)
    assert not split.supervised
    assert names(split.train, mvtec_like) == ["train/good/000.png", "train/good/001.png", "train/good/002.png"]
    assert names(split.test, mvtec_like) == [
        "test/crack/000.png", "test/crack/001.png", "test/good/000.png", "test/good/001.png"
    ]
    assert [s.label for s in split.test] == [1, 1, 0, 0]
    assert Path(split.test[0].mask_path).name == "000_mask.png" and split.test[1].mask_path == ""
    assert split.info == {"layout": "mvtec", "pixel_metrics": False, "test_defects_without_mask": 1}


def test_validate_prints_counts_missing_masks_and_ignored_files(simple):
    report = validate_folder(simple.parent, "parts").splitlines()
    assert report[0] == f"folder dataset {simple} (simple layout)"
    assert report[1].split() == ["split", "kind", "images", "masks"]
    rows = [line.split() for line in report[2:6]]
    assert rows == [
        ["train", "good", "8", "-"],
        ["train", "defect", "2", "2"],
        ["test", "good", "2", "-"],
        ["test", "defect", "3", "2"],
    ]
    assert report[6] == "image sizes (h x w): 24x40 (15)"
    assert report[7].startswith("training: fully supervised")
    assert "pixel metrics: off, 1 test defect(s) have no mask:" in report
    assert "  no mask: defect/d4.png" in report
    assert "  ignored (not an image): good/notes.txt" in report


def test_validate_refuses_unreadable_and_mis_sized_files(simple):
    (simple / "good" / "g3.png").write_bytes(b"not a png")
    write_mask(simple / "masks" / "d2.png", defect=True, height=10, width=20)
    with pytest.raises(UserError) as error:
        validate_folder(simple.parent, "parts")
    message = str(error.value)
    assert "\n" not in message
    assert "unreadable image good/g3.png" in message
    assert "mask masks/d2.png is 20x10 but its image is 40x24" in message


def test_layout_errors(tmp_path, simple):
    with pytest.raises(UserError, match="folder dataset .*absent not found"):
        load_folder(tmp_path, "absent", SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither train/good/ \\(MVTec layout\\) nor good/"):
        validate_folder(tmp_path, "empty")
    (tmp_path / "empty" / "good").mkdir()
    with pytest.raises(UserError, match="no good training images in good/"):
        load_folder(tmp_path, "empty", SIZE)


# --- journal (weak_labels): defects without masks -------------------------------------------------


@pytest.fixture
def unmasked(tmp_path) -> Path:
    """10 good images and 6 defects, none with a mask (no masks/ folder)."""
    base = tmp_path / "labels"
    for i in range(10):
        write_image(base / "good" / f"g{i}.png", seed=i)
    for i in range(6):
        write_image(base / "defect" / f"d{i}.png", seed=100 + i)
    return base


def test_defects_without_masks_train_as_label_only_under_weak_labels(unmasked):
    split = load_folder(unmasked.parent, "labels", SIZE, weak_labels=True)
    defects = [f"defect/d{i}.png" for i in range(6)]
    test_defects = held_out_positions(6, 3)  # ceil(0.5 * 6), seed 42
    assert names(split.train_anomalous, unmasked) == [d for k, d in enumerate(defects) if k not in test_defects]
    assert all(not s.is_segmented and s.mask_path == "" for s in split.train_anomalous)
    assert split.train_weak == split.train_anomalous and split.supervised
    test_anomalous = [s for s in split.test if s.label == 1]
    assert names(test_anomalous, unmasked) == [d for k, d in enumerate(defects) if k in test_defects]
    assert all(s.is_segmented for s in split.test)
    # the test defects have no mask: pixel metrics are withheld
    assert split.info["pixel_metrics"] is False and split.info["test_defects_without_mask"] == 3
    assert load_folder(unmasked.parent, "labels", SIZE, weak_labels=True) == split  # deterministic


def test_defects_without_masks_are_test_only_under_icpr(unmasked):
    split = load_folder(unmasked.parent, "labels", SIZE)
    assert not split.supervised and split.train_anomalous == []
    assert names([s for s in split.test if s.label == 1], unmasked) == [f"defect/d{i}.png" for i in range(6)]
    assert split.info["test_defects_without_mask"] == 6 and split.info["pixel_metrics"] is False


def test_summary_names_the_regime(unmasked, simple):
    weak = validate_folder(unmasked.parent, "labels", weak_labels=True).splitlines()
    assert [line.split() for line in weak[2:6]] == [
        ["train", "good", "8", "-"],
        ["train", "defect", "3", "0"],
        ["test", "good", "2", "-"],
        ["test", "defect", "3", "0"],
    ]
    assert "training: weakly supervised (3 defects without masks in train, trained on their image label)" in weak
    assert "pixel metrics: off, 3 test defect(s) have no mask:" in weak
    icpr = validate_folder(unmasked.parent, "labels").splitlines()
    assert "training: unsupervised (good images only)" in icpr
    assert "pixel metrics: off, 6 test defect(s) have no mask:" in icpr
    # masked and unmasked defects together: mixed supervision (d4 is the only unmasked one and is held out,
    # so add three more)
    for i in range(5, 8):
        write_image(simple / "defect" / f"d{i}.png", seed=100 + i)
    mixed = validate_folder(simple.parent, "parts", weak_labels=True).splitlines()
    unmasked_in_train = 4 - math.ceil(0.5 * 4)
    assert (
        f"training: mixed supervision (2 defects with masks, {unmasked_in_train} with image labels only, in train)"
        in mixed
    )
    assert validate_folder(simple.parent, "parts").splitlines()[7] == "training: fully supervised (2 defects with masks in train)"


def test_validate_warns_about_masks_of_no_image_and_tiny_images(simple):
    write_mask(simple / "masks" / "d7.png", defect=True)  # no defect/d7.*
    write_mask(simple / "masks" / "g0_mask.png", defect=True)  # a good image's name: still no defect image
    write_image(simple / "good" / "dot.png", seed=50, height=1, width=1)
    write_image(simple / "good" / "strip.png", seed=51, height=4, width=40)
    report = validate_folder(simple.parent, "parts").splitlines()
    warnings = [line for line in report if line.startswith("warning:")]
    assert warnings == [
        "warning: 2 mask(s) belong to no defect image and are not used: masks/d7.png, masks/g0_mask.png; "
        "check their names (masks/<stem>.png or <stem>_mask.png)",
        "warning: 2 image(s) have a side under 8 px (good/dot.png is 1x1 and 1 more): they are blown up to the "
        "input size and carry almost no detail",
    ], report


def test_validate_has_no_such_warning_for_a_clean_folder(simple, mvtec_like):
    for base in (simple, mvtec_like):
        report = validate_folder(base.parent, base.name)
        assert "belong to no defect image" not in report and "side under" not in report


def test_mvtec_layout_orphan_masks_are_reported(mvtec_like):
    write_mask(mvtec_like / "ground_truth" / "crack" / "009_mask.png", defect=True)
    report = validate_folder(mvtec_like.parent, "widget")
    assert "warning: 1 mask(s) belong to no defect image and are not used: ground_truth/crack/009_mask.png;" in report
