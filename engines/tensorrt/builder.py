"""Build a TensorRT engine directory from an ONNX file and what `calibrate` wrote beside it.

The directory holds the serialized engine (`model.engine`), the engine inspector's per-layer JSON
(`layers.json`, detailed profiling verbosity), the DLA placement of every layer for DLA targets
(`dla_layers.json`) and the manifest (`engine.json`). It is staged and swapped in whole: a parser
or builder failure is a one-line error carrying TensorRT's own message and leaves nothing behind.
Build paths and their refusals: engines/tensorrt/options.py; TensorRT facts: docs/TENSORRT.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.artifacts import atomic_write_bytes, now_utc, sha256_file, write_json
from engines.engine_dir import check_replaceable, staged_engine_dir
from engines.errors import UserError
from engines.manifest import EngineManifest
from engines.precision_plan import PrecisionPlan
from engines.schemas import TENSORRT_DLA_LAYERS
from engines.targets import Target
from engines.tensorrt.api import dims, make_logger, one_line, require_tensorrt, tensorrt_major
from engines.tensorrt.calibrator import CALIBRATOR_CLASSES, cache_only_calibrator
from engines.tensorrt.cuda import load_cuda
from engines.tensorrt.device import fingerprint, gpu_device, timing_cache_path
from engines.tensorrt.options import HARDWARE_COMPATIBILITY, BuildPath, Options, check_options, choose_build_path
from engines.trt_cache import load_model_calibration_cache, trt_version_number

if TYPE_CHECKING:
    import tensorrt as trt

BACKEND = "tensorrt"
ENGINE_FILE = "model.engine"
LAYERS_FILE = "layers.json"
DLA_LAYERS_FILE = "dla_layers.json"
MIB = 1 << 20


@dataclass
class BuildInputs:
    """What the build reads besides the model, checked against it before TensorRT is touched."""

    model: Path
    model_sha256: str
    cache_bytes: bytes | None = None
    cache_algorithm: str | None = None
    cache_trt_version: int | None = None
    cache_sha256: str | None = None
    plan: PrecisionPlan | None = None
    plan_sha256: str | None = None


def build_engine(model_path: str | os.PathLike, engine_dir: str | os.PathLike, options: Options | None = None
                 ) -> EngineManifest:  # fmt: skip
    """Build `model_path` for `options.target` into `engine_dir` (replacing an engine there)."""
    options = options or Options()
    target = check_options(options)
    check_replaceable(Path(engine_dir), model_path)  # before TensorRT is even looked for
    inputs = read_build_inputs(model_path, options)
    require_tensorrt()
    import tensorrt as trt

    path = choose_build_path(tensorrt_major(), options, qdq_model_beside(options.calibration_cache))
    _check_cache_version(inputs, trt.__version__)
    device = gpu_device(load_cuda(), trt.__version__)
    logger = make_logger()
    builder = trt.Builder(logger)
    network, parser, flags = _parsed_network(builder, logger, path, inputs)  # the parser lives as long as the network
    precision = path.precision or file_precision(network)
    config = builder.create_builder_config()
    calibrator = _configure_precision(config, network, path, inputs, flags)
    _configure_target(config, target, options)
    dla_layers = _place_on_dla(builder, network, config, target, path) if target.dla_core is not None else None
    batch = _add_batch_profile(builder, network, config, options, calibrator is not None)
    cache_file = timing_cache_path(device, options.timing_cache_dir)
    config.set_timing_cache(config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b""), False)
    engine_bytes = _serialized_engine(builder, network, config, calibrator, logger, inputs,
                                      f"{path.name}, {target.name}")  # fmt: skip
    with staged_engine_dir(engine_dir) as staging:
        (staging / ENGINE_FILE).write_bytes(engine_bytes)
        runtime, engine = deserialize_engine(engine_bytes, logger, options.version_compatible)
        (staging / LAYERS_FILE).write_text(_layer_information(engine), encoding="utf-8")
        if dla_layers is not None:
            write_json(staging / DLA_LAYERS_FILE, *TENSORRT_DLA_LAYERS, {"layers": dla_layers})
        build_flags = _build_flags(path, flags, target, options, batch, inputs.cache_sha256, io_tensors(engine),
                                   cache_file)  # fmt: skip
        manifest = EngineManifest(
            backend=BACKEND, backend_version=trt.__version__, target=target.name, precision=precision,
            engine_file=ENGINE_FILE, engine_sha256=sha256_file(staging / ENGINE_FILE),
            model_sha256=inputs.model_sha256, source_model=str(inputs.model.resolve()),
            device_fingerprint=fingerprint(device), device=device, backend_options=dataclasses.asdict(options),
            build_flags=build_flags, created=now_utc(), plan_sha256=inputs.plan_sha256,
        )  # fmt: skip
        manifest.write(staging)
    # Only after the engine is in place: a failed build must not overwrite good timings.
    atomic_write_bytes(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))
    return manifest


def _parsed_network(
    builder: trt.Builder, logger: trt.ILogger, path: BuildPath, inputs: BuildInputs
) -> tuple[trt.INetworkDefinition, trt.OnnxParser, list[str]]:
    """The network parsed from the model, its parser (keep it alive with the network it filled),
    and the builder flags it needs: the path's and those the network itself asks for."""
    import tensorrt as trt

    network = builder.create_network(_network_flags(path))
    parser = trt.OnnxParser(network, logger)
    _parse(parser, inputs.model)
    return network, parser, list(path.flags) + _check_network(network, path, inputs)


def _serialized_engine(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                       calibrator: Any, logger: Any, inputs: BuildInputs, description: str) -> bytes:  # fmt: skip
    """TensorRT's build, or a one-line error saying why it failed."""
    import tensorrt as trt

    print(f"tensorrt: building {inputs.model.name} ({description}); this can take minutes", file=sys.stderr)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.refused:
        raise UserError(calibrator.refused)
    if serialized is None:
        raise UserError(
            f"{inputs.model}: TensorRT {trt.__version__} could not build it: {logger.last_error('no message')}"
        )
    return bytes(memoryview(serialized))


def _build_flags(path: BuildPath, flags: list[str], target: Target, options: Options, batch: dict | None,
                 cache_sha256: str | None, io: list[dict[str, Any]], timing_cache: Path) -> dict[str, Any]:  # fmt: skip
    """How the engine was built, as the manifest records it (informational)."""
    return {
        "path": path.name, "strongly_typed": path.strongly_typed, "flags": flags, "target": target.name,
        "workspace_mib": options.workspace_mib or target.workspace_mib,
        "builder_optimization_level": _optimization_level(target, options), "dla_core": target.dla_core,
        "batch_profile": batch, "version_compatible": options.version_compatible,
        "hardware_compatibility": options.hardware_compatibility,
        "calibration_cache_sha256": cache_sha256, "io": io,
        "timing_cache": str(timing_cache),
    }  # fmt: skip


def read_build_inputs(model_path: str | os.PathLike, options: Options) -> BuildInputs:
    """Read the model's hash, the calibration cache and the plan, refusing any made for another model."""
    model = Path(model_path)
    if not model.is_file():
        raise UserError(f"{model}: no such file; pass the .onnx written by 'mimicnorm-deploy export' or 'calibrate'")
    inputs = BuildInputs(model=model, model_sha256=sha256_file(model))
    if options.calibration_cache is not None:
        # Refuses a cache whose sidecar names another model (TensorRT would use its stale scales).
        header, _ = load_model_calibration_cache(options.calibration_cache, model)
        if header.algorithm not in CALIBRATOR_CLASSES:
            raise UserError(f"{options.calibration_cache}: calibrator {header.algorithm!r} has no TensorRT class")
        cache = Path(options.calibration_cache)
        inputs.cache_bytes, inputs.cache_sha256 = cache.read_bytes(), sha256_file(cache)
        inputs.cache_algorithm, inputs.cache_trt_version = header.algorithm, header.trt_version
    if options.plan is not None:
        inputs.plan, inputs.plan_sha256 = PrecisionPlan.load(options.plan), sha256_file(options.plan)
        # The cache path builds the FP32 file the plan was made on; a Q/DQ file is checked by layer names.
        if options.calibration_cache is not None and inputs.plan.model_sha256 != inputs.model_sha256:
            raise UserError(
                f"{options.plan}: precision plan made for another model than {model} "
                f"(sha256 {inputs.plan.model_sha256[:12]}...); pass that model's plan or re-run calibrate"
            )
    return inputs


def qdq_model_beside(cache: str | None) -> str | None:
    """The Q/DQ model calibrate wrote together with `cache`: its calibration record (a JSON beside
    the cache) names both. None when no record says so."""
    if cache is None:
        return None
    cache_path = Path(cache)
    for record_path in sorted(cache_path.parent.glob("*.json")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        named = record.get("trt_cache") if isinstance(record, dict) else None
        if isinstance(named, str) and Path(named).name == cache_path.name and record.get("output"):
            return str(record["output"])
    return None


def _check_cache_version(inputs: BuildInputs, version: str) -> None:
    # TensorRT silently drops a cache whose header names another version and would calibrate anew.
    if inputs.cache_trt_version is not None and inputs.cache_trt_version != trt_version_number(version):
        raise UserError(
            f"calibration cache header is for TensorRT version number {inputs.cache_trt_version}, this is TensorRT "
            f"{version} ({trt_version_number(version)}); re-run calibrate for this TensorRT version"
        )


def _network_flags(path: BuildPath) -> int:
    import tensorrt as trt

    # TensorRT 11 networks are always strongly typed (the flag is deprecated there); TensorRT 10 asks.
    if path.strongly_typed and tensorrt_major() == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _parse(parser: trt.OnnxParser, model: Path) -> None:
    # parse_from_file, not parse(bytes): it finds external weight files beside the model.
    if parser.parse_from_file(str(model)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    first = errors[0] if errors else None
    named = first is not None and first.node_name()
    where = f" at node {first.node_name()!r} ({first.node_operator()})" if first is not None and named else ""
    reason = one_line(first.desc()) if first is not None else "no message"
    raise UserError(f"{model}: TensorRT's ONNX parser failed{where}: {reason}; re-export or simplify the model")


def _check_network(network: trt.INetworkDefinition, path: BuildPath, inputs: BuildInputs) -> list[str]:
    """Refuse what this network cannot be built as; return the flags it needs beyond the path's."""
    import tensorrt as trt

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    qdq = [layer for layer in layers if layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)]
    if inputs.plan is not None:
        unmatched = sorted(set(inputs.plan.layers) - {plan_node(layer.name, inputs.plan.layers) for layer in layers})
        if unmatched:
            raise UserError(
                f"precision plan names {len(unmatched)} layers this model does not have (e.g. {unmatched[0]!r}): "
                "it was made for another model; pass this model's plan"
            )
    if path.name == "calibration-cache" and qdq:
        raise UserError(
            f"{inputs.model}: already holds Q/DQ scales, so a calibration cache does not apply; build it with "
            "--precision as-typed and no cache, or pass the FP32 model with the cache"
        )
    if path.name == "weakly-typed" and qdq:
        half = trt.DataType.HALF
        if any(layer.get_input(0).dtype == half or layer.get_output(0).dtype == half for layer in qdq):
            raise UserError(
                f"{inputs.model}: holds FP16 Q/DQ, which TensorRT 10 builds only as a strongly typed network; "
                "build it with --precision as-typed"
            )
        return ["INT8"]  # explicit quantization in a weakly typed network
    return []


def file_precision(network: trt.INetworkDefinition) -> str:
    """What a strongly typed network computes in: int8 with Q/DQ layers, fp16 with FP16 tensors, else fp32."""
    import tensorrt as trt

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if any(layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE) for layer in layers):
        return "int8"
    outputs = [layer.get_output(j) for layer in layers for j in range(layer.num_outputs)]
    return "fp16" if any(tensor.dtype == trt.DataType.HALF for tensor in outputs) else "fp32"


def plan_node(layer_name: str, nodes: dict[str, str]) -> str | None:
    """The plan node a TensorRT layer came from: the ONNX parser names a node's first layer after it
    and further layers `<node>_<n>`."""
    if layer_name in nodes:
        return layer_name
    match = re.fullmatch(r"(.+)_\d+", layer_name)
    return match.group(1) if match and match.group(1) in nodes else None


def _configure_precision(config: trt.IBuilderConfig, network: trt.INetworkDefinition, path: BuildPath,
                         inputs: BuildInputs, flags: list[str]) -> Any:  # fmt: skip
    """Builder flags, the cache-reading calibrator and the plan's pinned layers; returns the calibrator."""
    import tensorrt as trt

    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    calibrator = None
    if path.name == "calibration-cache":
        assert inputs.cache_bytes is not None and inputs.cache_algorithm is not None
        calibrator = cache_only_calibrator(inputs.cache_bytes, inputs.cache_algorithm, str(inputs.model))
        config.int8_calibrator = calibrator
    if inputs.plan is not None and not path.strongly_typed and _pin_plan_layers(network, inputs.plan):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    return calibrator


def _pin_plan_layers(network: trt.INetworkDefinition, plan: PrecisionPlan) -> list[str]:
    """Pin the plan's FP16/FP32 layers (precision and output types); INT8 layers stay free."""
    import tensorrt as trt

    types = {"fp16": trt.DataType.HALF, "fp32": trt.DataType.FLOAT}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        node = plan_node(layer.name, plan.layers)
        if node is None or plan.layers[node] not in types:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(output.dtype in (trt.DataType.FLOAT, trt.DataType.HALF) for output in outputs):
            continue  # shape or index outputs keep their type
        layer.precision = types[plan.layers[node]]
        for j in range(layer.num_outputs):
            layer.set_output_type(j, types[plan.layers[node]])
        pinned.append(layer.name)
    return pinned


def _optimization_level(target: Target, options: Options) -> int | None:
    return options.builder_optimization_level if options.builder_optimization_level is not None else (
        target.builder_optimization_level)  # fmt: skip


def _configure_target(config: trt.IBuilderConfig, target: Target, options: Options) -> None:
    import tensorrt as trt

    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # what the engine inspector reports
    workspace_mib = options.workspace_mib or target.workspace_mib
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib * MIB)
    level = _optimization_level(target, options)
    if level is not None:
        config.builder_optimization_level = level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility != "none":
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[options.hardware_compatibility], None)
        if level is None:  # SAME_COMPUTE_CAPABILITY is newer than some TensorRT 10 releases
            raise UserError(f"TensorRT {trt.__version__} has no hardware compatibility level "
                            f"{options.hardware_compatibility!r}; use ampere-plus")  # fmt: skip
        config.hardware_compatibility_level = level


def _place_on_dla(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                  target: Target, path: BuildPath) -> list[dict[str, str]]:  # fmt: skip
    """Default every layer to the target's DLA core with GPU fallback; report where each one runs."""
    import tensorrt as trt

    assert target.dla_core is not None
    if builder.num_DLA_cores <= target.dla_core:
        raise UserError(
            f"target {target.name} runs on DLA core {target.dla_core}, this device has {builder.num_DLA_cores} "
            "DLA cores; pick a GPU target or another core"
        )
    if path.name == "weakly-typed" and "FP16" not in path.flags:
        raise UserError("DLA runs FP16 and INT8 only; build with --precision fp16, a calibration cache or a Q/DQ model")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = target.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    report = [{"layer": layer.name, "type": layer.type.name, "device": "DLA" if config.can_run_on_DLA(layer) else "GPU"}
              for layer in layers]  # fmt: skip
    on_gpu = [entry["layer"] for entry in report if entry["device"] == "GPU"]
    if on_gpu:
        print(f"tensorrt: {len(on_gpu)} of {len(report)} layers fall back to the GPU (DLA cannot run them): "
              f"{', '.join(on_gpu[:8])}{' ...' if len(on_gpu) > 8 else ''}", file=sys.stderr)  # fmt: skip
    return report


def _add_batch_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                       options: Options, calibrating: bool) -> dict[str, list[int]] | None:  # fmt: skip
    """An optimization profile for a dynamic batch (first) dimension; None when every input is fixed."""
    import tensorrt as trt

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [tensor for tensor in inputs if any(dim < 0 for dim in dims(tensor.shape))]
    if not dynamic:
        return None
    low, opt, high = options.batch_profile
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = dims(tensor.shape)
        if any(dim < 0 for dim in shape[1:]):
            raise UserError(
                f"input {tensor.name!r} has dynamic dimensions beyond the batch {tuple(shape)}; "
                "export it with fixed ones"
            )
        rest = shape[1:]
        profile.set_shape(tensor.name, trt.Dims([low, *rest]), trt.Dims([opt, *rest]), trt.Dims([high, *rest]))
    config.add_optimization_profile(profile)
    if calibrating:
        config.set_calibration_profile(profile)
    return {"min": [low], "opt": [opt], "max": [high]}


def deserialize_engine(engine_bytes: bytes, logger: Any, version_compatible: bool
                       ) -> tuple[trt.Runtime, trt.ICudaEngine]:  # fmt: skip
    """The engine with its runtime (which must outlive it), or a one-line UserError with TensorRT's
    reason (another TensorRT version, another GPU...)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    # A version-compatible engine carries its own lean runtime: host code TensorRT must be allowed to run.
    runtime.engine_host_code_allowed = version_compatible
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise UserError(
            f"TensorRT {trt.__version__} cannot load this engine: {logger.last_error('no message')}; "
            "rebuild on this device with 'mimicnorm-deploy build --backend tensorrt'"
        )
    return runtime, engine


def _layer_information(engine: trt.ICudaEngine) -> str:
    import tensorrt as trt

    return engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)


def io_tensors(engine: trt.ICudaEngine) -> list[dict[str, Any]]:
    """Every input and output: name, mode, numpy dtype, shape (-1 for the dynamic batch), profile 0."""
    import numpy as np
    import tensorrt as trt

    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry: dict[str, Any] = {
            "name": name, "input": is_input, "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
            "shape": dims(engine.get_tensor_shape(name)),
        }  # fmt: skip
        if is_input and -1 in entry["shape"]:
            entry["profile"] = [dims(shape) for shape in engine.get_tensor_profile_shape(name, 0)]
        tensors.append(entry)
    return tensors
