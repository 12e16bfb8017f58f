"""The real CIFAR-10/100 (the pack in ../shared/data/cifar, unpacked once into the checkout's data/):
class sizes, the paper's subset sizes through the project's own subset code, and train_icm.py reading
them with the CPU CIFAR bases. Skips where the pack is absent (users never have ../shared)."""
import contextlib
import functools
import io
import os
import subprocess
import sys

import pytest
import torch

import train_icm
from timm_icm import datasets, subsets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar')
DATA = os.path.join(ROOT, 'data')  # git-ignored
LAYOUT = {'cifar10': ('cifar-10-batches-py', 'test_batch'), 'cifar100': ('cifar-100-python', 'test')}


@pytest.fixture(scope='module')
def cifar_dir() -> str:
    missing = [d for d, parts in LAYOUT.items() if not os.path.isfile(os.path.join(DATA, *parts))]
    if missing:
        if not os.path.isfile(os.path.join(PACK, 'unpack.py')):
            pytest.skip(f'real CIFAR not here: no pack at {PACK}')
        for d in missing:  # about 10 s; checks every file's MD5
            subprocess.run([sys.executable, os.path.join(PACK, 'unpack.py'), DATA, '--only', d], check=True,
                           capture_output=True)
    return DATA


@functools.lru_cache(maxsize=None)
def load(cifar_dir, name, split):
    return datasets.create_dataset(f'torch/{name}', root=cifar_dir, split=split)


def targets(cifar_dir, name, split):
    return datasets.dataset_targets(load(cifar_dir, name, split))


@pytest.mark.parametrize('name, classes, train, test', [('cifar10', 10, 5000, 1000), ('cifar100', 100, 500, 100)])
def test_images_per_class(cifar_dir, name, classes, train, test):
    assert subsets.class_counts(targets(cifar_dir, name, 'train')).tolist() == [train] * classes
    assert subsets.class_counts(targets(cifar_dir, name, 'test')).tolist() == [test] * classes


def test_a_real_image(cifar_dir):
    image, label = load(cifar_dir, 'cifar10', 'train')[0]
    assert image.size == (32, 32) and image.mode == 'RGB' and label == 6  # CIFAR-10's first image: a frog


@pytest.mark.parametrize('name, setting, size, counts', [
    ('cifar10', dict(imbalance_ratio=0.01), 12406, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),
    ('cifar10', dict(imbalance_ratio=0.1), 20431, None),
    ('cifar100', dict(imbalance_ratio=0.01), 10847, None),
    ('cifar100', dict(fraction=0.1), 5000, [50] * 100),
])
def test_paper_subset_sizes(cifar_dir, name, setting, size, counts):
    train = load(cifar_dir, name, 'train')
    subset, got = subsets.subset_dataset(train, seed=0, **setting)
    assert len(subset) == size and int(got.sum()) == size
    if counts is not None:
        assert got.tolist() == counts
    if 'imbalance_ratio' in setting:
        head = 50000 // len(got)
        assert int(got[0]) == head and int(got[-1]) == round(head * setting['imbalance_ratio'])
    # another seed draws other images of the same sizes
    other, _ = subsets.subset_dataset(train, seed=1, **setting)
    assert len(other) == size and not torch.equal(torch.as_tensor(other.indices), torch.as_tensor(subset.indices))


@pytest.mark.parametrize('base, flags, line', [
    ('cifar10_resnet20', ['--imbalance-ratio', '0.01'], 'Training on 12406 images'),
    ('cifar100_resnet20', ['--train-fraction', '0.1'], 'Training on 5000 images'),
])
def test_train_icm_reads_the_pack_with_the_cpu_bases(cifar_dir, base, flags, line):
    out, err = io.StringIO(), io.StringIO()
    argv = ['-c', os.path.join(ROOT, 'hparams', 'cpu', f'{base}.yaml'), '-c',
            os.path.join(ROOT, 'hparams', 'methods', 'icmixup_la.yaml'), *flags, '--data-dir', cifar_dir, '--dry-run']
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_icm.main(argv)
    assert code == 0, err.getvalue()
    assert line in out.getvalue() and 'LogitAdjustedLoss' in out.getvalue()
