"""Wide Residual Networks for CIFAR (WRN-16-8, WRN-28-10).

Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016 (https://arxiv.org/abs/1605.07146):
a 3x3 stem conv with 16 channels, three stages of ``n = (d - 4) / 6`` pre-activation basic
blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) of widths 16k, 32k, 64k (stride 1, 2, 2),
a final BN-ReLU, global average pooling and a linear classifier. Where the shape changes the
shortcut is a 1x1 conv applied to the block's pre-activated input, as in the reference code.

Used as a CIFAR backbone in *Infinite Class Mixup* (Mensink & Mettes, BMVC 2023).
"""
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ._cifar_cfg import adapt_cfg_to_model, cifar_cfg

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


class WideResNet(nn.Module):
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
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False, **dd)
        # The stem conv is not followed by BN/ReLU (pre-activation); its output is the stem feature.
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_width, reduction=1, module='conv1')]

        total_blocks = 3 * n
        block_idx = 0
        reduction = 1
        in_chs = stem_width
        stages = []
        for stage_idx, out_chs in enumerate(channels):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(n):
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(PreActBasicBlock(
                    in_chs, out_chs, stride=stride if i == 0 else 1, inner_drop_rate=inner_drop_rate,
                    drop_path_rate=dpr, act_layer=act_layer, norm_layer=norm_layer, **dd,
                ))
                in_chs = out_chs
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
            # pre-act stage outputs are not normalized; the last tap is after the final BN-ReLU
            module = f'stages.{stage_idx}' if stage_idx < len(channels) - 1 else 'act'
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=module))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(in_chs, **dd)
        self.act = act_layer(inplace=True)

        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) convs, unit/zero BN (classifier keeps PyTorch's default init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1',
            blocks=[
                (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a fresh ``nn.Linear`` for ``num_classes`` (Identity if 0)."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        dd = get_device_dtype(self)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.act(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    features_only = kwargs.get('features_only', False)
    model = build_model_with_cfg(
        WideResNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
    if not features_only:
        adapt_cfg_to_model(model)
    return model


default_cfgs = generate_default_cfgs({
    'wrn16_8_cifar': cifar_cfg(),
    'wrn28_10_cifar': cifar_cfg(),
})


@register_model
def wrn16_8_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-8 (Zagoruyko & Komodakis 2016); ~11.0M params for 10 classes."""
    return _create_wide_resnet('wrn16_8_cifar', pretrained, **dict(dict(depth=16, widen_factor=8), **kwargs))


@register_model
def wrn28_10_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016); ~36.5M params for 10 classes."""
    return _create_wide_resnet('wrn28_10_cifar', pretrained, **dict(dict(depth=28, widen_factor=10), **kwargs))
