"""CIFAR-style models, registered in timm's model registry on import.

After ``import timm_icm`` the following names work with ``timm.create_model``:

* ``resnet18_cifar``, ``resnet34_cifar``, ``resnet50_cifar`` -- timm ResNets with a CIFAR stem
  (:mod:`.resnet_cifar`);
* ``resnet20_cifar``, ``resnet32_cifar``, ``resnet56_cifar`` -- He et al. (2016) CIFAR ResNets
  (:mod:`.resnet_he`);
* ``wrn16_8_cifar``, ``wrn28_10_cifar`` -- Wide ResNets (:mod:`.wide_resnet`).
"""
from typing import Tuple

import timm
from timm.models import model_entrypoint

from .resnet_cifar import ResNetCifar, resnet18_cifar, resnet34_cifar, resnet50_cifar
from .resnet_he import BasicBlockHe, ResNetHe, resnet20_cifar, resnet32_cifar, resnet56_cifar
from .wide_resnet import PreActBasicBlock, WideResNet, wrn16_8_cifar, wrn28_10_cifar


def _names_registered_here() -> Tuple[str, ...]:
    """The names timm's registry knows from this package (registered by the imports above), sorted as timm sorts."""
    return tuple(name for name in timm.list_models() if model_entrypoint(name).__module__.startswith(__name__ + '.'))


CIFAR_MODEL_NAMES = _names_registered_here()

__all__ = [
    'CIFAR_MODEL_NAMES',
    'ResNetCifar', 'ResNetHe', 'BasicBlockHe', 'WideResNet', 'PreActBasicBlock',
    'resnet18_cifar', 'resnet34_cifar', 'resnet50_cifar',
    'resnet20_cifar', 'resnet32_cifar', 'resnet56_cifar',
    'wrn16_8_cifar', 'wrn28_10_cifar',
]
