"""Inspection of QuantizeLinear/DequantizeLinear (Q/DQ) ONNX graphs: which layers can be quantized,
and whether a Q/DQ graph keeps the rules TensorRT needs (zero points, placement, no dangling pair)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from engines.onnx_model import QDQ_OPS

# Ops whose weights INT8 is for; a model without any has nothing worth quantizing.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
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


# Elementwise ops TensorRT folds into the Conv before them when the other operand is a constant
# (a bias or a per-channel scale, e.g. an unfolded residual-branch scalar).
CONV_EPILOGUE_OPS = ("Mul", "Add", "Sub", "Div")


def residual_branch_inputs(model: onnx.ModelProto) -> dict[str, int | None]:
    """For every residual Add (by node name): the index of its branch input, the one TensorRT fuses
    into the Conv that produces it, or None where neither input comes from a Conv.

    The other input is the skip connection. An input is Conv-fed when a Conv produces it, directly or
    through elementwise ops with a constant (CONV_EPILOGUE_OPS). When both are (a downsampling block's
    shortcut Conv, or a MobileNetV2 block whose input is the previous projection Conv), the branch is
    the input on the longer path from their nearest common ancestor: the skip is the short way round.
    This is the rule of NVIDIA's Model Optimizer (`build_non_residual_input_map`).
    """
    constants = set(constant_tensors(model))
    producers = {output: node for node in model.graph.node for output in node.output}
    branches: dict[str, int | None] = {}
    for node in model.graph.node:
        if not is_residual_add(node, constants):
            continue
        fed = [_conv_fed(name, producers, constants) for name in node.input]
        if fed[0] != fed[1]:
            branches[node.name] = fed.index(True)
        elif not fed[0]:
            branches[node.name] = None
        else:
            depths = [_ancestor_depths(name, producers, constants) for name in node.input]
            common = set(depths[0]) & set(depths[1])
            nearest = min(common, key=lambda name: depths[0][name] + depths[1][name], default=None)
            longer_first = nearest is None or depths[0][nearest] >= depths[1][nearest]
            branches[node.name] = 0 if longer_first else 1
    return branches


def _conv_fed(tensor: str, producers: dict[str, onnx.NodeProto], constants: set[str]) -> bool:
    node = producers.get(tensor)
    while node is not None and node.op_type in CONV_EPILOGUE_OPS and len(node.input) == 2:
        activations = [name for name in node.input if name not in constants]
        if len(activations) != 1:
            return False
        node = producers.get(activations[0])
    return node is not None and node.op_type == "Conv"


def _ancestor_depths(tensor: str, producers: dict[str, onnx.NodeProto], constants: set[str]) -> dict[str, int]:
    """Producer node name -> fewest steps back from `tensor` (its own producer at 0)."""
    depths: dict[str, int] = {}
    frontier = [tensor]
    depth = 0
    while frontier:
        next_frontier = []
        for name in frontier:
            node = producers.get(name)
            if node is None or node.name in depths:
                continue
            depths[node.name] = depth
            next_frontier.extend(i for i in node.input if i and i not in constants)
        frontier = next_frontier
        depth += 1
    return depths


def quantizable_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """What a precision plan assigns, in graph order: every Conv/Gemm/MatMul with a constant weight,
    and every residual Add (TensorRT fuses it into its branch's Conv; INT8 is its skip input)."""
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
    Conv/Gemm/MatMul (then both input and weight) and residual Adds (then the skip input only, or
    both inputs where no Conv feeds either: `residual_branch_inputs`)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    constants = set(constant_tensors(model))
    branches = residual_branch_inputs(_without_qdq(model))

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
            branch = branches.get(node.name)
            if branch is None and not all(flags):
                problems.append(f"{_describe(node)}: Add of two non-Conv tensors with only one input quantized")
            elif branch is not None and (flags[branch] or not flags[1 - branch]):
                problems.append(
                    f"{_describe(node)}: residual Add must quantize its skip input {node.input[1 - branch]!r} "
                    f"only, not its branch input {node.input[branch]!r} that TensorRT fuses into the Conv"
                )
        else:
            problems.append(f"{_describe(node)}: {node.op_type} reads a dequantized tensor")
    return problems


def _without_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a Q/DQ model with every activation Q/DQ pair bypassed: the float graph's topology,
    so the residual rule judges the graph it was applied to."""
    producers = {output: node for node in model.graph.node for output in node.output}
    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    for node in float_model.graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = qdq_source(name, producers) or name
    return float_model


def qdq_source(name: str, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The float tensor that a QuantizeLinear -> DequantizeLinear pair turns into `name`, or None
    when `name` is not the output of such a pair."""
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = producers.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return None
    return quantize.input[0]
