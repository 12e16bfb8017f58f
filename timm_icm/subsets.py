"""The paper's training-set settings, for any labelled data set.

- `stratified_fraction`: a fraction of every class (Table 1 right: 100/50/25/10 %),
- `samples_per_class`: a fixed number of images per class (data-constrained setting),
- `long_tailed`: Cui et al. (CVPR 2019) exponential profile (LT-CIFAR, imbalance 0.1 / 0.01).

Every selection is drawn from a seed and returns a sorted LongTensor of indices into the
data set. Within a class the images are taken in the order of one random permutation that
depends only on ``(seed, class)``, so for one seed the selections are nested: the 10 % subset
lies inside the 25 % one, 30 per class inside 50 per class, a long tail inside its head-sized
balanced set.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .datasets import dataset_targets

__all__ = [
    'class_counts',
    'stratified_fraction',
    'samples_per_class',
    'long_tailed',
    'long_tailed_counts',
    'make_subset',
    'subset_dataset',
    'LabeledSubset',
]

TargetsLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


# ----------------------------------------------------------------------------- validation

def _targets(targets: TargetsLike) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        t = targets.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(targets))
        except (TypeError, ValueError) as e:
            raise ValueError(f"targets: expected a 1-D sequence of class indices, got {type(targets).__name__}") from e
    if t.ndim != 1:
        raise ValueError(f"targets: expected a 1-D sequence of class indices, got shape {tuple(t.shape)}")
    if len(t) == 0:
        raise ValueError("targets: expected at least one sample, got an empty sequence")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"targets: expected integer class indices, got dtype {t.dtype}")
    t = t.long()
    if int(t.min()) < 0:
        raise ValueError(f"targets: expected class indices >= 0, got {int(t.min())}")
    return t


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    return int(seed)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    return float(value)


def _num_classes(t: torch.Tensor, num_classes: Optional[int]) -> int:
    present = int(t.max()) + 1
    if num_classes is None:
        return present
    num_classes = _positive_int('num_classes', num_classes)
    if present > num_classes:
        raise ValueError(f"num_classes: expected more than the largest target {present - 1}, got {num_classes}")
    return num_classes


# ----------------------------------------------------------------------------- selections

def class_counts(targets: TargetsLike, num_classes: Optional[int] = None) -> torch.Tensor:
    """Samples per class as a LongTensor of length ``num_classes`` (default: largest target + 1)."""
    t = _targets(targets)
    return torch.bincount(t, minlength=_num_classes(t, num_classes))


def _take(t: torch.Tensor, per_class: Dict[int, int], seed: int) -> torch.Tensor:
    """The first ``per_class[c]`` indices of each class ``c`` in a random order fixed by ``(seed, c)``."""
    labels = t.numpy()
    by_class = np.argsort(labels, kind='stable')  # indices grouped by class, ascending within
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels))])
    chosen = []
    for c, n in per_class.items():
        if n <= 0:
            continue
        members = by_class[starts[c]:starts[c + 1]]
        chosen.append(members[np.random.default_rng([seed, c]).permutation(len(members))[:n]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def stratified_fraction(targets: TargetsLike, fraction: float, seed: int = 0) -> torch.Tensor:
    """A random ``fraction`` of every class present (rounded half up, at least 1 per class)."""
    t = _targets(targets)
    fraction = _unit_interval('fraction', fraction)
    seed = _seed(seed)
    counts = torch.bincount(t)
    per_class = {c: max(1, _round_half_up(fraction * int(n))) for c, n in enumerate(counts.tolist()) if n > 0}
    return _take(t, per_class, seed)


def samples_per_class(targets: TargetsLike, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random samples of every class present; ValueError naming a class that has fewer."""
    t = _targets(targets)
    n = _positive_int('samples_per_class', n)
    seed = _seed(seed)
    counts = torch.bincount(t)
    for c, available in enumerate(counts.tolist()):
        if 0 < available < n:
            raise ValueError(f"samples_per_class: class {c} has {available} samples, fewer than the {n} requested")
    return _take(t, {c: n for c, a in enumerate(counts.tolist()) if a > 0}, seed)


_samples_per_class = samples_per_class  # subset_dataset's keyword argument shadows the name


def long_tailed_counts(num_classes: int, n_max: int, imbalance_ratio: float) -> torch.Tensor:
    """Cui et al.'s profile: ``n_c = floor(n_max * imbalance_ratio ** (c / (C - 1)))``, at least 1.

    The floor follows the reference implementation of Cui et al. (e.g. CIFAR-10, 5000, 0.01:
    5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50).
    """
    num_classes = _positive_int('num_classes', num_classes)
    n_max = _positive_int('n_max', n_max)
    ratio = _unit_interval('imbalance_ratio', imbalance_ratio)
    if num_classes == 1:
        return torch.tensor([n_max], dtype=torch.long)
    # the 1e-9 absorbs float error just below an integer (e.g. 49.99999999 for 50)
    counts = [max(1, int(math.floor(n_max * ratio ** (c / (num_classes - 1)) + 1e-9)))
              for c in range(num_classes)]
    return torch.tensor(counts, dtype=torch.long)


def long_tailed(targets: TargetsLike, imbalance_ratio: float, seed: int = 0,
                num_classes: Optional[int] = None, n_max: Optional[int] = None) -> torch.Tensor:
    """A long-tailed subset: class ``c`` keeps ``long_tailed_counts(C, n_max, ratio)[c]`` samples.

    The head is class 0 and the tail class ``C - 1`` (C = ``num_classes``, default largest
    target + 1). ``n_max`` defaults to the largest class size available; a class with fewer
    samples than its profile asks for raises ValueError naming it.
    """
    t = _targets(targets)
    ratio = _unit_interval('imbalance_ratio', imbalance_ratio)
    seed = _seed(seed)
    num_classes = _num_classes(t, num_classes)
    counts = torch.bincount(t, minlength=num_classes)
    n_max = int(counts.max()) if n_max is None else _positive_int('n_max', n_max)
    wanted = long_tailed_counts(num_classes, n_max, ratio)
    for c in range(num_classes):
        if int(counts[c]) < int(wanted[c]):
            raise ValueError(
                f"long_tailed: class {c} has {int(counts[c])} samples, fewer than the {int(wanted[c])} "
                f"the profile (n_max={n_max}, imbalance_ratio={ratio}) asks for")
    return _take(t, {c: int(wanted[c]) for c in range(num_classes)}, seed)


# ----------------------------------------------------------------------------- subsets

class LabeledSubset(Subset):
    """A ``Subset`` that keeps its targets readable and forwards ``transform``.

    ``targets`` reads the parent's targets without loading images. ``transform`` is the
    parent's: timm's ``create_loader`` assigns ``dataset.transform``, and on a plain ``Subset``
    that assignment is silently ignored by ``__getitem__``. Subsets of one parent share it.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)

    @property
    def targets(self) -> torch.Tensor:
        return dataset_targets(self)

    @property
    def classes(self) -> List[Any]:
        return getattr(self.dataset, 'classes')

    @property
    def transform(self) -> Any:
        return getattr(self.dataset, 'transform', None)

    @transform.setter
    def transform(self, value: Any) -> None:
        self.dataset.transform = value


def make_subset(dataset: Dataset, indices: Union[TargetsLike, Iterable[int]]) -> LabeledSubset:
    """A `LabeledSubset` (a ``torch.utils.data.Subset``) of ``dataset`` at ``indices``."""
    idx = torch.as_tensor(np.asarray(list(indices) if not isinstance(indices, (torch.Tensor, np.ndarray))
                                     else indices))
    if idx.ndim != 1 or (len(idx) and (idx.is_floating_point() or idx.dtype == torch.bool)):
        raise ValueError(f"indices: expected a 1-D sequence of integers, got {idx.dtype} of shape {tuple(idx.shape)}")
    n = len(dataset)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"indices: expected values in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    return LabeledSubset(dataset, idx.long().tolist())


def subset_dataset(
        dataset: Dataset,
        *,
        fraction: Optional[float] = None,
        samples_per_class: Optional[int] = None,
        imbalance_ratio: Optional[float] = None,
        seed: int = 0,
        num_classes: Optional[int] = None,
) -> Tuple[LabeledSubset, torch.Tensor]:
    """Apply one of the paper's settings to ``dataset``; return ``(subset, class_counts)``.

    - nothing given: every sample;
    - ``fraction``: `stratified_fraction`;
    - ``samples_per_class``: `samples_per_class`;
    - ``imbalance_ratio``: `long_tailed` with the largest class as head size;
    - ``samples_per_class`` and ``imbalance_ratio``: `long_tailed` with
      ``n_max = samples_per_class`` (a long tail from n down to n * ratio).

    ``fraction`` combined with either other option is rejected (two rules for one class
    size). ``class_counts`` covers ``num_classes`` classes (default: ``len(dataset.classes)``
    when the data set has ``classes``, else the largest target + 1), as Remix needs them.
    """
    if fraction is not None and (samples_per_class is not None or imbalance_ratio is not None):
        other = 'samples_per_class' if samples_per_class is not None else 'imbalance_ratio'
        raise ValueError(
            f"subset_dataset: expected at most one of fraction and {other} (fraction sets every class "
            f"size itself), got fraction={fraction!r} and {other}="
            f"{samples_per_class if other == 'samples_per_class' else imbalance_ratio!r}")
    seed = _seed(seed)
    targets = _targets(dataset_targets(dataset))
    if num_classes is None and getattr(dataset, 'classes', None) is not None:
        num_classes = max(len(dataset.classes), int(targets.max()) + 1)
    num_classes = _num_classes(targets, num_classes)
    if fraction is not None:
        indices = stratified_fraction(targets, fraction, seed)
    elif imbalance_ratio is not None:
        indices = long_tailed(targets, imbalance_ratio, seed, num_classes=num_classes, n_max=samples_per_class)
    elif samples_per_class is not None:
        indices = _samples_per_class(targets, samples_per_class, seed)
    else:
        indices = torch.arange(len(targets))
    return make_subset(dataset, indices), class_counts(targets[indices], num_classes)
