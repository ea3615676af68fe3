"""ONNX model files: the one loader and checker, the one list of quantized operators, and a
graph's precision. onnx is imported inside the functions: a runner on a target needs only its
runtime, not onnx."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import UserError

if TYPE_CHECKING:
    import onnx

EXPORT_HINT = "pass the .onnx written by 'mimicnorm-deploy export' or 'calibrate'"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that carry INT8 arithmetic: the Q/DQ pair, ONNX Runtime's QOperator forms (what its graph
# optimizations fuse Q/DQ into) and dynamic quantization. A model holding any is quantized.
QUANTIZED_OPS = frozenset(
    {
        *QDQ_OPS,
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
    }
)


def load_onnx(
    path: str | os.PathLike,
    *,
    hint: str = EXPORT_HINT,
    load_external_data: bool = True,
    check: bool = True,
    full_check: bool = False,
) -> onnx.ModelProto:
    """A valid ONNX model (onnx.checker passes) from `path`, or a one-line UserError ending in `hint`.

    With `load_external_data=False` weights kept in external files stay there (they are checked in
    place), for callers that only read the graph. `check=False` skips onnx.checker, for a caller
    whose runtime is the judge (an engine builder: ONNX Runtime accepts its own contrib operators);
    `full_check` adds the checker's strict shape inference."""
    import onnx
    from google.protobuf.message import Error as ProtobufError

    invalid = (ProtobufError, OSError, ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; {hint}")
    try:
        model = onnx.load(os.fspath(path), load_external_data=load_external_data)
        # Protobuf parses many non-ONNX byte strings without complaint; an empty graph gives them away.
        if model.ir_version == 0 or not model.graph.node:
            raise ValueError("no graph")
        if check:
            onnx.checker.check_model(model if load_external_data else os.fspath(path), full_check=full_check)
    except invalid as exc:
        raise UserError(f"{path}: not an ONNX model ({type(exc).__name__}); {hint}") from None
    return model


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def graph_precision(model: onnx.ModelProto) -> str:
    """"int8" for a quantized graph, else "fp16" where any tensor is FP16, else "fp32"."""
    from onnx import TensorProto

    if is_quantized(model):
        return "int8"
    graph = model.graph
    value_types = [value.type.tensor_type.elem_type for value in [*graph.input, *graph.value_info, *graph.output]]
    tensor_types = [init.data_type for init in graph.initializer] + value_types
    return "fp16" if TensorProto.FLOAT16 in tensor_types else "fp32"
