"""The paper's CIFAR augmentation, and how to put it in place behind timm's ``create_loader``.

Training: random crop ``img_size`` with zero padding 4, horizontal flip (p=0.5), random
rotation within +-15 degrees (nearest, zero fill), in that order, as in the official code.
Evaluation: no augmentation (a centre crop/zero pad to ``img_size``, the identity when the
image already has that size).

timm 1.0's ``create_loader`` always overwrites ``dataset.transform`` with its own
``create_transform(...)`` result, so a custom transform must be installed *after* it::

    loader = create_loader(dataset_train, input_size=..., use_prefetcher=args.prefetcher, ...)
    set_transform(loader, create_paper_cifar_transform(
        True, img_size=32, mean=data_config['mean'], std=data_config['std'],
        use_prefetcher=args.prefetcher))

Call it before the first iteration: worker processes copy the data set when they start.
With ``use_prefetcher=True`` the transform returns uint8 CHW numpy arrays (what timm's
``fast_collate`` / ``FastCollateMixup`` take; the ``PrefetchLoader`` normalises on the
device with the mean/std it was given), otherwise normalised float tensors.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from timm.data.transforms import ToNumpy

__all__ = [
    'create_paper_cifar_transform',
    'set_transform',
    'ToNormalizedTensor',
    'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD',
    'FASHION_MNIST_MEAN', 'FASHION_MNIST_STD',
]

# Training-set statistics (pixel values in [0, 1]); the CIFAR models' pretrained cfgs use them too.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class ToNormalizedTensor:
    """PIL image -> float tensor in [0, 1], normalised per channel.

    A 1-element mean/std applies to every channel; otherwise its length must equal the
    image's channel count (a clear error instead of a broadcasting failure).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean/std: expected sequences of one equal length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std: expected positive values, got {tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Any) -> torch.Tensor:
        x = F.to_tensor(img)
        if len(self.mean) not in (1, x.shape[0]):
            raise ValueError(
                f"ToNormalizedTensor: image has {x.shape[0]} channel(s) but mean/std have {len(self.mean)}")
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def create_paper_cifar_transform(
        is_training: bool,
        img_size: Union[int, Tuple[int, int]] = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        use_prefetcher: bool = False,
        padding: int = 4,
        hflip: float = 0.5,
        rotation: float = 15.0,
        fill: int = 0,
) -> T.Compose:
    """The paper's CIFAR transform (see the module docstring), for RGB or 1-channel images.

    ``mean``/``std`` are in [0, 1] units (timm's convention); they are unused with
    ``use_prefetcher=True``, where the output is a uint8 CHW numpy array like timm's ``ToNumpy``.
    For Fashion-MNIST pass ``img_size=28`` and `FASHION_MNIST_MEAN` / `FASHION_MNIST_STD`.
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"img_size: expected a positive int or (height, width), got {img_size!r}")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip: expected a probability in [0, 1], got {hflip!r}")
    if padding < 0 or rotation < 0:
        raise ValueError(f"padding/rotation: expected values >= 0, got {padding!r} and {rotation!r}")
    if is_training:
        steps: list = [T.RandomCrop(size, padding=padding or None, pad_if_needed=True, fill=fill)]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        if rotation > 0:
            steps.append(T.RandomRotation(rotation, interpolation=InterpolationMode.NEAREST, fill=fill))
    else:
        steps = [T.CenterCrop(size)]
    steps.append(ToNumpy() if use_prefetcher else ToNormalizedTensor(mean, std))
    return T.Compose(steps)


def set_transform(loader_or_dataset: Union[DataLoader, Dataset, Any], transform: Optional[Callable]) -> None:
    """Install ``transform`` where the images are produced, replacing what ``create_loader`` set.

    Accepts a ``DataLoader`` (or timm's ``PrefetchLoader``) or a data set. Goes through
    ``Subset`` (the transform lands on the underlying data set, shared by all its subsets)
    and ``ConcatDataset`` (every member). timm's ``ScheduledTransformDataset`` (scheduled input
    sizes) holds one transform per size and is refused.
    """
    ds = loader_or_dataset
    if isinstance(ds, DataLoader) or (hasattr(ds, 'loader') and isinstance(getattr(ds, 'loader'), DataLoader)):
        ds = ds.dataset
    _set(ds, transform)


def _set(ds: Any, transform: Optional[Callable]) -> None:
    try:
        from timm.data.scheduled_sampler import ScheduledTransformDataset
    except ImportError:  # older timm
        ScheduledTransformDataset = ()  # type: ignore[assignment]
    if ScheduledTransformDataset and isinstance(ds, ScheduledTransformDataset):
        raise TypeError("set_transform: a ScheduledTransformDataset (scheduled input sizes) holds one "
                        "transform per size; build the loader with a single input size instead")
    if isinstance(ds, Subset):
        _set(ds.dataset, transform)
        if 'transform' in vars(ds):  # left behind by create_loader on a plain Subset
            ds.transform = transform
        return
    if isinstance(ds, ConcatDataset):
        for d in ds.datasets:
            _set(d, transform)
        return
    if not isinstance(ds, Dataset) and not hasattr(ds, '__getitem__'):
        raise TypeError(f"set_transform: expected a DataLoader or a Dataset, got {type(ds).__name__}")
    ds.transform = transform
