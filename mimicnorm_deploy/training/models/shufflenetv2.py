"""ShuffleNetV2 (channel split, concat, channel shuffle), defined once for every norm."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.layers import ConvNorm, Norm, NormClassifier, ReluGlobalAvgPool, init_model_, scaled_conv
from mimicnorm_deploy.training.models.registry import register_model

STEM_WIDTH = 24
_REPEATS = [4, 8, 4]
# Stage output channels and the final 1x1 conv's, per width multiplier (the paper's table).
_WIDTHS = {0.5: [48, 96, 192, 1024], 1.0: [116, 232, 464, 1024]}
# MimicNorm scalars, following the authors' ShuffleNetV2: 1.2**m multiplies the last conv of
# each branch, m = its dense (groups == 1) convs (2 in the main branch, 1 in the downsampling
# shortcut branch; depthwise convs not counted), and 1.2 the final 1x1 conv. There is no 1/k:
# branches are concatenated, not summed, so activation variance does not grow with depth.
# The authors' extra scale and bias *after* the branch's ReLU are left out: they sit behind a
# nonlinearity and cannot fold into a conv exactly.
SCALAR_BASE = 1.2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups; written batch-size-agnostic for ONNX export."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels in half, transform one half, concat, shuffle.
    Stride 2: both branches see the whole input and downsample; concat doubles the channels."""

    scalar_targets = {"branch_scale": "branch_conv2", "shortcut_scale": "shortcut_conv"}

    def __init__(self, in_chans: int, out_chans: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.downsample = stride != 1
        half = out_chans // 2
        branch_in = in_chans if self.downsample else half
        if self.downsample:
            self.shortcut_dw = ConvNorm(in_chans, in_chans, 3, stride, norm, groups=in_chans)
            self.shortcut_conv = ConvNorm(in_chans, half, 1, 1, norm)
            self.shortcut_scale = norm.scalar(SCALAR_BASE)
        self.branch_conv1 = ConvNorm(branch_in, half, 1, 1, norm)
        self.branch_dw = ConvNorm(half, half, 3, stride, norm, groups=half)
        self.branch_conv2 = ConvNorm(half, half, 1, 1, norm)
        self.branch_scale = norm.scalar(SCALAR_BASE**2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            shortcut = self.relu(scaled_conv(self.shortcut_conv, self.shortcut_scale, self.shortcut_dw(x)))
            branch_in = x
        else:
            shortcut, branch_in = x.chunk(2, dim=1)
        branch = self.branch_dw(self.relu(self.branch_conv1(branch_in)))
        branch = self.relu(scaled_conv(self.branch_conv2, self.branch_scale, branch))
        return channel_shuffle(torch.cat([shortcut, branch], dim=1), 2)


class ShuffleNetV2(NormClassifier):
    scalar_targets = {"head_scale": "head"}

    def __init__(
        self, width: float, *, norm: Norm, num_classes: int, in_chans: int, stem: str,
        mean: list[float], std: list[float],
    ) -> None:  # fmt: skip
        super().__init__(norm, stem, mean, std)
        imagenet = stem == "imagenet"
        self.stem = ConvNorm(in_chans, STEM_WIDTH, 3, 2 if imagenet else 1, norm)
        self.stem_pool = nn.MaxPool2d(3, 2, padding=1) if imagenet else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        *stage_widths, head_width = _WIDTHS[width]
        stages, channels = [], STEM_WIDTH
        for repeats, out in zip(_REPEATS, stage_widths, strict=True):
            stages.append(nn.Sequential(*(ShuffleUnit(channels if i == 0 else out, out, 2 if i == 0 else 1, norm)
                                          for i in range(repeats))))  # fmt: skip
            channels = out
        self.stages = nn.Sequential(*stages)
        self.head = ConvNorm(channels, head_width, 1, 1, norm)
        self.head_scale = norm.scalar(SCALAR_BASE)
        self.pool = ReluGlobalAvgPool()
        self.add_classifier(head_width, num_classes)
        # The authors' init: variance 2 / (k * k * max(4, in / groups)).
        init_model_(self, norm, variance_gain=2.0, min_in_per_group=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem_pool(self.relu(self.stem(self.input_norm(x)))))
        x = self.pool(scaled_conv(self.head, self.head_scale, x))
        return self.logits_norm(self.fc(x))


@register_model
def shufflenetv2_050(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(0.5, **kwargs)


@register_model
def shufflenetv2_100(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(1.0, **kwargs)
