"""SqueezeNet 1.1 (Fire modules: squeeze 1x1, expand 1x1 and 3x3 concatenated), for every norm."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.layers import ConvNorm, Norm, NormClassifier, init_model_
from mimicnorm_deploy.training.models.registry import register_model

STEM_WIDTH = 64
# (squeeze, expand) channels per Fire module; "M" is a 3x3 stride-2 max-pool (torchvision's 1.1).
_FIRES: list[tuple[int, int] | str] = [
    (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256),
]  # fmt: skip


class Fire(nn.Module):
    def __init__(self, in_chans: int, squeeze: int, expand: int, norm: Norm) -> None:
        super().__init__()
        self.squeeze = ConvNorm(in_chans, squeeze, 1, 1, norm)
        self.expand1x1 = ConvNorm(squeeze, expand, 1, 1, norm)
        self.expand3x3 = ConvNorm(squeeze, expand, 3, 1, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.squeeze(x))
        return self.relu(torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1))


class SqueezeNet(NormClassifier):
    """SqueezeNet 1.1. The ImageNet stem is a 3x3 stride-2 conv, the CIFAR stem keeps stride 1;
    both are followed by torchvision's three ceil-mode max-pools (32 px -> 4x4 before the head).
    The head pools globally and applies `fc`, the same map as torchvision's 1x1 conv before its
    pool, without the ReLU on the logits. No residual branches, so no MimicNorm scalars."""

    def __init__(
        self, *, norm: Norm, num_classes: int, in_chans: int, stem: str, mean: list[float], std: list[float]
    ) -> None:
        super().__init__(norm, stem, mean, std)
        self.stem = ConvNorm(in_chans, STEM_WIDTH, 3, 2 if stem == "imagenet" else 1, norm)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = [nn.MaxPool2d(3, 2, ceil_mode=True)]
        channels = STEM_WIDTH
        for item in _FIRES:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                squeeze, expand = item
                layers.append(Fire(channels, squeeze, expand, norm))
                channels = 2 * expand
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.add_classifier(channels, num_classes)
        # The authors' init: variance 2.8 / (k * k * max(4, in / groups)).
        init_model_(self, norm, variance_gain=2.8, min_in_per_group=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.relu(self.stem(self.input_norm(x))))
        return self.logits_norm(self.fc(self.dropout(self.pool(x).flatten(1))))


@register_model
def squeezenet1_1(**kwargs) -> SqueezeNet:
    return SqueezeNet(**kwargs)
