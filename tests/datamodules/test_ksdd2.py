import pickle

import numpy as np
import pytest

from common.errors import UserError
from datamodules.ksdd2 import (
    KSDD2_IMAGE_SIZE,
    NUM_SEGMENTED_CHOICES,
    load_ksdd2,
    split_file_path,
    write_default_splits,
)
from datamodules.safe_pickle import dump_plain_pickle, load_plain_pickle
from tests.datamodules.tree_helpers import make_ksdd2_tree, write_image

SIZE = (24, 40)


@pytest.fixture
def ksdd2(tmp_path):
    root = tmp_path / "KolektorSDD2"
    ids = make_ksdd2_tree(root, train=(5, 60), test=(3, 2))
    return root, ids


def segmented_positives(root, num_segmented, positive_ids):
    train, _ = load_plain_pickle(split_file_path(root, num_segmented))
    return {int(i) for i, segmented in train if segmented and int(i) in positive_ids}


def test_constants_match_the_spec():
    assert NUM_SEGMENTED_CHOICES == (0, 16, 53, 126, 246)
    assert KSDD2_IMAGE_SIZE == (640, 232)


def test_default_splits_are_nested_complete_and_deterministic(ksdd2, tmp_path):
    root, ids = ksdd2
    written = write_default_splits(root)
    assert [p.name for p in written] == [f"split_weakly_{n}.pyb" for n in (0, 16, 53, 126, 246)]
    positive_sets = {n: segmented_positives(root, n, ids["train_positive"]) for n in NUM_SEGMENTED_CHOICES}
    assert {n: len(s) for n, s in positive_sets.items()} == {0: 0, 16: 16, 53: 53, 126: 60, 246: 60}
    assert positive_sets[16] < positive_sets[53] < positive_sets[126] == positive_sets[246]
    for n in NUM_SEGMENTED_CHOICES:
        train, test = load_plain_pickle(split_file_path(root, n))
        assert [int(i) for i, _ in train] == ids["train_normal"] + ids["train_positive"]
        assert all(segmented for i, segmented in train if int(i) in ids["train_normal"])
        assert test == [(str(i), True) for i in ids["test_normal"] + ids["test_positive"]]
    # The rule uses only the listing and the seed: a copy of the tree gets the same files.
    other = tmp_path / "copy"
    make_ksdd2_tree(other, train=(5, 60), test=(3, 2))
    write_default_splits(other)
    for n in NUM_SEGMENTED_CHOICES:
        assert split_file_path(other, n).read_bytes() == split_file_path(root, n).read_bytes()
    assert write_default_splits(root) == []  # existing files are never overwritten


def test_supervised_split_uses_only_segmented_training_samples(ksdd2):
    root, ids = ksdd2
    write_default_splits(root)
    split = load_ksdd2(root, 16, SIZE)
    assert (split.name, split.category, split.image_size, split.supervised) == ("ksdd2", "ksdd2", SIZE, True)
    assert len(split.train_normal) == 5 and len(split.train_anomalous) == 16
    assert {int(s.image_path[-9:-4]) for s in split.train_anomalous} == segmented_positives(root, 16, ids["train_positive"])
    assert [s.label for s in split.test] == [0, 0, 0, 1, 1]
    positive = split.train_anomalous[0]
    assert positive.mask_path == positive.image_path.replace(".png", "_GT.png")


def test_zero_segmented_is_unsupervised_without_positives(ksdd2):
    root, _ = ksdd2
    split = load_ksdd2(root, 0, SIZE)
    assert not split.supervised
    assert len(split.train) == 5 and not split.train_anomalous
    assert len(split.test) == 5


def test_published_style_split_with_int_and_str_ids(ksdd2):
    root, ids = ksdd2
    normal, positive = ids["train_normal"], ids["train_positive"]
    train = [(normal[0], True), (normal[1], False), (str(normal[2]), True), (positive[0], True), (positive[1], False)]
    test = [(ids["test_normal"][0], True), (ids["test_positive"][0], False)]
    dump_plain_pickle(split_file_path(root, 53), (train, test))
    split = load_ksdd2(root, 53, SIZE)
    # Unsegmented samples (normal or not) are dropped from training; the test keeps every listed sample.
    expected = [f"{normal[0]}.png", f"{normal[2]}.png", f"{positive[0]}.png"]
    assert [s.image_path.rsplit("/", 1)[1] for s in split.train] == expected
    assert [s.label for s in split.train] == [0, 0, 1]
    assert [s.label for s in split.test] == [0, 1]


def test_missing_split_file_is_generated_with_one_line(ksdd2, capsys):
    root, _ = ksdd2
    split = load_ksdd2(root, 53, SIZE)
    assert len(split.train_anomalous) == 53
    output = capsys.readouterr().out.strip().splitlines()
    assert len(output) == 1 and "split_weakly_53.pyb not found" in output[0] and "wrote 5" in output[0]
    assert all(split_file_path(root, n).is_file() for n in NUM_SEGMENTED_CHOICES)


def test_layout_errors_name_the_problem(ksdd2, tmp_path):
    root, ids = ksdd2
    with pytest.raises(UserError, match="KolektorSDD2 directory .* not found"):
        load_ksdd2(tmp_path / "absent", 246, SIZE)
    with pytest.raises(UserError, match="num_segmented must be one of 0, 16, 53, 126, 246"):
        load_ksdd2(root, 17, SIZE)
    write_image(root / "train" / "99999.png", seed=0)  # an image whose GT is missing
    with pytest.raises(UserError, match="99999.png has no GT mask 99999_GT.png"):
        write_default_splits(root)
    (root / "train" / "99999.png").unlink()
    dump_plain_pickle(split_file_path(root, 16), ([(12345, True)], []))
    with pytest.raises(UserError, match="12345.png not found, listed in .*split_weakly_16.pyb"):
        load_ksdd2(root, 16, SIZE)
    dump_plain_pickle(split_file_path(root, 16), [(12345, True)])
    with pytest.raises(UserError, match="must hold \\(train, test\\) lists"):
        load_ksdd2(root, 16, SIZE)
    for part in ("test", "train"):
        for path in (root / part).iterdir():
            path.unlink()
        (root / part).rmdir()
        with pytest.raises(UserError, match=f"has no {part}/ folder"):
            load_ksdd2(root, 16, SIZE)


# --- journal (weak_labels) vs ICPR: which samples each regime trains on ---------------------------


def ids_of(samples) -> list[int]:
    return [int(s.image_path.rsplit("/", 1)[1][:-4]) for s in samples]


@pytest.mark.parametrize("num_segmented, expected_segmented", [(0, 0), (16, 16), (246, 60)])
def test_icpr_drops_unsegmented_positives(ksdd2, num_segmented, expected_segmented):
    root, ids = ksdd2
    split = load_ksdd2(root, num_segmented, SIZE, weak_labels=False)
    segmented = segmented_positives(root, num_segmented, ids["train_positive"])
    assert ids_of(split.train_normal) == ids["train_normal"]
    assert set(ids_of(split.train_anomalous)) == segmented and len(segmented) == expected_segmented
    assert all(s.is_segmented for s in split.train) and split.train_weak == []
    # N = 0 is the unsupervised setting: normals only
    assert split.supervised is (num_segmented > 0)


@pytest.mark.parametrize("num_segmented, expected_segmented", [(0, 0), (16, 16), (246, 60)])
def test_journal_keeps_unsegmented_positives_with_their_image_label(ksdd2, num_segmented, expected_segmented):
    root, ids = ksdd2
    split = load_ksdd2(root, num_segmented, SIZE, weak_labels=True)
    segmented = segmented_positives(root, num_segmented, ids["train_positive"])
    assert ids_of(split.train_normal) == ids["train_normal"]
    assert ids_of(split.train_anomalous) == ids["train_positive"]  # every positive, in the file's order
    assert {i for i, s in zip(ids_of(split.train_anomalous), split.train_anomalous) if s.is_segmented} == segmented
    assert len(split.train_weak) == 60 - expected_segmented
    assert all(s.label == 1 for s in split.train_weak)
    assert all(s.is_segmented for s in split.train_normal)
    # N = 0 is the weakly supervised regime: positives are trained on (supervised sampling)
    assert split.supervised is True
    # the test set does not depend on the regime, and is always segmented
    icpr = load_ksdd2(root, num_segmented, SIZE, weak_labels=False)
    assert split.test == icpr.test and all(s.is_segmented for s in split.test)
    assert [s.label for s in split.test] == [0, 0, 0, 1, 1]


def test_journal_keeps_the_file_flag_of_every_listed_training_sample(ksdd2):
    root, ids = ksdd2
    normal, positive = ids["train_normal"], ids["train_positive"]
    train = [(normal[0], True), (normal[1], False), (positive[0], True), (positive[1], False)]
    test = [(ids["test_normal"][0], False), (ids["test_positive"][0], False)]
    dump_plain_pickle(split_file_path(root, 16), (train, test))
    split = load_ksdd2(root, 16, SIZE, weak_labels=True)
    assert ids_of(split.train) == [normal[0], normal[1], positive[0], positive[1]]
    assert [(s.label, s.is_segmented) for s in split.train] == [(0, True), (0, False), (1, True), (1, False)]
    assert [(s.label, s.is_segmented) for s in split.test] == [(0, True), (1, True)]


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("weak_labels", [False, True])
def test_split_file_with_numpy_ids_and_flags_is_accepted(ksdd2, protocol, weak_labels):
    root, ids = ksdd2
    train_ids = np.array(ids["train_normal"][:2] + ids["train_positive"][:3], dtype=np.int64)
    flags = np.array([True, True, True, False, True])
    train = [(i, f) for i, f in zip(train_ids, flags)]
    test = [(np.int64(i), np.bool_(True)) for i in ids["test_normal"] + ids["test_positive"]]
    assert type(train[3][1]) is np.bool_ and type(test[0][0]) is np.int64
    split_file_path(root, 53).write_bytes(pickle.dumps((train, test), protocol=protocol))
    split = load_ksdd2(root, 53, SIZE, weak_labels=weak_labels)
    positives = ids["train_positive"][:3]
    if weak_labels:
        assert ids_of(split.train_anomalous) == positives
        assert [s.is_segmented for s in split.train_anomalous] == [True, False, True]
    else:
        assert ids_of(split.train_anomalous) == [positives[0], positives[2]]
    assert ids_of(split.train_normal) == ids["train_normal"][:2]
    assert ids_of(split.test) == ids["test_normal"] + ids["test_positive"]
