"""A STAND-IN for the `tensorrt` module, so the GPU check can run engines/tensorrt's Runner for real
on a GPU without TensorRT: its CUDA half (engines/tensorrt/cuda.py over cuda-python or pycuda:
pinned host and device buffers per input shape, async copies, one stream, events, CUDA-graph
capture and replay) runs unchanged, and only `execute_async_v3` is replaced by a torch kernel
(logits = 2 * images + 1) enqueued on the runner's stream, reading and writing the device buffers
the runner bound. It implements only what that Runner calls; it is not a TensorRT fake for tests
(tests/fake_tensorrt.py is).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import torch

from engines.artifacts import now_utc, sha256_file
from engines.manifest import EngineManifest
from engines.tensorrt.device import fingerprint, gpu_device

VERSION = "0.0.0+gpu-check-stand-in"
INPUT, OUTPUT = "images", "logits"


class _DeviceArray:
    """A device pointer as torch sees it through the CUDA array interface (no copy)."""

    def __init__(self, pointer: int, shape: tuple[int, ...]):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (pointer, False), "version": 3}


class _Context:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.streams: dict[int, torch.cuda.ExternalStream] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        self.shapes[OUTPUT] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        # The views are made here, not in execute_async_v3, which may run inside a graph capture.
        self.tensors[name] = torch.as_tensor(_DeviceArray(int(pointer), self.shapes[name]), device="cuda")
        return True

    def execute_async_v3(self, stream: int) -> bool:
        # The runner runs once before it captures, so the stream wrapper exists by then.
        torch_stream = self.streams.setdefault(stream, torch.cuda.ExternalStream(stream))
        images, logits = self.tensors[INPUT], self.tensors[OUTPUT]
        # In place and with out=: nothing is allocated, so this can be captured into a CUDA graph.
        with torch.cuda.stream(torch_stream):
            torch.mul(images, 2.0, out=logits)
            logits.add_(1.0)
        return True


class _Engine:
    device_memory_size_v2 = 0  # the stand-in kernel needs no activation memory

    def create_execution_context(self) -> _Context:
        return _Context()


class _Runtime:
    def __init__(self, logger: Any):
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, engine_bytes: bytes) -> _Engine:
        return _Engine()


class _Logger:
    # The severities engines.tensorrt.api.make_logger compares with.
    ERROR, INTERNAL_ERROR, WARNING = "error", "internal error", "warning"

    def __init__(self) -> None:
        pass


def install() -> types.ModuleType:
    """Put the stand-in in sys.modules as `tensorrt` (this process only)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = VERSION
    module.ILogger = _Logger
    module.Runtime = _Runtime
    sys.modules["tensorrt"] = module
    return module


def write_engine(engine_dir: Path, cuda: Any, image_shape: tuple[int, int, int], max_batch: int,
                 cuda_graph: bool) -> EngineManifest:  # fmt: skip
    """An engine directory the TensorRT Runner loads: a placeholder plan, the I/O it declares
    (dynamic batch, profile 1..max_batch), and a manifest bound to this GPU and the stand-in."""
    engine_dir.mkdir(parents=True, exist_ok=True)
    plan = engine_dir / "engine.plan"
    plan.write_bytes(b"gpu-check stand-in: no TensorRT plan\n")
    profile = [[1, *image_shape], [max_batch, *image_shape], [max_batch, *image_shape]]
    io = [{"name": name, "input": name == INPUT, "shape": [-1, *image_shape], "dtype": "float32", "profile": profile}
          for name in (INPUT, OUTPUT)]  # fmt: skip
    device = gpu_device(cuda, VERSION)
    manifest = EngineManifest(
        backend="tensorrt", backend_version=VERSION, target="desktop-gpu", precision="fp32",
        engine_file=plan.name, engine_sha256=sha256_file(plan), model_sha256="", source_model="",
        device_fingerprint=fingerprint(device), device=device, backend_options={"cuda_graph": cuda_graph},
        build_flags={"io": io, "stand_in": "torch kernel: logits = 2 * images + 1"}, created=now_utc(),
    )  # fmt: skip
    manifest.write(engine_dir)
    return manifest
