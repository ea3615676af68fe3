"""Normalization as a pluggable factory, and the small blocks every model family is built from.

One model definition serves every normalization (timm style): a family asks its `Norm` for the
pieces (conv bias or not, a BatchNorm2d or nothing after each conv, a residual scalar or
nothing, a last BN on the logits or nothing) and never branches on the norm's name itself.

- `mimic`: MimicNorm as its authors implemented it (docs/BACKGROUND.md section 1): conv bias (init 0),
  weights N(0, gain/fan_in) with the family's gain (`init_model_`), weight centring after
  construction and after every optimizer step, residual scalars 1.2**m / k,
  BatchNorm1d(num_classes, affine=False) on the logits.
- `bn`: the baseline twin, conv without bias + BatchNorm2d after each conv.
- `bn-revisited`: the stronger BN baseline of Davis & Frank (docs/BACKGROUND.md section 2): BN gamma
  initialised to 0.1, gamma's learning rate divided by 100 and no weight decay on 1-D parameters
  (both through `param_groups`). `bn-revisited-input-bn` adds their BatchNorm on the input.
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
    bn_gamma_init: float = 1.0
    # The optimizer rules of a norm, applied by `param_groups`: BN gammas train at lr / divisor,
    # and 1-D parameters (gammas, betas, biases, scalars) get weight decay only if this is True.
    gamma_lr_divisor: float = 1.0
    weight_decay_1d: bool = True
    # A BatchNorm2d on the (already mean/std-normalized) input, with this gamma init; None: none.
    input_bn_gamma_init: float | None = None

    def norm2d(self, channels: int) -> nn.Module:
        if not self.batchnorm2d:
            return nn.Identity()
        bn = nn.BatchNorm2d(channels)
        nn.init.constant_(bn.weight, self.bn_gamma_init)
        return bn

    def scalar(self, init: float) -> nn.Module:
        return ResidualScalar(init) if self.residual_scalar else nn.Identity()

    def logits_norm(self, num_classes: int) -> nn.Module:
        return nn.BatchNorm1d(num_classes, affine=False) if self.logits_bn else nn.Identity()

    def input_norm(self, mean: list[float], std: list[float]) -> InputNorm:
        if self.input_bn_gamma_init is None:
            return InputNorm(mean, std)
        return InputBatchNorm(mean, std, self.input_bn_gamma_init)


_REVISITED = dict(
    conv_bias=False, batchnorm2d=True, residual_scalar=False, logits_bn=False, centre_min_fan_in=None,
    bn_gamma_init=0.1, gamma_lr_divisor=100.0, weight_decay_1d=False,
)  # fmt: skip

NORMS: dict[str, Norm] = {
    norm.name: norm
    for norm in (
        Norm("mimic", conv_bias=True, batchnorm2d=False, residual_scalar=True, logits_bn=True, centre_min_fan_in=50),
        Norm("bn", conv_bias=False, batchnorm2d=True, residual_scalar=False, logits_bn=False, centre_min_fan_in=None),
        Norm("bn-revisited", **_REVISITED),
        # Davis & Frank's input BN: gamma init 0.1 * 0.58, beta frozen at 0.
        Norm("bn-revisited-input-bn", **_REVISITED, input_bn_gamma_init=0.1 * 0.58),
        Norm("none", conv_bias=True, batchnorm2d=False, residual_scalar=False, logits_bn=False, centre_min_fan_in=None),
    )
}


def get_norm(name: str) -> Norm:
    try:
        return NORMS[name]
    except KeyError:
        raise UserError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}") from None


class ResidualScalar(nn.Module):
    """A learnable scalar multiplying a residual branch (MimicNorm init: 1.2**m / k).

    It must directly follow a conv (nothing in between), so freezing can multiply it into that
    conv's weights and bias: the module holding it declares `scalar_targets`, a mapping from the
    scalar's attribute name to the conv's (see freeze.py). Models apply it with `scaled_conv`,
    which does the same multiplication during training.
    """

    def __init__(self, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def conv_forward(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """s * conv(x), computed as conv(x; s * W, s * b) so autograd keeps less (see _ScaledConv2d)."""
        return _ScaledConv2d.apply(x, conv.weight, conv.bias, self.scale, conv.stride, conv.padding, conv.dilation,
                                   conv.groups)  # fmt: skip


class _ScaledConv2d(torch.autograd.Function):
    """conv2d(x, s * W, s * b) that keeps only x (and the parameters) for backward.

    Written as `s * conv(x)`, autograd keeps the conv's whole output for the gradient of s; written
    as a conv with scaled weights, it keeps the scaled copy of W. Here backward recomputes s * W
    (a cheap weight op) and gets every gradient from one convolution_backward, with
    dL/ds = <dL/d(sW), W> + <dL/d(sb), b>, dL/dW = s dL/d(sW), dL/db = s dL/d(sb): the
    straightforward formulation's values up to float rounding. Under autocast the forward's conv
    runs in the autocast dtype, and backward casts x and s * W to the gradient's dtype, as
    autocast's own casts would.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, bias, scale)
        ctx.conv_args = (stride, padding, dilation, groups)
        return nn.functional.conv2d(x, weight * scale, bias * scale, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, bias, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        grad_x, grad_scaled_weight, grad_scaled_bias = torch.ops.aten.convolution_backward(
            grad, x.to(grad.dtype), (weight * scale).to(grad.dtype), [bias.shape[0]], stride, padding, dilation,
            False, [0, 0], groups, [ctx.needs_input_grad[0], True, True],
        )  # fmt: skip
        grad_scaled_weight, grad_scaled_bias = grad_scaled_weight.to(weight.dtype), grad_scaled_bias.to(bias.dtype)
        grad_scale = (grad_scaled_weight * weight).sum() + (grad_scaled_bias * bias).sum()
        return grad_x, grad_scaled_weight * scale, grad_scaled_bias * scale, grad_scale, None, None, None, None


class ReluGlobalAvgPool(nn.Module):
    """ReLU, then the mean over H and W: (N, C, H, W) -> (N, C), keeping a 1-byte sign mask for backward.

    Written as nn.ReLU then nn.AdaptiveAvgPool2d, autograd keeps the ReLU's whole float output,
    and only for its sign (the pool's backward needs no values). A head conv that feeds the pool
    alone ends MobileNetV2 and ShuffleNetV2 under every norm, so this cuts 3 of every 4 bytes of
    that tensor from both twins alike. The output and the gradient are those of the two-module
    form. Outside training (evaluation, freezing, export) it runs as the two modules would, so
    exported graphs keep their Relu and GlobalAveragePool.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _ReluGlobalAvgPool.apply(x)
        return _relu_global_avg_pool(x)


def _relu_global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.adaptive_avg_pool2d(nn.functional.relu(x), 1).flatten(1)


class _ReluGlobalAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return _relu_global_avg_pool(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        height, width = positive.shape[-2:]
        return (grad / (height * width))[:, :, None, None] * positive


def residual_scalar_init(convs_in_branch: int, block_index: int) -> float:
    """1.2**m / k: m convs in the branch, k the 1-based index of the block over the network."""
    return 1.2**convs_in_branch / block_index


def scaled_conv(conv: ConvNorm, scalar: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`scalar(conv(x))` for a ConvNorm followed by its norm's residual scalar (or nn.Identity).

    While training, a MimicNorm scalar after a conv with no BatchNorm2d folds into the conv's
    weights inside the forward (`ResidualScalar.conv_forward`), which saves one activation-sized
    tensor per branch. Without autograd (evaluation, tracing, counting MACs with forward hooks),
    and for anything else, it runs as written.
    """
    if torch.is_grad_enabled() and isinstance(scalar, ResidualScalar) and isinstance(conv.norm, nn.Identity):
        return scalar.conv_forward(conv.conv, x)
    return scalar(conv(x))


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


class InputBatchNorm(InputNorm):
    """Davis & Frank's input BN: a BatchNorm2d after the fixed scale-shift, beta frozen at 0.

    At inference it is one more per-channel affine map, so freezing folds it into the
    scale-shift and the frozen model has a plain InputNorm.
    """

    def __init__(self, mean: list[float], std: list[float], gamma_init: float) -> None:
        super().__init__(mean, std)
        self.bn = nn.BatchNorm2d(len(mean))
        nn.init.constant_(self.bn.weight, gamma_init)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(super().forward(x))


class NormClassifier(nn.Module):
    """Base of every model family: the contract that freezing and export rely on.

    `norm_spec` and `stem_type` say how the model was built (freezing builds its plain twin from
    them), `input_norm` maps [0, 1] pixels to normalized ones, and the logits come from a Linear
    `fc` followed by the norm's `logits_norm` (MimicNorm's affine-free BatchNorm1d, or nothing).
    """

    def __init__(self, norm: Norm, stem: str, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.norm_spec, self.stem_type = norm, stem
        self.input_norm = norm.input_norm(mean, std)

    def add_classifier(self, in_features: int, num_classes: int) -> None:
        self.fc = nn.Linear(in_features, num_classes)
        self.logits_norm = self.norm_spec.logits_norm(num_classes)


def init_conv_(conv: nn.Conv2d, norm: Norm, variance_gain: float = 2.0, min_in_per_group: int = 1) -> None:
    """MimicNorm: N(0, gain / (kh * kw * max(min_in_per_group, in / groups))), bias 0.
    BN twins: Kaiming normal (fan_out), as torchvision.

    The authors' lightweight nets floor the per-group fan-in (ShuffleNetV2 and SqueezeNet at 4,
    MobileNetV2 at 2) so depthwise convs (one input channel per group) do not start with huge weights.
    """
    if norm.centre_min_fan_in is not None:
        fan_in = max(min_in_per_group, conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(variance_gain / fan_in))
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_model_(model: nn.Module, norm: Norm, variance_gain: float = 2.0, min_in_per_group: int = 1) -> None:
    """Initialise every conv for `norm`; MimicNorm also centres the weights once, at construction."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            init_conv_(module, norm, variance_gain, min_in_per_group)
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


def param_groups(model: nn.Module, norm: Norm | str, lr: float, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups carrying `norm`'s learning-rate and weight-decay rules.

    Under `bn`, `mimic` and `none` every parameter gets `lr` and `weight_decay` (the authors'
    recipes); under `bn-revisited` BN gammas get lr / 100 and no 1-D parameter is decayed. Each
    group has a "name" for logs. Frozen parameters (the input BN's beta) are left out.
    """
    norm = get_norm(norm) if isinstance(norm, str) else norm
    gammas = {id(m.weight) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}
    decay_1d = weight_decay if norm.weight_decay_1d else 0.0
    groups = {
        "weights": {"params": [], "lr": lr, "weight_decay": weight_decay},
        "bn_gammas": {"params": [], "lr": lr / norm.gamma_lr_divisor, "weight_decay": decay_1d},
        "other_1d": {"params": [], "lr": lr, "weight_decay": decay_1d},
    }
    for param in model.parameters():
        if not param.requires_grad:
            continue
        kind = "bn_gammas" if id(param) in gammas else "weights" if param.dim() > 1 else "other_1d"
        groups[kind]["params"].append(param)
    return [{"name": name, **group} for name, group in groups.items() if group["params"]]
