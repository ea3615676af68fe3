"""Pure FP16 ONNX models (weights and activations) for GPU targets, with an overflow check first.

TensorRT 11 takes FP16 from the ONNX tensor types (there is no FP16 builder flag any more,
docs/TENSORRT.md section 2), so the model itself must be FP16. The conversion is ONNX Runtime's
float16 converter (`onnxruntime.transformers.float16`, the onnxconverter-common code); it clamps
out-of-range constants to +-65504 without a word, so overflow is checked before converting:
a constant or a calibrated activation beyond FP16's range is an error naming the tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from calibration.inputs import FP32_MODEL_HINT
from calibration.qdq import constant_tensors
from engines.artifacts import atomic_path
from engines.errors import UserError
from engines.onnx_model import is_quantized, load_onnx

FP16_MAX = 65504.0  # largest finite float16
FP16_QDQ_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take FP16 scales


class FP16Overflow(UserError):
    """An FP16 product refused because FP16 cannot hold some of the model's tensors.

    A UserError (one line, exit 2) for the CLI; the demo catches it to report which tensors
    overflow (`overflows`: name -> largest |x|) and goes on without that product."""

    def __init__(self, message: str, overflows: dict[str, float]):
        super().__init__(message)
        self.overflows = overflows


def fp16_overflows(model: onnx.ModelProto, activation_max_abs: dict[str, float] | None = None) -> dict[str, float]:
    """Float constants (initializers, Constant nodes) and activations whose largest |x| exceeds FP16's range.

    `activation_max_abs` is the largest |x| of each activation on calibration data
    (`ActivationRanges.max_abs`, not the clipped amax: FP16 must hold every value).
    """
    overflows = {}
    for name, tensor in constant_tensors(model).items():
        if tensor.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            values = numpy_helper.to_array(tensor)
            largest = float(np.abs(values).max()) if values.size else 0.0
            if largest > FP16_MAX:
                overflows[name] = largest
    for name, largest in (activation_max_abs or {}).items():
        if largest > FP16_MAX:
            overflows[name] = largest
    return overflows


def convert_fp16(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    keep_io_fp32: bool = True,
    activation_max_abs: dict[str, float] | None = None,
) -> Path:
    """Write the FP16 twin of `model_path` (FP32 ONNX): FP16 weights and activations.

    With `keep_io_fp32`, inputs and outputs stay float32 behind Cast nodes, so callers feed and
    read the same arrays as for the FP32 model. Raises UserError, writing nothing, when a
    constant or an activation in `activation_max_abs` would overflow FP16.
    """
    path = Path(model_path)
    if Path(out_path).resolve() == path.resolve():
        raise UserError(f"{out_path}: output would overwrite the FP32 input model; pass another output path")
    model = load_onnx(path, hint=FP32_MODEL_HINT)
    if is_quantized(model):
        raise UserError(f"{path}: already quantized (has Q/DQ or quantized ops); pass the FP32 model")
    return _write_fp16(model, path, out_path, keep_io_fp32, activation_max_abs)


def convert_qdq_fp16(
    qdq_model_path: str | os.PathLike, out_path: str | os.PathLike, activation_max_abs: dict[str, float] | None = None
) -> Path:
    """FP16 for everything of a Q/DQ model, its Q/DQ nodes included: a mixed plan's high-precision
    layers in FP16, its INT8 layers reading DequantizeLinear outputs that are FP16 already.

    FP16 scales make the Q/DQ nodes themselves FP16 (opset 19 allows it; the model's opset is
    raised to 19 where lower), so no Cast sits between a DequantizeLinear and its Conv: in a strongly
    typed TensorRT network the Q/DQ types are the layer types, and a Cast there would stop the
    fusion. Model inputs and outputs stay FP32.
    """
    path = Path(qdq_model_path)
    model = load_onnx(path, hint="pass the Q/DQ model written by calibration.quantize.write_qdq_model")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < FP16_QDQ_OPSET:
            opset.version = FP16_QDQ_OPSET
    return _write_fp16(model, path, out_path, True, activation_max_abs)


def _write_fp16(
    model: onnx.ModelProto,
    path: Path,
    out_path: str | os.PathLike,
    keep_io_fp32: bool,
    activation_max_abs: dict[str, float] | None,
) -> Path:
    overflows = fp16_overflows(model, activation_max_abs)
    if overflows:
        listed = ", ".join(f"{name!r} (|x| up to {value:.4g})" for name, value in list(overflows.items())[:5])
        raise FP16Overflow(
            f"{path}: FP16 cannot hold {listed}: FP16's largest value is 65504; keep the model in FP32 "
            "or rescale the layers that produce these tensors",
            overflows,
        )
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_fp32, op_block_list=list(DEFAULT_OP_BLOCK_LIST)
    )
    _sort_topologically(converted.graph)
    onnx.checker.check_model(converted)
    with atomic_path(out_path) as tmp:
        onnx.save(converted, tmp)
    return Path(out_path)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Put nodes in an order where each reads only tensors already produced.

    The converter appends its input and output Casts at the end of the node list, which
    onnx.checker (and TensorRT's parser) reject.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    placed = [False] * len(nodes)
    ordered = []
    while len(ordered) < len(nodes):
        before = len(ordered)
        for index, node in enumerate(nodes):
            if not placed[index] and all(name in available for name in node.input):
                placed[index] = True
                ordered.append(onnx.NodeProto.FromString(node.SerializeToString()))
                available.update(node.output)
        if len(ordered) == before:
            raise RuntimeError("internal error: the FP16 graph has a cycle or reads a tensor nothing produces")
    del graph.node[:]
    graph.node.extend(ordered)
