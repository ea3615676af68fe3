"""Run a TensorRT engine: `execute_async_v3` on one CUDA stream, tensor addresses, pinned host
buffers and device buffers allocated once per input shape, optional CUDA-graph replay, and the
per-inference split trtexec reports (H2D, GPU compute, D2H from CUDA events; enqueue on the host).

Loading refuses an engine built for another GPU, compute capability or TensorRT version
(engines/tensorrt/device.py). docs/TENSORRT.md section 4 has the API facts this relies on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines import base
from engines.artifacts import sha256_file
from engines.base import TensorMeta
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.tensorrt.api import dims, make_logger, require_tensorrt
from engines.tensorrt.builder import BACKEND, deserialize_engine
from engines.tensorrt.cuda import CudaApi, load_cuda
from engines.tensorrt.device import check_runs_here, gpu_device

if TYPE_CHECKING:
    import tensorrt as trt

REBUILD_HINT = "rebuild it with 'mimicnorm-deploy build --backend tensorrt'"
ShapeKey = tuple[tuple[int, ...], ...]


@dataclass
class _Buffers:
    """Pinned host and device memory for every I/O tensor at one set of input shapes."""

    host: dict[str, np.ndarray]
    device: dict[str, int]
    graph: Any = None  # the captured CUDA graph, once replay is on and this shape has run


@dataclass
class _Active:
    cuda: CudaApi
    runtime: trt.Runtime
    engine: trt.ICudaEngine
    context: trt.IExecutionContext
    stream: int
    events: list[Any]
    logger: Any
    buffers: dict[ShapeKey, _Buffers] = field(default_factory=dict)
    bound: ShapeKey | None = None  # the shapes whose addresses the context holds


def _meta(entry: dict[str, Any]) -> TensorMeta:
    shape = tuple("batch" if dim < 0 else int(dim) for dim in entry["shape"])
    profile = entry.get("profile")  # min, opt, max of profile 0 where the batch is dynamic
    if profile is None:
        return TensorMeta(entry["name"], shape, entry["dtype"])
    return TensorMeta(entry["name"], shape, entry["dtype"], tuple(profile[0]), tuple(profile[2]))


class Runner(base.Runner):
    """A TensorRT engine directory, run on the GPU it was built for."""

    def __init__(self, engine_dir: str | os.PathLike):
        self.engine_dir = Path(engine_dir)
        self.manifest = EngineManifest.read_for(engine_dir, BACKEND)
        self.engine_file = self.engine_dir / self.manifest.engine_file
        if not self.engine_file.is_file() or sha256_file(self.engine_file) != self.manifest.engine_sha256:
            raise UserError(f"{self.engine_file}: engine file missing or changed since build; {REBUILD_HINT}")
        io = self.manifest.build_flags.get("io")
        if not io:
            raise UserError(f"{engine_dir}: manifest lists no engine inputs; {REBUILD_HINT}")
        self._inputs = [_meta(entry) for entry in io if entry["input"]]
        self._outputs = [_meta(entry) for entry in io if not entry["input"]]
        self.cuda_graph = bool(self.manifest.backend_options.get("cuda_graph"))
        self._state: _Active | None = None
        self._timing: dict[str, float] | None = None

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._outputs

    def _activate(self) -> None:
        require_tensorrt()
        import tensorrt as trt

        cuda = load_cuda()
        check_runs_here(self.engine_dir, self.manifest.device, gpu_device(cuda, trt.__version__),
                        self.manifest.build_flags)  # fmt: skip
        logger = make_logger()
        version_compatible = bool(self.manifest.build_flags.get("version_compatible"))
        runtime, engine = deserialize_engine(self.engine_file.read_bytes(), logger, version_compatible)
        context = engine.create_execution_context()
        stream = cuda.stream_create()
        events = [cuda.event_create() for _ in range(4)]  # before H2D, after H2D, after compute, after D2H
        self._state = _Active(cuda, runtime, engine, context, stream, events, logger)

    def _deactivate(self) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        cuda = state.cuda
        cuda.stream_synchronize(state.stream)
        for buffers in state.buffers.values():
            if buffers.graph is not None:
                cuda.graph_destroy(buffers.graph)
            for pointer in buffers.device.values():
                cuda.free(pointer)
            for array in buffers.host.values():
                cuda.free_pinned(array)
        for event in state.events:
            cuda.event_destroy(event)
        cuda.stream_destroy(state.stream)
        # Context before engine before runtime: TensorRT's documented destruction order.
        del state.context, state.engine, state.runtime

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        active = self._state
        assert active is not None  # the base class infers only while active
        cuda, stream, (start, copied_in, computed, copied_out) = active.cuda, active.stream, active.events
        buffers = self._bind(active, feeds)
        for meta in self._inputs:
            np.copyto(buffers.host[meta.name], feeds[meta.name], casting="same_kind")
        cuda.event_record(start, stream)
        for meta in self._inputs:
            cuda.copy_to_device(buffers.device[meta.name], buffers.host[meta.name], stream)
        cuda.event_record(copied_in, stream)
        enqueue_start = time.perf_counter()
        self._execute(active, buffers)
        enqueue_ms = (time.perf_counter() - enqueue_start) * 1e3
        cuda.event_record(computed, stream)
        for meta in self._outputs:
            cuda.copy_to_host(buffers.host[meta.name], buffers.device[meta.name], stream)
        cuda.event_record(copied_out, stream)
        cuda.stream_synchronize(stream)
        self._timing = {
            "h2d_ms": cuda.event_elapsed_ms(start, copied_in),
            "gpu_compute_ms": cuda.event_elapsed_ms(copied_in, computed),
            "d2h_ms": cuda.event_elapsed_ms(computed, copied_out),
            "enqueue_ms": enqueue_ms,
        }
        return {meta.name: buffers.host[meta.name].copy() for meta in self._outputs}

    def _execute(self, active: _Active, buffers: _Buffers) -> None:
        if buffers.graph is not None:
            active.cuda.graph_launch(buffers.graph, active.stream)
            return
        if not active.context.execute_async_v3(active.stream):
            raise RuntimeError(f"TensorRT inference failed: {active.logger.last_error('no message')}")
        if self.cuda_graph:
            # Captured after one plain run: TensorRT does its deferred shape work on the first enqueue.
            active.cuda.graph_begin_capture(active.stream)
            active.context.execute_async_v3(active.stream)
            buffers.graph = active.cuda.graph_end_capture(active.stream)

    def _bind(self, active: _Active, feeds: dict[str, np.ndarray]) -> _Buffers:
        """Buffers for these input shapes (allocated the first time they are seen), bound to the context."""
        key: ShapeKey = tuple(tuple(feeds[meta.name].shape) for meta in self._inputs)
        if active.bound == key:
            return active.buffers[key]
        context = active.context
        # Input shapes first: output shapes, and so the output buffers, follow from them.
        for meta, shape in zip(self._inputs, key, strict=True):
            if not context.set_input_shape(meta.name, shape):
                raise UserError(f"input {meta.name!r} shape {shape} is outside the engine's profile; {REBUILD_HINT} "
                                "with a wider --min-batch/--max-batch")  # fmt: skip
        if key not in active.buffers:
            active.buffers[key] = self._allocate(active, key)
        buffers = active.buffers[key]
        for name, pointer in buffers.device.items():
            context.set_tensor_address(name, pointer)
        active.bound = key
        return buffers

    def _allocate(self, active: _Active, key: ShapeKey) -> _Buffers:
        shapes = {meta.name: shape for meta, shape in zip(self._inputs, key, strict=True)}
        for meta in self._outputs:
            shapes[meta.name] = tuple(dims(active.context.get_tensor_shape(meta.name)))
        host, device = {}, {}
        for meta in [*self._inputs, *self._outputs]:
            host[meta.name] = active.cuda.pinned_empty(shapes[meta.name], np.dtype(meta.dtype))
            device[meta.name] = active.cuda.malloc(host[meta.name].nbytes)
        return _Buffers(host, device)

    def timing(self) -> dict[str, float] | None:
        return self._timing

    def memory(self) -> dict[str, int]:
        figures = {"engine_bytes": self.engine_file.stat().st_size}
        if self._state is not None:
            # Activation memory a context needs (v2: includes weight-streaming scratch), plus our I/O buffers.
            figures["device_memory_bytes"] = int(self._state.engine.device_memory_size_v2)
            figures["io_device_bytes"] = sum(buffers.host[name].nbytes for buffers in self._state.buffers.values()
                                             for name in buffers.device)  # fmt: skip
        return figures
