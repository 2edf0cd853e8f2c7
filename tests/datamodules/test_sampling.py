import math
from collections import Counter

import numpy as np
import pytest
import torch

from common.errors import UserError
from datamodules.base import DatasetSplit, MaskProcessing, Sample
from datamodules.sampling import (
    BalancedSupervisedSampler,
    SupervisedTrainDataset,
    inverse_frequency_probabilities,
    make_train_loader,
)
from tests.datamodules.tree_helpers import HEIGHT, WIDTH, write_image, write_mask

SIZE = (HEIGHT, WIDTH)


def make_samples(tmp_path, num_positive: int, num_normal: int) -> tuple[list[Sample], list[Sample]]:
    positives = [
        Sample(
            str(write_image(tmp_path / "pos" / f"{i}.png", seed=100 + i)),
            str(write_mask(tmp_path / "pos" / f"{i}_mask.png", defect=True)),
            1,
        )
        for i in range(num_positive)
    ]
    normals = [Sample(str(write_image(tmp_path / "neg" / f"{i}.png", seed=i)), "", 0) for i in range(num_normal)]
    return positives, normals


# --- the published inverse-frequency weighting ------------------------------------------------


def test_probabilities_on_a_hand_checked_count_vector():
    # f = [0, 1, 2, 4]: 1 - f/4 = [1, .75, .5, 0]; median .625; -> [1.375, 1.125, .875, .375]; power 4 ln 4
    probabilities = inverse_frequency_probabilities(np.array([0, 1, 2, 4]))
    weights = np.array([1.375, 1.125, 0.875, 0.375]) ** (4 * math.log(4))
    np.testing.assert_allclose(probabilities, weights / weights.sum(), rtol=1e-12)
    # by hand: weights exp(5.5452 * ln w) = 5.847, 1.9216, 0.4769, 0.004346; sum 8.2498
    np.testing.assert_allclose(probabilities, [0.70874, 0.23293, 0.05781, 0.000527], atol=1e-4)
    assert probabilities.argmax() == 0


def test_equal_counts_give_uniform_probabilities():
    np.testing.assert_allclose(inverse_frequency_probabilities(np.array([3, 3, 3, 3, 3])), 0.2)
    np.testing.assert_allclose(inverse_frequency_probabilities(np.zeros(4)), 0.25)


# --- epoch composition -------------------------------------------------------------------------


@pytest.mark.parametrize("flips, positives_per_epoch", [(True, 12), (False, 3)])
def test_each_positive_once_per_flip_and_as_many_normals(flips, positives_per_epoch):
    sampler = BalancedSupervisedSampler(num_positive=3, num_normal=20, flips=flips, seed=0)
    assert len(sampler) == 2 * positives_per_epoch
    for _ in range(4):
        epoch = list(sampler)
        assert len(epoch) == len(sampler)
        positives = sorted(i for i in epoch if i < 12)
        normals = [i for i in epoch if i >= 12]
        assert positives == list(range(positives_per_epoch))  # flip f of positive i is f * 3 + i
        assert len(normals) == positives_per_epoch
        assert len(set(normals)) == len(normals)  # enough normals: without replacement
        assert all(12 <= i < 32 for i in normals)
    assert sampler.normal_draw_counts.sum() == 4 * positives_per_epoch


def test_epoch_is_shuffled_not_blocked():
    epoch = list(BalancedSupervisedSampler(num_positive=3, num_normal=20, flips=True, seed=0))
    assert epoch != sorted(epoch)
    assert any(i >= 12 for i in epoch[:12])


def test_with_replacement_when_normals_are_fewer_than_positives():
    sampler = BalancedSupervisedSampler(num_positive=3, num_normal=5, flips=True, seed=1)
    assert sampler.replace
    for epoch_number in range(1, 4):
        normals = [i - 12 for i in sampler if i >= 12]
        assert len(normals) == 12 and all(0 <= j < 5 for j in normals)
        assert len(set(normals)) < len(normals)
        assert sampler.normal_draw_counts.sum() == 12 * epoch_number


def test_first_epoch_draws_distinct_normals_and_counts_them():
    sampler = BalancedSupervisedSampler(num_positive=2, num_normal=10, flips=True, seed=3)
    normals = [i - 8 for i in sampler if i >= 8]
    expected = np.zeros(10, dtype=np.int64)
    expected[normals] = 1
    np.testing.assert_array_equal(sampler.normal_draw_counts, expected)
    assert expected.sum() == 8


def test_second_epoch_prefers_the_never_drawn_normals():
    sampler = BalancedSupervisedSampler(num_positive=3, num_normal=20, flips=True, seed=5)
    list(sampler)
    unseen = set(np.flatnonzero(sampler.normal_draw_counts == 0).tolist())
    assert len(unseen) == 8
    second = {i - 12 for i in sampler if i >= 12}
    # Uniform draws of 12 of 20 would contain all 8 unseen with probability C(12,4)/C(20,12) = 0.4 %.
    assert unseen <= second


def test_counts_even_out_faster_than_uniform_sampling():
    sampler = BalancedSupervisedSampler(num_positive=3, num_normal=20, flips=True, seed=7)
    for _ in range(5):
        list(sampler)
    uniform_counts = np.zeros(20, dtype=np.int64)
    rng = np.random.default_rng(7)
    for _ in range(5):
        np.add.at(uniform_counts, rng.choice(20, size=12, replace=False), 1)
    spread = np.ptp(sampler.normal_draw_counts)
    assert sampler.normal_draw_counts.sum() == uniform_counts.sum() == 60
    assert spread <= 1
    assert np.ptp(uniform_counts) > spread


def test_same_seed_same_plan_different_seed_different_plan():
    first = [list(BalancedSupervisedSampler(4, 30, True, seed=11)) for _ in range(2)]
    assert first[0] == first[1]
    a, b = BalancedSupervisedSampler(4, 30, True, seed=11), BalancedSupervisedSampler(4, 30, True, seed=12)
    assert [list(a) for _ in range(3)] != [list(b) for _ in range(3)]


# --- the stateless dataset ---------------------------------------------------------------------


def test_dataset_index_space_and_exact_flips(tmp_path):
    positives, normals = make_samples(tmp_path, num_positive=2, num_normal=3)
    dataset = SupervisedTrainDataset(positives, normals, SIZE)
    assert len(dataset) == 4 * 2 + 3
    for i in range(2):
        plain = dataset[i]
        assert plain["image_path"] == positives[i].image_path and plain["label"] == 1
        assert plain["mask"].sum() == 60  # the 6 x 10 rectangle
        expected = {1: [0], 2: [1], 3: [0, 1]}  # vertical, horizontal, rotate 180 on H x W
        for flip, axes in expected.items():
            item = dataset[flip * 2 + i]
            assert item["image_path"] == positives[i].image_path
            assert torch.equal(item["image"], plain["image"].flip([a + 1 for a in axes]))
            assert torch.equal(item["mask"], plain["mask"].flip(axes))
            assert not torch.equal(item["mask"], plain["mask"])
    for j in range(3):
        item = dataset[8 + j]
        assert item["image_path"] == normals[j].image_path and item["label"] == 0
        assert item["mask"].abs().sum() == 0


# --- loaders ---------------------------------------------------------------------------------


def supervised_split(tmp_path, num_positive=2, num_normal=5) -> DatasetSplit:
    positives, normals = make_samples(tmp_path, num_positive, num_normal)
    return DatasetSplit("test", "cat", train=normals + positives, test=normals, image_size=SIZE, supervised=True)


def run_epochs(loader, epochs: int) -> list[dict]:
    return [batch for _ in range(epochs) for batch in loader]


def test_batches_identical_with_zero_and_two_workers(tmp_path):
    split = supervised_split(tmp_path)
    serial = run_epochs(make_train_loader(split, batch_size=4, num_workers=0, flips=True, seed=9), epochs=2)
    parallel = run_epochs(make_train_loader(split, batch_size=4, num_workers=2, flips=True, seed=9), epochs=2)
    assert len(serial) == len(parallel) == 2 * 4  # 16 items per epoch in batches of 4
    for a, b in zip(serial, parallel):
        assert a["image_path"] == b["image_path"] and a["mask_path"] == b["mask_path"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["label"], b["label"])
    labels_per_epoch = [torch.cat([b["label"] for b in serial[e * 4 : (e + 1) * 4]]) for e in range(2)]
    assert all(int(labels.sum()) == 8 for labels in labels_per_epoch)


def test_supervised_loader_without_flips_sees_each_positive_once(tmp_path):
    split = supervised_split(tmp_path, num_positive=2, num_normal=5)
    batches = list(make_train_loader(split, batch_size=3, num_workers=0, flips=False, seed=0))
    paths = [p for b in batches for p in b["image_path"]]
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert len(paths) == 4
    positives_seen = Counter(p for p, label in zip(paths, labels) if label == 1)
    assert positives_seen == Counter(s.image_path for s in split.train_anomalous)
    assert sum(labels) == 2


def test_unsupervised_loader_is_every_normal_once_shuffled(tmp_path):
    _, normals = make_samples(tmp_path, num_positive=0, num_normal=6)
    split = DatasetSplit("test", "cat", train=normals, test=normals, image_size=SIZE)
    loader = make_train_loader(split, batch_size=4, num_workers=0, flips=True, seed=0)
    epochs = [[p for b in loader for p in b["image_path"]] for _ in range(2)]
    assert all(sorted(e) == sorted(s.image_path for s in normals) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[0] != [s.image_path for s in normals]


def test_loader_refuses_missing_normals_or_positives(tmp_path):
    positives, normals = make_samples(tmp_path, num_positive=1, num_normal=1)
    no_normals = DatasetSplit("ds", "cat", train=positives, test=positives, image_size=SIZE, supervised=True)
    with pytest.raises(UserError, match="no normal training images"):
        make_train_loader(no_normals, 4, 0, True, 0)
    no_positives = DatasetSplit("ds", "cat", train=normals, test=normals, image_size=SIZE, supervised=True)
    with pytest.raises(UserError, match="no labelled anomalous"):
        make_train_loader(no_positives, 4, 0, True, 0)


def test_fallback_when_fewer_normals_have_probability_than_needed(monkeypatch):
    # Only reachable through underflow of the power; forced here: 2 of 10 normals with p > 0, K = 4.
    forced = np.array([0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr("datamodules.sampling.inverse_frequency_probabilities", lambda counts: forced)
    sampler = BalancedSupervisedSampler(num_positive=1, num_normal=10, flips=True, seed=0)
    list(sampler)
    normals = [i - 4 for i in sampler if i >= 4]
    assert len(normals) == 4 and len(set(normals)) == 4
    assert {1, 4} <= set(normals)


# --- journal: label-only positives are sampled exactly like masked ones ------------------------


def mixed_split(tmp_path, num_masked=1, num_weak=2, num_normal=5) -> DatasetSplit:
    """Positives with masks and label-only positives (their GT file exists but is not used)."""
    masked, normals = make_samples(tmp_path, num_masked + num_weak, num_normal)
    positives = masked[:num_masked] + [Sample(s.image_path, s.mask_path, 1, is_segmented=False) for s in masked[num_masked:]]
    return DatasetSplit("test", "cat", train=normals + positives, test=normals, image_size=SIZE, supervised=True)


JOURNAL = MaskProcessing(dilate=7, dt=(3.0, 2.0))


def test_weak_positives_count_get_four_flips_and_balance(tmp_path):
    split = mixed_split(tmp_path)
    loader = make_train_loader(split, batch_size=4, num_workers=0, flips=True, seed=2, processing=JOURNAL)
    dataset, sampler = loader.dataset, loader.sampler
    assert dataset.positives == split.train_anomalous and len(dataset.positives) == 3
    assert len(sampler) == 2 * 4 * 3 and sampler.num_positive == 3
    items = [item for batch in loader for item in zip(batch["image_path"], batch["label"].tolist(),
                                                      batch["is_segmented"].tolist())]
    assert len(items) == 24 and sum(label for _, label, _ in items) == 12  # balanced: 12 positive, 12 normal
    seen = Counter(path for path, label, _ in items if label == 1)
    assert seen == Counter({s.image_path: 4 for s in split.train_anomalous})  # each positive x 4 flips
    weak_paths = {s.image_path for s in split.train_weak}
    assert all(segmented == (path not in weak_paths) for path, label, segmented in items if label == 1)
    assert all(segmented for _, label, segmented in items if label == 0)


def test_flipped_weak_positive_items(tmp_path):
    split = mixed_split(tmp_path, num_masked=1, num_weak=1)
    dataset = SupervisedTrainDataset(split.train_anomalous, split.train_normal, SIZE, JOURNAL)
    plain = dataset[1]  # positive 1 (label-only), no flip
    for flip, axes in {1: [1], 2: [2], 3: [1, 2]}.items():
        item = dataset[flip * 2 + 1]
        assert item["image_path"] == split.train_weak[0].image_path and item["is_segmented"] is False
        assert torch.equal(item["image"], plain["image"].flip(axes))
        assert torch.equal(item["mask"], torch.zeros(SIZE)) and torch.equal(item["loss_weight"], torch.ones(SIZE))
        masked = dataset[flip * 2]
        assert masked["is_segmented"] is True and masked["mask"].sum() > 60  # dilated 6 x 10 rectangle


def test_mixed_batches_identical_with_zero_and_two_workers(tmp_path):
    split = mixed_split(tmp_path)
    serial = run_epochs(make_train_loader(split, 4, 0, flips=True, seed=9, processing=JOURNAL), epochs=2)
    parallel = run_epochs(make_train_loader(split, 4, 2, flips=True, seed=9, processing=JOURNAL), epochs=2)
    assert len(serial) == len(parallel) == 2 * 6
    for a, b in zip(serial, parallel):
        assert a["image_path"] == b["image_path"]
        for key in ("image", "mask", "label", "is_segmented", "loss_weight"):
            assert torch.equal(a[key], b[key]), key
    weak = {s.image_path for s in split.train_weak}
    for batch in serial:
        for path, segmented, mask, weight in zip(batch["image_path"], batch["is_segmented"], batch["mask"],
                                                 batch["loss_weight"]):
            if path in weak:
                assert not segmented and mask.sum() == 0 and torch.all(weight == 1)


def test_all_weak_positives_still_give_a_supervised_loader(tmp_path):
    # the weak regime (KSDD2 N = 0, SensumSODF ratio 0): no positive has a mask
    split = mixed_split(tmp_path, num_masked=0, num_weak=2)
    loader = make_train_loader(split, batch_size=4, num_workers=0, flips=True, seed=0, processing=JOURNAL)
    assert isinstance(loader.sampler, BalancedSupervisedSampler) and len(loader.sampler) == 16
    batches = list(loader)  # one epoch (each iteration draws a new one)
    labels = torch.cat([b["label"] for b in batches])
    segmented = torch.cat([b["is_segmented"] for b in batches])
    assert int(labels.sum()) == 8 and bool(torch.all(segmented == (labels == 0)))
