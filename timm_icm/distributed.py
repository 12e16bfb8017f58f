"""torch.distributed's collectives as the ICM loss uses them, and the process group's lifetime.

The global-batch loss (``gather_distributed=True``, :mod:`.global_batch`) needs, per step, every
rank's targets in a few numbers a row (:func:`all_rows_of`), every rank's duplicate keys with
``duplicates='merge'``, and the log-sum-exp of each column of ``M`` over every rank's images
(:func:`all_ranks_logsumexp`): O(N) numbers, whatever the number of classes. :func:`all_rows`, the
differentiable all-gather of logits, is the earlier way (O(N C)), kept for ``benchmarks/gather.py``.
"""
import warnings
from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def release_process_group() -> None:
    """Destroy the default process group if one is left, as timm's train.py does at its end.

    Left to the interpreter's exit, gloo's worker threads can abort a finished rank (SIGABRT), and
    torchrun then reports the whole run as failed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor``, concatenated in rank order; the gradient goes back to the owner's rows."""
    from torch.distributed.nn.functional import all_gather
    with warnings.catch_warnings():
        # A FutureWarning in torch 2.14 points to the private _functional_collectives.all_gather_single, which older
        # torch releases do not differentiate (they had a separate all_gather_tensor_autograd); this one is public.
        warnings.filterwarnings('ignore', message='torch.distributed.nn.functional.all_gather is deprecated',
                                category=FutureWarning)
        return torch.cat(all_gather(tensor), dim=0)


def all_rows_of(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` in rank order, without gradient (targets, keys)."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world()[1])]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def every_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on every rank (one all-reduce of one number); ``flag`` alone outside
    a distributed run."""
    if world()[1] == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def row_count_range(num_rows: int, device: torch.device) -> torch.Tensor:
    """``[most, -fewest]`` rows over the ranks: one all-reduce of two integers."""
    counts = torch.tensor([num_rows, -num_rows], device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return counts


def all_ranks_logsumexp(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp(matrix, dim)`` where the lines along ``dim`` continue on the other ranks: each rank
    holds its own entries of the same lines. Two all-reduces of one number per line: the maxima,
    then the sums of exponentials below them. Not differentiable: its caller's backward is local."""
    peak = matrix.amax(dim)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)  # as torch.logsumexp: -inf lines stay -inf
    total = (matrix - peak.unsqueeze(dim)).exp_().sum(dim)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.log_().add_(peak)
