"""Tests for the CIFAR-style models registered by ``timm_icm.models``."""
from typing import Dict, Tuple

import pytest
import timm
import torch
import torch.nn as nn

import timm_icm  # noqa: F401  (registers the models)

SMALL = ['resnet18_cifar', 'resnet34_cifar', 'resnet20_cifar', 'resnet32_cifar', 'resnet56_cifar', 'wrn16_4_cifar',
         'wrn16_8_cifar']
BIG = ['resnet50_cifar', 'wrn28_10_cifar']
ALL = SMALL + BIG
HE_FAMILY = ['resnet20_cifar', 'resnet32_cifar', 'resnet56_cifar']

_CACHE: Dict[Tuple[str, int, int], nn.Module] = {}


def _model(name: str, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """Create each (name, classes, channels) combination once per session; big models are slow to init."""
    key = (name, num_classes, in_chans)
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans).eval()
    return _CACHE[key]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_registered() -> None:
    listed = set(timm.list_models('*_cifar'))
    assert set(ALL) <= listed
    assert set(ALL) <= set(timm.list_models('*cifar*'))


@pytest.mark.parametrize('name', SMALL)
@pytest.mark.parametrize('in_chans', [1, 3])
def test_logits_shape_32(name: str, in_chans: int) -> None:
    num_classes = 7 if in_chans == 1 else 10  # shares cached instances with the other tests
    model = _model(name, num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, num_classes)
    assert model.num_classes == num_classes
    assert model.pretrained_cfg['num_classes'] == num_classes
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (in_chans, 32, 32)
    assert len(cfg['mean']) == len(cfg['std']) == in_chans
    assert cfg['first_conv'] == 'conv1' and cfg['classifier'] == 'fc'
    assert model.default_cfg is cfg


@pytest.mark.parametrize('name', BIG)
def test_big_models_single_forward(name: str) -> None:
    model = _model(name, num_classes=10)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)


@pytest.mark.parametrize('name', HE_FAMILY + ['wrn16_8_cifar', 'resnet18_cifar'])
def test_logits_shape_28_grayscale(name: str) -> None:
    model = _model(name, num_classes=7, in_chans=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7)


@pytest.mark.parametrize('name, channels, size', [
    ('resnet18_cifar', 512, 4),
    ('resnet34_cifar', 512, 4),
    ('resnet20_cifar', 64, 8),
    ('wrn16_8_cifar', 512, 8),
])
def test_cifar_stem_keeps_resolution(name: str, channels: int, size: int) -> None:
    """32x32 -> stride 8 overall; the ImageNet stem (stride 4) would give a 1x1 / 2x2 map."""
    model = _model(name)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, channels, size, size)
    assert model.num_features == channels
    assert model.pretrained_cfg['pool_size'] == (size, size)


def test_resnet_cifar_is_timm_resnet_with_cifar_stem() -> None:
    model = _model('resnet18_cifar')
    assert isinstance(model, timm.models.resnet.ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 2, 4, 8]


@pytest.mark.parametrize('name, expected, rel_tol', [
    ('resnet20_cifar', 0.27e6, 0.03),
    ('resnet56_cifar', 0.85e6, 0.03),
    ('resnet18_cifar', 11.17e6, 0.01),
    ('wrn16_4_cifar', 2.75e6, 0.01),
    ('wrn16_8_cifar', 11.0e6, 0.01),
    ('wrn28_10_cifar', 36.5e6, 0.01),
])
def test_param_counts(name: str, expected: float, rel_tol: float) -> None:
    n = _n_params(_model(name, num_classes=10))
    assert abs(n - expected) / expected < rel_tol, f'{name}: {n} params'


@pytest.mark.parametrize('name', ['resnet18_cifar', 'resnet20_cifar', 'wrn16_8_cifar'])
def test_classifier_and_reset(name: str) -> None:
    model = timm.create_model(name, num_classes=10)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.bias is not None
    assert head.in_features == model.num_features and head.out_features == 10

    model.reset_classifier(5)
    new_head = model.get_classifier()
    assert new_head is not head
    assert isinstance(new_head, nn.Linear) and new_head.bias is not None and new_head.out_features == 5
    assert model.num_classes == 5
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.num_features)

    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)

    model.reset_classifier(3, global_pool='catavgmax')
    assert model.get_classifier().in_features == 2 * model.num_features
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_drop_rate_and_global_pool_kwargs() -> None:
    model = timm.create_model('resnet20_cifar', num_classes=4, drop_rate=0.5, global_pool='max')
    assert model.drop_rate == 0.5 and model.global_pool.pool_type == 'max'
    model = timm.create_model('wrn16_8_cifar', num_classes=4, drop_rate=0.2, inner_drop_rate=0.3)
    assert model.drop_rate == 0.2
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())


def test_resnet20_fits_tiny_batch() -> None:
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0  # started near log(4)
    assert losses[-1] < 0.05, losses
