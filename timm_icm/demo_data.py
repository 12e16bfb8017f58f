"""Where ``make demo`` gets Fashion-MNIST: found on this machine, installed, or downloaded.

    python -m timm_icm.demo_data [--fmnist-dir DIR] [--debian-dir DIR] [--download-dir DIR]

prints the folder to pass to ``train_icm.py --data-dir`` (one line on stdout) and says on stderr
where the data came from. The ways, in this order:

1. ``--fmnist-dir`` (``make demo FMNIST_DIR=...``) when given: that folder, or an error if it lacks the files;
2. Debian's folder ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``);
3. a finished torchvision download found in ``--download-dir`` (the checkout's git-ignored ``data/``);
4. on Debian, as root or with passwordless sudo: ``apt-get install dataset-fashion-mnist``;
5. torchvision's download into ``--download-dir`` (``data/FashionMNIST/raw/``), which needs the internet.

When none works: one line naming the ways tried and what to do, exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .datasets import FashionMNISTIDX

__all__ = ['DEBIAN_DIR', 'DEBIAN_PACKAGE', 'NoData', 'Machine', 'DataSource', 'holds_fashion_mnist',
           'holds_torchvision_download', 'download_with_torchvision', 'find_or_fetch', 'main']

PROG = 'timm_icm.demo_data'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
IDX_FILES = FashionMNISTIDX.files[True] + FashionMNISTIDX.files[False]
# Without a timeout a download behind a firewall that drops packets waits minutes per mirror.
DOWNLOAD_TIMEOUT_S = 60

# Runs a command line (stdout and stderr of the command go to our stderr) and returns its exit code.
Runner = Callable[[List[str]], int]
# Downloads Fashion-MNIST into a folder; raises with a one-line reason when it cannot.
Downloader = Callable[[str], None]


class NoData(Exception):
    """No way gave the demo its data: one line on stderr, exit code 2."""


@dataclass(frozen=True)
class Machine:
    """What decides whether the demo may install Debian's package here."""
    debian: bool
    apt_get: bool
    root: bool
    passwordless_sudo: bool

    @classmethod
    def this_one(cls) -> 'Machine':
        root = hasattr(os, 'geteuid') and os.geteuid() == 0
        return cls(debian=os.path.isfile('/etc/debian_version'), apt_get=shutil.which('apt-get') is not None,
                   root=root, passwordless_sudo=not root and _sudo_needs_no_password())

    def apt_prefix(self) -> Optional[List[str]]:
        """What runs apt-get as root here: nothing as root, ``sudo -n``, or None where one may not install."""
        if not (self.debian and self.apt_get):
            return None
        if self.root:
            return []
        return ['sudo', '-n'] if self.passwordless_sudo else None

    def why_no_install(self) -> str:
        if not self.debian:
            return 'not a Debian system'
        if not self.apt_get:
            return 'no apt-get'
        return 'not root and no passwordless sudo'


def _sudo_needs_no_password() -> bool:
    if shutil.which('sudo') is None:
        return False
    try:
        return subprocess.run(['sudo', '-n', 'true'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class DataSource:
    folder: str  # for train_icm.py --data-dir
    how: str     # where it came from, for the user


def holds_fashion_mnist(folder: str) -> bool:
    """Whether the reader finds all four IDX files in ``folder`` (directly or in its ``FashionMNIST/raw/``)."""
    return all(FashionMNISTIDX._locate(folder, train) is not None for train in (True, False))


def holds_torchvision_download(folder: str) -> bool:
    """Whether torchvision's download into ``folder`` finished: it unpacks each archive only after checking its md5."""
    raw = os.path.join(folder, 'FashionMNIST', 'raw')
    return all(os.path.isfile(os.path.join(raw, name)) for name in IDX_FILES)


def run_to_stderr(command: List[str]) -> int:
    """Runs ``command`` without a terminal prompt; its output goes to stderr (stdout carries the folder)."""
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env).returncode
    except OSError as e:
        print(f'{PROG}: {command[0]}: {e}', file=sys.stderr)
        return 127


def download_with_torchvision(folder: str) -> None:
    """torchvision's Fashion-MNIST download into ``folder/FashionMNIST/raw/`` (a no-op when it is complete).

    Raises ``RuntimeError`` with one line (the file and the last error) when it fails.
    """
    from torchvision.datasets import FashionMNIST
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its progress; stdout carries the folder
            FashionMNIST(folder, train=True, download=True)  # fetches all four files
    except (OSError, RuntimeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        # torchvision: "Error downloading FILE:", then per mirror "Tried URL, got:" and the error
        reason = lines[0].rstrip(':') + (f': {lines[-1]}' if len(lines) > 1 else '')
        raise RuntimeError(reason) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def find_or_fetch(fmnist_dir: Optional[str] = None, debian_dir: str = DEBIAN_DIR, download_dir: str = 'data',
                  machine: Optional[Machine] = None, run: Optional[Runner] = None,
                  download: Optional[Downloader] = None) -> DataSource:
    """The first of the module's ways that gives Fashion-MNIST; `NoData` naming them all when none does.

    ``machine``, ``run`` and ``download`` default to this machine, `run_to_stderr` and `download_with_torchvision`.
    """
    if fmnist_dir:
        if holds_fashion_mnist(fmnist_dir):
            return DataSource(fmnist_dir, f'FMNIST_DIR={fmnist_dir}')
        raise NoData(f"FMNIST_DIR={fmnist_dir} does not hold Fashion-MNIST ({', '.join(IDX_FILES)}, "
                     f"gzipped or not, in it or in its FashionMNIST/raw/): give the folder with these files, "
                     f"or leave FMNIST_DIR unset to find or fetch them")
    tried = ['FMNIST_DIR (not set)']

    if holds_fashion_mnist(debian_dir):
        return DataSource(debian_dir, f"Debian's package {DEBIAN_PACKAGE}")
    tried.append(f'{debian_dir} ({"incomplete" if os.path.exists(debian_dir) else "absent"})')

    if holds_torchvision_download(download_dir):
        return DataSource(download_dir, 'downloaded earlier')

    machine = machine or Machine.this_one()
    run = run or run_to_stderr
    download = download or download_with_torchvision
    apt = machine.apt_prefix()
    install = f'apt-get install {DEBIAN_PACKAGE}'
    if apt is None:
        tried.append(f'{install} (not possible: {machine.why_no_install()})')
    else:
        print(f'{PROG}: installing {DEBIAN_PACKAGE} (Fashion-MNIST for the demo)', file=sys.stderr)
        updated = run(apt + ['apt-get', 'update', '-qq'])
        installed = run(apt + ['apt-get', 'install', '-y', '-qq', DEBIAN_PACKAGE])
        if holds_fashion_mnist(debian_dir):
            return DataSource(debian_dir, f"Debian's package {DEBIAN_PACKAGE}, installed now")
        outcome = (f'apt-get update exited with {updated}, install with {installed}' if installed
                   else f'installed, but {debian_dir} does not hold the files')
        tried.append(f'{install} ({outcome})')

    print(f'{PROG}: downloading Fashion-MNIST through torchvision into {download_dir}/', file=sys.stderr)
    try:
        download(download_dir)
    except (OSError, RuntimeError) as e:
        tried.append(f"torchvision's download into {download_dir}/ ({e})")
    else:
        if holds_torchvision_download(download_dir):
            return DataSource(download_dir, f'downloaded through torchvision into {download_dir}/')
        tried.append(f"torchvision's download into {download_dir}/ (finished, but the files are not there)")

    fixes = ['connect to the internet and run make demo again']
    if apt is None and machine.debian and machine.apt_get:
        fixes.append(f'sudo apt-get install {DEBIAN_PACKAGE}')
    fixes.append('put the four Fashion-MNIST IDX files in a folder and run make demo FMNIST_DIR=FOLDER')
    raise NoData(f"no Fashion-MNIST for the demo; tried {', '.join(tried)}; {', or '.join(fixes)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f'python -m {PROG}', description=__doc__.splitlines()[0])
    parser.add_argument('--fmnist-dir', default='', help='use this folder (empty: find or fetch the data)')
    parser.add_argument('--debian-dir', default=DEBIAN_DIR, help="Debian's folder (default: %(default)s)")
    parser.add_argument('--download-dir', default='data', help='where torchvision downloads to (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        source = find_or_fetch(args.fmnist_dir or None, args.debian_dir, args.download_dir)
    except NoData as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    print(f'Fashion-MNIST: {source.folder} ({source.how})', file=sys.stderr)
    print(source.folder)
    return 0


if __name__ == '__main__':
    sys.exit(main())
