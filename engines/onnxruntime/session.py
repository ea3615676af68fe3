"""ONNX Runtime sessions on the CPU: the one place that turns session options into an
InferenceSession and describes its inputs and outputs."""

from __future__ import annotations

import os

import onnxruntime as ort

from engines.base import TensorMeta

PROVIDERS = ["CPUExecutionProvider"]

# "disabled" runs every QuantizeLinear/DequantizeLinear as its own float op: INT8 is simulated.
# "basic" and above let ONNX Runtime fuse Q/DQ pairs around Conv/MatMul into real INT8 kernels.
GRAPH_OPTIMIZATION_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

ORT_TO_NUMPY_DTYPE = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def create_session(
    model_path: str | os.PathLike, *, graph_optimization: str = "all", intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider; `intra_op_threads` None is ONNX Runtime's default."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization]
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=PROVIDERS)


def tensor_meta(node_arg: ort.NodeArg) -> TensorMeta:
    # ONNX Runtime reports an unnamed dynamic dim as None; "?" keeps the shape a tuple of int | str.
    shape = tuple("?" if dim is None else dim for dim in node_arg.shape)
    return TensorMeta(node_arg.name, shape, ORT_TO_NUMPY_DTYPE.get(node_arg.type, node_arg.type))
