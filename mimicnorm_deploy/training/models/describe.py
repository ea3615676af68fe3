"""Parameter and MAC counts of every registered model, for `mimicnorm-deploy models`."""

from __future__ import annotations

import torch
from torch import nn

from mimicnorm_deploy.training.models.registry import create_model, list_models


def count_macs(model: nn.Module, input_size: int, in_chans: int) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one image (forward hooks, eval mode).

    Only conv/linear work is counted: BN, activations and pools are a rounding error next to it
    and fold or fuse away in a deployed engine.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * kernel

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]  # fmt: skip
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, in_chans, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return total


def describe_models(
    input_size: int, in_chans: int, num_classes: int, *, norm: str = "none", stem: str = "cifar"
) -> list[dict]:
    """One row per model buildable with `stem`: name, stem, norm, params, MACs at `input_size`.

    `norm` defaults to `none`, the shape every model has once frozen (what a deployment runs);
    MACs do not depend on the norm, parameters do (BN affine parameters, biases, scalars).
    """
    rows = []
    for name in list_models(stem):
        model = create_model(name, norm=norm, num_classes=num_classes, in_chans=in_chans, stem=stem)
        rows.append({
            "name": name, "stem": stem, "norm": norm,
            "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, input_size, in_chans),
        })  # fmt: skip
    return rows
