"""Normalization as a pluggable factory, and the small blocks every model family is built from.

One model definition serves every normalization (timm style): a family asks its `Norm` for the
pieces (conv bias or not, a BatchNorm2d or nothing after each conv, a residual scalar or
nothing, a last BN on the logits or nothing) and never branches on the norm's name itself.

- `mimic`: MimicNorm as its authors implemented it (REFERENCE.md section 1): conv bias (init 0),
  weights N(0, 2/fan_in), weight centring after construction and after every optimizer step,
  residual scalars 1.2**m / k, BatchNorm1d(num_classes, affine=False) on the logits.
- `bn`: the baseline twin, conv without bias + BatchNorm2d after each conv.
- `none`: plain conv+bias, no normalization at all. It is also the shape of every *frozen* model:
  freezing maps any norm onto this one (see freeze.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engines.errors import UserError


@dataclass(frozen=True)
class Norm:
    name: str
    conv_bias: bool
    batchnorm2d: bool
    residual_scalar: bool
    logits_bn: bool
    # Convs with fan-in (in * kh * kw / groups) at or below this are not centred: the authors'
    # CIFAR script skips the RGB stem (fan-in 27); a 1-channel 3x3 stem has fan-in 9.
    # None means this norm does not centre weights at all.
    centre_min_fan_in: int | None

    def norm2d(self, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels) if self.batchnorm2d else nn.Identity()

    def scalar(self, init: float) -> nn.Module:
        return ResidualScalar(init) if self.residual_scalar else nn.Identity()

    def logits_norm(self, num_classes: int) -> nn.Module:
        return nn.BatchNorm1d(num_classes, affine=False) if self.logits_bn else nn.Identity()


NORMS: dict[str, Norm] = {
    norm.name: norm
    for norm in (
        Norm("mimic", conv_bias=True, batchnorm2d=False, residual_scalar=True, logits_bn=True, centre_min_fan_in=50),
        Norm("bn", conv_bias=False, batchnorm2d=True, residual_scalar=False, logits_bn=False, centre_min_fan_in=None),
        Norm("none", conv_bias=True, batchnorm2d=False, residual_scalar=False, logits_bn=False, centre_min_fan_in=None),
    )
}


def get_norm(name: str) -> Norm:
    try:
        return NORMS[name]
    except KeyError:
        raise UserError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}") from None


class ResidualScalar(nn.Module):
    """A learnable scalar multiplying a residual branch (MimicNorm init: 1.2**m / k)."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def residual_scalar_init(convs_in_branch: int, block_index: int) -> float:
    """1.2**m / k: m convs in the branch, k the 1-based index of the block over the network."""
    return 1.2**convs_in_branch / block_index


class ConvNorm(nn.Module):
    """Conv2d followed by the norm's 2-d normalization (BatchNorm2d or nothing).

    Every conv of every family is one of these, so module names are the same under every norm
    and freezing can map a trained model onto its `none` twin name by name.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, norm: Norm, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=norm.conv_bias
        )
        self.norm = norm.norm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class InputNorm(nn.Module):
    """(x - mean) / std per channel, as one scale-shift so it exports as Mul + Add.

    Models take pixels scaled to [0, 1]; the dataset statistics live here (and in the
    checkpoint), so a deployed engine needs no preprocessing beyond `/ 255`.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def init_conv_(conv: nn.Conv2d, norm: Norm, variance_gain: float = 2.0) -> None:
    """MimicNorm: N(0, gain/fan_in), bias 0. BN twin: Kaiming normal (fan_out), as torchvision."""
    if norm.centre_min_fan_in is not None:
        fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(variance_gain / fan_in))
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_model_(model: nn.Module, norm: Norm, variance_gain: float = 2.0) -> None:
    """Initialise every conv for `norm`; MimicNorm also centres the weights once, at construction."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            init_conv_(module, norm, variance_gain)
    if norm.centre_min_fan_in is not None:
        centre_weights_(centred_convs(model, norm.centre_min_fan_in))


def centred_convs(model: nn.Module, min_fan_in: int) -> list[nn.Conv2d]:
    """The convs MimicNorm centres: groups == 1 (depthwise left alone), fan-in above min_fan_in."""
    selected = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            if fan_in > min_fan_in:
                selected.append(module)
    return selected


@torch.no_grad()
def centre_weights_(convs: list[nn.Conv2d]) -> None:
    """W <- W - mean(W over (in, kh, kw)), per output channel."""
    for conv in convs:
        conv.weight.sub_(conv.weight.mean(dim=(1, 2, 3), keepdim=True))


def attach_weight_centring(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Centre `model`'s weights after every optimizer step; return the hook's remover.

    A step post-hook, not a call in the training loop, so no loop (AMP's scaler skipping a step,
    DDP, a user's own loop) can forget it. The momentum buffer is not projected, as in the
    authors' code. Models whose norm does not centre get a no-op remover.
    """
    min_fan_in = model.norm_spec.centre_min_fan_in
    if min_fan_in is None:
        return lambda: None
    convs = centred_convs(model, min_fan_in)
    handle = optimizer.register_step_post_hook(lambda *_: centre_weights_(convs))
    return handle.remove
