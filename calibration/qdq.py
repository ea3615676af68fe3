"""Inspection of QuantizeLinear/DequantizeLinear (Q/DQ) ONNX graphs."""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that only appear in a model someone already quantized: the Q/DQ pair, ONNX Runtime's
# QOperator format and dynamic quantization.
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


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """{"QuantizeLinear": n, "DequantizeLinear": m} for the main graph."""
    counts = dict.fromkeys(QDQ_OPS, 0)
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def qdq_zero_point_violations(model: onnx.ModelProto) -> list[str]:
    """Names of Q/DQ nodes TensorRT would reject: a zero point that is not an int8 initializer of zeros.

    A QuantizeLinear without a zero point outputs uint8 (the ONNX default), so it is a violation.
    A DequantizeLinear without one takes its type from its input: fine after a checked
    QuantizeLinear, checked directly when the input is an initializer (a quantized weight).
    """
    constants = constant_tensors(model)
    violations = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero_point_name = node.input[2] if len(node.input) > 2 else ""
        if zero_point_name:
            zero_point = constants.get(zero_point_name)
            ok = (
                zero_point is not None
                and zero_point.data_type == TensorProto.INT8
                and not numpy_helper.to_array(zero_point).any()
            )
        elif node.op_type == "QuantizeLinear":
            ok = False
        else:
            quantized = constants.get(node.input[0])
            ok = quantized is None or quantized.data_type == TensorProto.INT8
        if not ok:
            violations.append(node.name or f"{node.op_type}({node.input[0]})")
    return violations


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values of the main graph, by tensor name."""
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    return tensors
