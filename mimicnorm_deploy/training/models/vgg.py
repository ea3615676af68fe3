"""VGG-11/16 (conv + norm + ReLU stacks and max-pools), defined once for every norm."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.layers import ConvNorm, Norm, NormClassifier, init_model_
from mimicnorm_deploy.training.models.registry import register_model

# Output channels per 3x3 conv; "M" is a 2x2 max-pool.
_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(NormClassifier):
    """VGG has no stem to choose: both stems build the same network.

    The head pools globally (1x1 at 32 px) into one Linear, as CIFAR VGGs do, so any input from
    28 px works; max-pools round up (ceil mode) so 28 px Fashion-MNIST reaches 1x1 instead of 0x0.
    MimicNorm init variance is 2.8 / fan_in (the authors' VGG).

    No ImageNet classifier (two 4096-wide Linear + ReLU + Dropout layers): nothing normalizes
    them under either norm, and at the recipe's lr 0.1 (ImageNet VGGs train at 0.01) an SGD step
    moves a 4096-input layer's outputs by lr * |x|^2 ~ 400x its gradient, where the BN'd or
    centred convs are scale-invariant. With it, VGG-11 BN reached 64.6 % on Fashion-MNIST in
    1.8 epochs (every other family 89-91 %); docs/BENCHMARKS.md section 3 has the experiment.
    """

    def __init__(
        self, config: list[int | str], *, norm: Norm, num_classes: int, in_chans: int, stem: str,
        mean: list[float], std: list[float],
    ) -> None:  # fmt: skip
        super().__init__(norm, stem, mean, std)
        layers: list[nn.Module] = []
        channels = in_chans
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [ConvNorm(channels, item, 3, 1, norm), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.add_classifier(channels, num_classes)
        init_model_(self, norm, variance_gain=2.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.input_norm(x))).flatten(1)
        return self.logits_norm(self.fc(x))


@register_model
def vgg11(**kwargs) -> VGG:
    return VGG(_CONFIGS["vgg11"], **kwargs)


@register_model
def vgg16(**kwargs) -> VGG:
    return VGG(_CONFIGS["vgg16"], **kwargs)
