"""CIFAR variants of timm's ImageNet ResNet-18/34/50.

These are the backbones used for CIFAR in *Infinite Class Mixup* (Mensink & Mettes, BMVC 2023):
the ResNets of He et al., *Deep Residual Learning for Image Recognition* (CVPR 2016,
https://arxiv.org/abs/1512.03385) with the 7x7 stride-2 stem convolution replaced by a 3x3
stride-1 convolution (64 channels) and without the stem max-pool, so a 32x32 image keeps its
resolution through the stem and reaches the last stage at 4x4.

They are built on :class:`timm.models.resnet.ResNet`, so all of timm's ResNet features
(``reset_classifier``, ``forward_features`` / ``forward_head``, ``forward_intermediates``,
``drop_rate``, ``drop_path_rate``, ``global_pool``, ``features_only``) keep working.
"""
from typing import Any

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ._cifar_cfg import cifar_cfg
from ._cifar_net import build_cifar_net, cifar_stem_conv, init_convs_and_norms

__all__ = ['ResNetCifar']


class ResNetCifar(ResNet):
    """timm ResNet with a CIFAR stem: 3x3 stride-1 conv, BN, ReLU, no max-pool.

    Accepts every argument of :class:`timm.models.resnet.ResNet` except the stem options
    (``stem_type`` / ``replace_stem_pool`` are rejected); the stem is 64 channels wide.
    Note that timm's ``output_stride`` counts the (removed) stride-4 ImageNet stem, so the
    default ``output_stride=32`` means a true network stride of 8 here.
    """

    def __init__(self, *args: Any, in_chans: int = 3, **kwargs: Any) -> None:
        if kwargs.get('stem_type', ''):
            raise ValueError('ResNetCifar uses a single 3x3 stem conv; stem_type is not supported.')
        if kwargs.get('replace_stem_pool', False):
            raise ValueError('ResNetCifar has no stem pooling; replace_stem_pool is not supported.')
        super().__init__(*args, in_chans=in_chans, **kwargs)

        imagenet_stem = self.conv1
        self.conv1 = cifar_stem_conv(in_chans, self.bn1.num_features, device=imagenet_stem.weight.device,
                                     dtype=imagenet_stem.weight.dtype)
        init_convs_and_norms(self.conv1)
        self.maxpool = nn.Identity()

        # timm's feature_info assumes a stride-4 stem; the CIFAR stem has stride 1.
        self.feature_info[0] = dict(self.feature_info[0], reduction=1)
        for info in self.feature_info[1:]:
            info['reduction'] = max(1, info['reduction'] // 4)


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    return build_cifar_net(ResNetCifar, variant, pretrained, stage_features=False, **kwargs)


default_cfgs = generate_default_cfgs({
    'resnet18_cifar': cifar_cfg(pool_size=(4, 4)),
    'resnet34_cifar': cifar_cfg(pool_size=(4, 4)),
    'resnet50_cifar': cifar_cfg(pool_size=(4, 4)),
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR stem; ~11.17M params for 10 classes."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet_cifar('resnet18_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) with a CIFAR stem; ~21.28M params for 10 classes."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet_cifar('resnet34_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]) with a CIFAR stem; ~23.52M params for 10 classes."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet_cifar('resnet50_cifar', pretrained, **dict(model_args, **kwargs))
