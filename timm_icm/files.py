"""The files a user hands the program, read with one rule per way they can be broken.

Every reader here fails with :class:`FileProblem`, a ``ValueError`` whose message is one line:
``<what> <path>: <what is wrong>[; <the way out>]``. The rules, each defined once:

- the path does not exist, is a directory, is not a regular file, is empty (0 bytes), or cannot be
  opened (permission denied, an I/O error): :func:`check_file`;
- the bytes are not what they should be (truncated, corrupt, another kind of file): :func:`reading`
  turns whatever the parser raised into "is truncated or not <kind> (<reason>)";
- a pickle names a function or class outside its reader's allow-list (it could run code): "refused to
  unpickle <module.name> (<what such a file holds>)", and nothing of it is called (:func:`load_pickle`,
  :func:`load_checkpoint`).

The entry points (``train_icm.py``, ``python -m timm_icm.launch``, ``python -m timm_icm.analyze``,
``python -m timm_icm.report``) print the message after their name and exit with code 2.

Writers: :func:`write_atomic` puts a whole file in place in one ``os.replace``, so a run killed while
writing leaves the old file or the new one, never a part of it.
"""
import argparse
import csv
import io
import json
import os
import pickle
import re
import stat
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = ['FileProblem', 'check_file', 'reading', 'read_bytes', 'read_text', 'load_yaml', 'load_json',
           'load_pickle', 'load_checkpoint', 'newest_checkpoint', 'state_dict_mismatch', 'read_csv',
           'write_atomic', 'remove_stale_temporaries']


class FileProblem(ValueError):
    """A file that cannot be used; ``str(e)`` is one line naming it, what is wrong, and the way out."""

    def __init__(self, what: str, path: str, problem: str, way_out: Optional[str] = None) -> None:
        self.what, self.path, self.problem, self.way_out = what, str(path), problem, way_out
        message = f'{what} {path}: {problem}'.strip()
        if way_out:
            message += f'; {way_out}'
        super().__init__(' '.join(message.split()))


def _one_line(text: str, limit: int = 160) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _reason(error: BaseException) -> str:
    """What a parser said, short: its type and its first sentence."""
    text = _one_line(str(error).split('. ')[0], 120)
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _access_problem(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return 'does not exist'
    if isinstance(error, IsADirectoryError):
        return 'is a directory, not a file'
    if isinstance(error, PermissionError):
        return 'cannot be read (permission denied): check its permissions'
    return f'cannot be read ({error.strerror or _reason(error)})'


def check_file(path: str, what: str, way_out: Optional[str] = None, allow_empty: bool = False) -> None:
    """Raise :class:`FileProblem` unless ``path`` is a regular, non-empty file this process can open."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileProblem(what, path, 'does not exist', way_out) from None
    except OSError as e:
        raise FileProblem(what, path, _access_problem(e), way_out) from None
    if stat.S_ISDIR(info.st_mode):
        raise FileProblem(what, path, 'is a directory, not a file', way_out)
    if not stat.S_ISREG(info.st_mode):
        raise FileProblem(what, path, 'is not a regular file', way_out)
    if info.st_size == 0 and not allow_empty:
        raise FileProblem(what, path, 'is empty (0 bytes)', way_out)
    try:
        with open(path, 'rb') as f:
            f.read(1)
    except OSError as e:
        raise FileProblem(what, path, _access_problem(e), way_out) from None


@contextmanager
def reading(path: str, what: str, kind: str, way_out: Optional[str] = None, check: bool = True,
            shown: Optional[str] = None) -> Iterator[None]:
    """Check ``path`` (:func:`check_file`), then turn any failure of the ``with`` block into a
    :class:`FileProblem` saying the file is truncated or not ``kind``.

    ``shown`` names the file in the message when it differs from ``path`` (a member of a zip archive).
    """
    if check:
        check_file(path, what, way_out)
    try:
        yield
    except FileProblem:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise FileProblem(what, shown or path, _access_problem(e), way_out) from None
    except Exception as e:  # whatever the parser raised: the bytes are not what they should be
        raise FileProblem(what, shown or path, f'is truncated or not {kind} ({_reason(e)})', way_out) from None


def read_bytes(path: str, what: str, kind: str = 'a readable file', way_out: Optional[str] = None) -> bytes:
    with reading(path, what, kind, way_out):
        with open(path, 'rb') as f:
            return f.read()


def read_text(path: str, what: str, kind: str = 'a text file', way_out: Optional[str] = None) -> str:
    with reading(path, what, kind, way_out):
        with open(path, 'rb') as f:
            return f.read().decode('utf-8')


def load_yaml(path: str, what: str, way_out: Optional[str] = None) -> Any:
    """The YAML document in ``path`` (``None`` for a file of comments only)."""
    import yaml
    text = read_text(path, what, 'a text file', way_out)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FileProblem(what, path, f'is not valid YAML ({_one_line(e, 200)})', way_out) from None


def load_json(path: str, what: str, way_out: Optional[str] = None) -> Any:
    text = read_text(path, what, 'a text file', way_out)
    try:
        return json.loads(text)
    except ValueError as e:
        raise FileProblem(what, path, f'is truncated or not JSON ({_one_line(e, 120)})', way_out) from None


def load_pickle(data: bytes, what: str, path: str, kind: str, holds: str, way_out: Optional[str] = None) -> Any:
    """The object pickled in ``data`` (the bytes of file ``path``), built by :func:`timm_icm.safe_pickle.loads`:
    a pickle that names anything outside its allow-list is refused before any of it is called.

    ``kind`` names the format for bytes that do not parse ("is truncated or not <kind>"); ``holds`` says
    why a refused name does not belong there ("refused to unpickle os.system (<holds>)").
    """
    from . import safe_pickle

    with reading(path, what, kind, way_out, check=False):
        try:
            return safe_pickle.loads(data)
        except safe_pickle.RefusedGlobal as e:
            raise FileProblem(what, path, f'refused to unpickle {e.name} ({holds})', way_out) from None


# ----------------------------------------------------------------------------- checkpoints

# What timm's savers write beyond torch's own allow-list: the run's flags.
_CHECKPOINT_GLOBALS = [argparse.Namespace]


def _refused_in_checkpoint(path: str) -> Optional[str]:
    """The globals of checkpoint ``path`` that ``weights_only`` refuses, as one phrase; ``None`` if torch
    cannot list them (a legacy file). Torch lists them from the pickle's opcodes without calling any."""
    import torch
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return None
    return ', '.join(names) or None


def load_checkpoint(path: str, what: str = 'checkpoint', way_out: Optional[str] = None) -> Dict[str, Any]:
    """A torch checkpoint as timm's savers write it (a dict), read safely (``weights_only``).

    Tensors are memory-mapped where the file's format allows, so this is cheap for large files.
    """
    import torch

    def load(mmap: bool):
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)

    with reading(path, what, 'a torch checkpoint', way_out):
        try:
            try:
                checkpoint = load(mmap=True)
            except RuntimeError as e:
                if 'mmap can only be used' not in str(e):  # the legacy (non-zip) format: read it whole
                    raise
                checkpoint = load(mmap=False)
        except pickle.UnpicklingError:
            refused = _refused_in_checkpoint(path)
            if refused is None:
                raise
            raise FileProblem(what, path, f'refused to unpickle {refused} (a checkpoint holds only tensors, '
                                          f'numbers, strings and containers)', way_out) from None
    if not isinstance(checkpoint, dict):
        raise FileProblem(what, path, f'holds a {type(checkpoint).__name__}, not a checkpoint (a dict with a '
                                      f'state_dict)', way_out)
    return checkpoint


_NUMBERED = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')


def newest_checkpoint(folder: str, exclude: Sequence[str] = ()) -> Optional[Tuple[str, Optional[int]]]:
    """The newest checkpoint in ``folder`` that loads, as ``(path, epoch)``; ``None`` when none does.

    Candidates are the numbered ``checkpoint-N.pth.tar`` files and ``last.pth.tar`` (newest epoch
    first; a numbered file before ``last`` of the same epoch), never ``tmp.pth.tar``, which may be cut
    short. Paths in ``exclude`` (e.g. the broken file itself) are skipped.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    candidates: List[Tuple[int, int, str]] = []
    for name in names:
        match = _NUMBERED.match(name)
        if match:
            candidates.append((int(match.group(1)), 1, os.path.join(folder, name)))
    last = os.path.join(folder, 'last.pth.tar')
    loaded: Dict[str, Dict[str, Any]] = {}
    if os.path.realpath(last) not in excluded and os.path.isfile(last):
        try:
            loaded[last] = load_checkpoint(last)
            epoch = loaded[last].get('epoch')
            candidates.append((epoch if isinstance(epoch, int) else -1, 0, last))
        except FileProblem:
            pass
    for _, _, path in sorted(candidates, reverse=True):
        if os.path.realpath(path) in excluded:
            continue
        try:
            checkpoint = loaded.get(path) or load_checkpoint(path)
        except FileProblem:
            continue
        if 'state_dict' in checkpoint or 'model' in checkpoint:
            epoch = checkpoint.get('epoch')
            return path, epoch if isinstance(epoch, int) else None
    return None


def state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> Optional[str]:
    """How the tensors of ``given`` fail to fit a model whose state dict is ``expected``; ``None`` if they fit."""
    problems = []
    shapes = [k for k in expected if k in given and hasattr(given[k], 'shape')
              and tuple(given[k].shape) != tuple(expected[k].shape)]
    if shapes:
        k = shapes[0]
        problems.append(f'{len(shapes)} tensor(s) of another shape (e.g. {k}: {list(given[k].shape)} in the file, '
                        f'{list(expected[k].shape)} in the model)')
    missing = [k for k in expected if k not in given]
    if missing:
        problems.append(f'{len(missing)} missing (e.g. {missing[0]})')
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    return ', '.join(problems) or None


# ----------------------------------------------------------------------------- CSV and atomic writes

def read_csv(path: str, what: str, way_out: Optional[str] = None) -> Tuple[List[str], List[List[str]]]:
    """The header and the complete rows of a CSV file.

    A row is complete when it ends with a line break and has the header's number of fields: a last
    line cut short (a writer killed mid-row) and rows of another width are left out.
    """
    text = read_text(path, what, 'a CSV file', way_out)
    if '\n' not in text:
        return [], []
    whole = text[:text.rindex('\n') + 1]
    with reading(path, what, 'a CSV file', way_out, check=False):
        rows = list(csv.reader(io.StringIO(whole, newline='')))
    if not rows:
        return [], []
    header = rows[0]
    return header, [r for r in rows[1:] if len(r) == len(header)]


def write_atomic(path: str, data: Any) -> None:
    """Write ``data`` (str or bytes) to ``path`` in one step: a temporary file beside it, then ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data.encode('utf-8') if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str, names: Sequence[str]) -> None:
    """Remove what :func:`write_atomic` left of ``names`` in ``folder`` when a process was killed mid-write."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if entry.endswith('.tmp') and any(entry.startswith(f'.{name}.') for name in names):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass
