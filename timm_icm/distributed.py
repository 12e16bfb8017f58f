"""All-gather for a loss that contrasts each process's rows with the global batch.

As open_clip's contrastive loss does: gather every rank's logits with gradient (torch's
differentiable all-gather: its backward sums each rank's gradient back to the rank that owns the
rows), gather the targets, and let each rank's loss be the mean over its own rows. DDP then
averages the gradients, which gives the gradient of the global-batch loss. Every rank must hold the
same number of rows (``drop_last``).
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


def gather_rows(logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The global batch ``(all_logits, all_target)`` and the offset of this rank's rows in it."""
    rank, world_size = world()
    if world_size == 1:
        return logits, target, 0
    return all_rows(logits), all_rows(target), rank * logits.shape[0]
