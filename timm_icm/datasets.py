"""Data sets of the paper, read from their original on-disk formats.

`create_dataset` has the signature of `timm.data.create_dataset`. It handles these names
itself and hands every other name to timm unchanged:

- ``torch/fashion_mnist`` / ``fashion_mnist``: the original IDX files (gz or not), either
  directly in ``root`` (Debian's ``/usr/share/datasets/fashion-mnist``) or in torchvision's
  ``<root>/FashionMNIST/raw/``. Read in place; nothing is written into ``root``.
- ``torch/cifar10`` / ``torch/cifar100``: CIFAR's python-pickle batches in
  ``<root>/cifar-10-batches-py/`` / ``<root>/cifar-100-python/``.
- ``cifair10`` / ``cifair100``: ciFAIR (Barz & Denzler 2020). The published archives
  ``ciFAIR-10.zip`` / ``ciFAIR-100.zip`` hold one folder ``ciFAIR-10/`` / ``ciFAIR-100/`` with
  CIFAR's complete pickle layout (``data_batch_1..5``, ``batches.meta``, ``test_batch`` /
  ``train``, ``meta``, ``test``); only the test file differs from CIFAR's. The zip is read
  as it is (no extraction), or its extracted folder.
- ``deic_cifair10`` / ``deic_cifair100``: the ciFAIR splits of the DEIC benchmark
  (Brigato et al., ICCVW 2021), see `DEICCiFAIR`.

Split names: ``train``/``training`` and ``val``/``valid``/``validation``/``eval``/
``evaluation``/``test`` (the last group is the test set; the DEIC data sets have their own
validation split, see `DEICCiFAIR`).

Errors are one line naming the data set and the file: ``FileNotFoundError`` for files that are not
there, :class:`timm_icm.files.FileProblem` for a file that is empty, unreadable, truncated or of
another kind, `DataError` for a data set that cannot serve what was asked (a split it lacks, too few
images, files that disagree). The last two are ``ValueError``s.

The CIFAR pickles are read with an allow-list (:mod:`timm_icm.safe_pickle`): a file that names anything
but numpy's arrays and builtin containers is refused (a ``FileProblem``) before any of it runs.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets import VisionDataset

from .files import FileProblem, check_file, load_pickle, read_bytes, reading

__all__ = [
    'DataError',
    'create_dataset',
    'dataset_targets',
    'read_idx',
    'FashionMNISTIDX',
    'CIFARPickle',
    'DEICCiFAIR',
    'DATASET_NAMES',
]

_TRAIN_SPLITS = ('train', 'training')
_TEST_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation', 'test')

# timm's create_dataset arguments that only mean something for folder / iterable data sets.
_IGNORED_TIMM_KWARGS = frozenset({
    'search_split', 'class_map', 'load_bytes', 'batch_size', 'num_samples', 'seed', 'repeats',
    'trust_remote_code', 'input_key', 'target_key',
})

FASHION_MNIST_CLASSES = [
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
]

_CIFAR_URLS = {
    'cifar10': ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                'cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a'),
    'cifar100': ('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
                 'cifar-100-python.tar.gz', 'eb9058c3a382ffc7106e4002c42a8d85'),
}
# Published by the ciFAIR authors (github.com/cvjena/cifair, release v1.0).
_CIFAIR_URLS = {
    'cifar10': ('https://github.com/cvjena/cifair/releases/download/v1.0/ciFAIR-10.zip',
                'ciFAIR-10.zip', 'ca08fd390f0839693d3fc45c4e49585f'),
    'cifar100': ('https://github.com/cvjena/cifair/releases/download/v1.0/ciFAIR-100.zip',
                 'ciFAIR-100.zip', 'ddc236ab4b12eeb8b20b952614861a33'),
}

# The pickle layout of the two CIFAR variants.
_CIFAR_LAYOUT = {
    'cifar10': dict(
        folder='cifar-10-batches-py', cifair_folder='ciFAIR-10',
        train=[f'data_batch_{i}' for i in range(1, 6)], test=['test_batch'],
        label_key='labels', meta='batches.meta', meta_key='label_names', num_classes=10),
    'cifar100': dict(
        folder='cifar-100-python', cifair_folder='ciFAIR-100',
        train=['train'], test=['test'],
        label_key='fine_labels', meta='meta', meta_key='fine_label_names', num_classes=100),
}



class DataError(ValueError):
    """A data set that cannot be used as asked (a split it lacks, too few images, files that disagree).

    One line naming the data set; broken files raise :class:`timm_icm.files.FileProblem` (also a
    ``ValueError``), missing ones ``FileNotFoundError``.
    """


# What to do about a broken data file, whatever its layout.
_DATA_WAY_OUT = 'replace it with a complete copy (download or unpack the data set again)'

# ----------------------------------------------------------------------------- IDX (MNIST format)

_IDX_DTYPES = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8'),
}


def read_idx(path: str, what: str = 'IDX file') -> torch.Tensor:
    """Read one IDX file (plain or gzip-compressed, judged by its magic bytes) into a tensor.

    A missing, empty, unreadable, truncated or foreign file raises :class:`timm_icm.files.FileProblem`
    (a ``ValueError``) naming it.
    """
    blob = read_bytes(path, what, 'an IDX file', _DATA_WAY_OUT)
    if blob[:2] == b'\x1f\x8b':
        with reading(path, what, 'a complete gzip file', _DATA_WAY_OUT, check=False):
            blob = gzip.decompress(blob)
    raw = blob
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or len(raw) < 4 + 4 * raw[3]:
        raise FileProblem(what, path, f"is not an IDX file (magic bytes {raw[:4].hex()!r})", _DATA_WAY_OUT)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise FileProblem(what, path, f"is truncated or corrupt: its IDX header says shape {shape} ({expected} bytes) "
                                      f"but {len(raw) - offset} follow", _DATA_WAY_OUT)
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset)
    return torch.from_numpy(arr.astype(dtype.newbyteorder('='), copy=True).reshape(shape))


class _ImagesInMemory(VisionDataset):
    """A split held in memory: ``data`` (uint8 images, HW or HWC), ``targets``, ``train``, ``input_img_mode``.

    Items are ``(PIL image, int)`` as torchvision's datasets give them.
    """
    data: Any
    targets: Any
    train: bool
    input_img_mode: Optional[str]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        img = Image.fromarray(np.asarray(self.data[index]))
        if self.input_img_mode and img.mode != self.input_img_mode:
            img = img.convert(self.input_img_mode)
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def extra_repr(self) -> str:
        return f"Split: {'Train' if self.train else 'Test'}"


class FashionMNISTIDX(_ImagesInMemory):
    """Fashion-MNIST read from its original IDX files, without writing anything.

    ``root`` is a folder holding the four files directly (Debian's layout) or torchvision's
    ``<root>/FashionMNIST/raw/``; each file may be gzip-compressed (``.gz``) or not. Items are
    ``(PIL 'L' image 28x28, int)`` like torchvision's ``FashionMNIST``; ``data`` is a uint8
    tensor [N, 28, 28] and ``targets`` a LongTensor. torchvision's reader looks for uncompressed
    files under ``<root>/FashionMNIST/raw/``; Debian's read-only folder holds the ``.gz`` files
    directly, which would have to be copied and unpacked first.
    """

    classes = FASHION_MNIST_CLASSES
    files = {
        True: ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
        False: ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
    }

    def __init__(
            self,
            root: str,
            train: bool = True,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            download: bool = False,
            input_img_mode: Optional[str] = None,
    ) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.train = train
        self.input_img_mode = input_img_mode
        paths = self._locate(root, train)
        if paths is None and download:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(root, train=train, download=True)  # writes <root>/FashionMNIST/raw/
            paths = self._locate(root, train)
        if paths is None:
            raise _fmnist_missing('fashion_mnist', root, train)
        self.data = read_idx(paths[0], 'fashion_mnist images file')
        self.targets = read_idx(paths[1], 'fashion_mnist labels file').long()
        if self.data.ndim != 3 or self.targets.ndim != 1 or len(self.data) != len(self.targets):
            raise DataError(
                f"fashion_mnist: {paths[0]} holds {tuple(self.data.shape)} images but "
                f"{paths[1]} holds {tuple(self.targets.shape)} labels: one of them is from another copy; "
                f"{_DATA_WAY_OUT}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def _locate(cls, root: Optional[str], train: bool) -> Optional[Tuple[str, str]]:
        if root is None:
            return None
        root = os.path.expanduser(str(root))
        for folder in (root, os.path.join(root, 'FashionMNIST', 'raw'), os.path.join(root, 'raw')):
            found = []
            for name in cls.files[train]:
                for candidate in (name, name + '.gz'):
                    if os.path.isfile(os.path.join(folder, candidate)):
                        found.append(os.path.join(folder, candidate))
                        break
            if len(found) == 2:
                return found[0], found[1]
        return None



def _fmnist_missing(name: str, root: Optional[str], train: bool) -> FileNotFoundError:
    names = ', '.join(f'{n}[.gz]' for n in FashionMNISTIDX.files[train])
    return _missing(name, root, f"{names} in {_where(root, ['', 'FashionMNIST/raw/'])}")


# ----------------------------------------------------------------------------- CIFAR pickles

class _Source:
    """A folder, or a folder inside a zip archive, that holds named files."""

    def __init__(self, path: str, zip_prefix: Optional[str] = None) -> None:
        self.path = path
        self.zip_prefix = zip_prefix  # None: a plain folder

    def __repr__(self) -> str:
        return self.path if self.zip_prefix is None else f'{self.path}:{self.zip_prefix}'

    def shown(self, name: str) -> str:
        """How the file ``name`` of this source is named in messages."""
        return os.path.join(self.path, name) if self.zip_prefix is None else f'{self.path}:{self.zip_prefix}{name}'

    def has(self, names: Sequence[str]) -> bool:
        if self.zip_prefix is None:
            return all(os.path.isfile(os.path.join(self.path, n)) for n in names)
        return all(self.zip_prefix + n in _zip_members(self.path) for n in names)

    def read(self, name: str, what: str = 'data file') -> bytes:
        if self.zip_prefix is None:
            return read_bytes(os.path.join(self.path, name), what, 'a file of this data set', _DATA_WAY_OUT)
        with reading(self.path, what, 'a complete zip archive', _DATA_WAY_OUT, shown=self.shown(name)):
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(self.zip_prefix + name)

    def load(self, name: str, what: str) -> Dict[str, Any]:
        """The pickled dict in file ``name`` (CIFAR's batches and meta files)."""
        obj = load_pickle(self.read(name, what), what, self.shown(name), 'a CIFAR pickle',
                          'a CIFAR file holds only numpy arrays, lists and dicts', _DATA_WAY_OUT)
        if not isinstance(obj, dict):
            raise FileProblem(what, self.shown(name),
                              f'holds a pickled {type(obj).__name__}, not a CIFAR file (a dict)', _DATA_WAY_OUT)
        return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}

    @staticmethod
    def in_zip(path: str, names: Sequence[str]) -> Optional['_Source']:
        """The folder inside zip ``path`` that holds all ``names`` (shallowest first)."""
        if not zipfile.is_zipfile(path):
            return None
        members = _zip_members(path)
        prefixes = sorted({m[:-len(names[0])] for m in members
                           if m.endswith(names[0]) and (m == names[0] or m[-len(names[0]) - 1] == '/')},
                          key=lambda p: (p.count('/'), p))
        for prefix in prefixes:
            if all(prefix + n in members for n in names):
                return _Source(path, prefix)
        return None


def _zip_members(path: str) -> set:
    with reading(path, 'zip archive', 'a complete zip archive', _DATA_WAY_OUT):
        with zipfile.ZipFile(path) as zf:
            return set(zf.namelist())


def _decode(v: Any) -> Any:
    return v.decode('latin1') if isinstance(v, bytes) else v


class CIFARPickle(_ImagesInMemory):
    """CIFAR-10/100 (or ciFAIR) from the original python-pickle batches.

    Behaves like torchvision's ``CIFAR10``/``CIFAR100``: ``data`` is uint8 [N, 32, 32, 3],
    ``targets`` a list of ints, ``classes`` from the meta file, items are
    ``(PIL 'RGB' image, int)``. Unlike torchvision it does not check md5 sums and it reads
    from a zip archive as well as from a folder. Use `create_dataset` to locate the files.

    Why not torchvision's reader: it refuses CIFAR files whose MD5 is not its own (the real CIFAR-10
    with placeholder filenames: "Dataset not found or corrupted", no file named) unless its private
    ``_check_integrity`` is overridden, it cannot read ciFAIR's zip or the DEIC selection, and its ``pickle.load``
    runs whatever code a file names (here an allow-list refuses it, see :mod:`timm_icm.safe_pickle`); it is
    no faster (CIFAR-100 training set: 1.3-2.0 s against 1.7-2.5 s here, including the checks that
    name a broken file). One reader serves all four layouts.

    Args:
        sources: where the data files may live (the first holding them all is used).
        meta_sources: further places for the meta file (class names) when the data's own
            source lacks it; none holding it: classes are numbered.
        variant: ``'cifar10'`` or ``'cifar100'``.
        train: training batches or the test batch.
    """

    def __init__(
            self,
            sources: Sequence[_Source],
            variant: str = 'cifar10',
            train: bool = True,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            input_img_mode: Optional[str] = None,
            name: str = 'cifar',
            meta_sources: Sequence[_Source] = (),
    ) -> None:
        layout = _CIFAR_LAYOUT[variant]
        names = layout['train'] if train else layout['test']
        source = next((s for s in sources if s.has(names)), None)
        if source is None:
            raise FileNotFoundError(
                f"{name}: data not found in {', '.join(repr(str(s)) for s in sources)}: "
                f"expected {', '.join(names)}")
        super().__init__(str(source), transform=transform, target_transform=target_transform)
        self.train = train
        self.variant = variant
        self.input_img_mode = input_img_mode
        data, targets = [], []
        what = f'{name} file'
        for n in names:
            images, labels = _cifar_batch(source, n, layout['label_key'], what)
            data.append(images)
            targets.extend(labels)
        self.data = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
        self.targets: List[int] = targets
        meta_source = next((s for s in [source, *sources, *meta_sources] if s.has([layout['meta']])), None)
        if meta_source is not None:
            meta = meta_source.load(layout['meta'], what)
            if not isinstance(meta.get(layout['meta_key']), (list, tuple)):
                raise FileProblem(what, meta_source.shown(layout['meta']),
                                  f"has no {layout['meta_key']!r} list: not the {variant} meta file", _DATA_WAY_OUT)
            self.classes = [_decode(c) for c in meta[layout['meta_key']]]
        else:
            self.classes = [str(i) for i in range(layout['num_classes'])]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}



def _cifar_batch(source: _Source, name: str, label_key: str, what: str) -> Tuple[np.ndarray, List[int]]:
    """The images (uint8 [N, 3, 32, 32]) and labels of one CIFAR batch file, checked against each other."""
    entry = source.load(name, what)
    shown = source.shown(name)
    for key in ('data', label_key):
        if key not in entry:
            raise FileProblem(what, shown, f'has no {key!r} entry: not a CIFAR batch of this variant', _DATA_WAY_OUT)
    with reading(source.path, what, 'a CIFAR batch', _DATA_WAY_OUT, check=False, shown=shown):
        pixels = np.asarray(entry['data'], dtype=np.uint8)
        labels = [int(t) for t in entry[label_key]]
    if pixels.size % 3072 or pixels.size // 3072 != len(labels):
        raise FileProblem(what, shown, f'holds {pixels.size} bytes of pixels for {len(labels)} labels, not '
                                       f'{len(labels)} images of 32x32x3', _DATA_WAY_OUT)
    return pixels.reshape(-1, 3, 32, 32), labels


def _cifar_sources(root: str, variant: str) -> List[_Source]:
    """CIFAR's own folder: ``<root>/<cifar-folder>/`` or ``root`` itself."""
    folder = _CIFAR_LAYOUT[variant]['folder']
    return [_Source(os.path.join(root, folder)), _Source(root)]


def _cifair_sources(root: str, variant: str) -> List[_Source]:
    """ciFAIR's archive or its extracted folder, as found under ``root``."""
    layout = _CIFAR_LAYOUT[variant]
    folder = layout['cifair_folder']
    probe = layout['test']
    sources: List[_Source] = []
    for zpath in (root, os.path.join(root, folder + '.zip')):
        if os.path.isfile(zpath):
            check_file(zpath, 'ciFAIR archive', _DATA_WAY_OUT)
            if not zipfile.is_zipfile(zpath):
                raise FileProblem('ciFAIR archive', zpath, 'is truncated or not a zip archive', _DATA_WAY_OUT)
            s = _Source.in_zip(zpath, probe)
            if s is not None:
                sources.append(s)
    sources.append(_Source(os.path.join(root, folder)))
    if os.path.basename(os.path.normpath(root)) == folder:
        sources.append(_Source(root))
    return sources


def _missing(name: str, root: Optional[str], expected: str) -> FileNotFoundError:
    # One line: the data set, the path, the files expected (and where).
    return FileNotFoundError(f"{name}: data not found under '{root}': expected {expected}")


def _where(root: Optional[str], places: Sequence[str]) -> str:
    paths = [f"'{os.path.join(str(root), p)}'" for p in places]
    return paths[0] if len(paths) == 1 else ', '.join(paths[:-1]) + ' or ' + paths[-1]


def _check_root(name: str, root: Optional[str], expected: str, archive_ok: bool = False) -> str:
    if root is None or not os.path.exists(os.path.expanduser(str(root))):
        raise _missing(name, root, expected)
    root_ = os.path.expanduser(str(root))
    if not archive_ok and not os.path.isdir(root_):
        raise DataError(f"{name}: the data root '{root}' is not a folder: give the folder that holds {expected}")
    return root_


def _create_cifar(name: str, variant: str, root: Optional[str], train: bool, download: bool,
                  **kw: Any) -> CIFARPickle:
    layout = _CIFAR_LAYOUT[variant]
    files = layout['train'] if train else layout['test']
    expected = f"{', '.join(files)} in {_where(root, [layout['folder'] + '/', ''])}"
    if download and root is not None:
        root_ = os.path.expanduser(str(root))
        if not any(s.has(files) for s in _cifar_sources(root_, variant)):
            from torchvision.datasets.utils import download_and_extract_archive
            url, filename, md5 = _CIFAR_URLS[variant]
            download_and_extract_archive(url, root_, filename=filename, md5=md5)
    root_ = _check_root(name, root, expected)
    sources = _cifar_sources(root_, variant)
    if not any(s.has(files) for s in sources):
        raise _missing(name, root, expected)
    return CIFARPickle(sources, variant=variant, train=train, name=name, **kw)


def _locate_cifair(name: str, variant: str, root: Optional[str], train: bool,
                   download: bool) -> Tuple[List[_Source], List[_Source]]:
    """The data and meta sources for a ciFAIR split (downloading the archive when asked and missing)."""
    layout = _CIFAR_LAYOUT[variant]
    folder = layout['cifair_folder']
    files = layout['train'] if train else layout['test']
    places = [folder + '.zip', folder + '/'] + ([layout['folder'] + '/'] if train else [])
    expected = f"{', '.join(files)} in {_where(root, places)}"

    def candidates(root_: str) -> List[_Source]:
        sources = _cifair_sources(root_, variant)
        if train:  # ciFAIR's training set is CIFAR's: the archive carries it, else CIFAR's own copy
            sources += _cifar_sources(root_, variant)[:1]
        return sources

    if download and root is not None:
        root_ = os.path.expanduser(str(root))
        if not any(s.has(files) for s in candidates(root_)):
            from torchvision.datasets.utils import download_url
            url, filename, md5 = _CIFAIR_URLS[variant]
            download_url(url, root_, filename=filename, md5=md5)
    root_ = _check_root(name, root, expected, archive_ok=True)
    sources = candidates(root_)
    if not any(s.has(files) for s in sources):
        raise _missing(name, root, expected)
    return sources, _cifar_sources(root_, variant)


class DEICCiFAIR(CIFARPickle):
    """The ciFAIR-10/100 splits of the DEIC benchmark (Brigato et al., ICCVW 2021).

    DEIC (github.com/cvjena/deic, ``datasets/cifair/README.md``) defines its ciFAIR splits by
    position, without split files and without a seed: ``train`` is the first 30 images of each
    class in CIFAR's training order (``data_batch_1`` ... ``data_batch_5``, or ``train`` for
    CIFAR-100), ``val`` the following 20, ``trainval`` both (50 per class: 500 / 5,000 images,
    the setting of Table 2 of the ICM paper), and ``test`` the full ciFAIR test set (10,000).
    This class reproduces that exactly from the CIFAR training set; ``source_indices`` holds
    the chosen positions in it (sorted). For the paper's Table 2 use
    ``split='trainval'`` for training and ``split='test'`` for evaluation.
    """

    SPLITS = {'train': (0, 30), 'val': (30, 50), 'trainval': (0, 50)}

    def __init__(self, sources: Sequence[_Source], variant: str = 'cifar10', split: str = 'trainval',
                 name: str = 'deic_cifair', **kw: Any) -> None:
        if split not in self.SPLITS and split != 'test':
            raise DataError(f"{name}: split must be one of train, val, trainval, test; got {split!r}")
        super().__init__(sources, variant=variant, train=split != 'test', name=name, **kw)
        self.split = split
        if split == 'test':
            self.source_indices = torch.arange(len(self.targets))
            return
        start, stop = self.SPLITS[split]
        targets = torch.as_tensor(self.targets, dtype=torch.long)
        chosen = []
        for c in range(len(self.classes)):
            members = torch.nonzero(targets == c).flatten()
            if len(members) < stop:
                raise DataError(
                    f"{name}: class {c} ({self.classes[c]!r}) has {len(members)} training images, "
                    f"fewer than the {stop} the DEIC '{split}' split needs")
            chosen.append(members[start:stop])
        self.source_indices = torch.sort(torch.cat(chosen)).values
        self.data = self.data[self.source_indices.numpy()]
        self.targets = [self.targets[i] for i in self.source_indices.tolist()]

    def extra_repr(self) -> str:
        return f"Split: {self.split}"


def _deic_split(name: str, split: str) -> str:
    split = {'training': 'train', 'valid': 'val', 'validation': 'val', 'eval': 'val',
             'evaluation': 'val'}.get(split.lower(), split.lower())
    if split not in DEICCiFAIR.SPLITS and split != 'test':
        raise DataError(
            f"{name}: split must be one of train, val (valid, validation, eval), trainval, test; "
            f"got {split!r}")
    return split


# ----------------------------------------------------------------------------- factory

# name -> (kind, variant)
_OWN_DATASETS = {
    'torch/fashion_mnist': ('fashion_mnist', None),
    'fashion_mnist': ('fashion_mnist', None),
    'torch/cifar10': ('cifar', 'cifar10'),
    'torch/cifar100': ('cifar', 'cifar100'),
    'cifair10': ('cifair', 'cifar10'),
    'cifair100': ('cifair', 'cifar100'),
    'deic_cifair10': ('deic', 'cifar10'),
    'deic_cifair100': ('deic', 'cifar100'),
}
DATASET_NAMES: Tuple[str, ...] = tuple(_OWN_DATASETS)


def _is_train_split(name: str, split: str) -> bool:
    s = split.lower()
    if s in _TRAIN_SPLITS:
        return True
    if s in _TEST_SPLITS:
        return False
    raise DataError(
        f"{name}: split must be one of {', '.join(_TRAIN_SPLITS + _TEST_SPLITS)}; got {split!r}")


def create_dataset(
        name: str,
        root: Optional[str] = None,
        split: str = 'train',
        is_training: bool = False,
        download: bool = False,
        **kwargs: Any,
) -> Dataset:
    """timm's ``create_dataset`` plus the data sets of the paper (see the module docstring).

    Names in `DATASET_NAMES` are handled here; their extra keyword arguments may be
    ``transform``, ``target_transform`` and ``input_img_mode`` (default: the native mode,
    'L' for Fashion-MNIST, 'RGB' for CIFAR; timm's folder/iterable-only arguments such as
    ``class_map``, ``batch_size``, ``seed``, ``repeats`` are accepted and ignored). Every other
    name goes to ``timm.data.create_dataset`` with all arguments unchanged.
    """
    key = name.lower()
    if key not in _OWN_DATASETS:
        from timm.data import create_dataset as timm_create_dataset
        return timm_create_dataset(
            name, root=root, split=split, is_training=is_training, download=download, **kwargs)

    kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in _IGNORED_TIMM_KWARGS}
    own = {k: kwargs.pop(k) for k in ('transform', 'target_transform', 'input_img_mode') if k in kwargs}
    if kwargs:
        raise TypeError(f"create_dataset({name!r}): unexpected keyword argument(s) {sorted(kwargs)}")
    kind, variant = _OWN_DATASETS[key]
    if root is None and not download:
        raise FileNotFoundError(
            f"{key}: data not found: root is None; pass the folder that holds the data set's files")
    if kind == 'deic':
        deic_split = _deic_split(key, split)
        sources, meta = _locate_cifair(key, variant, root, deic_split != 'test', download)
        return DEICCiFAIR(sources, variant=variant, split=deic_split, name=key, meta_sources=meta, **own)
    train = _is_train_split(key, split)
    if kind == 'fashion_mnist':
        if not download:
            _check_root(key, root, ', '.join(f'{n}[.gz]' for n in FashionMNISTIDX.files[train]))
        if not download and FashionMNISTIDX._locate(root, train) is None:
            raise _fmnist_missing(key, root, train)
        return FashionMNISTIDX(root, train=train, download=download, **own)
    if kind == 'cifar':
        return _create_cifar(key, variant, root, train, download, **own)
    sources, meta = _locate_cifair(key, variant, root, train, download)
    return CIFARPickle(sources, variant=variant, train=train, name=key, meta_sources=meta, **own)


# ----------------------------------------------------------------------------- targets

def dataset_targets(ds: Dataset) -> torch.Tensor:
    """The integer class targets of a data set as a LongTensor, without loading any image.

    Works for the data sets of this module, torchvision data sets (``targets``, ``labels``,
    ``_labels``), timm's ``ImageDataset`` (its reader's ``samples`` / ``targets``), and
    ``Subset`` / ``ConcatDataset`` of any of those. Target transforms are not applied.
    """
    if isinstance(ds, Subset):
        idx = torch.as_tensor(np.asarray(ds.indices, dtype=np.int64))
        return dataset_targets(ds.dataset)[idx]
    if isinstance(ds, ConcatDataset):
        return torch.cat([dataset_targets(d) for d in ds.datasets])
    inner = _scheduled_inner(ds)
    if inner is not None:
        return dataset_targets(inner)
    reader = getattr(ds, 'reader', None)
    if reader is not None and not isinstance(reader, str):
        targets = getattr(reader, 'targets', None)
        if targets is None and getattr(reader, 'samples', None) is not None:
            targets = [s[1] for s in reader.samples]
        if targets is not None:
            return _as_long(targets, ds)
    for attr in ('targets', 'labels', '_labels'):
        targets = getattr(ds, attr, None)
        if targets is not None:
            return _as_long(targets, ds)
    raise TypeError(
        f"dataset_targets: cannot read the targets of a {type(ds).__name__} without loading its "
        f"images (expected .targets, .labels, a timm reader with samples, or a Subset of those)")


def _scheduled_inner(ds: Dataset) -> Optional[Dataset]:
    try:
        from timm.data.scheduled_sampler import ScheduledTransformDataset
    except ImportError:  # older timm
        return None
    return ds.dataset if isinstance(ds, ScheduledTransformDataset) else None


def _as_long(targets: Any, ds: Dataset) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        out = targets.detach().to(dtype=torch.long, copy=True)
    else:
        out = torch.tensor(np.asarray(targets, dtype=np.int64))  # a copy, never a view
    if out.ndim != 1:
        raise TypeError(
            f"dataset_targets: {type(ds).__name__} has targets of shape {tuple(out.shape)}, "
            f"expected one integer class per sample")
    return out
