"""Shared pretrained-cfg helpers for the CIFAR-style models.

The models in this package have no released weights; their ``pretrained_cfg`` only
describes the data they expect (32x32 CIFAR images by default), so that
``timm.data.resolve_data_config(model=model)`` gives a sensible pipeline.
"""
from typing import Any, Dict, Tuple

import torch.nn as nn

from ..transforms import CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ['cifar_cfg', 'adapt_cfg_to_model']


def cifar_cfg(pool_size: Tuple[int, int] = (8, 8), **kwargs: Any) -> Dict[str, Any]:
    """Default (weightless) pretrained cfg for a 32x32 CIFAR-10 model.

    Args:
        pool_size: Spatial size of the final feature map for a 32x32 input.
        **kwargs: Overrides (e.g. ``first_conv``, ``classifier``).
    """
    return {
        'url': '',
        'num_classes': 10,
        'input_size': (3, 32, 32),
        'pool_size': pool_size,
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'fixed_input_size': False,
        'mean': CIFAR10_MEAN,
        'std': CIFAR10_STD,
        'first_conv': 'conv1',
        'classifier': 'fc',
        **kwargs,
    }


def adapt_cfg_to_model(model: nn.Module) -> nn.Module:
    """Make ``model.pretrained_cfg`` describe the model as built (channels, classes).

    timm keeps the registry cfg verbatim; since these models have no weights, we instead
    record the actual ``in_chans`` / ``num_classes``, and for a 1-channel model use
    Fashion-MNIST statistics (other channel counts get a neutral 0.5 / 0.5).
    The cfg dict is a per-model copy, so the registry entry is not touched.
    """
    cfg = getattr(model, 'pretrained_cfg', None)
    if cfg is None:  # pragma: no cover - only when built outside build_model_with_cfg
        return model
    in_chans = int(getattr(model, 'in_chans', 3))
    cfg = dict(cfg)
    cfg['input_size'] = (in_chans,) + tuple(cfg.get('input_size', (3, 32, 32)))[1:]
    cfg['num_classes'] = int(getattr(model, 'num_classes', cfg.get('num_classes', 10)))
    if in_chans == 1:
        cfg['mean'], cfg['std'] = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    elif in_chans != 3:
        cfg['mean'], cfg['std'] = (0.5,) * in_chans, (0.5,) * in_chans
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model
