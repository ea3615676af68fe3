"""Checkpoints: a safetensors file whose header carries the JSON metadata needed to rebuild it.

safetensors, not pickle: a checkpoint from elsewhere can be loaded without running its code.
The metadata (architecture, norm, classes, input shape, normalization stats, epoch, metrics)
travels inside the same file, so the two can never drift apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engines.artifacts import atomic_path
from engines.errors import UserError
from mimicnorm_deploy.training.models import create_model

CHECKPOINT_SCHEMA = "mimicnorm-deploy/checkpoint"
CHECKPOINT_VERSION = 1
_METADATA_KEY = "mimicnorm_deploy"
# The model's input and output names in every engine built from it (ONNX export, torch backend),
# so one set of feeds runs on any of them.
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass
class CheckpointMeta:
    arch: str
    norm: str
    num_classes: int
    in_chans: int
    image_size: int
    input_mean: list[float]
    input_std: list[float]
    classes: list[str]
    dataset: str
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    # For frozen checkpoints: the norm the model was trained with (its own norm is then "none").
    frozen_from: str | None = None
    stem: str = "cifar"  # see models/registry.py: "cifar" keeps the resolution, "imagenet" downsamples

    def build_model(self) -> nn.Module:
        return create_model(
            self.arch,
            norm=self.norm,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            stem=self.stem,
            input_mean=self.input_mean,
            input_std=self.input_std,
        )


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> Path:
    header = {
        _METADATA_KEY: json.dumps({"schema": CHECKPOINT_SCHEMA, "schema_version": CHECKPOINT_VERSION, **asdict(meta)})
    }
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def read_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such checkpoint; run 'mimicnorm-deploy train' first or fix the path")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{p}: not a safetensors checkpoint ({exc}); pass a file written by 'train' or 'freeze'"
        ) from None
    if _METADATA_KEY not in header:
        raise UserError(f"{p}: safetensors file without mimicnorm-deploy metadata; pass a file written by 'train'")
    document = json.loads(header[_METADATA_KEY])
    if document.pop("schema", None) != CHECKPOINT_SCHEMA or document.pop("schema_version", None) != CHECKPOINT_VERSION:
        raise UserError(f"{p}: checkpoint schema not supported by this version; re-run 'train'")
    return CheckpointMeta(**document)


def load_checkpoint(path: str | os.PathLike, *, expect_arch: str | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the metadata and load its weights (strictly: every tensor must fit)."""
    meta = read_checkpoint_meta(path)
    if expect_arch is not None and meta.arch != expect_arch:
        raise UserError(f"{path}: checkpoint is for {meta.arch!r}, not {expect_arch!r}; pass the matching checkpoint")
    model = meta.build_model()
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(
            f"{path}: weights do not fit {meta.arch}/{meta.norm} ({first}); the file was made for another architecture"
        ) from None
    model.eval()
    return model, meta
