"""The rows a process contrasts its own with: its own batch, or the global batch of a distributed run.

With ``gather_distributed=True`` each rank computes ``M[mine, :] = S_mine @ Y_all.T`` (Eq. 3) from
its own logits and every rank's targets, and never sees another rank's logits:

- the class axis (Eq. 5) of my rows is all in ``M[mine, :]``: it needs every rank's targets, which
  travel as a few numbers a row where timm's mixers made them (each row's floor, its three largest
  values and the classes of the first two: :func:`gather_compact_targets`), densely only for
  arbitrary soft targets; with ``duplicates='merge'`` also one 64-bit key a row, for global counts;
- the pair axis (Eq. 7) of column j is a cross-entropy over every image of the global batch: each
  rank holds its images' entries of every column, and the column's normaliser is an all-reduce of
  N maxima and N sums (``columns_across_ranks`` of :func:`.loss_fast.cross_entropies`).

That is O(N) numbers per rank and step whatever C is. The contract with DDP holds as with the
earlier all-gather of logits (:func:`gathered_logits`, kept for ``benchmarks/gather.py``): the mean
of the ranks' losses is the single-process loss of the concatenated global batch, and each rank's
logits gradient is ``world_size`` times the global loss's gradient for its rows, so DDP's average of
the parameter gradients is the gradient of the global-batch loss. The pair axis's backward is local
and relies on the loss's upstream gradient being the same on every rank, as it is under DDP.
Every rank must hold the same number of rows (``drop_last=True``): checked, one all-reduce of two
integers a step.
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .distributed import all_rows, all_rows_of, row_count_range, world
from .loss_fast import MixedTargets, ScorePath, duplicate_counts, host_reads_are_free, key_counts, row_keys

Classifiers = Union[torch.Tensor, MixedTargets]


@dataclass
class GlobalBatch:
    """Every target row of the global batch as the score matrix reads it, and where mine start.

    ``classifiers``: ``Y_all`` [N, C], or its floor and two classes a row (:class:`.loss_fast.MixedTargets`).
    ``columns_across_ranks``: Eq. 7's columns continue on the other ranks' images (the distributed global batch).
    ``all_logits``: every rank's logits, only for the earlier all-gather (:func:`gathered_logits`) and
    :func:`given_batch`; Eq. 7 then takes every image under my classifiers from them.
    """
    classifiers: Classifiers
    offset: int
    duplicate_counts: Optional[torch.Tensor]
    columns_across_ranks: bool = False
    all_logits: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.classifiers)


def local_batch(target: torch.Tensor, score_path: ScorePath, merge: bool) -> GlobalBatch:
    """This process's own batch: ``Y`` (or its structure) at offset 0."""
    return GlobalBatch(score_path.classifiers(target.shape[0], target), 0, duplicate_counts(target) if merge else None)


def given_batch(logits: torch.Tensor, all_logits: torch.Tensor, all_target: torch.Tensor, offset: int,
                score_path: ScorePath, merge: bool) -> GlobalBatch:
    """A global batch whose logits are all given (one process, or the earlier all-gather)."""
    return GlobalBatch(score_path.classifiers(logits.shape[0], all_target), offset,
                       duplicate_counts(all_target) if merge else None, all_logits=all_logits)


def gathered_logits(logits: torch.Tensor, target: torch.Tensor, score_path: ScorePath, merge: bool) -> GlobalBatch:
    """The earlier way: all-gather every rank's logits (with gradient) and dense targets, O(N C) a rank."""
    rank, world_size = world()
    if world_size == 1:
        return local_batch(target, score_path, merge)
    return given_batch(logits, all_rows(logits), all_rows(target), rank * logits.shape[0], score_path, merge)


def gathered_targets(logits: torch.Tensor, target: torch.Tensor, score_path: ScorePath, merge: bool,
                     who: str = 'InfiniteClassCrossEntropy') -> GlobalBatch:
    """The global batch without other ranks' logits: every rank's targets (compact where timm mixed
    them), with Eq. 7's column normalisers to be all-reduced."""
    rank, world_size = world()
    if world_size == 1:
        return local_batch(target, score_path, merge)
    num_rows = target.shape[0]
    check_same_row_count(num_rows, target.device, who)
    if score_path.travels_compact(target):
        classifiers = gather_compact_targets(logits.shape[0], target, score_path)
    else:
        classifiers = score_path.classifiers(num_rows, all_rows_of(target))  # arbitrary soft targets: dense
    counts = key_counts(all_rows_of(row_keys(target))) if merge else None  # one 64-bit key a row
    return GlobalBatch(classifiers, rank * num_rows, counts, columns_across_ranks=True)


def gather_compact_targets(num_images: int, target: torch.Tensor, score_path: ScorePath) -> Classifiers:
    """Every rank's targets from each row's floor, three largest values and first two classes
    (6 numbers a row); the sparse score path's structure, or the dense rows rebuilt bit for bit.

    Every rank checks every row, so a row that is not a floor plus two classes stops every rank."""
    bits = _SAME_WIDTH_INT[target.dtype]  # the values travel as their bits, beside the class indices
    top = target.topk(3, dim=1)
    compact = torch.cat((target.amin(dim=1, keepdim=True).view(bits), top.values.view(bits),
                         top.indices[:, :2].to(bits)), dim=1)
    compact = all_rows_of(compact)
    values = compact[:, :4].contiguous().view(target.dtype)
    floor, top_values, top_classes = values[:, 0], values[:, 1:], compact[:, 4:].long()
    mixed = MixedTargets.from_top(floor, top_values, top_classes)
    mixed.check_fits(None, score_path.target_format)
    if score_path.reads_structure(num_images, len(mixed), target.shape[1], target.device):
        return mixed
    dense = floor[:, None].expand(len(mixed), target.shape[1]).contiguous()
    return dense.scatter_(1, top_classes, top_values[:, :2])


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def check_same_row_count(num_rows: int, device: torch.device, who: str) -> None:
    """Fail on every rank, in one clear line, when the ranks hold different numbers of rows: on the
    CPU a ValueError, on accelerators a device-side assertion (no host sync)."""
    counts = row_count_range(num_rows, device)
    message = f'{who} with gather_distributed=True needs the same number of rows on every rank (drop_last=True)'
    if not host_reads_are_free(device):
        torch._assert_async(counts[0] == -counts[1], message)
    elif int(counts[0]) != -int(counts[1]):
        raise ValueError(f'{message}; this rank has {num_rows}, the ranks hold {-int(counts[1])} to {int(counts[0])}')
