"""All-gather for a loss that contrasts each process's rows with the global batch.

As open_clip's contrastive loss does: gather every rank's logits with gradient (the backward sums
each rank's gradient back to the rank that owns the rows), gather the targets without, and let
each rank's loss be the mean over its own rows. DDP then averages the gradients, which gives the
gradient of the global-batch loss. Every rank must hold the same number of rows (``drop_last``).
"""
from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; backward: sum the gradients of all ranks, keep my rows.

    All-reduce + slice rather than reduce-scatter, which gloo (CPU) does not have.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world_size = world()
        ctx.rows = slice(rank * tensor.shape[0], (rank + 1) * tensor.shape[0])
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_rows(logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The global batch ``(all_logits, all_target)`` and the offset of this rank's rows in it."""
    rank, world_size = world()
    if world_size == 1:
        return logits, target, 0
    all_logits = _AllGatherRows.apply(logits)
    parts = [torch.empty_like(target) for _ in range(world_size)]
    dist.all_gather(parts, target.contiguous())
    return all_logits, torch.cat(parts, dim=0), rank * logits.shape[0]
