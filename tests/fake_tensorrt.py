"""A recording FAKE of the `tensorrt` module and of cuda-python's runtime binding (`cuda.bindings.runtime`).

It proves our calls, not TensorRT: that engines/tensorrt/ calls the API the way NVIDIA documents
it, in the right order, with the right flags per TensorRT version. It runs nothing on a GPU; its
"engine" runs the parsed ONNX file with ONNX Runtime on the CPU, reading and writing the fake device
memory, so outputs are real numbers a test can check.

Every class, function and attribute it offers exists in tensorrt-stubs 10.13 (checked by
tests/test_fake_tensorrt.py), and it enforces the rules of the real API that our code relies on:
- TensorRT 11 has no INT8/FP16/precision-constraint builder flags, no calibrators and no
  `int8_calibrator`; its networks are always strongly typed;
- TensorRT 10 has no `build_engine` and no binding indices (names only);
- a strongly typed network takes no precision flags and no per-layer precision;
- input shapes must be set before output addresses (output sizes follow from them), and every
  address before `execute_async_v3`;
- a calibration cache is used only if its header names this version and the calibrator's
  algorithm, else TensorRT asks the calibrator for batches;
- a dynamic input needs an optimization profile; shapes must lie inside it;
- a DLA layer DLA cannot run needs GPU fallback; a version-compatible engine loads only with
  `engine_host_code_allowed`; an engine loads only on the TensorRT version that built it.
Breaking a rule our code should never break raises `ApiRuleViolation`; failing the way TensorRT
fails (a None engine, a False return, a logged error) is reproduced as TensorRT does it.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_CACHE_MAGIC = b"FAKE-TIMING-CACHE:"
COMPUTE_MS = 1.0  # what the fake GPU clock advances per inference
COPY_MS_PER_KIB = 0.001  # ... and per KiB copied


class ApiRuleViolation(AssertionError):
    """Our code broke a rule of the real TensorRT / CUDA API."""


def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {member: i for i, member in enumerate(members)})  # type: ignore[return-value]


_FLAGS_10 = ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
             "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
             "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "BF16"]  # fmt: skip
# TensorRT 11 dropped the precision flags (its networks are strongly typed).
_REMOVED_IN_11 = {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
_PRECISION_FLAGS = {"FP16", "INT8", "BF16", "FP8"}

DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"])
LayerType = _enum("LayerType", ["CONVOLUTION", "ACTIVATION", "POOLING", "ELEMENTWISE", "SHUFFLE", "REDUCE",
                                "MATRIX_MULTIPLY", "CONSTANT", "IDENTITY", "CAST", "QUANTIZE", "DEQUANTIZE",
                                "UNARY", "SOFTMAX", "CONCATENATION"])  # fmt: skip
DeviceType = _enum("DeviceType", ["GPU", "DLA"])
MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"])
ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
LayerInformationFormat = _enum("LayerInformationFormat", ["ONELINE", "JSON"])
TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
CalibrationAlgoType = _enum("CalibrationAlgoType", ["LEGACY_CALIBRATION", "ENTROPY_CALIBRATION",
                                                    "ENTROPY_CALIBRATION_2", "MINMAX_CALIBRATION"])  # fmt: skip
_CACHE_ALGORITHM = {"LEGACY_CALIBRATION": "LegacyCalibration", "ENTROPY_CALIBRATION": "EntropyCalibration",
                    "ENTROPY_CALIBRATION_2": "EntropyCalibration2",
                    "MINMAX_CALIBRATION": "MinMaxCalibration"}  # fmt: skip

_ONNX_TYPES = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.INT8: "INT8",
               TensorProto.UINT8: "UINT8", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
               TensorProto.BOOL: "BOOL"}  # fmt: skip
_NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_}  # fmt: skip
_LAYER_TYPES = {"Conv": "CONVOLUTION", "Relu": "ACTIVATION", "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE",
                "Sub": "ELEMENTWISE", "Div": "ELEMENTWISE", "GlobalAveragePool": "REDUCE", "Flatten": "SHUFFLE",
                "Reshape": "SHUFFLE", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY", "Cast": "CAST",
                "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Softmax": "SOFTMAX"}  # fmt: skip


class _Strict:
    """Setting an attribute the real class does not have fails, as on a pybind11 object."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Only the fake classes themselves are strict; a Python subclass of one (our Logger) has a __dict__.
        fake_class = type(self).__qualname__.startswith("make_fake_tensorrt.")
        if fake_class and not name.startswith("_") and not any(name in getattr(k, "__annotations__", {}) or
                                                isinstance(getattr(k, name, None), property)
                                                for k in type(self).__mro__):  # fmt: skip
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        object.__setattr__(self, name, value)


class Dims(tuple):
    """trt.Dims: a sequence of ints (-1 for a dynamic dimension)."""


# --- the fake GPU shared by the tensorrt fake and the CUDA fake ---------------------------------


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int] = (9, 0)
    num_dla_cores: int = 0
    memory: dict[int, bytearray] = field(default_factory=dict)
    pinned: dict[int, np.ndarray] = field(default_factory=dict)
    clock_ms: float = 0.0
    capturing: dict[int, list] = field(default_factory=dict)  # stream -> operations captured
    next_pointer: int = 0x7F0000000000

    def allocate(self, nbytes: int) -> int:
        pointer = self.next_pointer
        self.next_pointer += (nbytes + 255) // 256 * 256 + 256
        self.memory[pointer] = bytearray(nbytes)
        return pointer

    def enqueue(self, stream: int, operation: Any) -> None:
        """Run `operation` now, or record it if the stream is capturing a graph."""
        if stream in self.capturing:
            self.capturing[stream].append(operation)
        else:
            operation()


# --- tensorrt ------------------------------------------------------------------------------------


def make_fake_tensorrt(version: str = "10.13.0.35", gpu: FakeGpu | None = None, *,
                       unsupported_ops: tuple[str, ...] = (), dla_unsupported_ops: tuple[str, ...] = ("Gemm",),
                       build_error: str | None = None) -> types.ModuleType:  # fmt: skip
    """A fresh fake `tensorrt` module for `version`, recording every call in `module.calls`."""
    gpu = gpu or FakeGpu()
    major = int(version.split(".")[0])
    number = major * 10000 + int(version.split(".")[1]) * 100 + int(version.split(".")[2])
    calls: list[tuple[str, tuple]] = []
    trt = types.ModuleType("tensorrt", "FAKE tensorrt (tests/fake_tensorrt.py): proves our calls, not TensorRT")

    def record(name: str, *args: Any) -> None:
        calls.append((name, args))

    flags = [flag for flag in _FLAGS_10 if major < 11 or flag not in _REMOVED_IN_11]
    BuilderFlag = _enum("BuilderFlag", flags)

    class ILogger(_Strict):
        Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity  # type: ignore[misc]

        def __init__(self) -> None:
            object.__setattr__(self, "_initialised", True)

        def log(self, severity: Any, msg: str) -> None:
            raise ApiRuleViolation("ILogger.log must be overridden")

    def log_error(logger: Any, message: str) -> None:
        if not getattr(logger, "_initialised", False):
            raise ApiRuleViolation("a Python ILogger subclass must call ILogger.__init__ (pybind11 trampoline)")
        logger.log(ILogger.ERROR, message)

    class ITensor(_Strict):
        name: str
        shape: Dims
        dtype: Any

        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class ILayer(_Strict):
        name: str

        def __init__(self, network: Any, node: onnx.NodeProto, inputs: list, outputs: list) -> None:
            self.name = node.name
            self._network, self._op, self._inputs, self._outputs = network, node.op_type, inputs, outputs
            self._precision: Any = None
            self._output_types: dict[int, Any] = {}

        @property
        def type(self) -> Any:
            return LayerType[_LAYER_TYPES.get(self._op, "UNARY")]

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int) -> Any:
            return self._inputs[index]

        def get_output(self, index: int) -> Any:
            return self._outputs[index]

        def _weakly_typed_only(self, what: str) -> None:
            if self._network._strongly_typed:
                raise ApiRuleViolation(f"{what} on layer {self.name!r} of a strongly typed network")

        @property
        def precision(self) -> Any:
            return self._precision if self._precision is not None else DataType.FLOAT

        @precision.setter
        def precision(self, dtype: Any) -> None:
            self._weakly_typed_only("precision")
            record("ILayer.precision", self.name, dtype.name)
            self._precision = dtype

        def set_output_type(self, index: int, dtype: Any) -> None:
            self._weakly_typed_only("set_output_type")
            record("ILayer.set_output_type", self.name, index, dtype.name)
            self._output_types[index] = dtype

    if major >= 11:
        del ILayer.precision, ILayer.set_output_type  # strongly typed: the file's types are the types

    class INetworkDefinition(_Strict):
        def __init__(self, strongly_typed: bool) -> None:
            self._strongly_typed = strongly_typed
            self._layers: list = []
            self._inputs: list = []
            self._outputs: list = []
            self._model: bytes = b""

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_layer(self, index: int) -> Any:
            return self._layers[index]

        def get_input(self, index: int) -> Any:
            return self._inputs[index]

        def get_output(self, index: int) -> Any:
            return self._outputs[index]

    class ParserError:
        def __init__(self, desc: str, node: str = "", operator: str = "") -> None:
            self._desc, self._node, self._operator = desc, node, operator

        def desc(self) -> str:
            return self._desc

        def node_name(self) -> str:
            return self._node

        def node_operator(self) -> str:
            return self._operator

    class OnnxParser(_Strict):
        def __init__(self, network: Any, logger: Any) -> None:
            self._network, self._logger, self._errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> Any:
            return self._errors[index]

        def parse_from_file(self, model: str) -> bool:
            record("OnnxParser.parse_from_file", model)
            try:
                proto = onnx.shape_inference.infer_shapes(onnx.load(model))
            except Exception as exc:
                self._errors.append(ParserError(f"Failed to parse ONNX model: {exc}\nline two"))
                return False
            for node in proto.graph.node:
                if node.op_type in unsupported_ops:
                    self._errors.append(ParserError(f"No importer registered for op: {node.op_type}",
                                                    node.name, node.op_type))  # fmt: skip
                    return False
            self._fill(proto)
            return True

        def _fill(self, proto: onnx.ModelProto) -> None:
            network = self._network
            network._model = proto.SerializeToString()
            initializers = {init.name for init in proto.graph.initializer}
            tensors: dict[str, Any] = {}
            for value in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                dtype = DataType[_ONNX_TYPES[value.type.tensor_type.elem_type]]
                tensors[value.name] = ITensor(value.name, dims, dtype)
            network._inputs = [tensors[value.name] for value in proto.graph.input if value.name not in initializers]
            network._outputs = [tensors[value.name] for value in proto.graph.output]
            for node in proto.graph.node:
                inputs = [tensors.get(name) or ITensor(name, (), DataType.FLOAT) for name in node.input]
                outputs = [tensors.get(name) or ITensor(name, (), DataType.FLOAT) for name in node.output]
                network._layers.append(ILayer(network, node, inputs, outputs))

    class IOptimizationProfile(_Strict):
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            if not isinstance(min, Dims):
                raise ApiRuleViolation("IOptimizationProfile.set_shape takes trt.Dims")
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self._shapes[input] = (min, opt, max)

        def get_shape(self, input: str) -> list:
            return list(self._shapes[input])

    class ITimingCache(_Strict):
        def __init__(self, entries: int) -> None:
            self._entries = entries

        def serialize(self) -> Any:
            return IHostMemory(TIMING_CACHE_MAGIC + str(self._entries).encode())

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class IBuilderConfig(_Strict):
        DLA_core: int
        default_device_type: Any
        builder_optimization_level: int
        profiling_verbosity: Any
        hardware_compatibility_level: Any
        if major < 11:
            int8_calibrator: Any

        def __init__(self) -> None:
            self._flags: set[str] = set()
            self._profiles: list = []
            self._pools: dict[str, int] = {}
            self._timing_cache: Any = None
            self._calibration_profile: Any = None
            object.__setattr__(self, "DLA_core", 0)
            object.__setattr__(self, "default_device_type", DeviceType.GPU)
            object.__setattr__(self, "builder_optimization_level", 3)
            object.__setattr__(self, "profiling_verbosity", ProfilingVerbosity.LAYER_NAMES_ONLY)
            object.__setattr__(self, "hardware_compatibility_level", HardwareCompatibilityLevel.NONE)
            if major < 11:
                object.__setattr__(self, "int8_calibrator", None)

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if not name.startswith("_"):
                record(f"IBuilderConfig.{name}", getattr(value, "name", value))

        def set_flag(self, flag: Any) -> None:
            record("IBuilderConfig.set_flag", flag.name)
            self._flags.add(flag.name)

        def get_flag(self, flag: Any) -> bool:
            return flag.name in self._flags

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool.name, pool_size)
            self._pools[pool.name] = pool_size

        def add_optimization_profile(self, profile: Any) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        if major < 11:

            def set_calibration_profile(self, profile: Any) -> bool:
                self._calibration_profile = profile
                return True

        def can_run_on_DLA(self, layer: Any) -> bool:
            return layer._op not in dla_unsupported_ops

        def create_timing_cache(self, serialized_timing_cache: bytes) -> Any:
            data = bytes(serialized_timing_cache)
            if data and not data.startswith(TIMING_CACHE_MAGIC):
                raise ApiRuleViolation("create_timing_cache got bytes that are not a serialized timing cache")
            record("IBuilderConfig.create_timing_cache", len(data))
            return ITimingCache(int(data[len(TIMING_CACHE_MAGIC):]) if data else 0)

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> Any:
            return self._timing_cache

    class Builder(_Strict):
        def __init__(self, logger: Any) -> None:
            record("Builder", version)
            self._logger = logger

        @property
        def num_DLA_cores(self) -> int:
            return gpu.num_dla_cores

        def create_network(self, flags: int = 0) -> Any:
            record("Builder.create_network", flags)
            strongly = major >= 11 or bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            return INetworkDefinition(strongly)

        def create_builder_config(self) -> Any:
            return IBuilderConfig()

        def create_optimization_profile(self) -> Any:
            return IOptimizationProfile()

        def build_serialized_network(self, network: Any, config: Any) -> Any:
            record("Builder.build_serialized_network", sorted(config._flags))
            error = build_error or self._check(network, config)
            if error:
                log_error(self._logger, error)
                return None
            if config._timing_cache is not None:
                config._timing_cache._entries += network.num_layers
            header = {"version": version, "strongly_typed": network._strongly_typed,
                      "version_compatible": "VERSION_COMPATIBLE" in config._flags, "flags": sorted(config._flags),
                      "detailed": config.profiling_verbosity == ProfilingVerbosity.DETAILED,
                      "layers": [(layer.name, layer.type.name) for layer in network._layers],
                      "io": _io_description(network, config)}  # fmt: skip
            return IHostMemory(ENGINE_MAGIC + json.dumps(header).encode() + b"\n" + network._model)

        def _check(self, network: Any, config: Any) -> str | None:
            precision_flags = config._flags & _PRECISION_FLAGS
            if network._strongly_typed and precision_flags:
                return f"Builder: {sorted(precision_flags)} flags are not allowed for a strongly typed network"
            dynamic = [t.name for t in network._inputs if -1 in t.shape]
            if dynamic and not any(all(name in p._shapes for name in dynamic) for p in config._profiles):
                return "Network has dynamic or shape inputs, but no optimization profile has been defined."
            if config.default_device_type == DeviceType.DLA:
                if config.DLA_core >= gpu.num_dla_cores:
                    return f"DLA core {config.DLA_core} requested but the device has {gpu.num_dla_cores}"
                refused = [layer.name for layer in network._layers if not config.can_run_on_DLA(layer)]
                if refused and "GPU_FALLBACK" not in config._flags:
                    return f"Layer {refused[0]} cannot run on DLA and GPU fallback is not enabled"
            if major < 11 and config.int8_calibrator is not None and "INT8" in config._flags:
                return self._calibrate(network, config.int8_calibrator)
            return None

        def _calibrate(self, network: Any, calibrator: Any) -> str | None:
            algorithm = _CACHE_ALGORITHM[calibrator.get_algorithm().name]
            cache = calibrator.read_calibration_cache()
            header = bytes(cache).split(b"\n", 1)[0].decode() if cache else ""
            if header == f"TRT-{number}-{algorithm}":
                return None
            # A missing or foreign cache is ignored: TensorRT calibrates on batches instead.
            calibrator.get_batch_size()
            names = [t.name for t in network._inputs]
            if calibrator.get_batch(names) is None:
                return "Calibration failure occurred with no scaling factors detected."
            raise ApiRuleViolation("the fake has no calibration on batches")

    class ICudaEngine(_Strict):
        def __init__(self, header: dict, model: bytes) -> None:
            self._header, self._model = header, model
            self._io = header["io"]

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        @property
        def num_layers(self) -> int:
            return len(self._header["layers"])

        @property
        def device_memory_size_v2(self) -> int:
            return 4096 * self.num_layers

        def get_tensor_name(self, index: int) -> str:
            return self._io[index]["name"]

        def _tensor(self, name: str) -> dict:
            return next(t for t in self._io if t["name"] == name)

        def get_tensor_mode(self, name: str) -> Any:
            return TensorIOMode.INPUT if self._tensor(name)["input"] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return DataType[self._tensor(name)["dtype"]]

        def get_tensor_shape(self, name: str) -> Any:
            return Dims(self._tensor(name)["shape"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            return [Dims(shape) for shape in self._tensor(name)["profile"]]

        def create_execution_context(self) -> Any:
            return IExecutionContext(self)

        def create_engine_inspector(self) -> Any:
            return EngineInspector(self)

    class EngineInspector(_Strict):
        def __init__(self, engine: Any) -> None:
            self._engine = engine

        def get_engine_information(self, format: Any) -> str:
            layers = self._engine._header["layers"]
            if not self._engine._header["detailed"]:
                return json.dumps({"Layers": [name for name, _ in layers]})
            return json.dumps({"Layers": [{"Name": name, "LayerType": kind} for name, kind in layers],
                               "Bindings": [t["name"] for t in self._engine._io]})  # fmt: skip

    class IExecutionContext(_Strict):
        def __init__(self, engine: Any) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple] = {}
            self._addresses: dict[str, int] = {}
            self._session = ort.InferenceSession(engine._model, providers=["CPUExecutionProvider"])

        def set_input_shape(self, name: str, shape: Any) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            tensor = self._engine._tensor(name)
            low, _, high = tensor.get("profile") or (tensor["shape"],) * 3
            if len(shape) != len(low) or not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)):
                return False
            self._shapes[name] = tuple(shape)
            return True

        def _inputs_set(self) -> bool:
            return all(t["name"] in self._shapes or -1 not in t["shape"] for t in self._engine._io if t["input"])

        def get_tensor_shape(self, name: str) -> Any:
            tensor = self._engine._tensor(name)
            if tensor["input"]:
                return Dims(self._shapes.get(name, tensor["shape"]))
            if not self._inputs_set():
                raise ApiRuleViolation(f"output shape of {name!r} asked before the input shapes were set")
            batch = next(iter(self._shapes.values()))[0] if self._shapes else tensor["shape"][0]
            return Dims(batch if d == -1 else d for d in tensor["shape"])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if not self._engine._tensor(name)["input"] and not self._inputs_set():
                raise ApiRuleViolation(f"address of output {name!r} set before the input shapes")
            record("IExecutionContext.set_tensor_address", name)
            self._addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("IExecutionContext.execute_async_v3", stream_handle)
            if not self._inputs_set() or set(self._addresses) != {t["name"] for t in self._engine._io}:
                raise ApiRuleViolation("execute_async_v3 before every input shape and tensor address was set")
            bound = dict(self._addresses), dict(self._shapes)
            gpu.enqueue(stream_handle, lambda: self._run(*bound))
            return True

        def _run(self, addresses: dict[str, int], shapes: dict[str, tuple]) -> None:
            feeds = {}
            for tensor in self._engine._io:
                if tensor["input"]:
                    dtype = _NUMPY_TYPES[tensor["dtype"]]
                    shape = shapes[tensor["name"]]
                    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    memory = gpu.memory[addresses[tensor["name"]]]
                    feeds[tensor["name"]] = np.frombuffer(bytes(memory[:nbytes]), dtype).reshape(shape)
            results = self._session.run(None, feeds)
            for output, value in zip(self._session.get_outputs(), results, strict=True):
                data = np.ascontiguousarray(value).tobytes()
                gpu.memory[addresses[output.name]][: len(data)] = data
            gpu.clock_ms += COMPUTE_MS

    class Runtime(_Strict):
        engine_host_code_allowed: bool

        def __init__(self, logger: Any) -> None:
            self._logger = logger
            object.__setattr__(self, "engine_host_code_allowed", False)

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
            data = bytes(serialized_engine)
            if not data.startswith(ENGINE_MAGIC):
                log_error(self._logger, "Serialization assertion failed: magic tag does not match")
                return None
            header_line, model = data[len(ENGINE_MAGIC):].split(b"\n", 1)
            header = json.loads(header_line)
            built = header["version"]
            same = built == version or (header["version_compatible"] and built.split(".")[0] == str(major))
            if not same:
                log_error(self._logger, f"The engine plan file is not compatible with this version of TensorRT, "
                                        f"expecting library version {version} got {built}")  # fmt: skip
                return None
            if header["version_compatible"] and not self.engine_host_code_allowed:
                log_error(self._logger, "Cannot deserialize a version-compatible engine: engine host code not allowed")
                return None
            return ICudaEngine(header, model)

    def nptype(trt_type: Any) -> Any:
        return _NUMPY_TYPES[trt_type.name]

    def _io_description(network: Any, config: Any) -> list[dict]:
        io = []
        for tensor in network._inputs:
            entry = {"name": tensor.name, "input": True, "dtype": tensor.dtype.name, "shape": list(tensor.shape)}
            for profile in config._profiles:
                if tensor.name in profile._shapes:
                    entry["profile"] = [list(dims) for dims in profile._shapes[tensor.name]]
            io.append(entry)
        for tensor in network._outputs:
            io.append({"name": tensor.name, "input": False, "dtype": tensor.dtype.name, "shape": list(tensor.shape)})
        return io

    members: dict[str, Any] = dict(
        __version__=version, ILogger=ILogger, Builder=Builder, BuilderFlag=BuilderFlag, DataType=DataType,
        LayerType=LayerType, DeviceType=DeviceType, MemoryPoolType=MemoryPoolType,
        ProfilingVerbosity=ProfilingVerbosity, HardwareCompatibilityLevel=HardwareCompatibilityLevel,
        LayerInformationFormat=LayerInformationFormat, TensorIOMode=TensorIOMode,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, Dims=Dims, ITensor=ITensor, ILayer=ILayer,
        INetworkDefinition=INetworkDefinition, OnnxParser=OnnxParser, ParserError=ParserError,
        IOptimizationProfile=IOptimizationProfile, ITimingCache=ITimingCache, IHostMemory=IHostMemory,
        IBuilderConfig=IBuilderConfig, ICudaEngine=ICudaEngine, EngineInspector=EngineInspector,
        IExecutionContext=IExecutionContext, Runtime=Runtime, nptype=nptype,
    )  # fmt: skip
    if major < 11:
        members["CalibrationAlgoType"] = CalibrationAlgoType
        members.update(_calibrator_classes(CalibrationAlgoType))
    for name, value in members.items():
        setattr(trt, name, value)
    trt.calls = calls  # type: ignore[attr-defined]  # the recording, not part of TensorRT
    trt.gpu = gpu  # type: ignore[attr-defined]
    return trt


def _calibrator_classes(algorithms: Any) -> dict[str, type]:
    classes: dict[str, type] = {}
    for class_name, algorithm in (("IInt8EntropyCalibrator2", "ENTROPY_CALIBRATION_2"),
                                  ("IInt8EntropyCalibrator", "ENTROPY_CALIBRATION"),
                                  ("IInt8MinMaxCalibrator", "MINMAX_CALIBRATION"),
                                  ("IInt8LegacyCalibrator", "LEGACY_CALIBRATION")):  # fmt: skip

        def get_algorithm(self: Any, _algorithm: str = algorithm) -> Any:
            return algorithms[_algorithm]

        classes[class_name] = type(class_name, (), {"get_algorithm": get_algorithm, "__init__": lambda self: None})
    return classes


# FAKE_ONLY: what the fake module offers that TensorRT does not (its recording).
FAKE_ONLY = frozenset({"calls", "gpu"})


# --- cuda.bindings.runtime -----------------------------------------------------------------------


def make_fake_cudart(gpu: FakeGpu) -> types.ModuleType:
    """A fake `cuda.bindings.runtime`: every call returns (cudaError_t, *results), as cuda-python does."""
    rt = types.ModuleType("cuda.bindings.runtime", "FAKE cuda.bindings.runtime (tests/fake_tensorrt.py)")
    ok = 0
    streams: set[int] = set()
    events: dict[int, float | None] = {}
    counter = iter(range(1, 1 << 30))

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0

    class Properties:
        name = gpu.name.encode()
        major, minor = gpu.compute_capability

    def copy(dst: int, src: int, count: int, kind: int, stream: int) -> tuple:
        if stream not in streams:
            raise ApiRuleViolation("cudaMemcpyAsync on a stream that does not exist")

        def run() -> None:
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                gpu.memory[dst][:count] = ctypes.string_at(src, count)
            else:
                ctypes.memmove(dst, bytes(gpu.memory[src][:count]), count)
            gpu.clock_ms += COPY_MS_PER_KIB * count / 1024

        gpu.enqueue(stream, run)
        return (ok,)

    def malloc_host(nbytes: int) -> tuple:
        array = np.zeros(nbytes, np.uint8)
        gpu.pinned[array.ctypes.data] = array
        return ok, array.ctypes.data

    def free_host(pointer: int) -> tuple:
        if gpu.pinned.pop(pointer, None) is None:
            raise ApiRuleViolation("cudaFreeHost of a pointer cudaMallocHost did not return")
        return (ok,)

    def free(pointer: int) -> tuple:
        if gpu.memory.pop(pointer, None) is None:
            raise ApiRuleViolation("cudaFree of a pointer cudaMalloc did not return")
        return (ok,)

    def stream_create() -> tuple:
        stream = next(counter)
        streams.add(stream)
        return ok, stream

    def event_record(event: int, stream: int) -> tuple:
        gpu.enqueue(stream, lambda: events.__setitem__(event, gpu.clock_ms))
        return (ok,)

    def elapsed(start: int, end: int) -> tuple:
        if events.get(start) is None or events.get(end) is None:
            raise ApiRuleViolation("cudaEventElapsedTime on an event that has not completed")
        return ok, events[end] - events[start]

    def begin_capture(stream: int, mode: int) -> tuple:
        gpu.capturing[stream] = []
        return (ok,)

    def end_capture(stream: int) -> tuple:
        return ok, ("graph", gpu.capturing.pop(stream))

    def graph_launch(executable: tuple, stream: int) -> tuple:
        for operation in executable[1]:
            gpu.enqueue(stream, operation)
        return (ok,)

    def event_create() -> tuple:
        event = next(counter)
        events[event] = None
        return ok, event

    members = dict(
        cudaMemcpyKind=cudaMemcpyKind, cudaStreamCaptureMode=cudaStreamCaptureMode,
        cudaGetErrorName=lambda error: (ok, b"cudaErrorFake"), cudaGetDevice=lambda: (ok, 0),
        cudaGetDeviceProperties=lambda device: (ok, Properties()),
        cudaMalloc=lambda nbytes: (ok, gpu.allocate(nbytes)), cudaFree=free,
        cudaMallocHost=malloc_host, cudaFreeHost=free_host, cudaMemcpyAsync=copy,
        cudaStreamCreate=stream_create, cudaStreamSynchronize=lambda stream: (ok,),
        cudaStreamDestroy=lambda stream: (streams.remove(stream), ok)[1:],
        cudaEventCreate=event_create, cudaEventRecord=event_record, cudaEventElapsedTime=elapsed,
        cudaEventDestroy=lambda event: (events.pop(event), ok)[1:],
        cudaStreamBeginCapture=begin_capture, cudaStreamEndCapture=end_capture,
        cudaGraphInstantiate=lambda graph, flags: (ok, ("exec", graph[1])), cudaGraphLaunch=graph_launch,
        cudaGraphDestroy=lambda graph: (ok,), cudaGraphExecDestroy=lambda graph: (ok,),
    )  # fmt: skip
    for name, value in members.items():
        setattr(rt, name, value)
    rt.streams, rt.events = streams, events  # type: ignore[attr-defined]  # the recording
    return rt


def make_fake_pycuda(gpu: FakeGpu) -> types.ModuleType:
    """A fake `pycuda.driver` on the same fake GPU: what engines/tensorrt/cuda.py's PyCuda uses."""
    driver = types.ModuleType("pycuda.driver", "FAKE pycuda.driver (tests/fake_tensorrt.py)")

    class Device:
        def __init__(self, ordinal: int) -> None:
            self.ordinal = ordinal

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.compute_capability

        def retain_primary_context(self) -> Any:
            return types.SimpleNamespace(push=lambda: None)

    class DeviceAllocation(int):
        def free(self) -> None:
            del gpu.memory[int(self)]

    class HostAllocation(bytearray):
        """The buffer behind a pagelocked array (`array.base`), freed explicitly as in pycuda."""

        def free(self) -> None:
            gpu.pinned.pop(np.frombuffer(self, np.uint8).ctypes.data)

    def pagelocked_empty(shape: tuple, dtype: Any) -> np.ndarray:
        allocation = HostAllocation(max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))
        array = np.ndarray(shape, dtype, buffer=allocation)
        gpu.pinned[array.ctypes.data] = array
        return array

    class Stream:
        count = 0

        def __init__(self) -> None:
            Stream.count += 1
            self.handle = 1000 + Stream.count

        def synchronize(self) -> None:
            pass

    class Event:
        def __init__(self) -> None:
            self.time: float | None = None

        def record(self, stream: Any) -> None:
            gpu.enqueue(stream.handle, lambda: setattr(self, "time", gpu.clock_ms))

        def time_since(self, start: Any) -> float:
            return self.time - start.time

    def memcpy_htod_async(dest: int, src: np.ndarray, stream: Any) -> None:
        data = np.ascontiguousarray(src).tobytes()
        gpu.enqueue(stream.handle, lambda: gpu.memory[int(dest)].__setitem__(slice(0, len(data)), data))

    def memcpy_dtoh_async(dest: np.ndarray, src: int, stream: Any) -> None:
        def run() -> None:
            dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(gpu.memory[int(src)][: dest.nbytes]), np.uint8)

        gpu.enqueue(stream.handle, run)

    members = dict(init=lambda: None, Device=Device, Stream=Stream, Event=Event, pagelocked_empty=pagelocked_empty,
                   mem_alloc=lambda nbytes: DeviceAllocation(gpu.allocate(nbytes)),
                   memcpy_htod_async=memcpy_htod_async, memcpy_dtoh_async=memcpy_dtoh_async)  # fmt: skip
    for name, value in members.items():
        setattr(driver, name, value)
    return driver


def install(monkeypatch: Any, version: str = "10.13.0.35", gpu: FakeGpu | None = None, **options: Any
            ) -> tuple[types.ModuleType, types.ModuleType]:  # fmt: skip
    """Put the fakes where `import tensorrt` and `import cuda.bindings.runtime` find them (for one test)."""
    gpu = gpu or FakeGpu()
    trt = make_fake_tensorrt(version, gpu, **options)
    cudart = make_fake_cudart(gpu)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cudart
