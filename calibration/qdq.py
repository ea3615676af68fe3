"""Inspection of QuantizeLinear/DequantizeLinear (Q/DQ) ONNX graphs: which layers can be quantized,
and whether a Q/DQ graph keeps the rules TensorRT needs (zero points, placement, no dangling pair)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from engines.onnx_model import QDQ_OPS

# Ops whose weights INT8 is for; a model without any has nothing worth quantizing.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
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


def is_residual_add(node: onnx.NodeProto, constants: set[str]) -> bool:
    """An Add of two activations (a skip connection), not an Add of a constant (a bias or input shift)."""
    return node.op_type == "Add" and len(node.input) == 2 and not any(name in constants for name in node.input)


def quantizable_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """What a precision plan assigns, in graph order: every Conv/Gemm/MatMul with a constant weight,
    and every residual Add (TensorRT runs it in INT8, fused into the Conv before it)."""
    constants = set(constant_tensors(model))
    return [
        node
        for node in model.graph.node
        if (node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constants)
        or is_residual_add(node, constants)
    ]


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _describe(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.input[0]})"


def dangling_qdq(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes that do not form a pair feeding a layer: a QuantizeLinear read by anything but
    DequantizeLinear (or by nothing), a DequantizeLinear nobody reads, or one whose input is neither
    a QuantizeLinear's output nor a constant (a quantized weight)."""
    readers = _readers(model)
    graph_outputs = {output.name for output in model.graph.output}
    constants = set(constant_tensors(model))
    quantized = {node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    problems = []
    for node in model.graph.node:
        consumers = readers.get(node.output[0], []) if node.output else []
        if node.op_type == "QuantizeLinear":
            if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers):
                problems.append(f"{_describe(node)}: QuantizeLinear not read by DequantizeLinear only")
        elif node.op_type == "DequantizeLinear":
            if not consumers and node.output[0] not in graph_outputs:
                problems.append(f"{_describe(node)}: DequantizeLinear read by nothing")
            if node.input[0] not in quantized and node.input[0] not in constants:
                problems.append(f"{_describe(node)}: DequantizeLinear of a tensor no QuantizeLinear produced")
    return problems


def tensorrt_placement_violations(model: onnx.ModelProto) -> list[str]:
    """Where a Q/DQ graph departs from the placement TensorRT fuses: dequantized tensors may feed only
    Conv/Gemm/MatMul (then both input and weight) and residual Adds (then both inputs)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    constants = set(constant_tensors(model))

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    problems = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        flags = [dequantized(name) for name in node.input]
        if not any(flags):
            continue
        if node.op_type in WEIGHTED_OPS:
            if not all(flags[:2]):
                problems.append(f"{_describe(node)}: {node.op_type} with only one of input and weight quantized")
        elif node.op_type == "Add" and is_residual_add(node, constants):
            if not all(flags):
                problems.append(f"{_describe(node)}: residual Add with only one input quantized")
        else:
            problems.append(f"{_describe(node)}: {node.op_type} reads a dequantized tensor")
    return problems
