#!/usr/bin/env python3
"""MimicNorm with an affine logits BatchNorm1d (a learnable scale and shift per class after the
normalization) instead of the authors' affine-free one. docs/BENCHMARKS.md section 3.3.

    python scripts/logits_bn_check.py train --arch mobilenetv2_050 --norm mimic --epochs 1.8 \
        --no-augment --seed S --out DIR

Why: the affine-free layer gives every logit unit variance over the batch, which bounds how far
the logits can spread: with K balanced classes perfectly separated, the right class's logit sits
sqrt(K - 1) above the batch mean and the others 1 / sqrt(K - 1) below, a cross-entropy of 0.28
on every sample with K = 10 (0.004 with K = 100). This runs `mimicnorm-deploy train` with its
arguments unchanged and every logits BatchNorm1d made affine (gamma 1, beta 0 at the start: the
same function and the same random draws as the authors' layer at step 0), to see whether lifting
the cap changes accuracy.

An experiment, not a product: the checkpoints record norm "mimic" but hold the extra gamma and
beta, which no freeze path reads, so `freeze` refuses them (strict load).
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimicnorm_deploy.cli import main as cli_main  # noqa: E402
from mimicnorm_deploy.training.layers import Norm  # noqa: E402


def affine_logits_norm(self: Norm, num_classes: int) -> nn.Module:
    return nn.BatchNorm1d(num_classes, affine=True) if self.logits_bn else nn.Identity()


def main(argv: list[str] | None = None) -> int:
    # Patched for this call only: the product's Norm is untouched once it returns.
    with mock.patch.object(Norm, "logits_norm", affine_logits_norm):
        return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
