"""The Infinite Class Mixup loss (Mensink & Mettes, BMVC 2023, Sec. 3).

A mixed image's target is its own classifier, the interpolation of its classes' classifiers
(Eq. 2). For a model with a linear head the score of image i under the classifier of target row j
is ``M[i, j] = S[i] . Y[j]``, with ``S`` the logits and ``Y`` the soft targets (Eq. 3, bias
included), so the whole ``B x B`` score matrix is ``M = S @ Y.T``. The loss is a cross-entropy
over each row of ``M`` (an image against every interpolated classifier of the batch, Eq. 5), over
each column (a classifier against every mixed image, Eq. 7), or the sum of both (Eq. 9):
:meth:`InfiniteClassCrossEntropy.forward`.

What makes this fast at large ``B^2 C`` without changing a value (a sparse score matrix, one
autograd node for both cross-entropies, the choice between the paths) is in :mod:`.loss_fast`; the
global batch of a distributed run (``gather_distributed``: ``M[mine, :] = S_mine @ Y_all.T``, never
another rank's logits) is in :mod:`.global_batch`.
"""
import contextlib
from typing import ContextManager, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy

from .distributed import every_rank
from .global_batch import GlobalBatch, gathered_logits, gathered_targets, given_batch, local_batch
from .loss_fast import MixedTargets, ScorePath, cross_entropies, duplicate_counts, first_batch_pre_hook, \
    host_reads_are_free, sparse_score_matrix

AXES = ('both', 'class', 'pair')
DUPLICATES = ('paper', 'merge')
TARGET_FORMATS = ('auto', 'dense', 'sparse')
UNMIXED = ('ce', 'icm')


class InfiniteClassCrossEntropy(nn.Module):
    """Drop-in for ``timm.loss.SoftTargetCrossEntropy`` that trains with Infinite Class Mixup.

    ``forward(logits[B, C], soft_target[B, C]) -> scalar``, computed in float32 (or wider) whatever
    the autocast dtype. A batch of one row has nothing to contrast and gets the soft-target
    cross-entropy.

    Args:
        axes: ``'both'`` (Eq. 9, default), ``'class'`` (Eq. 5) or ``'pair'`` (Eq. 7).
        duplicates: ``'paper'`` (default) counts equal target rows as separate classifiers, as the
            paper does; ``'merge'`` normalises the class axis over the distinct target rows only.
        gather_distributed: in a distributed run, contrast this process's rows with the rows of
            every process: the loss of the global batch, with ``O(N)`` numbers a rank and step
            whatever C is, never another rank's logits (:mod:`.global_batch`). Every rank must hold
            the same number of rows. By default each process contrasts its own batch.
        target_format: how ``M`` is built; the value is the same. ``'dense'``: one matrix product,
            O(B^2 C), right for any soft targets. ``'sparse'``: from the floor and two classes of each
            row, O(B^2 + B C), for targets mixed by timm's Mixup/CutMix; other targets raise a
            ValueError on the CPU and fail a device-side assertion on accelerators.
            ``'auto'`` (default): reads the first batch's targets once (one host sync, at the first
            call only; the one graph break under ``torch.compile``) and keeps the answer in
            ``sparse_targets``. Where they are mixed by timm, each call takes the sparse path if its
            size makes that faster (large B^2 C, :func:`.loss_fast.sparse_pays_off`), else the
            matrix product; a later sparse-path batch that is not mixed by timm fails as with
            ``'sparse'``.
        unmixed: what a batch without any mixed row (``--mixup-prob`` < 1, ``--mixup-off-epoch``)
            gets: ``'icm'`` (default), the same contrast over the classes present in the batch;
            ``'ce'``, the soft-target cross-entropy over the original classes. The default is
            measured: ``benchmarks/gains.py``, docs/fashion-mnist.md. On accelerators (and
            inside ``torch.compile``) nothing is read on the host: both branches are computed and one
            is selected on the device; on the CPU only the branch in use is computed.
    """

    def __init__(self, axes: str = 'both', duplicates: str = 'paper', gather_distributed: bool = False,
                 target_format: str = 'auto', unmixed: str = 'icm'):
        super().__init__()
        self.axes = check_choice('axes', axes, AXES)
        self.duplicates = check_choice('duplicates', duplicates, DUPLICATES)
        self.gather_distributed = bool(gather_distributed)
        self.target_format = check_choice('target_format', target_format, TARGET_FORMATS)
        self.unmixed = check_choice('unmixed', unmixed, UNMIXED)
        self.score_path = ScorePath(self.target_format, agree=every_rank if self.gather_distributed else None)
        if self.target_format == 'auto':  # the one host read, before the first forward: outside any compiled graph
            self.register_forward_pre_hook(first_batch_pre_hook)

    @property
    def sparse_targets(self) -> Optional[bool]:
        """``'auto'``: whether the first batch's targets were mixed by timm (None before it)."""
        return self.score_path.sparse_targets

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 9 (Eq. 5 or Eq. 7 alone, with ``axes``) for the logits ``S`` and soft targets ``Y``."""
        check_logits_and_targets(logits, target, 'InfiniteClassCrossEntropy')
        with autocast_off(logits.device):  # float32 (or wider), whatever the autocast dtype
            S, Y = float32_or_wider(logits, target)
            batch = self._global_batch(S, Y)  # my rows alone, unless gathering
            if len(batch) < 2:
                return soft_target_cross_entropy(S, Y)  # a single image has nothing to contrast
            all_Y = batch.classifiers  # every target row, or its floor and two classes per row
            if self.unmixed == 'ce' and host_reads_are_free(S.device) and not any_row_mixed(all_Y):
                return soft_target_cross_entropy(S, Y)  # no row mixed: the cross-entropy over the C classes
            # Eq. 3: M[i, j] = S[i] . Y[j], image i under the interpolated classifier of row j. M[mine, :] = S @ Y_all.T
            # (in one process the whole M). Eq. 5 takes its rows; Eq. 7 its columns, which continue on the other ranks.
            rows = columns = score_matrix(S, all_Y)
            if batch.all_logits is not None and self.axes != 'class':  # the earlier all-gather: Eq. 7 from every image
                columns = score_matrix(batch.all_logits, all_Y[batch.offset:batch.offset + S.shape[0]])
            class_bias = batch.duplicate_counts.log() if self.duplicates == 'merge' else None
            class_ce, pair_ce = cross_entropies(rows, columns, self.axes, batch.offset, class_bias,
                                                batch.columns_across_ranks)  # Eq. 5, Eq. 7
            loss = class_ce + pair_ce if self.axes == 'both' else class_ce if self.axes == 'class' else pair_ce
            if self.unmixed == 'ce' and not host_reads_are_free(S.device):  # both computed, chosen on the device
                loss = torch.where(any_row_mixed(all_Y), loss, soft_target_cross_entropy(S, Y))
            return loss

    def _global_batch(self, S: torch.Tensor, Y: torch.Tensor) -> GlobalBatch:
        """The rows to contrast mine with and where mine start among them: every process's rows
        with ``gather_distributed``, else mine."""
        merge = self.duplicates == 'merge'
        if self.gather_distributed:
            return gathered_targets(S, Y, self.score_path, merge)
        return local_batch(Y, self.score_path, merge)

    def extra_repr(self) -> str:
        return (f'axes={self.axes!r}, duplicates={self.duplicates!r}, gather_distributed={self.gather_distributed}, '
                f'target_format={self.target_format!r}, unmixed={self.unmixed!r}')


def infinite_class_cross_entropy(
        logits: torch.Tensor,
        target: torch.Tensor,
        axes: str = 'both',
        duplicates: str = 'paper',
        target_format: str = 'dense',
        unmixed: str = 'icm',
        *,
        all_logits: Optional[torch.Tensor] = None,
        all_target: Optional[torch.Tensor] = None,
        offset: int = 0,
) -> torch.Tensor:
    """The Infinite Class Mixup loss of Eq. 9 (``axes='both'``), Eq. 5 (``'class'``) or Eq. 7 (``'pair'``).

    Args:
        logits: ``S``, the model output ``[B, C]`` including the classifier bias.
        target: ``Y``, soft targets ``[B, C]`` from timm's mixers (rows sum to one).
        axes, duplicates, unmixed: as :class:`InfiniteClassCrossEntropy`.
        target_format: ``'dense'`` or ``'sparse'``, as :class:`InfiniteClassCrossEntropy`.
        all_logits, all_target: the global batch ``[N, C]`` when each process of a distributed run
            contrasts its rows with every row of every process. ``logits``/``target`` are then this
            process's rows, found at ``offset`` in the global batch; the loss is the mean over them.
    """
    check_choice('target_format', target_format, TARGET_FORMATS[1:])
    options = (axes, duplicates, False, target_format, unmixed)
    if all_logits is None:
        return InfiniteClassCrossEntropy(*options)(logits, target)
    return _GivenGlobalBatch(all_logits, all_target, offset, *options)(logits, target)


class _GivenGlobalBatch(InfiniteClassCrossEntropy):
    """:func:`infinite_class_cross_entropy` with ``all_logits``: the global batch is given, not gathered."""

    def __init__(self, all_logits: torch.Tensor, all_target: torch.Tensor, offset: int, *options):
        super().__init__(*options)
        self.all_logits, self.all_target, self.offset = all_logits, all_target, offset

    def _global_batch(self, S: torch.Tensor, Y: torch.Tensor) -> GlobalBatch:
        return given_batch(S, *float32_or_wider(self.all_logits, self.all_target), self.offset, self.score_path,
                           self.duplicates == 'merge')


class _GatheringLogits(InfiniteClassCrossEntropy):
    """The earlier ``gather_distributed=True``: all-gather every rank's logits (with gradient) and dense
    targets, ``O(N C)`` a rank and step. The same loss and gradients; kept for ``benchmarks/gather.py``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gather_distributed = True

    def _global_batch(self, S: torch.Tensor, Y: torch.Tensor) -> GlobalBatch:
        return gathered_logits(S, Y, self.score_path, self.duplicates == 'merge')


def score_matrix(images: torch.Tensor, classifiers: Union[torch.Tensor, MixedTargets]) -> torch.Tensor:
    """Eq. 2-3: ``M[i, j] = S[i] . Y[j]``, image i under the interpolated classifier of target row j,
    ``S @ Y.T``; from the targets' structure where the score path read it (the same matrix)."""
    if isinstance(classifiers, MixedTargets):
        return sparse_score_matrix(images, classifiers)
    return images @ classifiers.T


def any_row_mixed(target: Union[torch.Tensor, MixedTargets]) -> torch.Tensor:
    """True (a 0-d tensor, on the targets' device) if some row has two or more classes above its floor.

    An unmixed row from timm's mixers is one-hot, or one-hot with label smoothing: exactly one entry
    above the row's minimum. Mixed rows have two (or one, when both images share a class, which is
    indeed no interpolation). Mixing with lambda = 1 leaves the rows bit-identical, so the strict
    comparison is exact.
    """
    if isinstance(target, MixedTargets):
        return target.any_mixed()
    floor = target.amin(dim=1, keepdim=True)
    return ((target > floor).sum(dim=1) > 1).any()


_SOFT_TARGET_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's soft-target cross-entropy over the original classes, mean over the batch."""
    return _SOFT_TARGET_CE(logits, target)


def float32_or_wider(logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both in the logits' dtype promoted to at least float32 (a bf16 batch is computed in float32)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits if logits.dtype == dtype else logits.to(dtype)
    return logits, target if target.dtype == dtype else target.to(dtype)


def autocast_off(device: torch.device) -> ContextManager:
    """Leave autocast for exact float32 arithmetic (a no-op where autocast is off or not available)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def check_choice(name: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f'{name} must be one of {", ".join(map(repr, choices))}; got {value!r}')
    return value


def check_logits_and_targets(logits: torch.Tensor, target: torch.Tensor, loss_name: str) -> None:
    """Shape and dtype checks only: nothing here reads tensor values, so nothing syncs a device."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f'{loss_name} expects two tensors (logits, soft_target); '
            f'got {type(logits).__name__} and {type(target).__name__}')
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f'{loss_name} expects float logits of shape [B, C]; got {logits.dtype} of shape {tuple(logits.shape)}')
    if not target.is_floating_point():
        raise TypeError(
            f'{loss_name} expects soft targets of shape [B, C] as timm\'s Mixup/CutMix produce them; '
            f'got {target.dtype} of shape {tuple(target.shape)} (class indices?). Mix the batch with '
            f'timm_icm.InfiniteClassMixup (or timm.data.Mixup), or use nn.CrossEntropyLoss for hard labels')
    if target.dim() == 3:
        raise ValueError(
            f'{loss_name} got targets of shape {tuple(target.shape)}: the [2, B, C] clean/mixed layout of '
            f'RegMixup. Wrap the loss: timm_icm.RegMixupLoss({loss_name}(...), weight=eta)')
    if target.dim() != 2:
        raise ValueError(f'{loss_name} expects soft targets of shape [B, C]; got shape {tuple(target.shape)}')
    if target.shape != logits.shape:
        raise ValueError(
            f'{loss_name} expects logits and soft targets of the same shape [B, C]; '
            f'got logits {tuple(logits.shape)} and targets {tuple(target.shape)}')
