import pickle
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from datamodules.sensum import (
    SENSUM_CATEGORIES,
    SENSUM_FOLDS,
    SENSUM_IMAGE_SIZES,
    check_sensum,
    load_sensum,
    train_positives_file,
)
from tests.datamodules.tree_helpers import make_sensum_category, write_sensum_split

SIZE = (24, 40)


def write_fold(root: Path, category: str, fold: int) -> None:
    write_sensum_split(root, category, fold, "train", "neg.pckl", [(0, True), (1, False), (2, True), (3, True)])
    write_sensum_split(root, category, fold, "train", "pos_100.pckl", [(0, True), (1, True)])
    write_sensum_split(root, category, fold, "train", "pos_50.pckl", [(0, True), (1, False)])
    write_sensum_split(root, category, fold, "test", "neg.pckl", [(4, True), (5, True)])
    write_sensum_split(root, category, fold, "test", "pos.pckl", [(2, True), ("3", False)])


@pytest.fixture
def sensum(tmp_path) -> Path:
    root = tmp_path / "SensumSODF"
    make_sensum_category(root, "capsule", num_negative=6, num_positive=4)
    write_fold(root, "capsule", 0)
    return root


def names(samples) -> list[str]:
    return ["/".join(Path(s.image_path).parts[-3:]) for s in samples]


def test_constants_match_the_spec():
    assert SENSUM_CATEGORIES == ("capsule", "softgel")
    assert SENSUM_IMAGE_SIZES == {"capsule": (320, 192), "softgel": (144, 144)}
    assert SENSUM_FOLDS == (0, 1, 2)
    assert [train_positives_file(r / 10) for r in (0, 1, 3, 7, 10)] == [
        "pos_0.pckl", "pos_10.pckl", "pos_30.pckl", "pos_70.pckl", "pos_100.pckl"
    ]


def test_fully_segmented_fold(sensum):
    split = load_sensum(sensum, "capsule", 0, 1.0, SIZE)
    assert (split.name, split.category, split.image_size, split.supervised) == ("sensum", "capsule_0", SIZE, True)
    # every listed negative trains, whatever its flag
    assert names(split.train_normal) == [f"negative/data/00{i}.png" for i in range(4)]
    assert names(split.train_anomalous) == ["positive/data/000.png", "positive/data/001.png"]
    assert all(s.mask_path == "" for s in split.train_normal)
    assert [Path(s.mask_path).parts[-3:] for s in split.train_anomalous] == [
        ("positive", "annotation", "000.png"), ("positive", "annotation", "001.png")
    ]
    assert names(split.test) == [
        "negative/data/004.png", "negative/data/005.png", "positive/data/002.png", "positive/data/003.png"
    ]
    assert [s.label for s in split.test] == [0, 0, 1, 1]


def test_partly_segmented_uses_only_segmented_positives(sensum):
    split = load_sensum(sensum, "capsule", 0, 0.5, SIZE)
    assert names(split.train_anomalous) == ["positive/data/000.png"]
    assert split.supervised


def test_ratio_zero_is_unsupervised_and_needs_no_pos_0_file(sensum):
    split = load_sensum(sensum, "capsule", 0, 0.0, SIZE)
    assert not split.supervised and not split.train_anomalous
    assert len(split.train) == 4 and len(split.test) == 4


def test_check_sensum_lists_exactly_what_is_missing(tmp_path, sensum):
    assert check_sensum(tmp_path / "absent") == [str(tmp_path / "absent")]
    make_sensum_category(sensum, "softgel", num_negative=1, num_positive=1)
    for category in SENSUM_CATEGORIES:
        for fold in SENSUM_FOLDS:
            write_fold(sensum, category, fold)
    assert check_sensum(sensum) == []
    (sensum / "sensum_splits/softgel/2/test/pos.pckl").unlink()
    (sensum / "sensum_splits/capsule/1/train/pos_100.pckl").unlink()
    for path in (sensum / "softgel/positive/annotation").iterdir():
        path.unlink()
    (sensum / "softgel/positive/annotation").rmdir()
    assert check_sensum(sensum) == [
        str(sensum / "sensum_splits/capsule/1/train/pos_100.pckl"),
        str(sensum / "softgel/positive/annotation"),
        str(sensum / "sensum_splits/softgel/2/test/pos.pckl"),
    ]


def test_errors_name_the_problem(sensum, tmp_path):
    with pytest.raises(UserError, match="unknown SensumSODF category 'tablet'"):
        load_sensum(sensum, "tablet", 0, 1.0, SIZE)
    with pytest.raises(UserError, match="fold must be one of 0, 1, 2, got 3"):
        load_sensum(sensum, "capsule", 3, 1.0, SIZE)
    with pytest.raises(UserError, match="SensumSODF directory .* not found"):
        load_sensum(tmp_path / "absent", "capsule", 0, 1.0, SIZE)
    with pytest.raises(UserError, match="pos_30.pckl not found \\(found: neg.pckl, pos_100.pckl, pos_50.pckl\\)"):
        load_sensum(sensum, "capsule", 0, 0.3, SIZE)
    write_sensum_split(sensum, "capsule", 0, "train", "pos_50.pckl", [(9, True)])
    with pytest.raises(UserError, match="009.png listed in .*pos_50.pckl not found"):
        load_sensum(sensum, "capsule", 0, 0.5, SIZE)
    write_sensum_split(sensum, "capsule", 0, "train", "pos_50.pckl", [("x1", True)])
    with pytest.raises(UserError, match="lists id 'x1', expected a whole number"):
        load_sensum(sensum, "capsule", 0, 0.5, SIZE)
    (sensum / "capsule/positive/annotation/001.png").unlink()
    with pytest.raises(UserError, match="001.png has no annotation"):
        load_sensum(sensum, "capsule", 0, 1.0, SIZE)


# --- journal (weak_labels) vs ICPR: which samples each regime trains on ---------------------------


def flags(samples) -> list[tuple[str, int, bool]]:
    return [(Path(s.image_path).name, s.label, s.is_segmented) for s in samples]


NEGATIVES = [(f"00{i}.png", 0, True) for i in range(4)]  # neg.pckl's (1, False) is forced segmented


@pytest.mark.parametrize("weak_labels", [False, True])
def test_ratio_one_is_fully_supervised_in_both_versions(sensum, weak_labels):
    split = load_sensum(sensum, "capsule", 0, 1.0, SIZE, weak_labels=weak_labels)
    assert flags(split.train) == NEGATIVES + [("000.png", 1, True), ("001.png", 1, True)]
    assert split.supervised and split.train_weak == []


def test_ratio_half_journal_keeps_the_unsegmented_positive(sensum):
    journal = load_sensum(sensum, "capsule", 0, 0.5, SIZE, weak_labels=True)
    assert flags(journal.train) == NEGATIVES + [("000.png", 1, True), ("001.png", 1, False)]
    assert journal.supervised and flags(journal.train_weak) == [("001.png", 1, False)]
    icpr = load_sensum(sensum, "capsule", 0, 0.5, SIZE, weak_labels=False)
    assert flags(icpr.train) == NEGATIVES + [("000.png", 1, True)]
    # the test set is the same, every sample segmented (pos.pckl's ("3", False) included)
    assert journal.test == icpr.test
    assert flags(journal.test) == [("004.png", 0, True), ("005.png", 0, True), ("002.png", 1, True), ("003.png", 1, True)]


def test_ratio_zero_journal_is_weakly_supervised_from_pos_0(sensum):
    with pytest.raises(UserError, match="pos_0.pckl not found"):
        load_sensum(sensum, "capsule", 0, 0.0, SIZE, weak_labels=True)
    write_sensum_split(sensum, "capsule", 0, "train", "pos_0.pckl", [(2, False), (3, False)])
    split = load_sensum(sensum, "capsule", 0, 0.0, SIZE, weak_labels=True)
    assert flags(split.train) == NEGATIVES + [("002.png", 1, False), ("003.png", 1, False)]
    assert split.supervised and len(split.train_weak) == 2
    assert split.info["ratio_segmented"] == 0.0
    # ICPR ignores pos_0.pckl: ratio 0 stays unsupervised
    assert flags(load_sensum(sensum, "capsule", 0, 0.0, SIZE).train) == NEGATIVES


@pytest.mark.parametrize("protocol", [2, 4])
def test_split_files_with_numpy_ids_and_flags_are_accepted(sensum, protocol):
    def write(part, name, entries):
        path = sensum / "sensum_splits" / "capsule" / "0" / part / name
        path.write_bytes(pickle.dumps(entries, protocol=protocol))

    write("train", "neg.pckl", [(np.int64(i), np.bool_(i != 1)) for i in range(4)])
    write("train", "pos_50.pckl", [(np.int32(0), np.bool_(True)), (np.uint8(1), np.bool_(False))])
    write("test", "neg.pckl", [(np.int64(4), np.bool_(True)), (np.int64(5), np.bool_(True))])
    write("test", "pos.pckl", [(np.int64(2), np.bool_(True)), (np.int64(3), np.bool_(False))])
    split = load_sensum(sensum, "capsule", 0, 0.5, SIZE, weak_labels=True)
    assert flags(split.train) == NEGATIVES + [("000.png", 1, True), ("001.png", 1, False)]
    assert names(split.test) == [
        "negative/data/004.png", "negative/data/005.png", "positive/data/002.png", "positive/data/003.png"
    ]
