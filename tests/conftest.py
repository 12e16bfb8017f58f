"""Shared test fixtures."""
import os

import pytest

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = (
    'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz',
)


@pytest.fixture(scope='session')
def fashion_mnist_dir() -> str:
    """Debian's Fashion-MNIST (package dataset-fashion-mnist).

    Skips where it is not installed, except under CI (``CI`` set), which installs it: there a
    missing copy is a failure.
    """
    missing = [f for f in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(FASHION_MNIST_DIR, f))]
    if missing:
        msg = f"Fashion-MNIST not installed: {', '.join(missing)} missing in {FASHION_MNIST_DIR}"
        if os.environ.get('CI'):
            pytest.fail(msg + ' (CI installs the Debian package dataset-fashion-mnist)')
        pytest.skip(msg)
    return FASHION_MNIST_DIR
