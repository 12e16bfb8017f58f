"""The allow-list reader of the project's pickles (timm_icm.safe_pickle): it refuses every pickle that
names code outside its list before any of it runs, and builds the same objects as ``pickle.load`` from
CIFAR's files, the tiny ones the tests write and the real ones where the pack is here."""
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

from timm_icm import datasets, safe_pickle
from timm_icm.safe_pickle import RefusedGlobal
from test_cifar_real import cifar_dir  # noqa: F401 (the fixture: the real CIFAR files, or a skip)
from test_datasets import CIFAR10_NAMES, RunsOnLoad, cifar_blob, creates_file, meta_blob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOLS = sorted({0, 2, 4, pickle.HIGHEST_PROTOCOL})


def assert_same(got, expected, where='object'):
    """``got`` is ``expected``: the same types, dict keys in the same order, arrays of the same dtype, shape
    and bytes."""
    assert type(got) is type(expected), (where, type(got), type(expected))
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_same(got[key], expected[key], f'{where}[{key!r}]')
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f'{where}[{i}]')
    elif isinstance(expected, np.ndarray):
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), where
        if expected.dtype == object:
            assert_same(got.tolist(), expected.tolist(), where)
        else:
            assert got.tobytes() == expected.tobytes(), where
    else:
        assert got == expected, where


# ----------------------------------------------------------------------------- refused

def _calls(marker):
    """(the global its pickle names, an object whose unpickling creates ``marker``) for several ways to run code."""
    m = str(marker)
    return {
        'open': ({'io.open'}, creates_file(m)),
        'os.system': ({f'{os.system.__module__}.system'}, RunsOnLoad(os.system, f'touch {m}')),
        'Path.touch': ({'pathlib.Path.touch', 'builtins.getattr', '__builtin__.getattr'},  # protocol 4+ / 0-3
                       RunsOnLoad(pathlib.Path.touch, pathlib.Path(m))),
        'numpy.save': ({'numpy.save'}, RunsOnLoad(np.save, m + '.npy', np.zeros(1))),  # numpy, but not an array
    }


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('call', ['open', 'os.system', 'Path.touch', 'numpy.save'])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, call, protocol):
    marker = tmp_path / 'created'
    names, evil = _calls(marker)[call]
    entry = {'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 1], 'filenames': evil}  # deep inside a batch
    blob = pickle.dumps(entry, protocol=protocol)
    with pytest.raises(RefusedGlobal) as refused:
        safe_pickle.loads(blob)
    assert refused.value.name in names and str(refused.value) == f'refused to unpickle {refused.value.name}'
    assert not list(tmp_path.iterdir())
    pickle.loads(blob)  # the same bytes through pickle itself: they do run code
    assert list(tmp_path.iterdir())


@pytest.mark.parametrize('blob, name', [
    (b"cos\nsystem\n(S'touch created'\ntR.", 'os.system'),  # Python 2's protocol 0, as written by hand
    (b"c__builtin__\neval\n(S'1'\ntR.", '__builtin__.eval'),
    (b'\x80\x02cbuiltins\ngetattr\ncnumpy\nndarray\nX\x06\x00\x00\x00tofile\x86R.', 'builtins.getattr'),
    (b'\x80\x02cnumpy.core.multiarray\n_reconstruct\ncos\nsystem\n\x86.', 'os.system'),
    (b'\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.',
     "_codecs.encode (with str and encoding 'rot13')"),
])
def test_hand_written_pickles_are_refused(tmp_path, monkeypatch, blob, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RefusedGlobal) as refused:
        safe_pickle.loads(blob)
    assert refused.value.name == name
    assert not list(tmp_path.iterdir())


def test_refused_is_an_unpickling_error():
    """Code that catches pickle's own error for a broken file catches a refusal too."""
    assert issubclass(RefusedGlobal, pickle.UnpicklingError)


# ----------------------------------------------------------------------------- the same objects as pickle

@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_every_allowed_kind_of_object_loads_as_pickle_loads_it(protocol):
    entry = {
        'data': np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
        'fortran': np.asfortranarray(np.arange(12, dtype='>f4').reshape(3, 4)),
        'records': np.zeros(2, dtype=[('a', '<i4'), ('b', 'S3')]),
        'objects': np.array([1, 'a', None], dtype=object),
        'labels': [np.int64(3), np.float32(0.5), np.bool_(True), 7, 2 ** 70, 1.5, None, True],
        b'bytes key': b'\x00\xff bytes', 'empty': b'', 'mutable': bytearray(b'\x01\x02'),
        'sets': ({1, 2}, frozenset({'x'})), 'nested': {'names': ['airplane', 'automobile']},
    }
    blob = pickle.dumps(entry, protocol=protocol)
    assert_same(safe_pickle.loads(blob), pickle.loads(blob, encoding='latin1'))


@pytest.mark.parametrize('bytes_keys', [False, True])
def test_tiny_cifar_files_load_as_pickle_loads_them(bytes_keys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    for blob in (cifar_blob(images, [1, 2, 3], 'labels', bytes_keys),
                 meta_blob('label_names', CIFAR10_NAMES, bytes_keys)):
        assert_same(safe_pickle.loads(blob), pickle.loads(blob, encoding='latin1'))


REAL_FILES = {'cifar-10-batches-py': ['batches.meta', *[f'data_batch_{i}' for i in range(1, 6)], 'test_batch'],
              'cifar-100-python': ['meta', 'train', 'test']}


def test_the_real_files_load_byte_for_byte_as_pickle_loads_them(cifar_dir):  # noqa: F811
    """Python 2 pickles of numpy 1 (``numpy.core.multiarray``): the same dicts, arrays and labels."""
    for folder, names in REAL_FILES.items():
        for name in names:
            with open(os.path.join(cifar_dir, folder, name), 'rb') as f:
                blob = f.read()
            assert_same(safe_pickle.loads(blob), pickle.loads(blob, encoding='latin1'), f'{folder}/{name}')


def test_the_real_cifar100_training_set_is_unchanged(cifar_dir):  # noqa: F811
    with open(os.path.join(cifar_dir, 'cifar-100-python', 'train'), 'rb') as f:
        reference = pickle.load(f, encoding='latin1')
    train = datasets.create_dataset('torch/cifar100', root=cifar_dir, split='train')
    assert train.data.tobytes() == reference['data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).tobytes()
    assert train.targets == reference['fine_labels']


# ----------------------------------------------------------------------------- one reader

def test_the_project_unpickles_nothing_else():
    """Every pickle the project reads goes through safe_pickle (data) or torch's weights_only (checkpoints)."""
    unsafe = re.compile(r'(?<![\w.])pickle\.loads?\(|Unpickler\(|allow_pickle\s*=\s*True|\bdill\b|joblib\.load|'
                        r'shelve\.open|marshal\.loads?\(')
    torch_load = re.compile(r'torch\.load\(')
    found = []
    for folder in ('timm_icm', 'benchmarks', '.'):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            path = os.path.join(ROOT, folder, name)
            if not name.endswith('.py') or os.path.samefile(path, safe_pickle.__file__):
                continue
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    if unsafe.search(line) or (torch_load.search(line) and 'weights_only=True' not in line):
                        found.append(f'{os.path.relpath(path, ROOT)}:{number}: {line.strip()}')
    assert not found, found
