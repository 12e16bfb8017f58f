"""Mixers for Infinite Class Mixup: timm's ``Mixup`` and ``FastCollateMixup`` with RegMixup and Remix.

ICM changes the targets' use, not the mixing: with no option below set, these classes mix draw for
draw as timm's do. Options:

- ``regmixup=True``: return the clean and the mixed batch together (see :mod:`timm_icm.regmixup`).
- ``remix=True`` with ``class_counts``: Remix label weights (see :mod:`timm_icm.remix`).

Either works with the ICM loss and with plain soft-target cross-entropy.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from timm.data.mixup import FastCollateMixup, Mixup, mixup_target
from torch.utils.data import default_collate

from .regmixup import stack_clean_and_mixed
from .remix import check_class_counts, remix_label_weight, remix_thresholds_problem


def mixing_on(mixup_alpha: float, cutmix_alpha: float, cutmix_minmax: Optional[Sequence[float]]) -> bool:
    """Whether these settings mix at all (timm's rule: Mixup or CutMix alpha above 0, or a CutMix box range)."""
    return mixup_alpha > 0 or cutmix_alpha > 0 or cutmix_minmax is not None

Lam = Union[float, torch.Tensor]


class _InfiniteClassOptions:
    """What both mixers add to timm's: option checks and the target construction."""

    def _init_options(self, regmixup: bool, remix: bool, class_counts, remix_kappa: float, remix_tau: float):
        self.regmixup = bool(regmixup)
        self.remix = bool(remix)
        self.remix_kappa = float(remix_kappa)
        self.remix_tau = float(remix_tau)
        self.class_counts = None
        if self.remix:
            if class_counts is None:
                raise ValueError('remix=True needs class_counts: the number of training images of each class')
            if getattr(self, 'multi_label', False):
                raise ValueError('remix=True needs single-label class targets; multi_label=True was given')
            problem = remix_thresholds_problem(remix_kappa, remix_tau)
            if problem:
                raise ValueError(problem)
            self.class_counts = check_class_counts(class_counts, self.num_classes)
        self._counts_by_device = {}

    @property
    def plain(self) -> bool:
        """True when no ICM-only option is set: the mixer is timm's, draw for draw."""
        return not (self.regmixup or self.remix)

    def _counts_on(self, device: torch.device) -> torch.Tensor:
        counts = self._counts_by_device.get(device)
        if counts is None:
            counts = self._counts_by_device[device] = self.class_counts.to(device)
        return counts

    def _target(self, target: torch.Tensor, lam: Lam, smoothing: Optional[float] = None) -> torch.Tensor:
        if self.remix and not (isinstance(lam, float) and lam == 1.):
            counts = self._counts_on(target.device)
            lam = remix_label_weight(lam, counts[target], counts[target.flip(0)], self.remix_kappa, self.remix_tau)
        smoothing = self.label_smoothing if smoothing is None else smoothing
        if getattr(self, 'multi_label', False):
            return mixup_target(target, self.num_classes, lam, smoothing, multi_label=True)
        return mixup_target(target, self.num_classes, lam, smoothing)

    def _check_targets(self, target, batch_size: int, who: str) -> None:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f'{who} expects targets as a tensor; got {type(target).__name__}')
        if getattr(self, 'multi_label', False):
            if target.shape != (batch_size, self.num_classes):
                raise ValueError(
                    f'{who}(multi_label=True) expects targets [{batch_size}, {self.num_classes}]; '
                    f'got {tuple(target.shape)}')
        elif target.dim() != 1 or target.is_floating_point() or target.shape[0] != batch_size:
            raise ValueError(
                f'{who} expects integer class indices of shape [{batch_size}]; '
                f'got {target.dtype} of shape {tuple(target.shape)}')


def _check_batch_size(batch_size: int, who: str) -> None:
    if batch_size % 2:
        raise ValueError(f'{who} pairs each image with its mirror in the batch: the batch size must be even; '
                         f'got {batch_size} (use drop_last=True in the loader)')


class InfiniteClassMixup(_InfiniteClassOptions, Mixup):
    """timm's ``Mixup`` (same constructor, same call) with the options of the ICM paper's variants.

    Args:
        *args, **kwargs: timm's ``Mixup`` arguments (mixup_alpha, cutmix_alpha, cutmix_minmax, prob,
            switch_prob, mode, correct_lam, label_smoothing, num_classes).
        regmixup: return ``[x_clean; x_mixed]`` (2B images) and targets ``[2, B, C]`` for
            :class:`timm_icm.RegMixupLoss`; the clean batch alone while mixing is switched off.
        remix: Remix label weights; needs ``class_counts`` (training images per class).
        remix_kappa, remix_tau: Remix's imbalance and interpolation thresholds (paper: 3 and 0.5).
    """

    def __init__(self, *args, regmixup: bool = False, remix: bool = False,
                 class_counts: Optional[Sequence[int]] = None, remix_kappa: float = 3.0,
                 remix_tau: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_options(regmixup, remix, class_counts, remix_kappa, remix_tau)

    def _mix(self, x: torch.Tensor) -> Lam:
        if self.mode == 'elem':
            return self._mix_elem(x)
        if self.mode == 'pair':
            return self._mix_pair(x)
        return self._mix_batch(x)

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError(f'InfiniteClassMixup expects an image batch tensor [B, ...]; got {type(x).__name__}')
        _check_batch_size(len(x), 'InfiniteClassMixup')
        self._check_targets(target, len(x), 'InfiniteClassMixup')
        if self.plain:
            return super().__call__(x, target)
        if not self.regmixup:
            return x, self._target(target, self._mix(x))
        clean_target = self._target(target, 1.)
        if not self.mixup_enabled:
            return x, clean_target
        batch_size = len(x)
        x = torch.cat((x, x))
        lam = self._mix(x[batch_size:])  # timm mixes in place: the view's rows become the mixed images
        return x, stack_clean_and_mixed(clean_target, self._target(target, lam))


class FastCollateInfiniteClassMixup(_InfiniteClassOptions, FastCollateMixup):
    """timm's ``FastCollateMixup`` (the collate function of the prefetcher path) with ICM's options.

    Same constructor as :class:`InfiniteClassMixup`; called by the data loader with a list of
    ``(uint8 image CHW, class index)`` samples, returns ``(uint8 images, soft targets)``.
    """

    def __init__(self, *args, regmixup: bool = False, remix: bool = False,
                 class_counts: Optional[Sequence[int]] = None, remix_kappa: float = 3.0,
                 remix_tau: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_options(regmixup, remix, class_counts, remix_kappa, remix_tau)

    def __call__(self, batch, _=None) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (list, tuple)) or not batch or not isinstance(batch[0], (list, tuple)):
            raise TypeError('FastCollateInfiniteClassMixup expects a list of (image, target) samples')
        _check_batch_size(len(batch), 'FastCollateInfiniteClassMixup')
        if self.plain:
            return super().__call__(batch)
        target = default_collate([b[1] for b in batch])
        self._check_targets(target, len(batch), 'FastCollateInfiniteClassMixup')
        half = 'half' in self.mode
        batch_size = len(batch) // 2 if half else len(batch)
        clean = None
        if self.regmixup:
            # Copy before mixing: pair-mode CutMix writes into the samples themselves.
            clean = torch.stack([torch.as_tensor(np.asarray(b[0])) for b in batch[:batch_size]]).to(torch.uint8)
            clean_target = self._target(target, 1.)[:batch_size]
            if not self.mixup_enabled:
                return clean, clean_target
        output = torch.zeros((batch_size, *np.shape(batch[0][0])), dtype=torch.uint8)
        if self.mode in ('elem', 'half'):
            lam = self._mix_elem_collate(output, batch, half=half)
        elif self.mode == 'pair':
            lam = self._mix_pair_collate(output, batch)
        else:
            lam = self._mix_batch_collate(output, batch)
        mixed_target = self._target(target, lam)[:batch_size]
        if clean is None:
            return output, mixed_target
        return torch.cat((clean, output)), stack_clean_and_mixed(clean_target, mixed_target)
