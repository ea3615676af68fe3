"""One small CUDA interface over the two Python bindings found beside TensorRT.

NVIDIA's current samples use cuda-python (`cuda.bindings.runtime`, since TensorRT 10.14 the only
one in the samples); Jetsons often have pycuda. `load_cuda()` returns whichever is installed behind
`CudaApi`: device and pinned host memory, async copies, a stream, events, and (cuda-python only)
CUDA-graph capture. Pointers and stream handles are plain ints, which is what TensorRT's
`set_tensor_address` and `execute_async_v3` take.
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any, Protocol, cast

import numpy as np

from engines.errors import UserError

INSTALL_HINT = "no CUDA binding for Python; install cuda-python (`pip install cuda-python`) or pycuda"


class CudaApi(Protocol):
    name: str

    def device_name(self) -> str: ...
    def compute_capability(self) -> tuple[int, int]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, pointer: int) -> None: ...
    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def free_pinned(self, array: np.ndarray) -> None: ...
    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None: ...
    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None: ...
    def stream_create(self) -> int: ...
    def stream_synchronize(self, stream: int) -> None: ...
    def stream_destroy(self, stream: int) -> None: ...
    def event_create(self) -> Any: ...
    def event_record(self, event: Any, stream: int) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...
    def event_destroy(self, event: Any) -> None: ...
    def graph_begin_capture(self, stream: int) -> None: ...
    def graph_end_capture(self, stream: int) -> Any: ...
    def graph_launch(self, graph: Any, stream: int) -> None: ...
    def graph_destroy(self, graph: Any) -> None: ...


class CudaPython:
    """cuda-python's runtime API (`cuda.bindings.runtime`): every call returns (error, *results)."""

    name = "cuda-python"

    def __init__(self, cudart: Any):
        self._rt = cudart

    def _call(self, result: Any) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            name = self._rt.cudaGetErrorName(error)[1]
            raise RuntimeError(f"CUDA error {int(error)} ({name.decode() if isinstance(name, bytes) else name})")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def _properties(self) -> Any:
        device = self._call(self._rt.cudaGetDevice())
        return self._call(self._rt.cudaGetDeviceProperties(device))

    def device_name(self) -> str:
        name = self._properties().name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def compute_capability(self) -> tuple[int, int]:
        properties = self._properties()
        return int(properties.major), int(properties.minor)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(max(nbytes, 1))))

    def free(self, pointer: int) -> None:
        self._call(self._rt.cudaFree(pointer))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        pointer = int(self._call(self._rt.cudaMallocHost(nbytes)))
        # A numpy view of the pinned bytes (as NVIDIA's samples/python/common_runtime.py does).
        raw = np.ctypeslib.as_array(ctypes.cast(ctypes.c_void_p(pointer), ctypes.POINTER(ctypes.c_ubyte)), (nbytes,))
        return raw[: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def free_pinned(self, array: np.ndarray) -> None:
        self._call(self._rt.cudaFreeHost(array.ctypes.data))

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream))

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream))

    def stream_create(self) -> int:
        return int(self._call(self._rt.cudaStreamCreate()))

    def stream_synchronize(self, stream: int) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: int) -> None:
        self._call(self._rt.cudaStreamDestroy(stream))

    def event_create(self) -> Any:
        return self._call(self._rt.cudaEventCreate())

    def event_record(self, event: Any, stream: int) -> None:
        self._call(self._rt.cudaEventRecord(event, stream))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call(self._rt.cudaEventElapsedTime(start, end)))

    def event_destroy(self, event: Any) -> None:
        self._call(self._rt.cudaEventDestroy(event))

    def graph_begin_capture(self, stream: int) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self._call(self._rt.cudaStreamBeginCapture(stream, mode))

    def graph_end_capture(self, stream: int) -> Any:
        graph = self._call(self._rt.cudaStreamEndCapture(stream))
        executable = self._call(self._rt.cudaGraphInstantiate(graph, 0))
        self._call(self._rt.cudaGraphDestroy(graph))
        return executable

    def graph_launch(self, graph: Any, stream: int) -> None:
        self._call(self._rt.cudaGraphLaunch(graph, stream))

    def graph_destroy(self, graph: Any) -> None:
        self._call(self._rt.cudaGraphExecDestroy(graph))


class PyCuda:
    """pycuda's driver API, on the device's primary context (the one TensorRT's runtime API uses)."""

    name = "pycuda"

    def __init__(self, driver: Any):
        self._cuda = driver
        driver.init()
        self._device = driver.Device(0)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._allocations: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def device_name(self) -> str:
        return str(self._device.name())

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._device.compute_capability()
        return int(major), int(minor)

    def malloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(max(nbytes, 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(shape, dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        cast(Any, array.base).free()  # pycuda's HostAllocation behind the array

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        self._cuda.memcpy_htod_async(pointer, array, self._streams[stream])

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        self._cuda.memcpy_dtoh_async(array, pointer, self._streams[stream])

    def stream_create(self) -> int:
        stream = self._cuda.Stream()
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def stream_synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()

    def stream_destroy(self, stream: int) -> None:
        self._streams.pop(stream)

    def event_create(self) -> Any:
        return self._cuda.Event()

    def event_record(self, event: Any, stream: int) -> None:
        event.record(self._streams[stream])

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        del event

    def _no_graphs(self) -> UserError:
        return UserError("CUDA-graph replay needs cuda-python (`pip install cuda-python`); run without --cuda-graph")

    def graph_begin_capture(self, stream: int) -> None:
        raise self._no_graphs()

    def graph_end_capture(self, stream: int) -> Any:
        raise self._no_graphs()

    def graph_launch(self, graph: Any, stream: int) -> None:
        raise self._no_graphs()

    def graph_destroy(self, graph: Any) -> None:
        raise self._no_graphs()


def load_cuda() -> CudaApi:
    """cuda-python if installed, else pycuda, else a one-line UserError saying how to get one."""
    try:
        return CudaPython(importlib.import_module("cuda.bindings.runtime"))
    except ImportError:
        pass
    try:
        return PyCuda(importlib.import_module("pycuda.driver"))
    except ImportError:
        raise UserError(INSTALL_HINT) from None
