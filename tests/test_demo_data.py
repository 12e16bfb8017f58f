"""Where `make demo` gets Fashion-MNIST (timm_icm.demo_data): each way, with the machine faked (no network, no apt)."""
import gzip
import os
import shutil
import struct
import subprocess
import sys
from typing import List
from urllib.error import URLError

import numpy as np
import pytest

from timm_icm import demo_data
from timm_icm.datasets import create_dataset
from timm_icm.demo_data import DataSource, Machine, NoData, find_or_fetch, holds_fashion_mnist

ROOT_ON_DEBIAN = Machine(debian=True, apt_get=True, root=True, passwordless_sudo=False)
SUDO_ON_DEBIAN = Machine(debian=True, apt_get=True, root=False, passwordless_sudo=True)
USER_ON_DEBIAN = Machine(debian=True, apt_get=True, root=False, passwordless_sudo=False)
NOT_DEBIAN = Machine(debian=False, apt_get=False, root=True, passwordless_sudo=False)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path: str, array: np.ndarray, gz: bool) -> None:
    blob = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + b''.join(struct.pack('>I', d) for d in array.shape)
    blob += array.astype(np.uint8).tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(gzip.compress(blob) if gz else blob)


def write_fmnist(folder: str, gz: bool = True, uncompressed: bool = False, seed: int = 0) -> dict:
    """Tiny Fashion-MNIST files: ``.gz`` as Debian ships them, plain ones as torchvision unpacks them, or both."""
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (('train', 6), ('t10k', 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, array in ((f'{prefix}-images-idx3-ubyte', images), (f'{prefix}-labels-idx1-ubyte', labels)):
            if gz:
                write_idx(os.path.join(folder, name + '.gz'), array, gz=True)
            if uncompressed:
                write_idx(os.path.join(folder, name), array, gz=False)
        data[prefix] = (images, labels)
    return data


def write_torchvision_download(root: str) -> None:
    """What torchvision's download leaves: the archives and their unpacked files in ``root/FashionMNIST/raw/``."""
    write_fmnist(os.path.join(root, 'FashionMNIST', 'raw'), gz=True, uncompressed=True)


class FakeApt:
    """Records the commands; 'installs' the package into ``debian_dir`` when told it can."""

    def __init__(self, debian_dir: str, works: bool = True) -> None:
        self.debian_dir, self.works, self.commands = debian_dir, works, []

    def __call__(self, command: List[str]) -> int:
        self.commands.append(command)
        if not self.works:
            return 100
        if 'install' in command:
            write_fmnist(self.debian_dir)
        return 0


class FakeDownload:
    def __init__(self, works: bool = True) -> None:
        self.works, self.folders = works, []

    def __call__(self, folder: str) -> None:
        self.folders.append(folder)
        if not self.works:
            raise RuntimeError('Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -3] '
                               'Temporary failure in name resolution>')
        write_torchvision_download(folder)


def never(*args):
    raise AssertionError(f'must not be called: {args}')


@pytest.fixture
def places(tmp_path):
    """Folders of a fresh machine: Debian's (absent) and the checkout's data/ (absent)."""
    return dict(debian_dir=str(tmp_path / 'debian' / 'fashion-mnist'), download_dir=str(tmp_path / 'data'))


# ----------------------------------------------------------------------------- the choice of the source

def test_fmnist_dir_given_is_used_before_everything(tmp_path, places):
    write_fmnist(places['debian_dir'])
    given = str(tmp_path / 'mine')
    write_fmnist(given)
    source = find_or_fetch(given, **places, machine=ROOT_ON_DEBIAN, run=never, download=never)
    assert source == DataSource(given, f'FMNIST_DIR={given}')


def test_fmnist_dir_given_without_the_files_is_an_error_not_a_fallback(tmp_path, places):
    write_fmnist(places['debian_dir'])
    given = tmp_path / 'empty'
    given.mkdir()
    with pytest.raises(NoData, match=r'FMNIST_DIR=.*empty does not hold Fashion-MNIST .*train-images-idx3-ubyte'):
        find_or_fetch(str(given), **places, machine=ROOT_ON_DEBIAN, run=never, download=never)


def test_debian_folder_when_installed(places):
    write_fmnist(places['debian_dir'])
    source = find_or_fetch(None, **places, machine=ROOT_ON_DEBIAN, run=never, download=never)
    assert source.folder == places['debian_dir'] and 'dataset-fashion-mnist' in source.how


def test_incomplete_debian_folder_is_passed_over(places):
    write_fmnist(places['debian_dir'])
    os.remove(os.path.join(places['debian_dir'], 't10k-labels-idx1-ubyte.gz'))
    download = FakeDownload()
    source = find_or_fetch(None, **places, machine=USER_ON_DEBIAN, run=never, download=download)
    assert source.folder == places['download_dir'] and download.folders == [places['download_dir']]


def test_earlier_download_is_found_without_installing_or_network(places):
    write_torchvision_download(places['download_dir'])
    source = find_or_fetch(None, **places, machine=ROOT_ON_DEBIAN, run=never, download=never)
    assert source == DataSource(places['download_dir'], 'downloaded earlier')


def test_unfinished_download_is_not_taken_for_an_earlier_one(places):
    """Archives without their unpacked files: torchvision stopped before checking them; it downloads again."""
    write_fmnist(os.path.join(places['download_dir'], 'FashionMNIST', 'raw'), gz=True)
    download = FakeDownload()
    source = find_or_fetch(None, **places, machine=NOT_DEBIAN, run=never, download=download)
    assert source.folder == places['download_dir'] and download.folders == [places['download_dir']]


@pytest.mark.parametrize('machine, prefix', [(ROOT_ON_DEBIAN, []), (SUDO_ON_DEBIAN, ['sudo', '-n'])])
def test_debian_package_is_installed_where_allowed(places, machine, prefix):
    apt = FakeApt(places['debian_dir'])
    source = find_or_fetch(None, **places, machine=machine, run=apt, download=never)
    assert source.folder == places['debian_dir'] and 'installed now' in source.how
    assert apt.commands == [prefix + ['apt-get', 'update', '-qq'],
                            prefix + ['apt-get', 'install', '-y', '-qq', 'dataset-fashion-mnist']]


@pytest.mark.parametrize('machine', [USER_ON_DEBIAN, NOT_DEBIAN,
                                     Machine(debian=True, apt_get=False, root=True, passwordless_sudo=False)])
def test_torchvision_download_where_no_package_can_be_installed(places, machine):
    download = FakeDownload()
    source = find_or_fetch(None, **places, machine=machine, run=never, download=download)
    assert source.folder == places['download_dir'] and 'torchvision' in source.how
    assert download.folders == [places['download_dir']]


def test_torchvision_download_when_apt_fails(places):
    apt, download = FakeApt(places['debian_dir'], works=False), FakeDownload()
    source = find_or_fetch(None, **places, machine=ROOT_ON_DEBIAN, run=apt, download=download)
    assert source.folder == places['download_dir'] and len(apt.commands) == 2


def test_nothing_works_one_line_naming_every_way_tried(places):
    with pytest.raises(NoData) as caught:
        find_or_fetch(None, **places, machine=ROOT_ON_DEBIAN, run=FakeApt(places['debian_dir'], works=False),
                      download=FakeDownload(works=False))
    message = str(caught.value)
    assert '\n' not in message
    for way in ('FMNIST_DIR (not set)', f"{places['debian_dir']} (absent)",
                'apt-get install dataset-fashion-mnist (apt-get update exited with 100, install with 100)',
                "torchvision's download into", 'Temporary failure in name resolution', 'make demo FMNIST_DIR='):
        assert way in message


def test_nothing_works_says_why_no_install_and_what_to_do(places):
    with pytest.raises(NoData) as caught:
        find_or_fetch(None, **places, machine=USER_ON_DEBIAN, run=never, download=FakeDownload(works=False))
    message = str(caught.value)
    assert 'apt-get install dataset-fashion-mnist (not possible: not root and no passwordless sudo)' in message
    assert message.endswith('; connect to the internet and run make demo again, or sudo apt-get install '
                            'dataset-fashion-mnist, or put the four Fashion-MNIST IDX files in a folder and '
                            'run make demo FMNIST_DIR=FOLDER')
    with pytest.raises(NoData) as caught:
        find_or_fetch(None, **places, machine=NOT_DEBIAN, run=never, download=FakeDownload(works=False))
    assert 'not possible: not a Debian system' in str(caught.value) and 'sudo apt-get' not in str(caught.value)


def test_download_that_leaves_no_files_is_not_taken_for_success(places):
    with pytest.raises(NoData, match='finished, but the files are not there'):
        find_or_fetch(None, **places, machine=NOT_DEBIAN, run=never, download=lambda folder: None)


@pytest.mark.parametrize('machine, prefix', [
    (ROOT_ON_DEBIAN, []), (SUDO_ON_DEBIAN, ['sudo', '-n']), (USER_ON_DEBIAN, None), (NOT_DEBIAN, None),
    (Machine(debian=True, apt_get=False, root=True, passwordless_sudo=True), None)])
def test_who_may_install(machine, prefix):
    assert machine.apt_prefix() == prefix


def test_torchvision_failure_becomes_one_line(tmp_path, monkeypatch):
    """Without network torchvision raises a multi-line error per file; the demo's message keeps one line of it."""
    import torchvision.datasets.mnist as tv_mnist

    def offline(url, download_root, filename=None, md5=None):
        raise URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(tv_mnist, 'download_and_extract_archive', offline)
    with pytest.raises(RuntimeError) as caught:
        demo_data.download_with_torchvision(str(tmp_path / 'data'))
    assert str(caught.value) == ('Error downloading train-images-idx3-ubyte.gz: '
                                 '<urlopen error [Errno -3] Temporary failure in name resolution>')


# ----------------------------------------------------------------------------- the command make demo runs

def test_main_prints_the_folder_alone_on_stdout(tmp_path, capsys):
    write_fmnist(str(tmp_path / 'mine'))
    assert demo_data.main(['--fmnist-dir', str(tmp_path / 'mine')]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'mine'}\n" and 'Fashion-MNIST: ' in err


def test_main_exit_code_2_and_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_data.Machine, 'this_one', classmethod(lambda cls: NOT_DEBIAN))
    monkeypatch.setattr(demo_data, 'download_with_torchvision', FakeDownload(works=False))
    code = demo_data.main(['--debian-dir', str(tmp_path / 'none'), '--download-dir', str(tmp_path / 'data')])
    out, err = capsys.readouterr()
    assert code == 2 and out == ''
    assert err.splitlines()[-1].startswith('timm_icm.demo_data: error: no Fashion-MNIST for the demo; tried ')


def test_python_m_entry_point(tmp_path):
    """The command line of the Makefile's demo target, in a fresh interpreter."""
    write_fmnist(str(tmp_path / 'mine'))
    done = subprocess.run([sys.executable, '-m', 'timm_icm.demo_data', '--fmnist-dir', str(tmp_path / 'mine'),
                           '--debian-dir', str(tmp_path / 'none'), '--download-dir', str(tmp_path / 'data')],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"{tmp_path / 'mine'}\n"), done.stderr


def make_demo(*assignments: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    """make demo in the checkout, without remaking the venv (also when the tests run under make test)."""
    if shutil.which('make') is None:
        pytest.skip('no make on this machine')
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    command = ['make', '--no-print-directory'] + (['-n'] if dry_run else []) + ['-o', '.venv/.installed', 'demo']
    return subprocess.run(command + list(assignments), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_make_demo_stops_with_exit_code_2_and_one_line(tmp_path):
    done = make_demo(f'FMNIST_DIR={tmp_path}')
    problems = [line for line in done.stderr.splitlines() if not line.startswith('make: ***')]
    assert done.returncode == 2 and done.stdout == ''
    assert len(problems) == 1 and 'does not hold Fashion-MNIST' in problems[0], done.stderr


def test_makefile_demo_uses_the_chosen_folder():
    """make -n shows the recipe: the folder comes from timm_icm.demo_data, with FMNIST_DIR and the Debian path."""
    recipe = make_demo('FMNIST_DIR=/x/y', 'DEBIAN_FMNIST_DIR=/nowhere', dry_run=True).stdout
    assert '-m timm_icm.demo_data --fmnist-dir "/x/y" --debian-dir "/nowhere" --download-dir data' in recipe
    assert '--data-dir "$fmnist"' in recipe


# ----------------------------------------------------------------------------- the reader on torchvision's download

def test_reader_on_torchvision_download_layout(tmp_path):
    """torchvision's download leaves root/FashionMNIST/raw/ with each .gz and its unpacked file; both splits read."""
    raw = tmp_path / 'FashionMNIST' / 'raw'
    data = write_fmnist(str(raw), gz=False, uncompressed=True, seed=1)
    # the archives beside them hold other images: the reader must take the unpacked files, as torchvision does
    write_fmnist(str(raw), gz=True, uncompressed=False, seed=2)
    assert holds_fashion_mnist(str(tmp_path))
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        ds = create_dataset('torch/fashion_mnist', root=str(tmp_path), split=split)
        images, labels = data[prefix]
        assert np.array_equal(ds.data.numpy(), images) and ds.targets.tolist() == labels.tolist()
        img, target = ds[len(ds) - 1]
        assert img.mode == 'L' and np.array_equal(np.array(img), images[-1]) and target == labels[-1]


def test_reader_on_torchvision_layout_uncompressed_only(tmp_path):
    """Only the unpacked files (the archives deleted to save space) are enough."""
    data = write_fmnist(str(tmp_path / 'FashionMNIST' / 'raw'), gz=False, uncompressed=True)
    assert holds_fashion_mnist(str(tmp_path))
    ds = create_dataset('fashion_mnist', root=str(tmp_path), split='train')
    assert np.array_equal(ds.data.numpy(), data['train'][0])
