"""Remix (Chou et al., ECCV 2020): the label weight of a mixed pair favours the rarer class.

With ``x = lam * x_a + (1 - lam) * x_b`` and training-set class counts ``n``, the label weight of
class a is 0 if ``n_a / n_b >= kappa`` and ``lam < tau``, 1 if ``n_a / n_b <= 1 / kappa`` and
``1 - lam < tau``, and ``lam`` otherwise. (The ICM paper's prose writes kappa where tau is meant.)
"""
from typing import Optional, Sequence, Union

import torch


def remix_thresholds_problem(kappa: float, tau: float, kappa_name: str = 'remix_kappa',
                             tau_name: str = 'remix_tau') -> Optional[str]:
    """What is wrong with Remix's thresholds (kappa >= 1, tau in [0, 1]) as one line naming them
    ``kappa_name`` / ``tau_name``, or None."""
    if not kappa >= 1:
        return f'{kappa_name} must be >= 1; got {kappa!r}'
    if not 0 <= tau <= 1:
        return f'{tau_name} must be in [0, 1]; got {tau!r}'
    return None


def check_class_counts(class_counts: Union[Sequence[int], torch.Tensor], num_classes: int) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() != num_classes:
        raise ValueError(f'Remix needs one class count per class: expected {num_classes}, got {counts.numel()}')
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError('Remix class counts must be finite and >= 0')
    return counts.to(torch.float32)


def remix_label_weight(
        lam: Union[float, torch.Tensor],
        count_a: torch.Tensor,
        count_b: torch.Tensor,
        kappa: float = 3.0,
        tau: float = 0.5,
) -> torch.Tensor:
    """Label weight of class a per sample, shape ``[B, 1]``.

    ``lam`` is the input weight of a (a float for the whole batch or ``[B]``/``[B, 1]`` per sample,
    after CutMix's area correction); ``count_a``, ``count_b`` the training-set counts of each
    sample's two classes, ``[B]``. Comparisons are written as products so a zero count is safe.
    """
    count_a, count_b = count_a.float().reshape(-1, 1), count_b.float().reshape(-1, 1)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=count_a.device).reshape(-1, 1).expand_as(count_a)
    a_dominates = (count_a >= kappa * count_b) & (lam < tau)
    b_dominates = (kappa * count_a <= count_b) & (1. - lam < tau)
    return torch.where(a_dominates, torch.zeros_like(lam), torch.where(b_dominates, torch.ones_like(lam), lam))
