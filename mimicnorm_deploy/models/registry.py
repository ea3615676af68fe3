"""Model registry: `create_model(name, norm=..., num_classes=..., in_chans=..., ...)`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from engines.errors import UserError
from mimicnorm_deploy.layers import get_norm

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    norm: str = "mimic",
    num_classes: int = 10,
    in_chans: int = 1,
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
) -> nn.Module:
    """Build a registered model; it takes [0, 1] pixels and normalizes them itself.

    `input_mean` / `input_std` default to 0 / 1 per channel (no normalization).
    """
    if name not in _MODELS:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    mean = input_mean if input_mean is not None else [0.0] * in_chans
    std = input_std if input_std is not None else [1.0] * in_chans
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"input_mean/input_std need {in_chans} values (one per input channel)")
    return _MODELS[name](norm=get_norm(norm), num_classes=num_classes, in_chans=in_chans, mean=mean, std=std)
