"""The Infinite Class Mixup loss (Mensink & Mettes, BMVC 2023, Sec. 3).

A mixed image's target is its own classifier, the interpolation of its classes' classifiers
(Eq. 2). For a model with a linear head the score of image i under the classifier of row j is
``M[i, j] = S[i] . Y[j]`` with ``S`` the logits and ``Y`` the soft targets (Eq. 3, bias included),
so the whole ``B x B`` score matrix is ``S @ Y.T``. The loss is a cross-entropy over each row of
``M`` (contrast an image with every interpolated classifier of the batch, Eq. 5), over each column
(contrast a classifier with every mixed image, Eq. 7), or the sum of both (Eq. 9).
"""
import contextlib
from typing import ContextManager, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy

from .distributed import gather_rows

AXES = ('both', 'class', 'pair')
DUPLICATES = ('paper', 'merge')
TARGET_FORMATS = ('auto', 'dense', 'sparse')


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


def autocast_off(device: torch.device) -> ContextManager:
    """Leave autocast for exact float32 arithmetic (a no-op on devices that have no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


_SOFT_TARGET_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's soft-target cross-entropy over the original classes, mean over the batch."""
    return _SOFT_TARGET_CE(logits, target)


def any_row_mixed(target: torch.Tensor) -> torch.Tensor:
    """True (a 0-d tensor, on the targets' device) if some row has two or more classes above its floor.

    An unmixed row from timm's mixers is one-hot, or one-hot with label smoothing: exactly one entry
    above the row's minimum. Mixed rows have two (or one, when both images share a class, which is
    indeed no interpolation). Mixing with lambda = 1 leaves the rows bit-identical, so the strict
    comparison is exact.
    """
    floor = target.amin(dim=1, keepdim=True)
    return ((target > floor).sum(dim=1) > 1).any()


_HASH_WEIGHTS = {}


def _row_keys(target: torch.Tensor) -> torch.Tensor:
    """A 64-bit key per row, equal for bit-identical rows, distinct otherwise (up to ~2^-60 collisions).

    Integer arithmetic wraps and is associative, so the key does not depend on reduction order or
    device, unlike a float dot product. Cost O(B C), no sort, no sync.
    """
    num_classes = target.shape[1]
    key = (num_classes, target.device)
    weights = _HASH_WEIGHTS.get(key)
    if weights is None:
        gen = torch.Generator().manual_seed(0x1C3)
        weights = torch.randint(-2 ** 62, 2 ** 62, (num_classes,), generator=gen, dtype=torch.int64) | 1
        weights = _HASH_WEIGHTS.setdefault(key, weights.to(target.device))
    bits = target.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (bits * weights).sum(dim=1)


def duplicate_counts(target: torch.Tensor) -> torch.Tensor:
    """For each row of ``target``, how many rows (itself included) are equal to it. Shape [B], float."""
    keys = _row_keys(target)
    return (keys[:, None] == keys[None, :]).sum(dim=0).to(torch.float32)


class MixedTargets(NamedTuple):
    """Soft targets as timm's mixers make them: a floor plus at most two classes per row.

    ``target[j] == floor[j] + weights[j, 0] * e(classes[j, 0]) + weights[j, 1] * e(classes[j, 1])``
    holds exactly for every row when ``exact`` (a 0-d tensor) is true. Label smoothing gives the
    floor, the mixing weight (and the smoothing) the two weights; an unmixed row has one weight 0.
    """
    floor: torch.Tensor
    weights: torch.Tensor
    classes: torch.Tensor
    exact: torch.Tensor
    mixed: torch.Tensor


def mixed_target_structure(target: torch.Tensor) -> MixedTargets:
    """Read the floor and the two largest classes of each row; O(B C), no host sync. Needs C >= 3."""
    floor = target.amin(dim=1)
    top = target.topk(3, dim=1)
    weights = top.values[:, :2] - floor[:, None]
    return MixedTargets(floor, weights, top.indices[:, :2], (top.values[:, 2] == floor).all(),
                        (weights[:, 1] > 0).any())


def dense_scores_t(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``M.T``: ``[classifiers, images]``, ``M[i, j] = S[i] . Y[j]``, image i under row j's classifier (Eq. 2-3)."""
    return target @ logits.T


class _SparseScoresT(torch.autograd.Function):
    """``M.T`` from the targets' structure, O(B^2 + B C), with a backward of plain scatter-adds.

    ``Mt[j, i] = floor_j * sum_c S[i, c] + w_j1 * S[i, a_j] + w_j2 * S[i, b_j]``. Where C >= B it
    gathers columns of ``S`` and transposes the small result; where C < B it gathers rows of a
    copy of ``S.T`` (cheap then), whose backward scatters into few rows. Either way the backward is
    ``index_add_``: autograd's own backward of a gather (``index_put_``) was several times slower.
    """

    @staticmethod
    def forward(ctx, logits, floor, weights, classes):
        ctx.save_for_backward(floor, weights, classes)
        ctx.num_classes = num_classes = logits.shape[1]
        ctx.columns = num_classes >= logits.shape[0]
        row_sums = logits.sum(dim=1)
        if ctx.columns:
            scores = torch.outer(row_sums, floor)
            scores.addcmul_(logits.index_select(1, classes[:, 0]), weights[:, 0])
            scores.addcmul_(logits.index_select(1, classes[:, 1]), weights[:, 1])
            return scores.t()
        logits_t = logits.t().contiguous()
        scores_t = torch.outer(floor, row_sums)
        scores_t.addcmul_(logits_t.index_select(0, classes[:, 0]), weights[:, :1])
        scores_t.addcmul_(logits_t.index_select(0, classes[:, 1]), weights[:, 1:])
        return scores_t

    @staticmethod
    def backward(ctx, grad_t):
        floor, weights, classes = ctx.saved_tensors
        grad_row_sums = (floor @ grad_t)[:, None]
        if ctx.columns:
            grad = grad_t.t()
            grad_logits = grad_row_sums.expand(-1, ctx.num_classes).contiguous()
            grad_logits.index_add_(1, classes[:, 0], grad * weights[:, 0])
            grad_logits.index_add_(1, classes[:, 1], grad * weights[:, 1])
            return grad_logits, None, None, None
        grad_logits_t = grad_t.new_zeros(ctx.num_classes, grad_t.shape[1])
        grad_logits_t.index_add_(0, classes[:, 0], grad_t * weights[:, :1])
        grad_logits_t.index_add_(0, classes[:, 1], grad_t * weights[:, 1:])
        return grad_logits_t.t() + grad_row_sums, None, None, None


def sparse_scores_t(logits: torch.Tensor, targets: MixedTargets) -> torch.Tensor:
    """:func:`dense_scores_t` for targets of :class:`MixedTargets` structure, O(B^2 + B C) not O(B^2 C)."""
    return _SparseScoresT.apply(logits, targets.floor, targets.weights, targets.classes)


def infinite_class_cross_entropy(
        logits: torch.Tensor,
        target: torch.Tensor,
        axes: str = 'both',
        duplicates: str = 'paper',
        target_format: str = 'dense',
        *,
        all_logits: Optional[torch.Tensor] = None,
        all_target: Optional[torch.Tensor] = None,
        offset: int = 0,
) -> torch.Tensor:
    """The Infinite Class Mixup loss of Eq. 9 (``axes='both'``), Eq. 5 (``'class'``) or Eq. 7 (``'pair'``).

    Args:
        logits: ``S``, the model output ``[B, C]`` including the classifier bias.
        target: ``Y``, soft targets ``[B, C]`` from timm's mixers (rows sum to one).
        axes: ``'class'``: cross-entropy over each row of ``M = S @ Y.T``, target the diagonal;
            ``'pair'``: over each column; ``'both'``: the two batch means summed.
        duplicates: ``'paper'`` counts equal target rows as separate classifiers, as the paper does;
            ``'merge'`` normalises the class axis over the distinct rows of the targets only.
        target_format: ``'dense'`` computes ``M`` as a matrix product, right for any soft targets;
            ``'sparse'`` builds it from the floor and two classes of each row (timm's mixed targets,
            see :class:`MixedTargets`), and gives NaN if some row has more classes.
            Both hold ``M`` transposed, classifiers by images.
        all_logits, all_target: the global batch ``[N, C]`` when each process of a distributed run
            contrasts its rows with every row of every process. ``logits``/``target`` are then this
            process's rows, found at ``offset`` in the global batch; the loss is the mean over them.

    Falls back to the soft-target cross-entropy over the original classes when no row of the
    (global) batch is mixed, or when it has fewer than two rows: there is nothing to contrast.
    Computed in float32 (or wider) whatever the autocast dtype.
    """
    check_choice('axes', axes, AXES)
    check_choice('duplicates', duplicates, DUPLICATES)
    check_choice('target_format', target_format, TARGET_FORMATS[1:])
    check_logits_and_targets(logits, target, 'InfiniteClassCrossEntropy')
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with autocast_off(logits.device):
        logits, target = logits.to(dtype), target.to(dtype)
        gathered = all_logits is not None
        all_logits = all_logits.to(dtype) if gathered else logits
        all_target = all_target.to(dtype) if gathered else target
        if all_target.shape[0] < 2:
            return soft_target_cross_entropy(logits, target)
        if target_format == 'sparse' and target.shape[1] >= 3:
            scores_t = sparse_scores_t
            classifiers = mixed_target_structure(all_target)
            my_classifiers = mixed_target_structure(target) if gathered else classifiers
            mixed, exact = classifiers.mixed, classifiers.exact
        else:
            scores_t = dense_scores_t
            classifiers, my_classifiers = all_target, target
            mixed, exact = any_row_mixed(all_target), None
        # Transposed score matrices, rows = classifiers: every classifier x my images [N, b] for
        # the class axis, my classifiers x every image [b, N] for the pair axis; one [B, B] unless gathered.
        if gathered:
            class_t = scores_t(logits, classifiers) if axes != 'pair' else None
            pair_t = scores_t(all_logits, my_classifiers) if axes != 'class' else None
        else:
            class_t = pair_t = scores_t(logits, classifiers)
        rows = torch.arange(logits.shape[0], device=logits.device)
        positives = rows + offset
        loss = logits.new_zeros(())
        if axes != 'pair':  # Eq. 5: each image over every interpolated classifier
            own = class_t[positives, rows]
            normaliser = class_t
            if duplicates == 'merge':
                normaliser = class_t - duplicate_counts(all_target).log()[:, None]
            loss = loss + (torch.logsumexp(normaliser, dim=0) - own).mean()
        if axes != 'class':  # Eq. 7: each interpolated classifier over every image
            own = pair_t[rows, positives]
            loss = loss + (torch.logsumexp(pair_t, dim=1) - own).mean()
        # Soft-target CE from the same diagonal: -sum_c y_c log p_c = sum(y) lse(s) - y . s
        plain = (target.sum(dim=1) * torch.logsumexp(logits, dim=1) - own).mean()
        loss = torch.where(mixed, loss, plain)
        if exact is not None:
            loss = torch.where(exact, loss, torch.full_like(loss, float('nan')))
        return loss


class InfiniteClassCrossEntropy(nn.Module):
    """Drop-in for ``timm.loss.SoftTargetCrossEntropy`` that trains with Infinite Class Mixup.

    ``forward(logits[B, C], soft_target[B, C]) -> scalar``; see :func:`infinite_class_cross_entropy`.

    Args:
        axes: ``'both'`` (Eq. 9, default), ``'class'`` (Eq. 5) or ``'pair'`` (Eq. 7).
        duplicates: ``'paper'`` (default) or ``'merge'`` (class axis over distinct target rows).
        gather_distributed: in a distributed run, contrast this process's rows with the rows of
            every process (all-gather with gradient); by default each process contrasts its own batch.
        target_format: ``'sparse'``: targets are timm's mixed targets (a floor plus two classes per
            row), and the score matrix costs O(B^2 + B C); ``'dense'``: any soft targets, O(B^2 C);
            ``'auto'`` (default): checks the first batch's targets once (one host sync, at the first
            call only) and keeps the answer. A later batch whose targets do not fit the sparse
            structure gives a NaN loss rather than a wrong one.
    """

    def __init__(self, axes: str = 'both', duplicates: str = 'paper', gather_distributed: bool = False,
                 target_format: str = 'auto'):
        super().__init__()
        self.axes = check_choice('axes', axes, AXES)
        self.duplicates = check_choice('duplicates', duplicates, DUPLICATES)
        self.gather_distributed = bool(gather_distributed)
        self.target_format = check_choice('target_format', target_format, TARGET_FORMATS)

    def _resolve_format(self, target: torch.Tensor) -> str:
        if self.target_format == 'auto' and isinstance(target, torch.Tensor) and target.dim() == 2:
            sparse = target.shape[1] >= 3 and bool(mixed_target_structure(target.float()).exact)
            self.target_format = 'sparse' if sparse else 'dense'
        return self.target_format

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_and_targets(logits, target, 'InfiniteClassCrossEntropy')
        target_format = self._resolve_format(target)
        if self.gather_distributed:
            all_logits, all_target, offset = gather_rows(logits, target)
            return infinite_class_cross_entropy(
                logits, target, self.axes, self.duplicates, target_format,
                all_logits=all_logits, all_target=all_target, offset=offset)
        return infinite_class_cross_entropy(logits, target, self.axes, self.duplicates, target_format)

    def extra_repr(self) -> str:
        return (f'axes={self.axes!r}, duplicates={self.duplicates!r}, '
                f'gather_distributed={self.gather_distributed}, target_format={self.target_format!r}')
