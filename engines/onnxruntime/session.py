"""ONNX Runtime on the CPU: the one place that creates an InferenceSession and runs batches
through it. The engine runner, the precision planner, the quality report, the export check and
the scripts all run ONNX models through these functions."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from engines.base import TensorMeta

if TYPE_CHECKING:
    import onnx

PROVIDERS = ["CPUExecutionProvider"]
BATCH_SIZE = 256  # images per run when scoring a model on an image set

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
    model: str | os.PathLike | onnx.ModelProto,
    *,
    graph_optimization: str = "all",
    intra_op_threads: int | None = None,
    optimized_model_path: str | os.PathLike | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider for a model file or an in-memory model.

    `intra_op_threads` None is ONNX Runtime's default; `optimized_model_path` saves the graph as
    ONNX Runtime optimized it (to see which Q/DQ pairs it fused into INT8 kernels)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization]
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = os.fspath(optimized_model_path)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=PROVIDERS)


def tensor_meta(node_arg: ort.NodeArg) -> TensorMeta:
    # ONNX Runtime reports an unnamed dynamic dim as None; "?" keeps the shape a tuple of int | str.
    shape = tuple("?" if dim is None else dim for dim in node_arg.shape)
    return TensorMeta(node_arg.name, shape, ORT_TO_NUMPY_DTYPE.get(node_arg.type, node_arg.type))


def session_batches(
    session: ort.InferenceSession,
    images: np.ndarray,
    *,
    output_names: list[str] | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[np.ndarray]]:
    """Feed `images` to the session's first input in batches; yield each batch's outputs (every
    graph output, or `output_names` in that order)."""
    input_name = session.get_inputs()[0].name
    for start in range(0, len(images), batch_size):
        yield session.run(output_names, {input_name: images[start : start + batch_size]})


def run_model(
    model: str | os.PathLike | onnx.ModelProto | ort.InferenceSession,
    images: np.ndarray,
    *,
    graph_optimization: str = "all",
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The first output (a CNN's logits) of `model` on `images`, run in batches.

    `graph_optimization="disabled"` runs Q/DQ as float ops: INT8 simulated, identical on any CPU."""
    session = model if isinstance(model, ort.InferenceSession) else create_session(
        model, graph_optimization=graph_optimization
    )  # fmt: skip
    outputs = []
    for batch_outputs in session_batches(session, images, batch_size=batch_size):
        outputs.append(batch_outputs[0])
        if progress is not None:
            progress(min(len(images), len(outputs) * batch_size), len(images))
    return np.concatenate(outputs)
