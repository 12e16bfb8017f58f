"""The random streams a training process draws from, captured and put back.

A training epoch draws from three generators: torch's (the sampler's shuffle, the augmentation, a loader's
worker seeds), numpy's (timm's mixers draw lambda and the mixing choice there) and Python's. A checkpoint
that holds them lets a resumed run draw exactly what the uninterrupted run would have drawn, so the two end
with the same weights. The states are kept in types that ``torch.load(weights_only=True)`` reads.
"""
import random
from typing import Any, Dict

import numpy as np
import torch
from timm.task import ClassificationTask

__all__ = ['random_states', 'set_random_states', 'ResumableClassificationTask']


def random_states() -> Dict[str, Any]:
    """torch's, numpy's and Python's generator states (and CUDA's where it is in use)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {'torch': torch.get_rng_state(), 'numpy': [kind, keys.tolist(), position, has_gauss, cached_gaussian],
              'python': random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Dict[str, Any]) -> None:
    """Put back what :func:`random_states` captured."""
    torch.set_rng_state(states['torch'])
    kind, keys, position, has_gauss, cached_gaussian = states['numpy']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = states['python']
    random.setstate((version, tuple(internal), gauss_next))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


class ResumableClassificationTask(ClassificationTask):
    """timm's ``ClassificationTask`` whose checkpoints also hold the random streams (``task_state``).

    Saved at the end of an epoch and put back on ``--resume``, they make a run that was cut off and resumed
    end with the weights of one that ran through. With ``restore_random_states=False`` (each process of a
    distributed run has its own streams, and only the first one saves) they are saved but not put back.
    """

    restore_random_states = True

    def get_task_state(self, module=None, ema: bool = False) -> Dict[str, Any]:
        state = super().get_task_state(module=module, ema=ema)
        return state if ema else {**state, 'random_states': random_states()}

    def load_task_state(self, state, strict: bool = True, module=None, ema: bool = False) -> None:
        state = dict(state or {})
        saved = state.pop('random_states', None)
        if saved is not None and self.restore_random_states:
            set_random_states(saved)
        super().load_task_state(state or None, strict=strict, module=module, ema=ema)
