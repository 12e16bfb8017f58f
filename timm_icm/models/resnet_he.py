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
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ._cifar_cfg import adapt_cfg_to_model, cifar_cfg

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


class ResNetHe(nn.Module):
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
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_width, reduction=1, module='act1')]

        total_blocks = sum(layers)
        block_idx = 0
        reduction = 1
        in_chs = stem_width
        stages = []
        for stage_idx, (depth, out_chs) in enumerate(zip(layers, channels)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(depth):
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(BasicBlockHe(
                    in_chs, out_chs, stride=stride if i == 0 else 1, drop_path_rate=dpr,
                    act_layer=act_layer, norm_layer=norm_layer, **dd,
                ))
                in_chs = out_chs
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{stage_idx}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """Kaiming-normal (fan-out) convs, unit/zero BN; optionally zero the last BN of each block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlockHe):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

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
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_resnet_he(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetHe:
    features_only = kwargs.get('features_only', False)
    model = build_model_with_cfg(
        ResNetHe, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
    if not features_only:
        adapt_cfg_to_model(model)
    return model


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
