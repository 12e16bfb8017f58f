"""What makes :mod:`timm_icm.loss` fast; none of it changes a value or a gradient.

:mod:`timm_icm.loss` states the method: ``M = S @ Y.T`` (Eq. 3) and a cross-entropy over its rows
(Eq. 5) and its columns (Eq. 7). This module holds the four pieces that make that cheap where
``B^2 C`` is large, each tested against the plain form in ``tests/test_loss.py``. Figures are
multiples of SoftTargetCrossEntropy's forward + backward from ``benchmarks/cost.py``
(``benchmarks/results/cost-loss.md``: one CPU thread; ``cost-cuda.md``: H100):

- :class:`ScorePath` picks the matrix product or the sparse score matrix per call (``'auto'``).
  Saves: the dense ``O(B^2 C)`` product where it is the slow part. Pays off above
  ``B^2 C = 2^27`` on the CPU, ``2^31`` on accelerators; below that the product is cheaper.
- :func:`sparse_score_matrix` builds ``M`` from each target row's floor and two classes,
  ``O(B^2 + B C)``. Pays off at large ``B^2 C``: CPU B=1024, C=21843 0.56x against 2.72x dense,
  C=1000 3.72x against 7.83x; H100 B=1024, C=21843 2.96x against 5.23x. Loses below: CPU
  B=128, C=100 4.84x against 2.82x.
- :func:`cross_entropies` is one autograd node for both cross-entropies. Saves: the backward is
  one ``B x B`` buffer (the kept softmaxes, scaled, minus the positives) instead of two
  cross-entropy graphs and their sum, and it keeps two ``B x B`` softmaxes and nothing of size
  ``B x C`` (8 MiB at B=1024, against SoftTargetCE's 171 MiB at C=21843). Pays off everywhere.
- :func:`duplicate_counts` counts equal target rows (``duplicates='merge'``) by hashing each row
  to one integer: ``O(B C)`` instead of comparing every pair of rows, ``O(B^2 C)``.
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .distributed import all_ranks_logsumexp

# Up to this many multiply-adds (images x classifiers x classes) one matrix product builds the score
# matrix faster than the sparse path, whose fixed cost is a dozen small operations (measured with
# benchmarks/cost.py on a 2-core CPU and an H100).
DENSE_SCORE_WORK = {'cpu': 2 ** 27}
DENSE_SCORE_WORK_ACCELERATOR = 2 ** 31


def host_reads_are_free(device: torch.device) -> bool:
    """On the CPU, reading a tensor's value waits for nothing; on an accelerator it syncs the host,
    and inside ``torch.compile`` it would break the graph."""
    return device.type == 'cpu' and not torch.compiler.is_compiling()


def sparse_pays_off(num_images: int, num_classifiers: int, num_classes: int, device: torch.device) -> bool:
    """Whether the sparse score matrix is faster than the matrix product for this size and device."""
    limit = DENSE_SCORE_WORK.get(device.type, DENSE_SCORE_WORK_ACCELERATOR)
    return num_images * num_classifiers * num_classes > limit


_NOT_MIXED_TARGETS = ('InfiniteClassCrossEntropy: soft targets with three or more classes above a row\'s minimum '
                      'reached the sparse score path, which cannot represent them; pass target_format=\'dense\'')


class MixedTargets:
    """Soft targets as timm's mixers make them: a floor plus at most two classes per row.

    ``target[j] == floor[j] + weights[j, 0] * e(classes[j, 0]) + weights[j, 1] * e(classes[j, 1])``
    holds exactly for row j where ``fits[j]``. Label smoothing gives the floor, the mixing weight
    (and the smoothing) the two weights; an unmixed row has weight 0 on its second class. Indexing
    with a slice of rows gives those rows' structure.
    """

    def __init__(self, floor: torch.Tensor, weights: torch.Tensor, classes: torch.Tensor, fits: torch.Tensor):
        self.floor, self.weights, self.classes, self.fits = floor, weights, classes, fits

    @classmethod
    def read(cls, target: torch.Tensor) -> 'MixedTargets':
        """The floor and the two largest classes of each row of ``target`` [N, C >= 3]; ``O(N C)``,
        no host sync. ``topk`` allocates nothing of size N x C, which at large C makes it faster than
        any mask. A row holding NaN or inf counts as fitting: its NaN then reaches the loss, as
        SoftTargetCrossEntropy lets it."""
        top = target.topk(3, dim=1)
        return cls.from_top(target.amin(dim=1), top.values, top.indices[:, :2])

    @classmethod
    def from_top(cls, floor: torch.Tensor, top_values: torch.Tensor, top_classes: torch.Tensor) -> 'MixedTargets':
        """From each row's minimum, its three largest values and the classes of the first two."""
        weights = top_values[:, :2] - floor[:, None]
        fits = (top_values[:, 2] == floor) | ~torch.isfinite(weights[:, 0])
        return cls(floor, weights, top_classes, fits)

    def __getitem__(self, rows: slice) -> 'MixedTargets':
        return MixedTargets(self.floor[rows], self.weights[rows], self.classes[rows], self.fits[rows])

    def __len__(self) -> int:
        return self.floor.shape[0]

    def any_mixed(self) -> torch.Tensor:
        """True (0-d) when some row has two classes above its floor."""
        return (self.weights[:, 1] > 0).any()

    def check_fits(self, target: Optional[torch.Tensor], target_format: str) -> None:
        """Fail loudly on a batch that the sparse score matrix cannot represent; it would be wrong.

        On the CPU a ValueError naming the rows; elsewhere (and inside ``torch.compile``) a
        device-side assertion, which costs no host sync and stops the run at its next sync.
        ``target``: the dense rows, to count the first bad row's classes; None for every rank's
        rows of a distributed global batch, whose dense rows no rank holds.
        """
        if not host_reads_are_free(self.fits.device):
            torch._assert_async(self.fits.all(), _NOT_MIXED_TARGETS)
        elif not bool(self.fits.all()):
            rows = (~self.fits).nonzero().flatten().tolist()
            which = 'rows' if target is not None else "rows of the global batch (every rank's)"
            first = (f'row {rows[0]}: {int((target[rows[0]] > self.floor[rows[0]]).sum())} classes'
                     if target is not None else f'the first: row {rows[0]}')
            uses = 'takes the sparse path at this size' if target is not None else \
                'sends every rank\'s targets as a floor plus two classes a row'
            chosen = {'sparse': "target_format='sparse'",
                      'auto': f"target_format='auto', which found the first batch's targets mixed by timm and "
                              f"so {uses}"}[target_format]
            raise ValueError(
                f'InfiniteClassCrossEntropy with {chosen} got soft targets that are not a floor plus at most two '
                f'classes per row: {len(rows)} of {len(self)} {which} have three or more classes above their minimum '
                f'({first}). Only targets mixed by timm\'s Mixup/CutMix (from two images, '
                f'label smoothing allowed) have that form; for any other soft targets (a teacher\'s distribution, '
                f'mixing of more than two images) pass target_format=\'dense\'.')


class ScorePath:
    """Which way a call builds ``M``: the target tensor for the matrix product, or its
    :class:`MixedTargets` for :func:`sparse_score_matrix`.

    ``'dense'`` and ``'sparse'`` are fixed. ``'auto'`` reads the first batch's targets once
    (:meth:`read_first_batch`, the one host read) and keeps the answer in ``sparse_targets``; where
    they are mixed by timm, each call then takes the sparse path if :func:`sparse_pays_off` for its
    size. A sparse-path batch that is not mixed by timm fails loudly (:meth:`MixedTargets.check_fits`).
    """

    def __init__(self, target_format: str, agree: Optional[Callable[[bool, torch.device], bool]] = None):
        self.target_format = target_format
        self.sparse_targets: Optional[bool] = None
        self.agree = agree  # a distributed global batch: the first batch's answer must hold on every rank

    def classifiers(self, num_images: int, target: torch.Tensor) -> Union[torch.Tensor, MixedTargets]:
        if target.shape[1] < 3 or not self._takes_sparse_path(num_images, target):
            return target
        mixed = MixedTargets.read(target)
        mixed.check_fits(target, self.target_format)
        return mixed

    def _takes_sparse_path(self, num_images: int, target: torch.Tensor) -> bool:
        if self.target_format != 'auto':
            return self.target_format == 'sparse'
        if self.sparse_targets is None:  # forward called without its pre-hook
            self.read_first_batch(target)
        return self.sparse_targets and sparse_pays_off(num_images, *target.shape, target.device)

    def travels_compact(self, target: torch.Tensor) -> bool:
        """Whether every row of ``target`` is a floor plus two classes (``'sparse'``, or ``'auto'``
        with the first batch so): a distributed global batch then sends those few numbers a row."""
        if target.shape[1] < 3 or self.target_format == 'dense':
            return False
        if self.target_format == 'auto' and self.sparse_targets is None:
            self.read_first_batch(target)
        return self.target_format == 'sparse' or self.sparse_targets

    def reads_structure(self, num_images: int, num_classifiers: int, num_classes: int, device: torch.device) -> bool:
        """For targets that travelled compact: the sparse score matrix, or the dense product of the rows."""
        return self.target_format == 'sparse' or sparse_pays_off(num_images, num_classifiers, num_classes, device)

    @torch.compiler.disable(reason="target_format='auto' reads the first batch's targets on the host, once")
    def read_first_batch(self, target: torch.Tensor) -> None:
        """Whether every row of ``target`` is a floor plus at most two classes: one host read."""
        fits = target.shape[1] >= 3 and bool(MixedTargets.read(target.float()).fits.all())
        self.sparse_targets = self.agree(fits, target.device) if self.agree else fits


@torch.compiler.disable(reason="target_format='auto' reads the first batch's targets on the host, once")
def first_batch_pre_hook(loss: torch.nn.Module, args: tuple) -> None:
    """Forward pre-hook of a ``target_format='auto'`` loss: reads the first batch's targets before
    ``forward`` runs, then removes itself. ``torch.compile`` runs module hooks outside the graph,
    so even the first compiled call is one graph (``fullgraph=True`` works)."""
    if len(args) == 2 and isinstance(args[1], torch.Tensor) and args[1].dim() == 2 and args[1].is_floating_point():
        loss.score_path.read_first_batch(args[1])
    for key, hook in list(loss._forward_pre_hooks.items()):
        if hook is first_batch_pre_hook:
            del loss._forward_pre_hooks[key]


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
    """``M`` from the targets' structure, with a backward of scatter-adds.

    ``M[i, j] = floor_j * sum_c S[i, c] + w_j1 * S[i, a_j] + w_j2 * S[i, b_j]``. With ``images_first``
    (C >= 2 N, N classifiers) it gathers from the rows of ``S`` into ``[images, classifiers]``;
    otherwise it sums weighted rows of ``S.T`` (an embedding bag; the transposed copy is small then)
    into ``[classifiers, images]`` and returns that transposed, a view. Neither reads a large matrix
    across its strides, and the backward reuses one scratch buffer: on the CPU a fresh large buffer
    costs about as much as a pass over it.
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
        return scores.addr_(floor, row_sums).t()

    @staticmethod
    def backward(ctx, grad):
        floor, weights, classes = ctx.saved_tensors
        if ctx.images_first:
            scratch = torch.empty_like(grad)
            num_images = grad.shape[0]
            grad_logits = (grad @ floor)[:, None].expand(num_images, ctx.num_classes).contiguous()
            for k in range(2):
                torch.mul(grad, weights[:, k], out=scratch)
                grad_logits.scatter_add_(1, classes[:, k].expand(num_images, -1), scratch)
            return grad_logits, None, None, None, None
        grad = grad.t()  # [classifiers, images], contiguous when it comes from cross_entropies
        scratch = torch.empty_like(grad)
        grad_logits_t = grad.new_zeros(ctx.num_classes, grad.shape[1])
        for k in range(2):
            torch.mul(grad, weights[:, k, None], out=scratch)
            grad_logits_t.index_add_(0, classes[:, k], scratch)
        return _transposed(grad_logits_t).add_((floor @ grad)[:, None]), None, None, None, None


def sparse_score_matrix(images: torch.Tensor, classifiers: MixedTargets) -> torch.Tensor:
    """``images @ target.T`` for the targets whose structure ``classifiers`` holds, ``O(I N + I C)``
    instead of ``O(I N C)``; ``[images, classifiers]``, laid out the cheaper way for the size."""
    images_first = images.shape[1] >= 2 * len(classifiers)  # measured on the CPU: benchmarks/cost.py
    return _SparseScores.apply(images, classifiers.floor, classifiers.weights, classifiers.classes, images_first)


def _in_memory_order(matrix: torch.Tensor, dim: int, diagonal: int) -> Tuple[torch.Tensor, int, int, bool]:
    """``matrix`` as it lies in memory (its transpose when it is a transposed view), with the softmax
    dim and the positives' diagonal carried along, and whether it was transposed."""
    if matrix.is_contiguous() or not matrix.t().is_contiguous():
        return matrix, dim, diagonal, False
    return matrix.t(), 1 - dim, -diagonal, True


class _CrossEntropies(torch.autograd.Function):
    """Eq. 5 over the rows of one score matrix and Eq. 7 over the columns of another (or the same
    one, ``shared``), each ``mean_k [logsumexp(line_k - bias) - positive_k]`` over the lines that
    hold a positive; two 0-d outputs.

    Each term is one ``log_softmax`` pass; its exp, the softmax, is kept for the backward, which is
    then one buffer per score matrix: the softmaxes scaled by the incoming gradients, minus them at
    the positives. The positive's log-probability comes from ``log_softmax``, so the loss stays
    exact where the positive's probability underflows.

    ``columns_across_ranks``: the columns matrix is ``M[mine, :]`` of a distributed global batch and
    each column continues on the other ranks; its normaliser is all-reduced
    (:func:`.distributed.all_ranks_logsumexp`) and the term is the mean over my rows' classifiers.
    The backward stays local: every rank's gradient of my rows is ``p - 1[positive]`` over every
    column, scaled as my own columns are, which is the sum over the ranks for a loss whose upstream
    gradient is the same on every rank (the DDP contract of :mod:`.global_batch`).
    """

    @staticmethod
    def forward(ctx, rows, columns, offset, class_bias, shared, columns_across_ranks):
        terms = []  # (output, input, matrix as laid out in memory, softmax dim, positives' diagonal, transposed)
        if rows is not None:  # Eq. 5: line k is row k, its positive at column offset + k
            terms.append((0, 0, *_in_memory_order(rows, 1, offset)))
        if shared or columns is not None:  # Eq. 7: the positive of classifier k at image offset + k
            pair_diagonal = offset if columns_across_ranks else -offset  # columns [mine, all] or [all, mine]
            terms.append((1, 0 if shared else 1, *_in_memory_order(rows if shared else columns, 0, pair_diagonal)))
        outputs, probs = [None, None], []
        for output, _, matrix, dim, diagonal, _ in terms:
            bias = class_bias if output == 0 else None
            if output == 1 and columns_across_ranks:
                log_probs = matrix - all_ranks_logsumexp(matrix, dim).unsqueeze(dim)
            else:
                log_probs = torch.log_softmax(matrix if bias is None else matrix - bias.unsqueeze(1 - dim), dim)
            positives = log_probs.diagonal(diagonal)
            outputs[output] = positives.sum().div_(-len(positives))  # mean of -log p(positive)
            if bias is not None:  # the positive is the unshifted score: lse(s - b) - s_k = -log p_k - b_k
                outputs[output] -= bias[offset:offset + len(positives)].mean()
            probs.append(log_probs.exp_())
        ctx.save_for_backward(*probs)
        ctx.terms = [(output, input_, dim, diagonal, transposed) for output, input_, _, dim, diagonal, transposed
                     in terms]
        ctx.shared = shared
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, class_grad, pair_grad):
        probs = ctx.saved_tensors
        if ctx.shared and class_grad is pair_grad:  # Eq. 9 on one matrix: one scale, one pass over the positives
            diagonal = ctx.terms[0][3]
            scale = class_grad / len(probs[0].diagonal(diagonal))
            grad = probs[0] * scale
            grad.addcmul_(probs[1], scale).diagonal(diagonal).sub_(scale, alpha=2)
            return grad.t() if ctx.terms[0][-1] else grad, None, None, None, None, None
        grads, transposed_inputs = [None, None], set()
        for (output, input_, dim, diagonal, transposed), prob in zip(ctx.terms, probs):
            scale = (class_grad, pair_grad)[output] / len(prob.diagonal(diagonal))
            if grads[input_] is None:
                grads[input_] = prob * scale
            else:
                grads[input_].addcmul_(prob, scale)
            grads[input_].diagonal(diagonal).sub_(scale)
            if transposed:
                transposed_inputs.add(input_)
        grads = [grad.t() if i in transposed_inputs else grad for i, grad in enumerate(grads)]
        return grads[0], grads[1], None, None, None, None


def cross_entropies(rows: Optional[torch.Tensor], columns: Optional[torch.Tensor], axes: str = 'both',
                    offset: int = 0, class_bias: Optional[torch.Tensor] = None, columns_across_ranks: bool = False
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(class_ce, pair_ce)``: the mean cross-entropy over the rows of ``rows`` (Eq. 5; line k's
    positive at column ``offset + k``, ``class_bias`` subtracted from each row inside the
    normaliser only) and over the columns of ``columns`` (Eq. 7; positive at row ``offset + k``;
    with ``columns_across_ranks``, ``columns`` is ``M[mine, :]``, column ``offset + k``'s positive
    at row k and its normaliser over every rank's images).
    ``axes`` (``'both'``, ``'class'``, ``'pair'``) says which to compute; the other is ``None``.
    One matrix for both gives both from one node with one gradient buffer."""
    rows = rows if axes != 'pair' else None
    columns = columns if axes != 'class' else None
    shared = rows is not None and columns is rows
    return _CrossEntropies.apply(rows, None if shared else columns, offset, class_bias, shared, columns_across_ranks)


_HASH_WEIGHTS = {}


def _hash_weights(num_classes: int, device: torch.device) -> torch.Tensor:
    """Odd 64-bit integers, one per class, the same on every device and in every process:
    SplitMix64 of the class index (integer arithmetic wraps, so this needs no generator and
    traces into a compiled graph). Kept per (C, device) outside ``torch.compile``."""
    if torch.compiler.is_compiling():
        return _splitmix64_odd(num_classes, device)
    key = (num_classes, device)
    if key not in _HASH_WEIGHTS:
        _HASH_WEIGHTS[key] = _splitmix64_odd(num_classes, device)
    return _HASH_WEIGHTS[key]


def _splitmix64_odd(count: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(1, count + 1, dtype=torch.int64, device=device) * -7046029254386353131
    for shift, factor in ((30, -4658895280553007687), (27, -7723592293110705685)):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * factor
    return x ^ ((x >> 31) & ((1 << 33) - 1)) | 1


def duplicate_counts(target: torch.Tensor) -> torch.Tensor:
    """For each row of ``target``, how many rows (itself included) are bit-identical to it. Shape [B], float.

    Each row's float32 bits are hashed to one 64-bit integer (:func:`row_keys`) and the keys are
    compared: ``O(B C + B^2)``, no sort, no sync.
    """
    return key_counts(row_keys(target))


def row_keys(target: torch.Tensor) -> torch.Tensor:
    """One 64-bit integer per row, equal for bit-identical float32 rows (wrapping integer
    arithmetic, so the key depends on neither reduction order, device nor process; collisions
    about 2^-60)."""
    bits = target.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (bits * _hash_weights(target.shape[1], target.device)).sum(dim=1)


def key_counts(keys: torch.Tensor) -> torch.Tensor:
    """For each key, how many keys (itself included) equal it; float."""
    return (keys[:, None] == keys[None, :]).sum(dim=0).to(torch.float32)
