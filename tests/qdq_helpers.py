"""Test helpers over calibration's API: ranges then the Q/DQ model in one call, and Q/DQ counts."""

from __future__ import annotations

import os

import numpy as np
import onnx

from calibration.quantize import QuantizeConfig, QuantizeResult, write_qdq_model
from calibration.ranges import calibrate_ranges
from engines.onnx_model import QDQ_OPS


def quantize(
    model_path: str | os.PathLike, images: np.ndarray, output_path: str | os.PathLike, config: QuantizeConfig
) -> QuantizeResult:
    """What `calibrate` does for one ungated model: the ranges of `config.method` on `images`, then
    the Q/DQ model written with `config`'s encoding."""
    ranges = calibrate_ranges(model_path, images, config.method, percentile=config.percentile,
                              batch_size=config.batch_size)  # fmt: skip
    return write_qdq_model(model_path, ranges, output_path, per_channel=config.per_channel,
                           reduce_range=config.reduce_range, activations=config.activations,
                           placement=config.placement)  # fmt: skip


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """{"QuantizeLinear": n, "DequantizeLinear": m} for the main graph."""
    counts = dict.fromkeys(QDQ_OPS, 0)
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts
