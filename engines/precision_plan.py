"""The precision plan JSON (`<model>.plan.json`): which layers run in INT8 and which in high precision.

What a mixed-precision engine is built from, so it lives in `engines` (numpy only): the TensorRT
backend reads it on a Jetson that has no onnxruntime. `calibration.plan` makes plans (sensitivity,
accuracy gate) and writes them through this module.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines.artifacts import read_json, write_json
from engines.errors import UserError
from engines.schemas import PRECISION_PLAN

# With no loss seen on N images, the 95 % upper confidence bound of the loss rate is about 3/N
# (the "rule of three", Hanley & Lippman-Hand 1983): the finest top-1 gate N held-out images certify.
RULE_OF_THREE = 3.0
HIGH_PRECISIONS = ("fp16", "fp32")


@dataclass
class Gate:
    """What the planned model must keep on the held-out images. At least one bound is required."""

    max_top1_drop: float | None = None  # fraction: 0.01 = one point of top-1 (labels) or of agreement with FP32
    min_logits_sqnr_db: float | None = None

    def check(self, holdout_images: int | None = None) -> None:
        """Raise UserError for an empty or malformed gate, or a top-1 bound `holdout_images` cannot resolve."""
        if self.max_top1_drop is None and self.min_logits_sqnr_db is None:
            raise UserError("accuracy gate is empty; give a maximum top-1 drop and/or a minimum logits SQNR")
        if self.max_top1_drop is not None and not 0 <= self.max_top1_drop <= 1:
            raise UserError(f"maximum top-1 drop {self.max_top1_drop} is not a fraction in [0, 1]; pass e.g. 0.01")
        if self.max_top1_drop is None or holdout_images is None:
            return
        needed = holdout_needed(self.max_top1_drop)
        if holdout_images < needed:
            # In points, rounded up: a gate at the rounded-down figure would be refused again.
            finest = math.ceil(round(100 * gate_resolution(holdout_images) * 100, 6)) / 100
            raise UserError(
                f"a top-1 gate of {100 * self.max_top1_drop:.2f} points needs at least {needed} held-out images "
                f"(3 / gate: with no image lost, {holdout_images} images only bound the loss at "
                f"{finest:.2f} points); hold out {needed} images or more, or gate at {finest:.2f} points "
                "or more, or by logits SQNR"
            )


def gate_resolution(holdout_images: int) -> float:
    """The smallest top-1 drop (a fraction) a hold-out of this size can certify: 3 / N."""
    return RULE_OF_THREE / holdout_images


def holdout_needed(max_top1_drop: float) -> int:
    """Held-out images a top-1 gate of `max_top1_drop` (a fraction) needs: ceil(3 / gate)."""
    if max_top1_drop <= 0:
        raise UserError("a top-1 gate of 0 points cannot be certified on any hold-out; pass a positive bound")
    return math.ceil(round(RULE_OF_THREE / max_top1_drop, 6))


@dataclass
class GateResult:
    top1_drop: float  # (images_lost - images_gained) / images: the paired top-1 difference against FP32
    logits_sqnr_db: float
    passed: bool
    images: int = 0  # held-out images measured
    # With labels: images FP32 classifies right and this model wrong (lost), and the reverse (gained).
    # Without: images whose top-1 class changed (lost); nothing counts as gained.
    images_lost: int = 0
    images_gained: int = 0


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    logits_sqnr_db: float  # with only this layer in INT8; lower = more sensitive


@dataclass
class Move:
    node: str
    to: str  # the high precision type
    reason: str


@dataclass
class PrecisionPlan:
    model_sha256: str
    calibration_sha256: str  # of the images the ranges were calibrated on
    holdout_sha256: str  # of the held-out images the gate was measured on
    method: str  # activation range calibration (calibration.ranges)
    per_channel: bool
    reduce_range: bool
    activations: str  # INT8 activation encoding (calibration.quantize.ACTIVATION_ENCODINGS)
    placement: str  # where the Q/DQ pairs go (calibration.quantize.PLACEMENTS)
    high_precision: str  # "fp32" (CPU targets) or "fp16" (GPU targets)
    gate: Gate
    layers: dict[str, str]  # every quantizable layer's node name -> "int8" or the high precision type
    sensitivity: list[LayerSensitivity]  # graph order
    moved: list[Move] = field(default_factory=list)  # in the order the planner moved them
    result: GateResult | None = None  # the gate measured on the final plan
    holdout_images: int = 0  # images the gate was measured on
    gate_resolution: float | None = None  # smallest top-1 drop (fraction) they certify, 3 / N; None: SQNR-only gate

    @property
    def high_precision_nodes(self) -> list[str]:
        return [node for node, precision in self.layers.items() if precision != "int8"]

    @property
    def qdq_options(self) -> dict:
        return qdq_options(self.per_channel, self.reduce_range, self.activations, self.placement)

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, *PRECISION_PLAN, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrecisionPlan:
        document = read_json(path, *PRECISION_PLAN)
        fields = {name: document[name] for name in cls.__dataclass_fields__}
        fields["gate"] = Gate(**fields["gate"])
        fields["sensitivity"] = [LayerSensitivity(**s) for s in fields["sensitivity"]]
        fields["moved"] = [Move(**m) for m in fields["moved"]]
        if fields["result"] is not None:
            result = fields["result"]
            # JSON has no infinity: an SQNR of identical logits is written as null.
            sqnr = result["logits_sqnr_db"]
            fields["result"] = GateResult(**{**result, "logits_sqnr_db": float("inf") if sqnr is None else sqnr})
        return cls(**fields)


def qdq_options(per_channel: bool, reduce_range: bool, activations: str, placement: str) -> dict:
    """How calibration.quantize.write_qdq_model encodes the INT8 layers, as its keyword arguments."""
    return {"per_channel": per_channel, "reduce_range": reduce_range, "activations": activations,
            "placement": placement}  # fmt: skip
