"""ResNets (basic and bottleneck blocks, CIFAR or ImageNet stem), defined once for every norm."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.layers import (
    ConvNorm,
    Norm,
    NormClassifier,
    init_model_,
    residual_scalar_init,
    scaled_conv,
)
from mimicnorm_deploy.training.models.registry import register_model

# MimicNorm's projection shortcut under the ImageNet stem is multiplied by a learnable scalar
# initialised to 1.2 (the authors' ImageNet code; their CIFAR ResNets have none).
IMAGENET_SHORTCUT_SCALAR = 1.2


class _ResidualBlock(nn.Module):
    """The shortcut and the residual sum; subclasses build the branch and its scalar `scale`."""

    convs_in_branch: int
    expansion: int
    # Freezing multiplies each scalar into the conv it follows (weights and bias).
    scalar_targets: dict[str, str]

    def __init__(self, in_chans: int, out_chans: int, stride: int, norm: Norm, shortcut_scalar: float | None) -> None:
        super().__init__()
        # Projection shortcut: a 1x1 conv (with bias under MimicNorm, + BN in the twins).
        projection = stride != 1 or in_chans != out_chans
        self.shortcut = ConvNorm(in_chans, out_chans, 1, stride, norm) if projection else nn.Identity()
        self.shortcut_scale = (
            norm.scalar(shortcut_scalar) if projection and shortcut_scalar is not None else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's output, already multiplied by its scalar `scale`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + scaled_conv(self.shortcut, self.shortcut_scale, x))


class BasicBlock(_ResidualBlock):
    convs_in_branch = 2
    expansion = 1
    scalar_targets = {"scale": "conv2", "shortcut_scale": "shortcut"}

    def __init__(self, in_chans: int, width: int, stride: int, norm: Norm, block_index: int,
                 shortcut_scalar: float | None) -> None:  # fmt: skip
        super().__init__(in_chans, width, stride, norm, shortcut_scalar)
        self.conv1 = ConvNorm(in_chans, width, 3, stride, norm)
        self.conv2 = ConvNorm(width, width, 3, 1, norm)
        self.scale = norm.scalar(residual_scalar_init(self.convs_in_branch, block_index))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_conv(self.conv2, self.scale, self.relu(self.conv1(x)))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's ResNet v1.5), 1x1 expand x4."""

    convs_in_branch = 3
    expansion = 4
    scalar_targets = {"scale": "conv3", "shortcut_scale": "shortcut"}

    def __init__(self, in_chans: int, width: int, stride: int, norm: Norm, block_index: int,
                 shortcut_scalar: float | None) -> None:  # fmt: skip
        super().__init__(in_chans, width * self.expansion, stride, norm, shortcut_scalar)
        self.conv1 = ConvNorm(in_chans, width, 1, 1, norm)
        self.conv2 = ConvNorm(width, width, 3, stride, norm)
        self.conv3 = ConvNorm(width, width * self.expansion, 1, 1, norm)
        self.scale = norm.scalar(residual_scalar_init(self.convs_in_branch, block_index))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_conv(self.conv3, self.scale, self.relu(self.conv2(self.relu(self.conv1(x)))))


class ResNet(NormClassifier):
    def __init__(
        self,
        block: type[_ResidualBlock],
        blocks_per_stage: list[int],
        widths: list[int],
        *,
        norm: Norm,
        num_classes: int,
        in_chans: int,
        stem: str,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__(norm, stem, mean, std)
        imagenet = stem == "imagenet"
        self.stem = ConvNorm(in_chans, widths[0], 7 if imagenet else 3, 2 if imagenet else 1, norm)
        self.stem_pool = nn.MaxPool2d(3, 2, padding=1) if imagenet else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        shortcut_scalar = IMAGENET_SHORTCUT_SCALAR if imagenet else None
        stages, in_width, block_index = [], widths[0], 1
        for stage, (depth, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(in_width, width, stride, norm, block_index, shortcut_scalar))
                in_width, block_index = width * block.expansion, block_index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.add_classifier(in_width, num_classes)
        init_model_(self, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.relu(self.stem(self.input_norm(x))))
        x = self.pool(self.stages(x)).flatten(1)
        return self.logits_norm(self.fc(x))


_WIDTHS = [64, 128, 256, 512]


@register_model(stems=("cifar",))
def resnet20(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], **kwargs)


@register_model(stems=("cifar",))
def resnet18_cifar(**kwargs) -> ResNet:
    """The same network as resnet18 with its default CIFAR stem (kept for existing checkpoints)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], _WIDTHS, **kwargs)


@register_model
def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], _WIDTHS, **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], _WIDTHS, **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], _WIDTHS, **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], _WIDTHS, **kwargs)
