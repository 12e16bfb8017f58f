"""The Infinite Class Mixup loss (Mensink & Mettes, BMVC 2023, Sec. 3).

A mixed image's target is its own classifier, the interpolation of its classes' classifiers
(Eq. 2). For a model with a linear head the score of image i under the classifier of row j is
``M[i, j] = S[i] . Y[j]`` with ``S`` the logits and ``Y`` the soft targets (Eq. 3, bias included),
so the whole ``B x B`` score matrix is ``S @ Y.T``. The loss is a cross-entropy over each row of
``M`` (contrast an image with every interpolated classifier of the batch, Eq. 5), over each column
(contrast a classifier with every mixed image, Eq. 7), or the sum of both (Eq. 9).
"""
import contextlib
from typing import ContextManager, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from .distributed import gather_rows

AXES = ('both', 'class', 'pair')
DUPLICATES = ('paper', 'merge')
TARGET_FORMATS = ('auto', 'dense', 'sparse')
UNMIXED = ('ce', 'icm')

# Up to this many multiply-adds (images x classifiers x classes) one matrix product builds the score
# matrix faster than the sparse path, whose fixed cost is a dozen small operations (measured with
# benchmarks/cost.py on a 2-core CPU and an H100).
DENSE_SCORE_WORK = {'cpu': 2 ** 27}
DENSE_SCORE_WORK_ACCELERATOR = 2 ** 31


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
    """Leave autocast for exact float32 arithmetic (a no-op where autocast is off or not available)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
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

    def any_mixed(self) -> torch.Tensor:
        """True (0-d) when some row has two classes above its floor."""
        return (self.weights[:, 1] > 0).any()


def mixed_target_structure(target: torch.Tensor) -> MixedTargets:
    """Read the floor and the two largest classes of each row; O(B C), no host sync. Needs C >= 3.

    ``topk`` allocates nothing of size B x C, which at large C makes it faster than any mask.
    """
    floor = target.amin(dim=1)
    top = target.topk(3, dim=1)
    weights = top.values[:, :2] - floor[:, None]
    return MixedTargets(floor, weights, top.indices[:, :2], (top.values[:, 2] == floor).all())


def dense_scores(logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """``M[i, j] = S[i] . Y[j]``, image i under row j's classifier (Eq. 2-3), and its classifier dim (1)."""
    return logits @ target.T, 1


def _transposed(matrix: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``matrix.T`` made contiguous; on the CPU copied a block of rows at a time, about twice as
    fast there as one strided copy."""
    if matrix.device.type != 'cpu':
        return matrix.t().contiguous()
    out = matrix.new_empty(matrix.shape[1], matrix.shape[0])
    for start in range(0, matrix.shape[0], block):
        out[:, start:start + block] = matrix[start:start + block].t()
    return out


class _SparseScores(torch.autograd.Function):
    """``M`` from the targets' structure, O(B N + B C) not O(B N C), with a backward of scatter-adds.

    ``M[i, j] = floor_j * sum_c S[i, c] + w_j1 * S[i, a_j] + w_j2 * S[i, b_j]``. With ``images_first``
    (C >= 2 B) it gathers from the rows of ``S`` into ``[images, classifiers]``; otherwise it sums
    weighted rows of ``S.T`` (an embedding bag; the transposed copy is small then) into
    ``[classifiers, images]``. Neither reads a large matrix across its strides, and the backward
    reuses one scratch buffer: on the CPU a fresh large buffer costs about as much as a pass over it.
    """

    @staticmethod
    def forward(ctx, logits, floor, weights, classes, images_first):
        ctx.save_for_backward(floor, weights, classes)
        ctx.images_first = images_first
        ctx.num_classes = logits.shape[1]
        num_images = logits.shape[0]
        row_sums = logits.sum(dim=1)
        if images_first:
            scores = logits.gather(1, classes[:, 0].expand(num_images, -1)).mul_(weights[:, 0])
            scores.addcmul_(logits.gather(1, classes[:, 1].expand(num_images, -1)), weights[:, 1])
            return scores.addr_(row_sums, floor)
        scores = F.embedding_bag(classes, _transposed(logits), per_sample_weights=weights, mode='sum')
        return scores.addr_(floor, row_sums)

    @staticmethod
    def backward(ctx, grad):
        floor, weights, classes = ctx.saved_tensors
        scratch = torch.empty_like(grad)
        if ctx.images_first:
            num_images = grad.shape[0]
            grad_logits = (grad @ floor)[:, None].expand(num_images, ctx.num_classes).contiguous()
            for k in range(2):
                torch.mul(grad, weights[:, k], out=scratch)
                grad_logits.scatter_add_(1, classes[:, k].expand(num_images, -1), scratch)
            return grad_logits, None, None, None, None
        grad_logits_t = grad.new_zeros(ctx.num_classes, grad.shape[1])
        for k in range(2):
            torch.mul(grad, weights[:, k, None], out=scratch)
            grad_logits_t.index_add_(0, classes[:, k], scratch)
        return _transposed(grad_logits_t).add_((floor @ grad)[:, None]), None, None, None, None


def sparse_scores(logits: torch.Tensor, targets: MixedTargets) -> Tuple[torch.Tensor, int]:
    """:func:`dense_scores` for targets of :class:`MixedTargets` structure, in the cheaper layout."""
    images_first = logits.shape[1] >= 2 * targets.classes.shape[0]  # measured on the CPU: benchmarks/cost.py
    scores = _SparseScores.apply(logits, targets.floor, targets.weights, targets.classes, images_first)
    return scores, 1 if images_first else 0


def _positives(log_probs: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """The positives of the lines along ``dim`` (a view): line k's positive sits at ``offset + k`` along
    ``dim`` and at k along the other dim."""
    return log_probs.diagonal(offset if dim == 1 else -offset)


class _ContrastNLL(torch.autograd.Function):
    """``sum over dims of mean_k [logsumexp(line_k - bias) - positive_k]``, one scalar.

    Each dim is one ``log_softmax`` pass; its exp, the softmax, is kept for the backward, which is
    then one buffer: the softmaxes scaled by the incoming gradient, minus it at the positives. The
    positive's log-probability comes from ``log_softmax``, so the loss stays exact where the
    positive's probability underflows.
    """

    @staticmethod
    def forward(ctx, scores, dims, biases, offset):
        probs, total = [], None
        for dim, bias in zip(dims, biases):
            log_probs = torch.log_softmax(scores if bias is None else scores - bias.unsqueeze(1 - dim), dim)
            mean_positive = _positives(log_probs, dim, offset).mean()
            if bias is not None:  # the positive is the unshifted score: lse(s - b) - s_k = -log p_k - b_k
                mean_positive = mean_positive + bias[offset:offset + scores.shape[1 - dim]].mean()
            total = mean_positive if total is None else total + mean_positive
            probs.append(log_probs.exp_())
        ctx.save_for_backward(*probs)
        ctx.dims, ctx.offset = dims, offset
        return total.neg_()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad, scales = None, {}
        for dim, prob in zip(ctx.dims, ctx.saved_tensors):
            lines = prob.shape[1 - dim]
            scale = scales.get(lines)
            if scale is None:
                scale = scales[lines] = grad_total / lines
            if grad is None:
                grad = prob * scale
            else:
                grad.addcmul_(prob, scale)
            _positives(grad, dim, ctx.offset).sub_(scale)
        return grad, None, None, None


def contrast_nll(scores: torch.Tensor, dims: Sequence[int], offset: int = 0,
                 biases: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """The cross-entropy of Eq. 5 / Eq. 7 on a score matrix: for each dim in ``dims``, the mean over
    the lines along it of ``logsumexp(line - bias) - positive``, summed over ``dims``. Line k's
    positive sits at ``offset + k`` along the dim (:func:`_positives`); ``bias`` (one value per index
    along the dim) shifts the normaliser only."""
    return _ContrastNLL.apply(scores, tuple(dims), tuple(biases or [None] * len(dims)), offset)


def sparse_pays_off(num_images: int, num_classifiers: int, num_classes: int, device: torch.device) -> bool:
    """Whether the sparse score matrix is faster than the matrix product for this size and device."""
    limit = DENSE_SCORE_WORK.get(device.type, DENSE_SCORE_WORK_ACCELERATOR)
    return num_images * num_classifiers * num_classes > limit


def host_reads_are_free(device: torch.device) -> bool:
    """On the CPU, reading a tensor's value on the host waits for nothing; elsewhere it syncs."""
    return device.type == 'cpu'


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
        axes: ``'class'``: cross-entropy over each row of ``M = S @ Y.T``, target the diagonal;
            ``'pair'``: over each column; ``'both'``: the two batch means summed.
        duplicates: ``'paper'`` counts equal target rows as separate classifiers, as the paper does;
            ``'merge'`` normalises the class axis over the distinct rows of the targets only.
        target_format: ``'dense'`` computes ``M`` as a matrix product, right for any soft targets;
            ``'sparse'`` builds it from the floor and two classes of each row (timm's mixed targets,
            see :class:`MixedTargets`), and gives NaN if some row has more classes.
        unmixed: a batch in which no row is mixed (``--mixup-prob`` < 1, ``--mixup-off-epoch``)
            gets ``'icm'``, the same contrast as a mixed batch (over the classes present in the
            batch), or ``'ce'``, the soft-target cross-entropy over the original classes.
        all_logits, all_target: the global batch ``[N, C]`` when each process of a distributed run
            contrasts its rows with every row of every process. ``logits``/``target`` are then this
            process's rows, found at ``offset`` in the global batch; the loss is the mean over them.

    A batch of fewer than two rows has nothing to contrast and gets the soft-target cross-entropy.
    Computed in float32 (or wider) whatever the autocast dtype. On accelerators nothing is read on
    the host: both branches are computed and one is selected on the device. On the CPU, where a
    read costs no sync, only the branch in use is computed.
    """
    check_choice('axes', axes, AXES)
    check_choice('duplicates', duplicates, DUPLICATES)
    check_choice('target_format', target_format, TARGET_FORMATS[1:])
    check_choice('unmixed', unmixed, UNMIXED)
    check_logits_and_targets(logits, target, 'InfiniteClassCrossEntropy')
    return _checked_loss(logits, target, axes, duplicates, target_format, unmixed, all_logits, all_target, offset)


def _checked_loss(logits, target, axes, duplicates, target_format, unmixed, all_logits, all_target, offset):
    """:func:`infinite_class_cross_entropy` for arguments already checked (the module checks its
    options once, at construction)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with autocast_off(logits.device):
        logits, target = logits.to(dtype), target.to(dtype)
        gathered = all_logits is not None
        all_logits = all_logits.to(dtype) if gathered else logits
        all_target = all_target.to(dtype) if gathered else target
        if all_target.shape[0] < 2:
            return soft_target_cross_entropy(logits, target)
        if target_format == 'sparse' and target.shape[1] >= 3:
            scores = sparse_scores
            classifiers = mixed_target_structure(all_target)
            my_classifiers = mixed_target_structure(target) if gathered else classifiers
            mixed, exact = classifiers.any_mixed() if unmixed == 'ce' else None, classifiers.exact
        else:
            scores = dense_scores
            classifiers, my_classifiers = all_target, target
            mixed, exact = any_row_mixed(all_target) if unmixed == 'ce' else None, None
        fall_back = unmixed == 'ce'
        if fall_back and host_reads_are_free(logits.device):
            # mixed is a function of the global batch, so every process takes the same branch.
            if not bool(mixed):
                loss = soft_target_cross_entropy(logits, target)
                return loss if exact is None else torch.where(exact, loss, torch.full_like(loss, float('nan')))
            fall_back = False
        if gathered:  # every classifier x my images for Eq. 5, my classifiers x every image for Eq. 7
            class_scores = scores(logits, classifiers) if axes != 'pair' else None
            pair_scores = scores(all_logits, my_classifiers) if axes != 'class' else None
        else:
            class_scores = pair_scores = scores(logits, classifiers)
        terms = []  # (score matrix, the dim to normalise over, a bias on that dim's normaliser)
        if axes != 'pair':  # Eq. 5: each image over every interpolated classifier
            matrix, classifier_dim = class_scores
            merge = duplicates == 'merge'
            terms.append((matrix, classifier_dim, duplicate_counts(all_target).log() if merge else None))
        if axes != 'class':  # Eq. 7: each interpolated classifier over every image
            matrix, classifier_dim = pair_scores
            terms.append((matrix, 1 - classifier_dim, None))
        if gathered:
            loss = sum(contrast_nll(matrix, [dim], offset, [bias]) for matrix, dim, bias in terms)
        else:  # one matrix: both axes in one node, one gradient buffer
            loss = contrast_nll(terms[0][0], [dim for _, dim, _ in terms], offset, [bias for _, _, bias in terms])
        if fall_back:
            loss = torch.where(mixed, loss, soft_target_cross_entropy(logits, target))
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
            row), and the score matrix costs O(B^2 + B C); ``'dense'``: any soft targets, one matrix
            product, O(B^2 C); ``'auto'`` (default): checks the first batch's targets once (one host
            sync, at the first call only) and keeps the answer in ``sparse_targets``. Where they fit,
            each call takes the sparse path if its size makes that faster (:func:`sparse_pays_off`:
            large B^2 C), else the matrix product. A later batch whose targets do not fit the sparse
            structure gives a NaN loss on the sparse path rather than a wrong one.
        unmixed: what a batch without any mixed row gets: ``'icm'`` (default), the contrast all
            the same; ``'ce'``, the soft-target cross-entropy over the original classes. The default
            is measured: ``benchmarks/gains.py``, the README's "What ICM gains".
    """

    def __init__(self, axes: str = 'both', duplicates: str = 'paper', gather_distributed: bool = False,
                 target_format: str = 'auto', unmixed: str = 'icm'):
        super().__init__()
        self.axes = check_choice('axes', axes, AXES)
        self.duplicates = check_choice('duplicates', duplicates, DUPLICATES)
        self.gather_distributed = bool(gather_distributed)
        self.target_format = check_choice('target_format', target_format, TARGET_FORMATS)
        self.unmixed = check_choice('unmixed', unmixed, UNMIXED)
        self.sparse_targets: Optional[bool] = None  # 'auto': do the targets fit the sparse path (first batch)

    def format_for(self, logits: torch.Tensor, target: torch.Tensor, num_classifiers: Optional[int] = None) -> str:
        """The score-matrix path, ``'dense'`` or ``'sparse'``, of a call with these tensors (global batch
        of ``num_classifiers`` rows when gathering)."""
        if self.target_format != 'auto':
            return self.target_format
        if self.sparse_targets is None:
            self.sparse_targets = target.shape[1] >= 3 and bool(mixed_target_structure(target.float()).exact)
        rows, classes = target.shape
        if self.sparse_targets and sparse_pays_off(rows, num_classifiers or rows, classes, logits.device):
            return 'sparse'
        return 'dense'

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_and_targets(logits, target, 'InfiniteClassCrossEntropy')
        if self.gather_distributed:
            all_logits, all_target, offset = gather_rows(logits, target)
            target_format = self.format_for(logits, target, all_target.shape[0])
            return _checked_loss(logits, target, self.axes, self.duplicates, target_format, self.unmixed,
                                 all_logits, all_target, offset)
        return _checked_loss(logits, target, self.axes, self.duplicates, self.format_for(logits, target),
                             self.unmixed, None, None, 0)

    def extra_repr(self) -> str:
        return (f'axes={self.axes!r}, duplicates={self.duplicates!r}, gather_distributed={self.gather_distributed}, '
                f'target_format={self.target_format!r}, unmixed={self.unmixed!r}')
