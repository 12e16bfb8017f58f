"""Wide Residual Networks for CIFAR (WRN-16-4, WRN-16-8, WRN-28-10).

Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016 (https://arxiv.org/abs/1605.07146):
a 3x3 stem conv with 16 channels, three stages of ``n = (d - 4) / 6`` pre-activation basic
blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) of widths 16k, 32k, 64k (stride 1, 2, 2),
a final BN-ReLU, global average pooling and a linear classifier. Where the shape changes the
shortcut is a 1x1 conv applied to the block's pre-activated input, as in the reference code.

Used as a CIFAR backbone in *Infinite Class Mixup* (Mensink & Mettes, BMVC 2023).
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerType, get_act_layer, get_norm_layer
from timm.models import generate_default_cfgs, register_model

from ._cifar_cfg import cifar_cfg
from ._cifar_net import CifarNet, build_cifar_net, cifar_stem_conv

__all__ = ['WideResNet', 'PreActBasicBlock']


class PreActBasicBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 (+ shortcut).

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        stride: Stride of the first conv (and of the projection shortcut).
        inner_drop_rate: Dropout between the two convs (the WRN paper uses 0.3); 0 disables it.
        drop_path_rate: Stochastic-depth rate for the residual branch.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            inner_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.bn1 = norm_layer(in_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.act2 = act_layer(inplace=True)
        self.drop = nn.Dropout(inner_drop_rate) if inner_drop_rate > 0. else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.act1(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        x = self.conv1(x_pre)
        x = self.conv2(self.drop(self.act2(self.bn2(x))))
        return self.drop_path(x) + shortcut


class WideResNet(CifarNet):
    """WRN-d-k for 32x32 inputs.

    Args:
        depth: Total depth d = 6n + 4.
        widen_factor: Width multiplier k.
        num_classes: Classifier outputs; 0 gives a feature extractor (``fc`` is Identity).
        in_chans: Input image channels.
        stem_width: Channels of the 3x3 stem conv (16).
        global_pool: timm pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' = none).
        drop_rate: Dropout before the classifier (timm meaning).
        inner_drop_rate: Dropout between the convs of every block (WRN paper's dropout, 0.3 there).
        drop_path_rate: Stochastic-depth rate, linearly increased over the blocks.
        act_layer: Activation layer.
        norm_layer: Normalization layer.
        device, dtype: Factory kwargs for the parameters.
    """

    def __init__(
            self,
            depth: int = 28,
            widen_factor: int = 10,
            num_classes: int = 10,
            in_chans: int = 3,
            stem_width: int = 16,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            inner_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f'WRN depth must be 6n+4 with n >= 1, got {depth}.')
        dd = {'device': device, 'dtype': dtype}
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        n = (depth - 4) // 6
        channels = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth = depth
        self.widen_factor = widen_factor
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        self.conv1 = cifar_stem_conv(in_chans, stem_width, **dd)
        # The stem conv is not followed by BN/ReLU (pre-activation); its output is the stem feature.
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_width, reduction=1, module='conv1')]

        def make_block(in_chs: int, out_chs: int, stride: int, dpr: float) -> nn.Module:
            return PreActBasicBlock(in_chs, out_chs, stride=stride, inner_drop_rate=inner_drop_rate,
                                    drop_path_rate=dpr, act_layer=act_layer, norm_layer=norm_layer, **dd)

        out_chs = self._build_stages(make_block, stem_width, channels, (n,) * 3, drop_path_rate)
        # Pre-activation stages end un-normalised: the last feature tap is after the final BN-ReLU.
        self.feature_info[-1]['module'] = 'act'
        self.norm = norm_layer(out_chs, **dd)
        self.act = act_layer(inplace=True)
        self._build_head(out_chs, num_classes, global_pool, **dd)
        self.init_conv_and_norm()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1',
            blocks=[
                (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self._forward_stages(self.conv1(x))))


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    return build_cifar_net(WideResNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'wrn16_4_cifar': cifar_cfg(),
    'wrn16_8_cifar': cifar_cfg(),
    'wrn28_10_cifar': cifar_cfg(),
})


@register_model
def wrn16_4_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-4 (Zagoruyko & Komodakis 2016); ~2.7M params for 10 classes: the capacity ladder's middle rung."""
    return _create_wide_resnet('wrn16_4_cifar', pretrained, **dict(dict(depth=16, widen_factor=4), **kwargs))


@register_model
def wrn16_8_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-8 (Zagoruyko & Komodakis 2016); ~11.0M params for 10 classes."""
    return _create_wide_resnet('wrn16_8_cifar', pretrained, **dict(dict(depth=16, widen_factor=8), **kwargs))


@register_model
def wrn28_10_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016); ~36.5M params for 10 classes."""
    return _create_wide_resnet('wrn28_10_cifar', pretrained, **dict(dict(depth=28, widen_factor=10), **kwargs))
