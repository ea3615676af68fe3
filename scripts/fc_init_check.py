#!/usr/bin/env python3
"""MimicNorm with the authors' classifier init: the Linear before the logits BatchNorm1d drawn
from N(0, 2 / in_features) with bias 0, instead of PyTorch's default Linear init (uniform,
variance 1 / (3 * in_features)). docs/BENCHMARKS.md section 3.5.

    python scripts/fc_init_check.py train --arch mobilenetv2_050 --norm mimic --epochs 1.8 \
        --no-augment --seed S --out DIR

Why: every CIFAR model of the authors' code (ResNet, VGG, MobileNetV2, ShuffleNetV2) initialises
its Linear layers that way. Behind the affine-free BatchNorm1d the classifier is scale-invariant,
so its effective step is lr / |W|^2: PyTorch's default starts |W|^2 six times smaller, a six times
hotter last layer until weight decay settles the norm (about 1 / (2 lr wd) = 10,000 steps, 21
epochs at the study's recipe). This runs `mimicnorm-deploy train` with its arguments unchanged
and, for `norm=mimic` only, the classifier re-drawn with the authors' init.

An experiment, not a product: the checkpoints are ordinary ones (same parameters), so every later
stage takes them; only how the classifier started differs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from unittest import mock

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimicnorm_deploy.cli import main as cli_main  # noqa: E402
from mimicnorm_deploy.training.layers import NormClassifier  # noqa: E402

product_add_classifier = NormClassifier.add_classifier


def authors_add_classifier(self: NormClassifier, in_features: int, num_classes: int) -> None:
    product_add_classifier(self, in_features, num_classes)
    if self.norm_spec.logits_bn:
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / in_features))
        nn.init.zeros_(self.fc.bias)


def main(argv: list[str] | None = None) -> int:
    # Patched for this call only: the product's classifier is untouched once it returns.
    with mock.patch.object(NormClassifier, "add_classifier", authors_add_classifier):
        return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
