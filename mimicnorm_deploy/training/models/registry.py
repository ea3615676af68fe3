"""Model registry: `create_model(name, norm=..., num_classes=..., in_chans=..., stem=...)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from engines.errors import UserError
from mimicnorm_deploy.training.layers import get_norm

# Every model records its stem as `stem_type` (and its Norm as `norm_spec`): freezing builds the
# plain twin with the same stem.
# "cifar": the stem keeps the input resolution (3x3 stride 1, no max-pool), for 28-32 px images;
# "imagenet": the stem downsamples (stride-2 conv, plus a max-pool where the family has one).
STEMS = ("cifar", "imagenet")


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    stems: tuple[str, ...]


_MODELS: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, stems: tuple[str, ...] = STEMS):
    """Register a builder under its function name; `stems` lists the stems it can be built with."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[build.__name__] = ModelEntry(build, stems)
        return build

    return register(fn) if fn is not None else register


def list_models(stem: str | None = None) -> list[str]:
    """Registered names, optionally only those that can be built with `stem`."""
    return sorted(name for name, entry in _MODELS.items() if stem is None or stem in entry.stems)


def create_model(
    name: str,
    *,
    norm: str = "mimic",
    num_classes: int = 10,
    in_chans: int = 1,
    stem: str = "cifar",
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
) -> nn.Module:
    """Build a registered model; it takes [0, 1] pixels and normalizes them itself.

    `input_mean` / `input_std` default to 0 / 1 per channel (no normalization).
    """
    if name not in _MODELS:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    entry = _MODELS[name]
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if stem not in entry.stems:
        raise UserError(f"{name} is built only with the {' or '.join(entry.stems)} stem, not {stem!r}")
    mean = input_mean if input_mean is not None else [0.0] * in_chans
    std = input_std if input_std is not None else [1.0] * in_chans
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"input_mean/input_std need {in_chans} values (one per input channel)")
    return entry.build(norm=get_norm(norm), num_classes=num_classes, in_chans=in_chans, stem=stem, mean=mean, std=std)
