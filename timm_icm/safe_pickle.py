"""Unpickling with an allow-list, so that a data file can never run code.

A pickle names the functions and classes that rebuild its objects, and ``pickle.load`` imports and calls
whatever it names (``os.system`` included). CIFAR's python batches and meta files, ciFAIR's and DEIC's
copies of them, need only numpy's array reconstruction and a few builtin containers: :func:`loads` looks
up those and refuses every other name (:class:`RefusedGlobal`) before anything of the file is called.

Torch checkpoints are not read here: ``torch.load(weights_only=True)`` has its own allow-list
(:func:`timm_icm.files.load_checkpoint`).
"""
import io
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 1.26 has no numpy._core
    from numpy.core import multiarray as _multiarray, numeric as _numeric

__all__ = ['RefusedGlobal', 'AllowListUnpickler', 'loads', 'ALLOWED_GLOBALS']


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; ``name`` is ``module.name`` as the file spells it."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f'refused to unpickle {name}')


def _latin1_bytes(text: str, encoding: str = 'latin1') -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for ``bytes`` (always with 'latin1'), and for nothing else."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise RefusedGlobal(f'_codecs.encode (with {type(text).__name__} and encoding {encoding!r})')
    return text.encode('latin1')


def _both_numpy_names(module: str, name: str, obj: Any) -> Dict[Tuple[str, str], Any]:
    """numpy 1 pickles name ``numpy.core.*``, numpy 2 ``numpy._core.*``: the same object under both."""
    return {(f'numpy.core.{module}', name): obj, (f'numpy._core.{module}', name): obj}


def _builtin(name: str, obj: Callable) -> Dict[Tuple[str, str], Any]:
    # '__builtin__' is Python 2's name, also written by Python 3 at protocols 0-2.
    return {('builtins', name): obj, ('__builtin__', name): obj}


# Every global a CIFAR / ciFAIR / DEIC pickle may name, at any pickle protocol, from Python 2 or 3,
# numpy 1 or 2. Lists, dicts, tuples, strings and numbers need none (they have their own opcodes).
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    **_both_numpy_names('multiarray', '_reconstruct', _multiarray._reconstruct),  # arrays, protocols 0-4
    **_both_numpy_names('multiarray', 'scalar', _multiarray.scalar),  # numpy scalars, e.g. an np.int64 label
    **_both_numpy_names('numeric', '_frombuffer', _numeric._frombuffer),  # arrays, protocol 5
    ('_codecs', 'encode'): _latin1_bytes,  # bytes, protocols 0-2
    **_builtin('bytes', bytes),
    **_builtin('bytearray', bytearray),
    **_builtin('set', set),
    **_builtin('frozenset', frozenset),
}


class AllowListUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that looks up the globals of :data:`ALLOWED_GLOBALS` only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f'{module}.{name}') from None


def loads(data: bytes, encoding: str = 'latin1') -> Any:
    """The object pickled in ``data``, built from :data:`ALLOWED_GLOBALS` only; :class:`RefusedGlobal` otherwise.

    ``encoding`` decodes Python 2 strings; 'latin1' (the default) keeps the raw bytes of numpy arrays
    pickled by Python 2 intact, as CIFAR's files need.
    """
    return AllowListUnpickler(io.BytesIO(data), encoding=encoding).load()
