"""Data loaders, on tiny files written in the original on-disk formats."""
import gzip
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

import timm.data
from timm_icm import datasets as D
from timm_icm.datasets import create_dataset, dataset_targets, read_idx

CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


# ----------------------------------------------------------------------------- writers

def write_idx(path, array, gz):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + b''.join(struct.pack('>I', d) for d in array.shape)
    blob = header + array.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if gz:
        with gzip.open(path + '.gz', 'wb') as f:
            f.write(blob)
    else:
        with open(path, 'wb') as f:
            f.write(blob)


def write_fmnist(folder, rng, n_train=12, n_test=7, gz=True):
    data = {}
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte'), images, gz)
        write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte'), labels, gz)
        data[prefix] = (images, labels)
    return data


def cifar_blob(images, labels, label_key, bytes_keys, extra=None):
    """One CIFAR pickle: 'data' is N x 3072 uint8, the R, G, B planes of each image in a row."""
    entry = {
        'batch_label': 'testing batch',
        label_key: [int(x) for x in labels],
        'data': np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1),
        'filenames': [f'img_{i}.png' for i in range(len(images))],
    }
    entry.update(extra or {})
    if bytes_keys:  # as Python 2 wrote them, read back with encoding='bytes'
        entry = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in entry.items()}
    return pickle.dumps(entry, protocol=2)


def meta_blob(key, names, bytes_keys):
    entry = {key: names, 'num_vis': 3072}
    if bytes_keys:
        entry = {k.encode(): ([n.encode() for n in v] if isinstance(v, list) else v) for k, v in entry.items()}
    return pickle.dumps(entry, protocol=2)


def cifar10_files(rng, per_batch=2, n_test=3, bytes_keys=False, labels=None):
    """{file name: bytes} for cifar-10-batches-py, and the images/labels per split."""
    files, train_images, train_labels = {}, [], []
    for b in range(1, 6):
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        lab = (rng.integers(0, 10, size=per_batch) if labels is None
               else labels[(b - 1) * per_batch: b * per_batch])
        files[f'data_batch_{b}'] = cifar_blob(images, lab, 'labels', bytes_keys)
        train_images.append(images)
        train_labels.extend(int(x) for x in lab)
    test_images = rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=n_test)
    files['test_batch'] = cifar_blob(test_images, test_labels, 'labels', bytes_keys)
    files['batches.meta'] = meta_blob('label_names', CIFAR10_NAMES, bytes_keys)
    return files, {'train': (np.concatenate(train_images), train_labels),
                   'test': (test_images, [int(x) for x in test_labels])}


def cifar100_files(rng, n_train=6, n_test=4):
    files, split = {}, {}
    for name, n in (('train', n_train), ('test', n_test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n)
        files[name] = cifar_blob(images, fine, 'fine_labels', False,
                                 extra={'coarse_labels': [int(f) // 5 for f in fine]})
        split[name] = (images, [int(x) for x in fine])
    files['meta'] = pickle.dumps({'fine_label_names': [f'fine{i}' for i in range(100)],
                                  'coarse_label_names': [f'coarse{i}' for i in range(20)]}, protocol=2)
    return files, split


class RunsOnLoad:
    """Pickled as a call of ``func(*args)``: ``pickle.load`` makes that call, as it would any call a file names."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def creates_file(path):
    """An object whose unpickling creates the file ``path`` (``open(path, 'w')``): proof that a pickle ran code."""
    return RunsOnLoad(open, str(path), 'w')


def write_folder(folder, files):
    os.makedirs(folder, exist_ok=True)
    for name, blob in files.items():
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(blob)


def write_zip(path, folder, files):
    """An archive laid out as ciFAIR publishes it: one top folder holding CIFAR's files."""
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr(folder + '/', b'')
        for name, blob in files.items():
            zf.writestr(f'{folder}/{name}', blob)


def listing(root):
    return sorted((d, tuple(sorted(fs))) for d, _, fs in os.walk(root))


def check_items(ds, images, labels, mode='RGB'):
    assert len(ds) == len(labels)
    for i in range(len(ds)):
        img, target = ds[i]
        assert isinstance(img, Image.Image) and img.mode == mode
        assert isinstance(target, int) and target == labels[i]
        np.testing.assert_array_equal(np.array(img), images[i])
    assert dataset_targets(ds).tolist() == [ds[i][1] for i in range(len(ds))] == list(labels)
    assert dataset_targets(ds).dtype == torch.long


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST

def test_read_idx_gz_and_plain_agree(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    write_idx(str(tmp_path / 'a'), images, gz=True)
    write_idx(str(tmp_path / 'b'), images, gz=False)
    a, b = read_idx(str(tmp_path / 'a.gz')), read_idx(str(tmp_path / 'b'))
    assert a.shape == (3, 5, 4) and a.dtype == torch.uint8
    assert torch.equal(a, b) and np.array_equal(a.numpy(), images)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / 'junk').write_bytes(b'\x12\x34\x56\x78rest')
    with pytest.raises(ValueError, match='not an IDX file'):
        read_idx(str(tmp_path / 'junk'))
    (tmp_path / 'short').write_bytes(struct.pack('>BBBBI', 0, 0, 8, 1, 10) + b'\x00' * 3)
    with pytest.raises(ValueError, match='10 bytes'):
        read_idx(str(tmp_path / 'short'))


@pytest.mark.parametrize('name', ['fashion_mnist', 'torch/fashion_mnist', 'Torch/Fashion_MNIST'])
def test_fashion_mnist_debian_layout_gz(tmp_path, rng, name):
    data = write_fmnist(str(tmp_path), rng, gz=True)
    before = listing(tmp_path)
    train = create_dataset(name, root=str(tmp_path), split='train')
    test = create_dataset(name, root=str(tmp_path), split='validation')
    assert isinstance(train, D.FashionMNISTIDX)
    check_items(train, *data['train'], mode='L')
    check_items(test, *data['t10k'], mode='L')
    assert train[0][0].size == (28, 28)
    assert train.classes[0] == 'T-shirt/top' and len(train.classes) == 10
    assert listing(tmp_path) == before  # nothing written into the data folder


def test_fashion_mnist_torchvision_layout_uncompressed(tmp_path, rng):
    data = write_fmnist(str(tmp_path / 'FashionMNIST' / 'raw'), rng, gz=False)
    ds = create_dataset('torch/fashion_mnist', root=str(tmp_path), split='test')
    check_items(ds, *data['t10k'], mode='L')
    assert isinstance(ds.targets, torch.Tensor)


def test_fashion_mnist_input_img_mode_and_transforms(tmp_path, rng):
    data = write_fmnist(str(tmp_path), rng)
    ds = create_dataset('fashion_mnist', root=str(tmp_path), input_img_mode='RGB',
                        target_transform=lambda t: t + 100)
    img, target = ds[3]
    assert img.mode == 'RGB' and np.array_equal(np.array(img)[..., 1], data['train'][0][3])
    assert target == int(data['train'][1][3]) + 100
    # dataset_targets reports the raw class, not the transformed target
    assert dataset_targets(ds)[3] == int(data['train'][1][3])


def test_fashion_mnist_real_debian_copy(fashion_mnist_dir):
    train = create_dataset('fashion_mnist', root=fashion_mnist_dir, split='train')
    test = create_dataset('torch/fashion_mnist', root=fashion_mnist_dir, split='test')
    assert (len(train), len(test)) == (60000, 10000)
    assert len(train.classes) == 10
    assert dataset_targets(train).bincount().tolist() == [6000] * 10
    assert dataset_targets(test).bincount().tolist() == [1000] * 10
    img, target = train[0]
    assert img.mode == 'L' and img.size == (28, 28) and target == 9  # the first image is an ankle boot
    idx = torch.randint(0, 60000, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    assert [train[i][1] for i in idx] == dataset_targets(train)[idx].tolist()


# ----------------------------------------------------------------------------- CIFAR / ciFAIR

@pytest.mark.parametrize('bytes_keys', [False, True])
def test_cifar10_pickle_folder(tmp_path, rng, bytes_keys):
    files, split = cifar10_files(rng, bytes_keys=bytes_keys)
    write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
    train = create_dataset('torch/cifar10', root=str(tmp_path), split='train')
    test = create_dataset('torch/cifar10', root=str(tmp_path), split='test')
    check_items(train, *split['train'])
    check_items(test, *split['test'])
    assert train.classes == CIFAR10_NAMES and train.class_to_idx['truck'] == 9
    assert train.data.shape == (10, 32, 32, 3) and train.data.dtype == np.uint8


def test_cifar100_pickle_folder(tmp_path, rng):
    files, split = cifar100_files(rng)
    write_folder(str(tmp_path / 'cifar-100-python'), files)
    train = create_dataset('torch/cifar100', root=str(tmp_path), split='training')
    test = create_dataset('torch/cifar100', root=str(tmp_path), split='eval')
    check_items(train, *split['train'])
    check_items(test, *split['test'])
    assert len(train.classes) == 100 and train.classes[7] == 'fine7'


def _cifair10_tree(tmp_path, rng):
    """CIFAR-10's folder and ciFAIR-10's zip, whose test set differs from CIFAR's."""
    cifar, cifar_split = cifar10_files(rng)
    write_folder(str(tmp_path / 'cifar-10-batches-py'), cifar)
    _, other = cifar10_files(rng, n_test=4)
    cifair = dict(cifar)
    cifair['test_batch'] = cifar_blob(other['test'][0], other['test'][1], 'labels', False)
    return cifar, cifar_split, cifair, other['test']


def test_cifair10_reads_the_published_zip(tmp_path, rng):
    cifar, cifar_split, cifair, cifair_test = _cifair10_tree(tmp_path, rng)
    write_zip(str(tmp_path / 'ciFAIR-10.zip'), 'ciFAIR-10', cifair)
    before = listing(tmp_path)
    test = create_dataset('cifair10', root=str(tmp_path), split='test')
    check_items(test, *cifair_test)
    assert len(test) == 4 != len(create_dataset('torch/cifar10', root=str(tmp_path), split='test'))
    train = create_dataset('cifair10', root=str(tmp_path), split='train')
    check_items(train, *cifar_split['train'])
    assert train.classes == CIFAR10_NAMES
    # the zip itself as root works too, and nothing was extracted
    check_items(create_dataset('cifair10', root=str(tmp_path / 'ciFAIR-10.zip'), split='val'), *cifair_test)
    assert listing(tmp_path) == before


def test_cifair10_extracted_folder(tmp_path, rng):
    _, _, cifair, cifair_test = _cifair10_tree(tmp_path, rng)
    write_folder(str(tmp_path / 'ciFAIR-10'), cifair)
    check_items(create_dataset('cifair10', root=str(tmp_path), split='test'), *cifair_test)
    check_items(create_dataset('cifair10', root=str(tmp_path / 'ciFAIR-10'), split='test'), *cifair_test)


def test_cifair10_train_falls_back_to_cifar(tmp_path, rng):
    cifar, cifar_split = cifar10_files(rng)
    write_folder(str(tmp_path / 'cifar-10-batches-py'), cifar)
    _, other = cifar10_files(rng, n_test=5)
    write_zip(str(tmp_path / 'ciFAIR-10.zip'), 'ciFAIR-10',
              {'test_batch': cifar_blob(other['test'][0], other['test'][1], 'labels', False)})
    train = create_dataset('cifair10', root=str(tmp_path), split='train')
    check_items(train, *cifar_split['train'])
    test = create_dataset('cifair10', root=str(tmp_path), split='test')
    check_items(test, *other['test'])
    assert test.classes == CIFAR10_NAMES  # meta from CIFAR's folder when the archive lacks it


def test_cifair100_zip(tmp_path, rng):
    files, split = cifar100_files(rng)
    write_zip(str(tmp_path / 'ciFAIR-100.zip'), 'ciFAIR-100', files)
    check_items(create_dataset('cifair100', root=str(tmp_path), split='test'), *split['test'])
    check_items(create_dataset('cifair100', root=str(tmp_path), split='train'), *split['train'])


def test_cifair_download_fetches_the_archive_only_when_missing(tmp_path, rng, monkeypatch):
    import torchvision.datasets.utils as tvu
    _, _, cifair, cifair_test = _cifair10_tree(tmp_path, rng)
    calls = []

    def fake_download_url(url, root, filename=None, md5=None, **kw):
        calls.append((url, filename, md5))
        write_zip(os.path.join(root, filename), 'ciFAIR-10', cifair)

    monkeypatch.setattr(tvu, 'download_url', fake_download_url)
    ds = create_dataset('cifair10', root=str(tmp_path), split='test', download=True)
    check_items(ds, *cifair_test)
    assert calls == [('https://github.com/cvjena/cifair/releases/download/v1.0/ciFAIR-10.zip',
                      'ciFAIR-10.zip', 'ca08fd390f0839693d3fc45c4e49585f')]
    create_dataset('cifair10', root=str(tmp_path), split='test', download=True)
    assert len(calls) == 1  # present now: no second download
    with pytest.raises(FileNotFoundError):
        create_dataset('cifair10', root=str(tmp_path / 'empty'), split='test')  # no download unless asked
    assert len(calls) == 1


# ----------------------------------------------------------------------------- DEIC

def test_deic_cifair10_splits_are_positional(tmp_path, rng):
    labels = rng.permutation(np.repeat(np.arange(10), 60))  # 600 images, 60 per class
    cifar, split = cifar10_files(rng, per_batch=120, labels=labels)
    _, other = cifar10_files(rng, n_test=6)
    cifair = dict(cifar)
    cifair['test_batch'] = cifar_blob(other['test'][0], other['test'][1], 'labels', False)
    write_zip(str(tmp_path / 'ciFAIR-10.zip'), 'ciFAIR-10', cifair)
    images, all_labels = split['train']

    def first(start, stop):
        per_class = {c: [i for i, t in enumerate(all_labels) if t == c][start:stop] for c in range(10)}
        return sorted(i for idx in per_class.values() for i in idx)

    for split_name, alias, (start, stop) in [('train', 'training', (0, 30)), ('val', 'validation', (30, 50)),
                                             ('trainval', 'trainval', (0, 50))]:
        expected = first(start, stop)
        for name in (split_name, alias):
            ds = create_dataset('deic_cifair10', root=str(tmp_path), split=name)
            assert ds.source_indices.tolist() == expected
            assert dataset_targets(ds).bincount().tolist() == [stop - start] * 10
            check_items(ds, images[expected], [all_labels[i] for i in expected])
    test = create_dataset('deic_cifair10', root=str(tmp_path), split='test')
    check_items(test, *other['test'])
    train = set(create_dataset('deic_cifair10', root=str(tmp_path), split='train').source_indices.tolist())
    val = set(create_dataset('deic_cifair10', root=str(tmp_path), split='val').source_indices.tolist())
    assert not train & val


def test_deic_errors(tmp_path, rng):
    cifar, _ = cifar10_files(rng)  # 10 images: far fewer than 50 per class
    write_folder(str(tmp_path / 'cifar-10-batches-py'), cifar)
    with pytest.raises(ValueError, match=r'class \d+ .* fewer than the 50'):
        create_dataset('deic_cifair10', root=str(tmp_path), split='trainval')
    with pytest.raises(ValueError, match="got 'holdout'"):
        create_dataset('deic_cifair10', root=str(tmp_path), split='holdout')


# ----------------------------------------------------------------------------- factory behaviour

@pytest.mark.parametrize('name, split, expected_file', [
    ('fashion_mnist', 'train', 'train-images-idx3-ubyte'),
    ('torch/fashion_mnist', 'test', 't10k-labels-idx1-ubyte'),
    ('torch/cifar10', 'train', 'data_batch_1'),
    ('torch/cifar100', 'test', 'cifar-100-python'),
    ('cifair10', 'test', 'ciFAIR-10.zip'),
    ('cifair100', 'train', 'ciFAIR-100'),
    ('deic_cifair10', 'trainval', 'data_batch_5'),
    ('deic_cifair10', 'test', 'test_batch'),
])
def test_missing_data_raises_one_line_file_not_found(tmp_path, name, split, expected_file):
    root = str(tmp_path / 'no-data-here')
    with pytest.raises(FileNotFoundError) as info:
        create_dataset(name, root=root, split=split)
    msg = str(info.value)
    assert '\n' not in msg
    assert msg.startswith(name.lower() + ':') and root in msg and expected_file in msg


def test_missing_files_in_existing_folder(tmp_path, rng):
    write_fmnist(str(tmp_path), rng)
    os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
    create_dataset('fashion_mnist', root=str(tmp_path), split='train')  # train still complete
    with pytest.raises(FileNotFoundError, match='t10k-labels-idx1-ubyte'):
        create_dataset('fashion_mnist', root=str(tmp_path), split='test')


def test_bad_split_and_arguments(tmp_path, rng):
    write_fmnist(str(tmp_path), rng)
    with pytest.raises(ValueError, match="got 'holdout'"):
        create_dataset('fashion_mnist', root=str(tmp_path), split='holdout')
    with pytest.raises(TypeError, match='bogus'):
        create_dataset('fashion_mnist', root=str(tmp_path), bogus=1)
    # the arguments timm's train.py passes are accepted
    ds = create_dataset('fashion_mnist', root=str(tmp_path), split='train', is_training=True,
                        class_map='', batch_size=128, seed=42, repeats=0, num_samples=None,
                        input_key=None, target_key=None, trust_remote_code=False)
    assert len(ds) == 12


def test_other_names_go_to_timm_unchanged(monkeypatch):
    seen = {}

    def fake(name, **kwargs):
        seen.update(name=name, **kwargs)
        return 'from timm'

    monkeypatch.setattr(timm.data, 'create_dataset', fake)
    out = create_dataset('hfds/some-name', root='/r', split='validation', is_training=True,
                         download=True, class_map='map.txt', batch_size=3, input_img_mode='L')
    assert out == 'from timm'
    assert seen == dict(name='hfds/some-name', root='/r', split='validation', is_training=True,
                        download=True, class_map='map.txt', batch_size=3, input_img_mode='L')


def test_image_folder_via_timm_and_its_targets(tmp_path, rng):
    for c, n in (('ant', 2), ('bee', 3)):
        os.makedirs(tmp_path / 'train' / c)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / 'train' / c / f'{i}.png')
    ds = create_dataset('', root=str(tmp_path), split='train')
    assert isinstance(ds, timm.data.ImageDataset)
    assert dataset_targets(ds).tolist() == [ds[i][1] for i in range(len(ds))] == [0, 0, 1, 1, 1]
    sub = Subset(ds, [4, 0, 2])
    assert dataset_targets(sub).tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------- dataset_targets

class _NoTargets(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return i, 0


class _Labelled(Dataset):
    def __init__(self, attr, values):
        setattr(self, attr, values)
        self.n = len(values)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        raise AssertionError('dataset_targets must not load samples')


@pytest.mark.parametrize('attr, values', [
    ('targets', [2, 0, 1, 1]),
    ('targets', torch.tensor([2, 0, 1, 1], dtype=torch.uint8)),
    ('targets', np.array([2, 0, 1, 1], dtype=np.int32)),
    ('labels', np.array([2, 0, 1, 1])),   # e.g. torchvision SVHN, STL10
    ('_labels', [2, 0, 1, 1]),            # e.g. torchvision Flowers102, OxfordIIITPet
])
def test_dataset_targets_without_loading(attr, values):
    ds = _Labelled(attr, values)
    t = dataset_targets(ds)
    assert t.dtype == torch.long and t.tolist() == [2, 0, 1, 1]
    t[0] = 7  # a copy: the data set is untouched
    assert dataset_targets(ds)[0] == 2
    nested = Subset(Subset(ds, [3, 2, 0]), [2, 0])
    assert dataset_targets(nested).tolist() == [2, 1]
    both = ConcatDataset([ds, Subset(ds, np.array([1]))])
    assert dataset_targets(both).tolist() == [2, 0, 1, 1, 0]


def test_dataset_targets_refuses_unknown_datasets():
    with pytest.raises(TypeError, match='_NoTargets'):
        dataset_targets(_NoTargets())


# ----------------------------------------------------------------------------- broken files

@pytest.mark.parametrize('layout', ['fashion_mnist', 'torch/cifar10', 'cifair10'])
def test_a_file_cut_short_names_itself_in_one_line(tmp_path, rng, layout):
    """A truncated file is a FileProblem (a ValueError) naming that file, whatever the layout."""
    from timm_icm.files import FileProblem
    if layout == 'fashion_mnist':
        write_fmnist(str(tmp_path), rng)
        broken = tmp_path / 'train-labels-idx1-ubyte.gz'
    elif layout == 'torch/cifar10':
        files, _ = cifar10_files(rng)
        write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
        broken = tmp_path / 'cifar-10-batches-py' / 'data_batch_2'
    else:
        files, _ = cifar10_files(rng)
        write_zip(str(tmp_path / 'ciFAIR-10.zip'), 'ciFAIR-10', files)
        broken = tmp_path / 'ciFAIR-10.zip'
    blob = broken.read_bytes()
    broken.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(FileProblem) as info:
        create_dataset(layout, root=str(tmp_path), split='train')
    message = str(info.value)
    assert isinstance(info.value, ValueError) and '\n' not in message
    assert str(broken) in message and 'is truncated' in message and 'replace it with a complete copy' in message


def test_data_set_problems_are_data_errors(tmp_path, rng):
    write_fmnist(str(tmp_path), rng)
    with pytest.raises(D.DataError, match="got 'holdout'"):
        create_dataset('fashion_mnist', root=str(tmp_path), split='holdout')
    with pytest.raises(D.DataError, match='is not a folder'):
        create_dataset('fashion_mnist', root=str(tmp_path / 'train-images-idx3-ubyte.gz'))
