"""Freezing: fold every training-time construct into plain conv+bias / Linear kernels.

A trained model of any norm is mapped, name by name, onto its `none` twin (same topology, conv
with bias, no BN, no residual scalars, no logits BN):
- MimicNorm: weights re-centred exactly (in float64), each residual scalar multiplied into the
  conv it follows (weights and bias; modules declare which in `scalar_targets`, so blocks with
  several scalars, e.g. a projection shortcut's, need no special case), the logits BatchNorm1d
  folded into the Linear.
- BN twins: classic BatchNorm2d folding into the preceding conv.
- Hidden Linear layers (a classifier with hidden layers) carry no norm and are copied unchanged.
- Input normalization stays one scale-shift (Mul + Add in ONNX): every stem here zero-pads its
  input, and zero padding of normalized pixels is not zero padding of raw pixels, so folding it
  into the stem would be wrong at the borders. An input BatchNorm (bn-revisited-input-bn) folds
  into that scale-shift instead.
Folding is by module name and never looks at the wiring, so concatenations, channel splits and
shuffles (ShuffleNetV2, SqueezeNet) need no rule: the plain twin has the same forward.
The folding math is pure functions on tensors, done in float64 and cast back to float32. Every
fold is checked against the trained model before anything is written; a failing fold is refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.errors import UserError
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from mimicnorm_deploy.training.layers import (
    ConvNorm,
    InputBatchNorm,
    InputNorm,
    ResidualScalar,
    centred_convs,
    get_norm,
)

Tensor = torch.Tensor

# Equivalence tolerance on logits: |frozen - trained| <= ATOL + RTOL * max|trained|. float32
# reordering through ~20 layers moves logits by ~1e-6 relative; a wrong fold moves them by O(1).
ATOL, RTOL = 1e-4, 1e-4
# Centred weights drift from zero mean only by float32 rounding between optimizer steps.
CENTRING_DRIFT = 1e-5


# --- Pure folding functions ---------------------------------------------------------------------


def centre_weight(weight: Tensor) -> Tensor:
    """Subtract each output channel's mean over all other axes."""
    return weight - weight.mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def fold_batchnorm(
    weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float,
    gamma: Tensor | None = None, beta: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Fold y = gamma * (Wx + b - mean) / sqrt(var + eps) + beta into (W', b').

    Works for conv (out, in, kh, kw) and Linear (out, in) weights: the scale is per output row.
    BatchNorm1d(affine=False) is gamma = 1, beta = 0.
    """
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    shifted = (bias - mean) * scale
    if beta is not None:
        shifted = shifted + beta
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), shifted


def fold_scalar(weight: Tensor, bias: Tensor, scalar: Tensor) -> tuple[Tensor, Tensor]:
    """s * (Wx + b) = (sW) x + s b: a residual scalar into the last conv of its branch."""
    return weight * scalar, bias * scalar


# --- Model-level folding ------------------------------------------------------------------------


@dataclass
class EquivalenceReport:
    check_images: int
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top1_agreement: float
    # Samples whose top-2 logit margin is within the tolerance may legitimately flip; they are
    # excluded from the agreement requirement and counted here.
    near_ties: int
    passed: bool


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def fold_to_plain(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of `model`'s `none` twin, with every norm construct folded in."""
    handled: set[int] = set()  # ids of the modules folded in; any other module with parameters is refused
    convs = _folded_convs(model, handled)
    _fold_residual_scalars(model, convs, handled)
    linears = _plain_linears(model, handled)
    state = {f"{name}.conv.{part}": t for name, (w, b) in convs.items() for part, t in (("weight", w), ("bias", b))}
    state.update({f"{name}.{part}": t for name, (w, b) in linears.items() for part, t in (("weight", w), ("bias", b))})
    state["fc.weight"], state["fc.bias"] = _folded_fc(model, handled)
    state["input_norm.scale"], state["input_norm.shift"] = _folded_input_norm(model, handled)
    _check_all_folded(model, handled)
    return {k: v.float().contiguous() for k, v in state.items()}


def _folded_convs(model: nn.Module, handled: set[int]) -> dict[str, list[Tensor]]:
    """Each ConvNorm's conv with its norm folded in (float64 [weight, bias]), its weights
    re-centred where MimicNorm centres them."""
    norm = model.norm_spec
    centred = set()
    if norm.centre_min_fan_in is not None:
        centred = set(map(id, centred_convs(model, norm.centre_min_fan_in)))
    folded: dict[str, list[Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ConvNorm):
            folded[name] = _fold_conv_norm(name, module, id(module.conv) in centred, handled)
    return folded


def _fold_conv_norm(name: str, module: ConvNorm, centred: bool, handled: set[int]) -> list[Tensor]:
    conv = module.conv
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels).double()
    if centred:
        drift = float(weight.mean(dim=(1, 2, 3)).abs().max())
        if drift > CENTRING_DRIFT:
            raise UserError(
                f"cannot freeze: {name}.conv weights are not zero-mean (max |channel mean| {drift:.2g}); "
                "the checkpoint was not trained with MimicNorm weight centring"
            )
        weight = centre_weight(weight)
    if isinstance(module.norm, nn.BatchNorm2d):
        bn = module.norm
        weight, bias = fold_batchnorm(weight, bias, bn.running_mean.double(), bn.running_var.double(), bn.eps,
                                      bn.weight.detach().double(), bn.bias.detach().double())  # fmt: skip
        handled.add(id(bn))
    elif not isinstance(module.norm, nn.Identity):
        raise UserError(f"cannot freeze {name}.norm ({type(module.norm).__name__}): no folding rule for it")
    handled.add(id(conv))
    return [weight, bias]


def _fold_residual_scalars(model: nn.Module, convs: dict[str, list[Tensor]], handled: set[int]) -> None:
    """Each residual branch's learnable scalar folded into the conv it scales (`scalar_targets`)."""
    for name, module in model.named_modules():
        for scalar_attr, conv_attr in getattr(module, "scalar_targets", {}).items():
            scalar = getattr(module, scalar_attr, None)
            if isinstance(scalar, ResidualScalar):
                target = _join(name, conv_attr)
                convs[target] = list(fold_scalar(*convs[target], scalar.scale.detach().double()))
                handled.add(id(scalar))


def _plain_linears(model: nn.Module, handled: set[int]) -> dict[str, list[Tensor]]:
    """Linear layers other than the classifier, kept as they are (float64 [weight, bias])."""
    linears: dict[str, list[Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not model.fc:
            linears[name] = [module.weight.detach().double(), module.bias.detach().double()]
            handled.add(id(module))
    return linears


def _folded_fc(model: nn.Module, handled: set[int]) -> tuple[Tensor, Tensor]:
    """The classifier with the affine-free logits BatchNorm1d folded in."""
    fc, logits_norm = model.fc, model.logits_norm
    fc_weight, fc_bias = fc.weight.detach().double(), fc.bias.detach().double()
    if isinstance(logits_norm, nn.BatchNorm1d):
        fc_weight, fc_bias = fold_batchnorm(fc_weight, fc_bias, logits_norm.running_mean.double(),
                                            logits_norm.running_var.double(), logits_norm.eps)  # fmt: skip
        handled.add(id(logits_norm))
    handled.add(id(fc))
    return fc_weight, fc_bias


def _folded_input_norm(model: nn.Module, handled: set[int]) -> tuple[Tensor, Tensor]:
    """The input normalization's scale and shift, with an input BatchNorm folded in."""
    input_norm = model.input_norm
    scale, shift = input_norm.scale.detach().double(), input_norm.shift.detach().double()
    if isinstance(input_norm, InputBatchNorm):
        bn = input_norm.bn
        channels = scale.shape
        scale, shift = fold_batchnorm(scale.flatten(), shift.flatten(), bn.running_mean.double(),
                                      bn.running_var.double(), bn.eps, bn.weight.detach().double(),
                                      bn.bias.detach().double())  # fmt: skip
        scale, shift = scale.view(channels), shift.view(channels)
        handled.add(id(bn))
    return scale, shift


def _check_all_folded(model: nn.Module, handled: set[int]) -> None:
    unhandled = [
        name for name, m in model.named_modules()
        if id(m) not in handled and any(True for _ in m.parameters(recurse=False))
        and not isinstance(m, InputNorm)
    ]  # fmt: skip
    if unhandled:
        raise UserError(f"cannot freeze: no folding rule for {', '.join(unhandled)}")


@torch.inference_mode()
def check_equivalence(reference: nn.Module, frozen: nn.Module, images: Tensor) -> EquivalenceReport:
    reference.eval()
    frozen.eval()
    ref = reference(images).double()
    out = frozen(images).double()
    max_abs_logit = float(ref.abs().max())
    tolerance = ATOL + RTOL * max_abs_logit
    max_abs_diff = float((ref - out).abs().max())
    top2 = ref.topk(2, dim=1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    agree = ref.argmax(1) == out.argmax(1)
    agreement = float(agree[decisive].float().mean()) if decisive.any() else 1.0
    return EquivalenceReport(
        check_images=len(images), max_abs_diff=max_abs_diff, max_abs_logit=max_abs_logit, tolerance=tolerance,
        top1_agreement=agreement, near_ties=int((~decisive).sum()),
        passed=max_abs_diff <= tolerance and agreement == 1.0,
    )  # fmt: skip


def freeze_model(
    model: nn.Module, meta: CheckpointMeta, check_images: Tensor
) -> tuple[nn.Module, CheckpointMeta, EquivalenceReport]:
    """Fold `model` into its plain twin and prove it equal on `check_images`; refuse otherwise."""
    if meta.stem != model.stem_type:
        raise UserError(f"checkpoint metadata says stem {meta.stem!r} but the model has {model.stem_type!r}")
    frozen_meta = CheckpointMeta(**{**asdict(meta), "norm": get_norm("none").name, "frozen_from": meta.norm})
    frozen = frozen_meta.build_model()
    frozen.load_state_dict(fold_to_plain(model), strict=True)
    frozen.eval()
    report = check_equivalence(model, frozen.to(memory_format=torch.contiguous_format), check_images)
    if not report.passed:
        raise UserError(
            f"fold refused: frozen model differs from the trained one (max |diff| {report.max_abs_diff:.3g} > "
            f"{report.tolerance:.3g} or top-1 agreement {100 * report.top1_agreement:.2f}% < 100%); "
            "this is a bug in the folding rules for this model, please report it"
        )
    frozen_meta.metrics = {**meta.metrics, "equivalence": asdict(report)}
    return frozen, frozen_meta, report


def default_check_images(meta: CheckpointMeta, count: int = 64, seed: int = 0) -> Tensor:
    """Random [0, 1] images of the model's input shape: folding is algebra, any input proves it."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, meta.in_chans, meta.image_size, meta.image_size, generator=generator)


def freeze_checkpoint(
    checkpoint: str | os.PathLike, out_path: str | os.PathLike, check_images: np.ndarray | Tensor | None = None
) -> EquivalenceReport:
    """Freeze a trained checkpoint into `out_path` (written only if the equivalence check passes).
    `check_images` (N, C, H, W float32, numpy or torch) default to random images of the model's shape."""
    model, meta = load_checkpoint(checkpoint)
    if meta.frozen_from is not None:
        raise UserError(f"{checkpoint}: already frozen (from {meta.frozen_from}); pass the trained checkpoint")
    if check_images is None:
        images = default_check_images(meta)
    else:
        images = torch.as_tensor(check_images)
    frozen, frozen_meta, report = freeze_model(model, meta, images)
    save_checkpoint(Path(out_path), frozen, frozen_meta)
    return report
