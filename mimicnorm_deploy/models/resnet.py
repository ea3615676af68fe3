"""CIFAR-style ResNets (3x3 stem, no max-pool), defined once for every normalization."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.layers import ConvNorm, InputNorm, Norm, init_model_, residual_scalar_init
from mimicnorm_deploy.models.registry import register_model


class BasicBlock(nn.Module):
    convs_in_branch = 2
    # Freezing folds the residual scalar into this conv (weights and bias).
    branch_last_conv = "conv2"

    def __init__(self, in_chans: int, out_chans: int, stride: int, norm: Norm, block_index: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chans, out_chans, 3, stride, norm)
        self.conv2 = ConvNorm(out_chans, out_chans, 3, 1, norm)
        self.scale = norm.scalar(residual_scalar_init(self.convs_in_branch, block_index))
        # Projection shortcut: a 1x1 conv (with bias under MimicNorm, + BN in the twin).
        self.shortcut = (
            ConvNorm(in_chans, out_chans, 1, stride, norm) if stride != 1 or in_chans != out_chans else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(self.relu(self.conv1(x)))
        return self.relu(self.scale(branch) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        *,
        norm: Norm,
        num_classes: int,
        in_chans: int,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        self.norm_spec = norm
        self.input_norm = InputNorm(mean, std)
        self.stem = ConvNorm(in_chans, widths[0], 3, 1, norm)
        self.relu = nn.ReLU(inplace=True)
        stages, in_width, block_index = [], widths[0], 1
        for stage, (depth, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_width, width, stride, norm, block_index))
                in_width, block_index = width, block_index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_width, num_classes)
        self.logits_norm = norm.logits_norm(num_classes)
        init_model_(self, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(self.input_norm(x)))
        x = self.pool(self.stages(x)).flatten(1)
        return self.logits_norm(self.fc(x))


@register_model
def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet([3, 3, 3], [16, 32, 64], **kwargs)


@register_model
def resnet18_cifar(**kwargs) -> CifarResNet:
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], **kwargs)
