"""Training-set settings: fractions, samples per class, long tails."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from timm_icm.datasets import dataset_targets
from timm_icm.subsets import (
    LabeledSubset, class_counts, long_tailed, long_tailed_counts, make_subset, samples_per_class,
    stratified_fraction, subset_dataset,
)

BALANCED = torch.arange(10).repeat_interleave(5000)  # CIFAR-10's training targets, by class
# uneven classes, interleaved: class c has SIZES[c] samples
SIZES = [10, 7, 3, 1]
UNEVEN = torch.from_numpy(np.random.default_rng(0).permutation(np.repeat(np.arange(4), SIZES)))


class ToyDataset(Dataset):
    def __init__(self, targets, classes=None):
        self.targets = list(targets)
        self.transform = None
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = torch.tensor([float(i)])
        return (self.transform(x) if self.transform else x), self.targets[i]


def counts_of(targets, idx, num_classes=None):
    return class_counts(torch.as_tensor(targets)[idx], num_classes).tolist()


def assert_valid_selection(targets, idx):
    assert idx.dtype == torch.long and idx.ndim == 1
    assert torch.equal(idx, torch.sort(idx).values), 'indices must be sorted'
    assert len(torch.unique(idx)) == len(idx), 'indices must be unique'
    assert int(idx.min()) >= 0 and int(idx.max()) < len(targets)


# ----------------------------------------------------------------------------- class_counts

def test_class_counts():
    assert class_counts([2, 0, 2, 2]).tolist() == [1, 0, 3]
    assert class_counts(np.array([2, 0, 2, 2]), num_classes=5).tolist() == [1, 0, 3, 0, 0]
    assert class_counts(UNEVEN).tolist() == SIZES
    assert class_counts(UNEVEN).dtype == torch.long


# ----------------------------------------------------------------------------- stratified_fraction

@pytest.mark.parametrize('fraction, expected', [
    (1.0, [5000] * 10), (0.5, [2500] * 10), (0.25, [1250] * 10), (0.1, [500] * 10),
])
def test_stratified_fraction_balanced(fraction, expected):
    idx = stratified_fraction(BALANCED, fraction, seed=0)
    assert_valid_selection(BALANCED, idx)
    assert counts_of(BALANCED, idx) == expected


@pytest.mark.parametrize('fraction, expected', [
    (0.5, [5, 4, 2, 1]),   # 3.5 -> 4, 1.5 -> 2, 0.5 -> 1: half up
    (0.1, [1, 1, 1, 1]),   # 0.7, 0.3, 0.1 -> at least one per class
    (0.3, [3, 2, 1, 1]),   # 2.1 -> 2, 0.9 -> 1
])
def test_stratified_fraction_rounding_and_minimum(fraction, expected):
    idx = stratified_fraction(UNEVEN, fraction, seed=3)
    assert_valid_selection(UNEVEN, idx)
    assert counts_of(UNEVEN, idx) == expected


def test_stratified_fraction_skips_absent_classes():
    targets = torch.tensor([0, 0, 0, 0, 2, 2])  # class 1 absent
    assert counts_of(targets, stratified_fraction(targets, 0.5, 0)) == [2, 0, 1]


def test_stratified_fraction_is_reproducible_and_seeded():
    a = stratified_fraction(BALANCED, 0.1, seed=5)
    assert torch.equal(a, stratified_fraction(BALANCED, 0.1, seed=5))
    assert torch.equal(a, stratified_fraction(BALANCED.tolist(), 0.1, seed=5))  # any sequence type
    b = stratified_fraction(BALANCED, 0.1, seed=6)
    assert not torch.equal(a, b)
    assert counts_of(BALANCED, b) == counts_of(BALANCED, a)
    # random within each class, not the first n of it
    assert not torch.equal(a[:500], torch.arange(500))


def test_selections_are_nested_for_one_seed():
    small = set(stratified_fraction(BALANCED, 0.1, seed=2).tolist())
    mid = set(stratified_fraction(BALANCED, 0.25, seed=2).tolist())
    big = set(stratified_fraction(BALANCED, 0.5, seed=2).tolist())
    assert small < mid < big
    few = set(samples_per_class(BALANCED, 30, seed=2).tolist())
    more = set(samples_per_class(BALANCED, 50, seed=2).tolist())
    assert few < more
    assert set(long_tailed(BALANCED, 0.01, seed=2).tolist()) < set(long_tailed(BALANCED, 0.1, seed=2).tolist())


# ----------------------------------------------------------------------------- samples_per_class

def test_samples_per_class_counts_and_reproducibility():
    idx = samples_per_class(BALANCED, 50, seed=0)
    assert_valid_selection(BALANCED, idx)
    assert counts_of(BALANCED, idx) == [50] * 10
    assert torch.equal(idx, samples_per_class(BALANCED, 50, seed=0))
    assert not torch.equal(idx, samples_per_class(BALANCED, 50, seed=1))
    assert counts_of(UNEVEN, samples_per_class(UNEVEN, 1, seed=0)) == [1, 1, 1, 1]


def test_samples_per_class_names_the_short_class():
    with pytest.raises(ValueError, match='class 2 has 3 samples, fewer than the 5 requested'):
        samples_per_class(UNEVEN, 5, seed=0)


# ----------------------------------------------------------------------------- long tail

def test_long_tail_profile_cifar10_imbalance_001():
    expected = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tailed_counts(10, 5000, 0.01).tolist() == expected
    idx = long_tailed(BALANCED, 0.01, seed=0)
    assert_valid_selection(BALANCED, idx)
    assert counts_of(BALANCED, idx) == expected
    assert len(idx) == 12406


def test_long_tail_profile_other_settings():
    assert long_tailed_counts(10, 5000, 0.1).tolist() == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    assert long_tailed_counts(10, 5000, 0.1).sum() == 20431
    assert long_tailed_counts(100, 500, 0.01).sum() == 10847  # CIFAR-100-LT sizes of Cui et al.
    assert long_tailed_counts(100, 500, 0.1).sum() == 19573
    assert long_tailed_counts(4, 10, 1.0).tolist() == [10] * 4
    assert long_tailed_counts(1, 7, 0.01).tolist() == [7]
    assert long_tailed_counts(3, 10, 0.001).tolist() == [10, 1, 1]  # at least one per class


def test_long_tailed_reproducible_head_size_and_short_class():
    a = long_tailed(BALANCED, 0.1, seed=4)
    assert torch.equal(a, long_tailed(BALANCED, 0.1, seed=4))
    assert not torch.equal(a, long_tailed(BALANCED, 0.1, seed=5))
    assert counts_of(BALANCED, long_tailed(BALANCED, 0.01, seed=0, n_max=500)) == \
        [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    with pytest.raises(ValueError, match='class 1 has 7 samples, fewer than the 8'):
        long_tailed(torch.tensor([0] * 10 + [1] * 7), 0.8, seed=0)
    with pytest.raises(ValueError, match='class 2 has 0 samples'):
        long_tailed(torch.tensor([0, 0, 1, 1]), 0.5, seed=0, num_classes=3)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize('call, message', [
    (lambda: stratified_fraction(BALANCED, 0.0, 0), r'fraction: expected a number in \(0, 1\], got 0.0'),
    (lambda: stratified_fraction(BALANCED, 1.5, 0), r'fraction: .* got 1.5'),
    (lambda: stratified_fraction(BALANCED, -0.1, 0), r'fraction: .* got -0.1'),
    (lambda: stratified_fraction(BALANCED, '0.5', 0), r"fraction: .* got '0.5'"),
    (lambda: stratified_fraction(BALANCED, True, 0), r'fraction: .* got True'),
    (lambda: stratified_fraction(BALANCED, float('nan'), 0), r'fraction: .* got nan'),
    (lambda: samples_per_class(BALANCED, 0, 0), r'samples_per_class: expected an integer >= 1, got 0'),
    (lambda: samples_per_class(BALANCED, 2.5, 0), r'samples_per_class: .* got 2.5'),
    (lambda: long_tailed(BALANCED, 0.0, 0), r'imbalance_ratio: expected a number in \(0, 1\], got 0.0'),
    (lambda: long_tailed(BALANCED, 10, 0), r'imbalance_ratio: .* got 10'),
    (lambda: long_tailed(BALANCED, 0.1, 0, n_max=0), r'n_max: expected an integer >= 1, got 0'),
    (lambda: long_tailed(BALANCED, 0.1, 0, num_classes=5),
     r'num_classes: expected more than the largest target 9, got 5'),
    (lambda: stratified_fraction(BALANCED, 0.5, -1), r'seed: expected an integer >= 0, got -1'),
    (lambda: samples_per_class(BALANCED, 5, 1.5), r'seed: .* got 1.5'),
    (lambda: class_counts([[0, 1]]), r'targets: expected a 1-D .* got shape \(1, 2\)'),
    (lambda: class_counts([0.0, 1.0]), r'targets: expected integer class indices, got dtype torch.float64'),
    (lambda: class_counts([0, -1]), r'targets: expected class indices >= 0, got -1'),
    (lambda: class_counts([]), r'targets: expected at least one sample'),
    (lambda: class_counts(['a', 'b']), r'targets: expected a 1-D sequence of class indices'),
    (lambda: class_counts([0, 3], num_classes=2), r'num_classes: expected more than the largest target 3, got 2'),
])
def test_validation_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- make_subset / subset_dataset

def test_make_subset_keeps_targets_and_forwards_transform():
    ds = ToyDataset([0, 1, 2, 0, 1, 2], classes=['a', 'b', 'c'])
    sub = make_subset(ds, torch.tensor([1, 2, 4]))
    assert isinstance(sub, Subset) and isinstance(sub, LabeledSubset)
    assert sub.indices == [1, 2, 4] and all(type(i) is int for i in sub.indices)
    assert dataset_targets(sub).tolist() == [1, 2, 1] == [sub[i][1] for i in range(3)]
    assert sub.targets.tolist() == [1, 2, 1] and sub.classes == ['a', 'b', 'c']
    sub.transform = lambda x: x + 100  # what timm's create_loader does
    assert ds.transform is sub.transform and sub[0][0].item() == 101.0
    # a subset of a subset still reads its targets
    assert dataset_targets(make_subset(sub, [2, 0])).tolist() == [1, 1]
    assert dataset_targets(make_subset(ds, np.array([5]))).tolist() == [2]


def test_make_subset_validates_indices():
    ds = ToyDataset([0, 1, 2])
    with pytest.raises(ValueError, match=r'indices: expected values in \[0, 3\), got range \[0, 3\]'):
        make_subset(ds, [0, 3])
    with pytest.raises(ValueError, match=r'indices: expected values in \[0, 3\), got range \[-1, 0\]'):
        make_subset(ds, [-1, 0])
    with pytest.raises(ValueError, match='indices: expected a 1-D sequence of integers'):
        make_subset(ds, torch.tensor([0.5]))


def test_subset_dataset_each_setting():
    ds = ToyDataset(BALANCED.tolist(), classes=[str(c) for c in range(10)])
    sub, counts = subset_dataset(ds, fraction=0.1, seed=1)
    assert counts.tolist() == [500] * 10 and len(sub) == 5000
    assert torch.equal(torch.tensor(sub.indices), stratified_fraction(BALANCED, 0.1, 1))
    sub, counts = subset_dataset(ds, samples_per_class=50, seed=1)
    assert counts.tolist() == [50] * 10 and dataset_targets(sub).bincount().tolist() == [50] * 10
    sub, counts = subset_dataset(ds, imbalance_ratio=0.01, seed=1)
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert torch.equal(dataset_targets(sub).bincount(), counts)
    sub, counts = subset_dataset(ds, samples_per_class=100, imbalance_ratio=0.1, seed=1)
    assert counts.tolist() == long_tailed_counts(10, 100, 0.1).tolist() and counts[0] == 100 and counts[-1] == 10
    sub, counts = subset_dataset(ds)
    assert len(sub) == len(ds) and counts.tolist() == [5000] * 10


def test_subset_dataset_counts_cover_all_classes():
    ds = ToyDataset([0, 0, 1, 1], classes=['a', 'b', 'c'])  # class 'c' has no samples
    _, counts = subset_dataset(ds, samples_per_class=1, seed=0)
    assert counts.tolist() == [1, 1, 0]
    _, counts = subset_dataset(ToyDataset([0, 0, 1, 1]), fraction=0.5, seed=0, num_classes=4)
    assert counts.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize('kwargs, other', [
    (dict(fraction=0.5, samples_per_class=10), 'samples_per_class'),
    (dict(fraction=0.5, imbalance_ratio=0.1), 'imbalance_ratio'),
    (dict(fraction=0.5, samples_per_class=10, imbalance_ratio=0.1), 'samples_per_class'),
])
def test_subset_dataset_rejects_incompatible_options(kwargs, other):
    with pytest.raises(ValueError, match=f'expected at most one of fraction and {other}'):
        subset_dataset(ToyDataset(BALANCED.tolist()), **kwargs)


def test_subset_dataset_validates_its_options():
    ds = ToyDataset(BALANCED.tolist())
    with pytest.raises(ValueError, match='fraction: expected'):
        subset_dataset(ds, fraction=2.0)
    with pytest.raises(ValueError, match='seed: expected'):
        subset_dataset(ds, fraction=0.5, seed=-3)
    with pytest.raises(ValueError, match='imbalance_ratio: expected'):
        subset_dataset(ds, imbalance_ratio=0)
