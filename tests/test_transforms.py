"""The paper's CIFAR augmentation and installing it behind timm's create_loader."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import transforms as T

from timm.data import create_loader
from timm.data.loader import fast_collate
from timm_icm.subsets import make_subset
from timm_icm.transforms import (
    CIFAR100_MEAN, CIFAR100_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, create_paper_cifar_transform,
    set_transform,
)


@pytest.fixture
def rgb():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture
def gray():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8))


class ImageList(Dataset):
    def __init__(self, images, targets):
        self.images, self.targets, self.transform = images, targets, None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def test_training_pipeline_is_the_papers():
    steps = create_paper_cifar_transform(True).transforms
    crop, flip, rot = steps[:3]
    assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(rot, T.RandomRotation) and list(rot.degrees) == [-15.0, 15.0]
    assert not any(isinstance(s, (T.RandomCrop, T.RandomHorizontalFlip, T.RandomRotation))
                   for s in create_paper_cifar_transform(False).transforms)


def test_normalised_tensor_output(rgb):
    mean, std = CIFAR100_MEAN, CIFAR100_STD
    for is_training in (True, False):
        x = create_paper_cifar_transform(is_training, mean=mean, std=std)(rgb)
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    x = create_paper_cifar_transform(False, mean=mean, std=std)(rgb)
    expected = (torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
                - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)


def test_prefetcher_output_is_uint8_chw_numpy(rgb):
    for is_training in (True, False):
        x = create_paper_cifar_transform(is_training, use_prefetcher=True)(rgb)
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (3, 32, 32)
    x = create_paper_cifar_transform(False, use_prefetcher=True)(rgb)
    assert np.array_equal(x, np.array(rgb).transpose(2, 0, 1))  # no normalisation, no change
    batch, target = fast_collate([(x, 1), (x, 2)])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 32, 32) and target.tolist() == [1, 2]


def test_one_channel_images(gray):
    for is_training in (True, False):
        x = create_paper_cifar_transform(is_training, img_size=28, mean=FASHION_MNIST_MEAN,
                                         std=FASHION_MNIST_STD)(gray)
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        p = create_paper_cifar_transform(is_training, img_size=28, use_prefetcher=True)(gray)
        assert isinstance(p, np.ndarray) and p.shape == (1, 28, 28) and p.dtype == np.uint8
    # another size: training crops, evaluation zero-pads around the centre
    x = create_paper_cifar_transform(False, img_size=32, use_prefetcher=True)(gray)
    assert x.shape == (1, 32, 32) and np.array_equal(x[0, 2:30, 2:30], np.array(gray)) and x[0, 0].sum() == 0
    assert create_paper_cifar_transform(True, img_size=32, use_prefetcher=True)(gray).shape == (1, 32, 32)
    with pytest.raises(ValueError, match='1 channel.* mean/std have 3'):
        create_paper_cifar_transform(False, img_size=28)(gray)


def test_training_is_random_and_evaluation_deterministic(rgb):
    train = create_paper_cifar_transform(True, use_prefetcher=True)
    torch.manual_seed(0)
    outs = [train(rgb) for _ in range(10)]
    assert len({o.tobytes() for o in outs}) > 5
    torch.manual_seed(0)
    assert all(np.array_equal(a, train(rgb)) for a in outs)  # torch's RNG drives all of it
    evaluate = create_paper_cifar_transform(False)
    first = evaluate(rgb)
    assert all(torch.equal(first, evaluate(rgb)) for _ in range(5))


def test_argument_validation():
    with pytest.raises(ValueError, match='img_size'):
        create_paper_cifar_transform(True, img_size=0)
    with pytest.raises(ValueError, match='hflip'):
        create_paper_cifar_transform(True, hflip=2.0)
    with pytest.raises(ValueError, match='mean/std'):
        create_paper_cifar_transform(True, mean=(0.5, 0.5), std=(0.5,))


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize('use_prefetcher', [False, True])
@pytest.mark.parametrize('wrap', ['plain', 'subset', 'labeled_subset', 'concat'])
def test_set_transform_after_create_loader(use_prefetcher, wrap):
    base = ImageList(_images(6), [0, 1, 2, 0, 1, 2])
    ds = {'plain': base, 'subset': Subset(base, [0, 2, 4, 5]), 'labeled_subset': make_subset(base, [0, 2, 4, 5]),
          'concat': ConcatDataset([base, ImageList(_images(2, 1), [1, 1])])}[wrap]
    loader = create_loader(ds, input_size=(3, 32, 32), batch_size=4, is_training=True,
                           use_prefetcher=use_prefetcher, device=torch.device('cpu'), num_workers=0,
                           mean=CIFAR100_MEAN, std=CIFAR100_STD)
    paper = create_paper_cifar_transform(True, mean=CIFAR100_MEAN, std=CIFAR100_STD, use_prefetcher=use_prefetcher)
    set_transform(loader, paper)
    members = ds.datasets if wrap == 'concat' else [base]
    assert all(m.transform is paper for m in members)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    # normalised in both modes (by the transform, or by timm's PrefetchLoader)
    assert float(x.min()) < -1.0 and float(x.max()) > 1.0


def test_set_transform_on_datasets_directly():
    base = ImageList(_images(2), [0, 1])
    sub = Subset(base, [1])
    sub.transform = 'left by create_loader'  # a plain Subset ignores this attribute
    set_transform(sub, T.ToTensor())
    assert isinstance(base.transform, T.ToTensor) and sub.transform is base.transform
    assert isinstance(sub[0][0], torch.Tensor)
    set_transform(base, None)
    assert isinstance(sub[0][0], Image.Image)
    with pytest.raises(TypeError, match='expected a DataLoader or a Dataset'):
        set_transform(object(), None)
