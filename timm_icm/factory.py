"""The mixer and the training loss from timm-style args, as train_icm.py and the launcher build them."""
import argparse
from typing import Optional, Sequence, Union

import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .logit_adjust import LogitAdjustedLoss
from .loss import InfiniteClassCrossEntropy
from .mixup import FastCollateInfiniteClassMixup, InfiniteClassMixup, mixing_on
from .regmixup import RegMixupLoss


def mixup_active(args: argparse.Namespace) -> bool:
    return mixing_on(args.mixup, args.cutmix, args.cutmix_minmax)


def mixup_kwargs(args: argparse.Namespace, num_classes: int) -> dict:
    """timm train.py's Mixup arguments plus ICM's variant options."""
    return dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=num_classes,
        regmixup=args.regmixup, remix=args.remix, remix_kappa=args.remix_kappa, remix_tau=args.remix_tau)


def create_mixer(
        args: argparse.Namespace,
        num_classes: int,
        class_counts: Optional[Sequence[int]] = None,
        collate: bool = False,
) -> Union[InfiniteClassMixup, FastCollateInfiniteClassMixup, None]:
    """The mixer for the tensor path, or (``collate=True``) the collate function of the prefetcher path."""
    if not mixup_active(args):
        return None
    if args.remix and class_counts is None:
        raise ValueError('--remix needs the class counts of the training set, and this dataset gives none')
    cls = FastCollateInfiniteClassMixup if collate else InfiniteClassMixup
    return cls(class_counts=class_counts if args.remix else None, **mixup_kwargs(args, num_classes))


def create_mixed_loss(args: argparse.Namespace) -> nn.Module:
    """ICM or soft-target CE for mixed batches, wrapped for RegMixup's clean + mixed layout."""
    if args.icm:
        loss = InfiniteClassCrossEntropy(
            axes=args.icm_axes, duplicates=args.icm_duplicates, gather_distributed=args.icm_gather,
            unmixed=args.icm_unmixed)
    else:
        loss = SoftTargetCrossEntropy()
    if args.regmixup:
        loss = RegMixupLoss(loss, weight=args.regmixup_weight)
    return loss


def create_train_loss(args: argparse.Namespace, class_counts: Optional[Sequence[int]] = None) -> nn.Module:
    """The training loss of train_icm.py: the mixed loss while mixing is on, else timm's (label-smoothed)
    cross-entropy; logit-adjusted by the training set's class counts with ``--logit-adjust TAU``."""
    if mixup_active(args):
        loss = create_mixed_loss(args)
    elif args.smoothing:
        loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss = nn.CrossEntropyLoss()
    return logit_adjusted(args, loss, class_counts)


def logit_adjusted(args: argparse.Namespace, loss: nn.Module, class_counts: Optional[Sequence[int]]) -> nn.Module:
    """``loss`` itself, or with ``--logit-adjust TAU > 0`` the loss of the logits shifted by TAU x log(prior)."""
    tau = getattr(args, 'logit_adjust', 0.0)
    if not tau:
        return loss
    if class_counts is None:
        raise ValueError('--logit-adjust needs the class counts of the training set, and this dataset gives none')
    return LogitAdjustedLoss(loss, class_counts, tau=tau)
