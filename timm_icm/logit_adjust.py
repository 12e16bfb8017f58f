"""Logit adjustment (Menon et al., ICLR 2021), the long-tail baseline to compare ICM with.

Training minimises a loss of ``logits + tau * log(prior)``, the prior being the training set's class
frequencies; prediction uses the plain logits. With ``tau = 1`` and cross-entropy this is also the
Balanced Softmax of Ren et al. (NeurIPS 2020). The wrapper takes any loss of ``(logits, target)``, so
LA alone (around ``nn.CrossEntropyLoss`` or ``SoftTargetCrossEntropy``), Mixup + LA and IC-Mixup + LA
come from one class.
"""
import math
from typing import Sequence, Union

import torch
import torch.nn as nn


def log_prior(class_counts: Union[torch.Tensor, Sequence[int]]) -> torch.Tensor:
    """``log(n_c / sum(n))`` as float32; every class needs at least one training image."""
    counts = torch.as_tensor(class_counts).detach().cpu()
    if counts.dim() != 1 or counts.numel() == 0 or counts.is_complex() or counts.dtype == torch.bool:
        raise ValueError(f'class_counts: expected a non-empty 1-D sequence of counts, got shape {tuple(counts.shape)}')
    counts = counts.double()
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f'class_counts: expected finite counts >= 0, got {counts.tolist()}')
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f'class_counts: class {empty[0]} has no training images ({len(empty)} empty class(es) in '
                         f'all), so its prior is 0 and log(prior) is -inf: logit adjustment needs every class seen')
    return (counts / counts.sum()).log().float()


class LogitAdjustedLoss(nn.Module):
    """``loss(logits + tau * log(prior), target)``: the logit-adjusted version of any loss.

    Args:
        loss: the loss to adjust, called as ``loss(logits, target)`` (CE, soft-target CE, ICM, RegMixup...).
        class_counts: training images per class, ``[C]``; the prior is ``class_counts / class_counts.sum()``.
        tau: the adjustment's temperature (Menon et al.'s tau; 1 is the Bayes-optimal choice for the
            balanced error, 0 leaves the loss as it is).

    The shift is one broadcast add of a ``[C]`` buffer: nothing of size ``B x C`` is kept beyond what the
    inner loss keeps, and no value is read on the host.
    """

    def __init__(self, loss: nn.Module, class_counts: Union[torch.Tensor, Sequence[int]], tau: float = 1.0) -> None:
        super().__init__()
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f'tau must be a finite number >= 0; got {tau!r}')
        self.loss = loss
        self.tau = float(tau)
        self.register_buffer('log_prior', log_prior(class_counts), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() < 1 or logits.shape[-1] != self.log_prior.numel():
            raise ValueError(f'LogitAdjustedLoss: logits of shape {tuple(logits.shape)} for a prior over '
                             f'{self.log_prior.numel()} classes: expected [B, {self.log_prior.numel()}]')
        shift = self.log_prior.to(logits.device) * self.tau
        return self.loss(logits + shift, target)

    def extra_repr(self) -> str:
        return f'tau={self.tau:g}, classes={self.log_prior.numel()}'
