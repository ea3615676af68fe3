"""Quality metrics for quantized models (numpy only): SQNR, top-1 agreement, accuracy, weight-range spread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from engines.onnx_model import load_onnx


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - test)^2); inf when equal."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, test {test.shape}")
    return sqnr_from_sums(float(np.sum(reference**2)), float(np.sum((reference - test) ** 2)))


def sqnr_from_sums(signal: float, noise: float) -> float:
    """10 log10(signal / noise) from sums of squares accumulated elsewhere (e.g. batch by batch)."""
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def top1_agreement(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max class is the same in both (N x classes) arrays."""
    reference_logits, logits = np.asarray(reference_logits), np.asarray(logits)
    if reference_logits.shape != logits.shape or reference_logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"need two non-empty N x classes arrays, got {reference_logits.shape} and {logits.shape}")
    return float(np.mean(reference_logits.argmax(axis=1) == logits.argmax(axis=1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max class equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (len(logits),) or len(logits) == 0:
        raise ValueError(f"need non-empty N x classes logits and N labels, got {logits.shape} and {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))


@dataclass
class LayerWeightSpread:
    """How unevenly one layer's weight range is spread over its output channels.

    Per-tensor INT8 sizes one scale for the widest channel; a channel whose range is `spread`
    times smaller is left with about 127/spread quantization levels.
    """

    name: str  # the weight initializer's name
    node: str  # the layer that reads it
    op_type: str
    out_channels: int
    max_channel_range: float  # largest max |w| over one output channel
    median_channel_range: float
    spread: float  # max_channel_range / median_channel_range; inf when over half the channels are all zeros


def weight_range_spread(model: onnx.ModelProto | str | Path) -> list[LayerWeightSpread]:
    """Spread of every Conv, Gemm and MatMul weight initializer of an FP32 model, in graph order."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    initializers = {init.name: init for init in model.graph.initializer}
    spreads = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None:
            continue  # both operands are activations: no weight to quantize
        array = numpy_helper.to_array(weight)
        if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2:
            continue
        # Conv: (out, in/groups, k...). Gemm: B is (out, in) with transB=1, (in, out) otherwise.
        # MatMul: B is (..., in, out); each output channel is a column.
        if node.op_type == "Conv" or (node.op_type == "Gemm" and _attribute(node, "transB", 0)):
            out_axis = 0
        else:
            out_axis = array.ndim - 1
        channel_ranges = np.moveaxis(np.abs(array.astype(np.float64)), out_axis, 0).reshape(array.shape[out_axis], -1)
        channel_ranges = channel_ranges.max(axis=1)
        largest, median = float(channel_ranges.max()), float(np.median(channel_ranges))
        spreads.append(
            LayerWeightSpread(
                name=weight.name,
                node=node.name,
                op_type=node.op_type,
                out_channels=int(array.shape[out_axis]),
                max_channel_range=largest,
                median_channel_range=median,
                spread=_ratio(largest, median),
            )
        )
    return spreads


def worst_spread(spreads: list[LayerWeightSpread]) -> LayerWeightSpread:
    """The layer with the largest spread: the one that limits per-tensor INT8."""
    if not spreads:
        raise ValueError("no layers: the model has no Conv/Gemm/MatMul weights")
    return max(spreads, key=lambda layer: layer.spread)


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def _ratio(largest: float, median: float) -> float:
    if median > 0:
        return largest / median
    return float("inf") if largest > 0 else 1.0
