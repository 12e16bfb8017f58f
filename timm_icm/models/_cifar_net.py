"""What the CIFAR networks share: the 3x3 stride-1 stem conv, the conv init, the builder, and (for the
networks written here) stages of residual blocks and timm's pooled linear head."""
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq

from ._cifar_cfg import adapt_cfg_to_model


def cifar_stem_conv(in_chans: int, out_chs: int, **dd: Any) -> nn.Conv2d:
    """The CIFAR stem: a 3x3 stride-1 conv without bias, so a 32x32 image keeps its resolution."""
    return nn.Conv2d(in_chans, out_chs, kernel_size=3, stride=1, padding=1, bias=False, **dd)


def init_convs_and_norms(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit/zero norm layers, in ``module`` and below."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarNet(nn.Module):
    """Base of :class:`ResNetHe` and :class:`WideResNet`: the timm model interface around ``stages``.

    Subclasses build a stem, call :meth:`_build_stages` and :meth:`_build_head`, and define
    ``forward_features``.
    """
    num_classes: int
    num_features: int
    drop_rate: float
    grad_checkpointing: bool = False
    feature_info: List[Dict[str, Any]]

    def _build_stages(self, make_block: Callable[..., nn.Module], in_chs: int, channels: Sequence[int],
                      depths: Sequence[int], drop_path_rate: float) -> int:
        """Stages of ``make_block(in_chs, out_chs, stride, drop_path_rate)``, stride 2 from the second.

        Stochastic depth grows linearly over all blocks. Returns the last stage's width.
        """
        total, index, reduction, stages = sum(depths), 0, 1, []
        for stage_idx, (depth, out_chs) in enumerate(zip(depths, channels)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(depth):
                blocks.append(make_block(in_chs, out_chs, stride if i == 0 else 1,
                                         drop_path_rate * index / max(total - 1, 1)))
                in_chs = out_chs
                index += 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{stage_idx}'))
        self.stages = nn.Sequential(*stages)
        return in_chs

    def _build_head(self, num_features: int, num_classes: int, global_pool: str, **dd: Any) -> None:
        self.num_features, self.num_classes = num_features, num_classes
        self.global_pool, self.fc = create_classifier(num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def init_conv_and_norm(self) -> None:
        """:func:`init_convs_and_norms` on the whole network; the classifier keeps PyTorch's init."""
        init_convs_and_norms(self)

    def _forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a fresh ``nn.Linear`` for ``num_classes`` (Identity if 0)."""
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self._build_head(self.num_features, num_classes, pool, **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_cifar_net(cls: type, variant: str, pretrained: bool = False, stage_features: bool = True,
                    **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` (features_only works) with the cfg fitted to the built model.

    ``stage_features``: ``features_only`` takes the stem and the stages of a :class:`CifarNet`;
    False keeps timm's default feature extraction (for timm's own ResNet).
    """
    feature_cfg = dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)) if stage_features else None
    model = build_model_with_cfg(cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    if not kwargs.get('features_only', False):
        adapt_cfg_to_model(model)
    return model
