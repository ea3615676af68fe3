"""trtexec command lines: the exact invocation that builds and benchmarks one artifact for a target.

Flags follow trtexec's own option parser (TensorRT's samples/common/sampleOptions.cpp) per major version:

- TensorRT 10: precision is chosen by builder flags. Q/DQ and FP16 files are built `--stronglyTyped`, so
  every tensor keeps the type the file gives it (a plan's FP16 Q/DQ layers included: without it TensorRT 10
  treats FP16 Q/DQ as weakly typed and may run them in FP32). An FP32 file with a calibration cache is
  built `--int8 --fp16 --calib=CACHE` (implicit INT8); a precision plan's high-precision layers are
  pinned with `--precisionConstraints=obey --layerPrecisions=NAME:fp16,...`. The per-layer profile needs
  `--separateProfileRun`, otherwise trtexec skips the timing report and `--exportTimes`.
- TensorRT 11: every network is strongly typed and there is no `--int8`, `--fp16`, `--best`, `--calib`
  or precision constraint: the file says what runs. Data transfers are off by default, so
  `--includeDataTransfers` makes the latency include H2D and D2H as on 10.x and in our own harness;
  the separate profile run is always on (its flag is a no-op).
- Both: `--useDLACore=N --allowGPUFallback` for a DLA target (TensorRT 11 supports DLA on AGX Orin
  only), `--memPoolSize=workspace:<cap>M` from the target, `--minShapes/--optShapes/--maxShapes` and
  `--shapes` at the benchmark batch for a dynamic batch axis, a timing cache shared between builds, and
  the exports `import-trtexec` reads (`--exportTimes --exportProfile --exportLayerInfo` with
  `--profilingVerbosity=detailed`, which the layer information needs).

One line per batch size builds an engine whose optimisation profile is exactly that batch, then
benchmarks it; its outputs are named `b<batch>.*` in the output directory.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines.artifacts import read_json
from engines.errors import UserError
from engines.onnx_model import QDQ_OPS, load_onnx
from engines.schemas import PRECISION_PLAN
from engines.targets import Target, parse_tensorrt_version

SUPPORTED_MAJORS = (10, 11)
WARMUP_MS = 500  # as engines.bench: 0.5 s of warm-up, then at least 2 s of timed queries
DURATION_S = 2


@dataclass(frozen=True)
class TrtexecOutputs:
    """Where one batch size's trtexec run writes: the engine, its log and the three exports."""

    engine: Path
    log: Path
    times: Path
    profile: Path
    layers: Path

    @classmethod
    def for_batch(cls, out_dir: str | os.PathLike, batch_size: int) -> TrtexecOutputs:
        stem = Path(out_dir) / f"b{batch_size}"
        return cls(*(Path(f"{stem}.{suffix}") for suffix in ("plan", "log", "times.json", "profile.json",
                                                             "layers.json")))  # fmt: skip


@dataclass(frozen=True)
class ModelInput:
    name: str
    dims: tuple[int | str, ...]  # a str is a named (dynamic) axis


def artifact_kind(model: onnx.ModelProto, calibration_cache: str | os.PathLike | None) -> str:
    """fp32, fp16, qdq or int8-cache (an FP32 model built with a TensorRT 10 calibration cache)."""
    has_qdq = any(node.op_type in QDQ_OPS for node in model.graph.node)
    if calibration_cache is not None:
        if has_qdq:
            raise UserError("a Q/DQ model carries its own scales; pass the FP32 model.onnx with --calib-cache")
        return "int8-cache"
    if has_qdq:
        return "qdq"
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def model_input(model: onnx.ModelProto) -> ModelInput:
    """The model's one image input; batch may be dynamic, no other axis may be."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"model has {len(inputs)} inputs; trtexec lines are generated for one image input")
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in inputs[0].type.tensor_type.shape.dim)  # fmt: skip
    if not dims or any(not isinstance(d, int) for d in dims[1:]):
        raise UserError(f"input {inputs[0].name!r} has shape {dims}; only the batch axis may be dynamic, re-export")
    return ModelInput(inputs[0].name, dims)


def plan_high_precision_layers(plan_path: str | os.PathLike) -> dict[str, str]:
    """Node name -> precision of the layers a precision plan keeps out of INT8."""
    plan = read_json(plan_path, *PRECISION_PLAN)  # only its layers: what a TensorRT 10 build pins
    return {node: precision for node, precision in plan["layers"].items() if precision != "int8"}


def trtexec_lines(
    model_path: str | os.PathLike,
    target: Target,
    out_dir: str | os.PathLike,
    *,
    trt_version: str | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    calibration_cache: str | os.PathLike | None = None,
    plan: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
) -> list[list[str]]:
    """One trtexec argument list per batch size (without the program name)."""
    if target.backend != "tensorrt":
        raise UserError(f"target {target.name} runs {target.backend}, not TensorRT; pick a jetson-* or desktop-gpu")
    version = trt_version or target.default_tensorrt_version
    if version is None:
        raise UserError(f"target {target.name} names no TensorRT version; pass --trt-version")
    major = parse_tensorrt_version(version)[0]
    if major not in SUPPORTED_MAJORS:
        raise UserError(f"TensorRT {version}: trtexec lines exist for TensorRT 10.x and 11.x; pass --trt-version")
    model = load_onnx(model_path, load_external_data=False, check=False)  # TensorRT's parser is the judge
    kind = artifact_kind(model, calibration_cache)
    image = model_input(model)
    common = [
        f"--onnx={model_path}",
        *_precision_flags(major, kind, calibration_cache, plan),
        *_device_flags(major, target),
        f"--timingCacheFile={timing_cache or Path(out_dir) / 'timing.cache'}",
        "--profilingVerbosity=detailed",
        f"--warmUp={WARMUP_MS}",
        f"--duration={DURATION_S}",
        *(["--separateProfileRun"] if major == 10 else ["--includeDataTransfers"]),
    ]
    lines = []
    for batch_size in batch_sizes:
        outputs = TrtexecOutputs.for_batch(out_dir, batch_size)
        lines.append([
            *common, *_shape_flags(image, batch_size), f"--saveEngine={outputs.engine}",
            f"--exportTimes={outputs.times}", f"--exportProfile={outputs.profile}",
            f"--exportLayerInfo={outputs.layers}",
        ])  # fmt: skip
    return lines


def _precision_flags(major: int, kind: str, calibration_cache, plan) -> list[str]:
    if major >= 11:
        if kind == "int8-cache":
            raise UserError("TensorRT 11 has no calibration caches (no --int8/--calib); build the Q/DQ model instead")
        return []  # strongly typed: the types in the file decide
    if kind in ("qdq", "fp16"):
        return ["--stronglyTyped"]
    if kind == "fp32":
        return []
    flags = ["--int8", "--fp16", f"--calib={calibration_cache}"]
    layers = plan_high_precision_layers(plan) if plan is not None else {}
    if layers:
        bad = [name for name in layers if any(c in name for c in ",:'")]
        if bad:
            raise UserError(f"plan layer {bad[0]!r} has a ',', ':' or quote, which --layerPrecisions cannot carry")
        spec = ",".join(f"{name}:{precision}" for name, precision in layers.items())
        flags += ["--precisionConstraints=obey", f"--layerPrecisions={spec}"]
    return flags


def _device_flags(major: int, target: Target) -> list[str]:
    flags = []
    if target.dla_core is not None:
        if major >= 11 and not target.name.startswith("jetson-orin-agx"):
            raise UserError(f"TensorRT 11 runs DLA on AGX Orin only, not {target.name}; use TensorRT 10 or the GPU")
        flags += [f"--useDLACore={target.dla_core}", "--allowGPUFallback"]
    if target.workspace_mib is not None:
        flags.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if target.builder_optimization_level is not None:
        flags.append(f"--builderOptimizationLevel={target.builder_optimization_level}")
    return flags


def _shape_flags(image: ModelInput, batch_size: int) -> list[str]:
    batch, *rest = image.dims
    if isinstance(batch, int):
        if batch != batch_size:
            raise UserError(f"input {image.name!r} has a fixed batch of {batch}; benchmark batch {batch} only")
        return []
    name = f"'{image.name}'" if any(c in image.name for c in ",:") else image.name
    spec = f"{name}:{'x'.join(str(d) for d in (batch_size, *rest))}"
    return [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}", f"--shapes={spec}"]


def power_line(line: list[str]) -> list[str]:
    """The run that keeps a built engine busy while tegrastats samples power: the benchmark line with
    `--loadEngine` instead of the build flags and no exports (the script adds its --duration)."""
    keep = ("--shapes=", "--useDLACore=", "--warmUp=", "--includeDataTransfers")
    engine = next(arg for arg in line if arg.startswith("--saveEngine=")).removeprefix("--saveEngine=")
    return [f"--loadEngine={engine}", *(a for a in line if a.startswith(keep))]


def render_script(lines: list[list[str]], out_dir: str | os.PathLike, batch_sizes: tuple[int, ...],
                  power_duration_s: int = 10) -> str:  # fmt: skip
    """A bash script running each line with its log beside its exports; TRTEXEC overrides the binary.

    With TEGRASTATS set (e.g. "tegrastats" or "sudo -n tegrastats"), each engine then runs again for
    POWER_SECONDS (default `power_duration_s`) seconds while tegrastats samples every 100 ms into
    b<batch>.tegrastats.log.
    """
    quoted_dir = shlex.quote(os.fspath(out_dir))
    body = [
        "#!/usr/bin/env bash",
        "# Generated by 'mimicnorm-deploy trtexec': build and benchmark, one engine per batch size.",
        "set -euo pipefail",
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        f"mkdir -p {quoted_dir}",
    ]
    for args, batch_size in zip(lines, batch_sizes, strict=True):
        log = TrtexecOutputs.for_batch(out_dir, batch_size).log
        body.append(f'"$TRTEXEC" {shlex.join(args)} > {shlex.quote(os.fspath(log))} 2>&1')
    body.append('if [ -n "${TEGRASTATS:-}" ]; then')
    for args, batch_size in zip(lines, batch_sizes, strict=True):
        stem = shlex.quote(os.fspath(Path(out_dir) / f"b{batch_size}"))
        body += [
            f"  $TEGRASTATS --interval 100 > {stem}.tegrastats.log & sampler=$!",
            f'  "$TRTEXEC" {shlex.join(power_line(args))} --duration="${{POWER_SECONDS:-{power_duration_s}}}" '
            f"> {stem}.power.log 2>&1",
            '  kill "$sampler"; wait "$sampler" 2>/dev/null || true',
        ]
    body.append("fi")
    return "\n".join(body) + "\n"
