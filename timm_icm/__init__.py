"""Infinite Class Mixup (Mensink & Mettes, BMVC 2023) for timm.

Swap two objects in a timm pipeline: the mixer (``InfiniteClassMixup`` or, on the prefetcher path,
``FastCollateInfiniteClassMixup``) and the loss (``InfiniteClassCrossEntropy``, a drop-in for
``timm.loss.SoftTargetCrossEntropy``). Importing the package also registers its CIFAR-style models
with timm's model registry.
"""
from . import models  # noqa: F401  (registers the CIFAR-style models with timm)
from .logit_adjust import LogitAdjustedLoss
from .loss import InfiniteClassCrossEntropy, infinite_class_cross_entropy
from .mixup import FastCollateInfiniteClassMixup, InfiniteClassMixup
from .regmixup import RegMixupLoss
from .remix import remix_label_weight

__version__ = '0.1.0'
__all__ = [
    'InfiniteClassCrossEntropy', 'infinite_class_cross_entropy', 'InfiniteClassMixup',
    'FastCollateInfiniteClassMixup', 'RegMixupLoss', 'LogitAdjustedLoss', 'remix_label_weight',
]
