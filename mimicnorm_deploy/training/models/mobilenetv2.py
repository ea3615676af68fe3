"""MobileNetV2 (inverted residuals, width multiplier), defined once for every norm."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.layers import ConvNorm, Norm, NormClassifier, ReluGlobalAvgPool, init_model_, scaled_conv
from mimicnorm_deploy.training.models.registry import register_model

# (expansion t, output channels c, blocks n, stride s) per stage, as in the paper (ImageNet).
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# The authors' CIFAR MobileNetV2 keeps the stem and the 160-channel stage at stride 1 (/8 overall).
_CIFAR_STRIDE_ONE_STAGE = 5
STEM_WIDTH, HEAD_WIDTH = 32, 1280
# MimicNorm scalar per block, 1.2**m with m the dense (groups == 1) convs of the branch, divided
# by k (1-based index among blocks with an identity shortcut) where the block adds its input: the
# authors' code (1.2**2 / k on residual blocks, 1.2**2 on the others; their depthwise conv is not
# counted). Non-residual blocks have no sum whose variance grows with depth, hence no 1/k.
SCALAR_BASE = 1.2


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of `divisor`, never more than 10% below (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expand (absent when t == 1), 3x3 depthwise, 1x1 linear projection, identity shortcut
    where shape allows. ReLU, not ReLU6, under every norm: MimicNorm activations are not
    BN-standardized, so a fixed clip at 6 would mean something else in the two twins (the
    authors' MimicNorm MobileNetV2 uses ReLU)."""

    scalar_targets = {"scale": "project"}

    def __init__(self, in_chans: int, out_chans: int, stride: int, expand: int, norm: Norm,
                 residual_index: int | None) -> None:  # fmt: skip
        super().__init__()
        hidden = in_chans * expand
        self.expand = ConvNorm(in_chans, hidden, 1, 1, norm) if expand != 1 else None
        self.depthwise = ConvNorm(hidden, hidden, 3, stride, norm, groups=hidden)
        self.project = ConvNorm(hidden, out_chans, 1, 1, norm)
        self.residual = residual_index is not None
        dense_convs = 2 if expand != 1 else 1
        init = SCALAR_BASE**dense_convs / (residual_index if self.residual else 1)
        self.scale = norm.scalar(init)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x if self.expand is None else self.relu(self.expand(x))
        out = scaled_conv(self.project, self.scale, self.relu(self.depthwise(hidden)))
        return x + out if self.residual else out


class MobileNetV2(NormClassifier):
    def __init__(
        self, width: float, *, norm: Norm, num_classes: int, in_chans: int, stem: str,
        mean: list[float], std: list[float],
    ) -> None:  # fmt: skip
        super().__init__(norm, stem, mean, std)
        imagenet = stem == "imagenet"
        channels = make_divisible(STEM_WIDTH * width)
        self.stem = ConvNorm(in_chans, channels, 3, 2 if imagenet else 1, norm)
        self.relu = nn.ReLU(inplace=True)
        blocks, residual_index = [], 0
        for stage, (expand, out, repeats, stride) in enumerate(_STAGES):
            out = make_divisible(out * width)
            if not imagenet and stage == _CIFAR_STRIDE_ONE_STAGE:
                stride = 1
            for i in range(repeats):
                block_stride = stride if i == 0 else 1
                residual = block_stride == 1 and channels == out
                residual_index += residual
                blocks.append(InvertedResidual(channels, out, block_stride, expand, norm,
                                               residual_index if residual else None))  # fmt: skip
                channels = out
        self.blocks = nn.Sequential(*blocks)
        head_width = make_divisible(HEAD_WIDTH * max(1.0, width))
        self.head = ConvNorm(channels, head_width, 1, 1, norm)
        self.pool = ReluGlobalAvgPool()
        self.add_classifier(head_width, num_classes)
        # The authors floor the per-group fan-in at 2 for MobileNetV2 (depthwise: 2 * 9, not 9).
        init_model_(self, norm, variance_gain=2.0, min_in_per_group=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.stem(self.input_norm(x))))
        x = self.pool(self.head(x))
        return self.logits_norm(self.fc(x))


@register_model
def mobilenetv2_050(**kwargs) -> MobileNetV2:
    return MobileNetV2(0.5, **kwargs)


@register_model
def mobilenetv2_100(**kwargs) -> MobileNetV2:
    return MobileNetV2(1.0, **kwargs)
