"""RegMixup (Pinto et al., 2022): cross-entropy on the clean batch plus eta times the mixed-batch loss.

The mixer returns the clean and the mixed images in one batch, ``x = [x_clean; x_mixed]`` (2B rows),
and their targets stacked as ``[2, B, C]`` (``target[0]`` clean, ``target[1]`` mixed), so the one
model forward sees both and the layout survives any loader, collate function or prefetcher. While
mixing is switched off (``mixup_enabled = False``, e.g. past ``--mixup-off-epoch``) the mixer
returns the clean batch alone with ``[B, C]`` targets, and the loss is then the clean cross-entropy.
"""
from typing import Optional

import torch
import torch.nn as nn

from .loss import autocast_off, check_logits_and_targets, float32_or_wider, soft_target_cross_entropy


def regmixup_weight_problem(weight: float, name: str = 'RegMixup weight (eta)') -> Optional[str]:
    """What is wrong with the RegMixup weight eta (it must be a number >= 0) as one line naming it ``name``,
    or None."""
    if not weight >= 0:
        return f'{name} must be >= 0; got {weight!r}'
    return None


def stack_clean_and_mixed(clean_target: torch.Tensor, mixed_target: torch.Tensor) -> torch.Tensor:
    """The RegMixup target layout: ``[2, B, C]``, clean rows first."""
    return torch.stack((clean_target, mixed_target))


def _clean_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with autocast_off(logits.device):  # float32 (or wider) as the ICM loss, whatever the autocast dtype
        return soft_target_cross_entropy(*float32_or_wider(logits, target))


class RegMixupLoss(nn.Module):
    """``CE(clean) + weight * mixed_loss(mixed)`` for batches laid out by a ``regmixup=True`` mixer.

    Args:
        mixed_loss: the loss of the mixed half: ``InfiniteClassCrossEntropy()`` for IC-RegMixup,
            ``timm.loss.SoftTargetCrossEntropy()`` for RegMixup.
        weight: eta in Pinto et al.; the ICM paper uses 1.
    """

    def __init__(self, mixed_loss: nn.Module, weight: float = 1.0):
        super().__init__()
        if not callable(mixed_loss):
            raise TypeError(f'mixed_loss must be a loss module; got {type(mixed_loss).__name__}')
        problem = regmixup_weight_problem(weight)
        if problem:
            raise ValueError(problem)
        self.mixed_loss = mixed_loss
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f'RegMixupLoss expects soft targets as a tensor; got {type(target).__name__}')
        if target.dim() == 2:
            check_logits_and_targets(logits, target, 'RegMixupLoss')
            return _clean_cross_entropy(logits, target)  # mixing switched off: the clean batch alone
        if target.shape[0] != 2 or not isinstance(logits, torch.Tensor) or logits.dim() != 2 \
                or logits.shape[0] != 2 * target.shape[1]:
            raise ValueError(
                'RegMixupLoss expects logits [2B, C] for the batch [clean; mixed] and targets [2, B, C]; '
                f'got logits {tuple(getattr(logits, "shape", ()))} and targets {tuple(target.shape)}')
        batch_size = target.shape[1]
        clean_logits, mixed_logits = logits[:batch_size], logits[batch_size:]
        check_logits_and_targets(clean_logits, target[0], 'RegMixupLoss')
        return _clean_cross_entropy(clean_logits, target[0]) + self.weight * self.mixed_loss(mixed_logits, target[1])

    def extra_repr(self) -> str:
        return f'weight={self.weight}'
