"""Run an ONNX Runtime CPU engine directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import Runner, TensorMeta
from engines.cpu import cpu_device
from engines.errors import UserError
from engines.manifest import EngineManifest, check_engine

BACKEND = "onnxruntime-cpu"
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


def create_session(model_path: str | os.PathLike, session_options: dict) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider with the manifest's `session_options`
    ({"graph_optimization": ..., "intra_op_threads": ...})."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[session_options["graph_optimization"]]
    if session_options.get("intra_op_threads") is not None:
        options.intra_op_num_threads = session_options["intra_op_threads"]
    return ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=PROVIDERS)


def tensor_meta(node_arg: ort.NodeArg) -> TensorMeta:
    # ONNX Runtime reports an unnamed dynamic dim as None; "?" keeps the shape a tuple of int | str.
    shape = tuple("?" if dim is None else dim for dim in node_arg.shape)
    return TensorMeta(node_arg.name, shape, ORT_TO_NUMPY_DTYPE.get(node_arg.type, node_arg.type))


class OrtRunner(Runner):
    def __init__(self, engine_dir: str | os.PathLike):
        self.engine_dir = Path(engine_dir)
        self.manifest = EngineManifest.read(self.engine_dir)
        if self.manifest.backend != BACKEND:
            raise UserError(
                f"{engine_dir}: a {self.manifest.backend} engine, not {BACKEND}; load it with engines.load_runner"
            )
        check_engine(self.manifest, self.engine_dir, cpu_device(), backend_version=ort.__version__)
        self.model_path = self.engine_dir / self.manifest.model_file
        self._session: ort.InferenceSession | None = create_session(self.model_path, self.manifest.session_options)
        self._inputs = [tensor_meta(arg) for arg in self._session.get_inputs()]
        self._outputs = [tensor_meta(arg) for arg in self._session.get_outputs()]

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._outputs

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError(f"runner for {self.engine_dir} is closed")
        values = self._session.run(None, feeds)
        return {meta.name: value for meta, value in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        self._session = None

    def memory(self) -> dict[str, int]:
        # ONNX Runtime's Python API has no query for its CPU arena, so only the model size is
        # known here; process peak RSS (engines.bench.peak_rss_fresh_process) covers the rest.
        return {"model_file_bytes": self.model_path.stat().st_size}
