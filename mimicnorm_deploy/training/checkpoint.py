"""Checkpoints: a safetensors file whose header carries the JSON metadata needed to rebuild it.

safetensors, not pickle: a checkpoint from elsewhere can be loaded without running its code.
The metadata (architecture, norm, classes, input shape, normalization stats, epoch, metrics)
travels inside the same file, so the two can never drift apart.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engines.artifacts import atomic_path
from engines.errors import UserError
from engines.schemas import CHECKPOINT
from mimicnorm_deploy.training.models import create_model

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
        _METADATA_KEY: json.dumps({"schema": CHECKPOINT[0], "schema_version": CHECKPOINT[1], **asdict(meta)})
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
    try:
        document = json.loads(header[_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: checkpoint metadata is not valid JSON ({exc.msg} at character {exc.pos}); "
                        "re-run 'train' or 'freeze'") from None  # fmt: skip
    if not isinstance(document, dict):
        raise UserError(f"{p}: checkpoint metadata is a JSON {type(document).__name__}, not an object; re-run 'train'")
    if document.pop("schema", None) != CHECKPOINT[0] or document.pop("schema_version", None) != CHECKPOINT[1]:
        raise UserError(f"{p}: checkpoint schema not supported by this version; re-run 'train'")
    return _meta_from(document, p)


def _meta_from(document: dict[str, Any], p: Path) -> CheckpointMeta:
    """CheckpointMeta from parsed metadata, every field checked: it decides the model that is built."""
    names = [f.name for f in fields(CheckpointMeta)]
    unknown = sorted(set(document) - set(names))
    missing = [f.name for f in fields(CheckpointMeta) if f.name not in document and f.default is MISSING
               and f.default_factory is MISSING]  # fmt: skip
    if unknown or missing:
        raise UserError(f"{p}: checkpoint metadata has unknown fields {unknown} or lacks {missing}; re-run 'train'")

    def bad(name: str, expected: str) -> UserError:
        return UserError(f"{p}: checkpoint metadata '{name}' is {document[name]!r}, not {expected}; re-run 'train'")

    for name in ("arch", "norm", "dataset", "stem"):
        if name in document and not isinstance(document[name], str):
            raise bad(name, "a string")
    for name in ("num_classes", "in_chans", "image_size"):
        if not _is_int(document[name]) or document[name] < 1:
            raise bad(name, "a positive integer")
    if "epoch" in document and (not _is_int(document["epoch"]) or document["epoch"] < 0):
        raise bad("epoch", "an integer >= 0")
    for name in ("input_mean", "input_std"):
        values = document[name]
        if not isinstance(values, list) or len(values) != document["in_chans"] or not all(map(_is_finite, values)):
            raise bad(name, f"a list of {document['in_chans']} numbers (one per input channel)")
    if not all(value > 0 for value in document["input_std"]):
        raise bad("input_std", "a list of positive numbers")
    classes = document["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of class names")
    if "metrics" in document and not isinstance(document["metrics"], dict):
        raise bad("metrics", "an object")
    if document.get("frozen_from") is not None and not isinstance(document["frozen_from"], str):
        raise bad("frozen_from", "a norm name or null")
    return CheckpointMeta(**document)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_checkpoint(path: str | os.PathLike, *, expect_arch: str | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the metadata and load its weights (strictly: every tensor must fit)."""
    meta = read_checkpoint_meta(path)
    if expect_arch is not None and meta.arch != expect_arch:
        raise UserError(f"{path}: checkpoint is for {meta.arch!r}, not {expect_arch!r}; pass the matching checkpoint")
    model = meta.build_model()
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: checkpoint tensors cannot be read ({exc}); re-run 'train' or copy it again") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(
            f"{path}: weights do not fit {meta.arch}/{meta.norm} ({first}); the file was made for another architecture"
        ) from None
    model.eval()
    return model, meta
