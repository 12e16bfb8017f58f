"""The CIFAR ResNet family of He et al. (ResNet-20/32/56).

He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016,
Sec. 4.2 (https://arxiv.org/abs/1512.03385): a 3x3 stem conv with 16 channels, then three
stages of ``n`` basic blocks with 16/32/64 channels (the first block of stages 2 and 3 has
stride 2), global average pooling and a linear classifier; depth = 6n + 2.

Shortcuts: identity where the shape is unchanged and a 1x1 conv + BN projection where it
changes -- the paper's *option B*, not the parameter-free zero-padding *option A* used for
the published CIFAR numbers. Option B adds about 2.8k parameters (ResNet-20: ~0.272M).

These networks are small and quick enough for CPU experiments with Infinite Class Mixup
(Mensink & Mettes, BMVC 2023).
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerType, get_act_layer, get_norm_layer
from timm.models import generate_default_cfgs, register_model

from ._cifar_cfg import cifar_cfg
from ._cifar_net import CifarNet, build_cifar_net, cifar_stem_conv

__all__ = ['ResNetHe', 'BasicBlockHe']


class BasicBlockHe(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

    The shortcut is the identity, or a 1x1 conv + BN projection (option B) when the
    stride or the channel count changes.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(out_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        if stride != 1 or in_chs != out_chs:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd),
                norm_layer(out_chs, **dd),
            )
        else:
            self.downsample = nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.act2 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        """Zero the last BN scale so the block starts as (a projection of) the identity."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(self.drop_path(x) + shortcut)


class ResNetHe(CifarNet):
    """He et al. (2016) CIFAR ResNet of depth 6n+2 with option-B projection shortcuts.

    Args:
        layers: Blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        channels: Stage widths (16, 32, 64 in the paper).
        num_classes: Classifier outputs; 0 gives a feature extractor (``fc`` is Identity).
        in_chans: Input image channels.
        stem_width: Channels of the 3x3 stem conv (16).
        global_pool: timm pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' = none).
        drop_rate: Dropout before the classifier (timm meaning).
        drop_path_rate: Stochastic-depth rate, linearly increased over the blocks.
        zero_init_last: Zero the last BN scale of every block (off by default, as in the paper).
        act_layer: Activation layer.
        norm_layer: Normalization layer.
        device, dtype: Factory kwargs for the parameters.
    """

    def __init__(
            self,
            layers: Sequence[int] = (3, 3, 3),
            channels: Sequence[int] = (16, 32, 64),
            num_classes: int = 10,
            in_chans: int = 3,
            stem_width: int = 16,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = False,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        assert len(layers) == len(channels)
        dd = {'device': device, 'dtype': dtype}
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        self.conv1 = cifar_stem_conv(in_chans, stem_width, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_width, reduction=1, module='act1')]

        def make_block(in_chs: int, out_chs: int, stride: int, dpr: float) -> nn.Module:
            return BasicBlockHe(in_chs, out_chs, stride=stride, drop_path_rate=dpr, act_layer=act_layer,
                                norm_layer=norm_layer, **dd)

        out_chs = self._build_stages(make_block, stem_width, channels, layers, drop_path_rate)
        self._build_head(out_chs, num_classes, global_pool, **dd)
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """Kaiming-normal (fan-out) convs, unit/zero BN; optionally zero the last BN of each block."""
        self.init_conv_and_norm()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlockHe):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_stages(self.act1(self.bn1(self.conv1(x))))


def _create_resnet_he(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetHe:
    return build_cifar_net(ResNetHe, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'resnet20_cifar': cifar_cfg(),
    'resnet32_cifar': cifar_cfg(),
    'resnet56_cifar': cifar_cfg(),
})


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetHe:
    """ResNet-20 (n=3) of He et al. 2016; ~0.27M params."""
    return _create_resnet_he('resnet20_cifar', pretrained, **dict(dict(layers=(3, 3, 3)), **kwargs))


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetHe:
    """ResNet-32 (n=5) of He et al. 2016; ~0.46M params."""
    return _create_resnet_he('resnet32_cifar', pretrained, **dict(dict(layers=(5, 5, 5)), **kwargs))


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetHe:
    """ResNet-56 (n=9) of He et al. 2016; ~0.85M params."""
    return _create_resnet_he('resnet56_cifar', pretrained, **dict(dict(layers=(9, 9, 9)), **kwargs))
