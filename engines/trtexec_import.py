"""Read trtexec's own output files, field for field, into the project's bench record.

The formats are trtexec's (TensorRT's samples/common/sampleReporting.cpp, and the engine inspector
JSON that TensorRT's trt-engine-explorer reads):

- `--exportTimes`: a JSON list with one record per timed query (warm-up excluded): `startEnqMs,
  endEnqMs, startH2dMs, endH2dMs, startComputeMs, endComputeMs, startD2hMs, endD2hMs` (timestamps)
  and `h2dMs, computeMs, d2hMs, latencyMs` (durations; latency = h2d + compute + d2h).
- `--exportProfile`: a JSON list whose first record is `{"count": N}` (profiled iterations), then one
  record per layer: `name, timeMs` (total over N), `averageMs, medianMs, percentage`.
- `--exportLayerInfo`: `{"Layers": [...], "Bindings": [...]}`; with `--profilingVerbosity=detailed`
  each layer is an object with `Name, LayerType, Inputs, Outputs` (tensors with `Format/Datatype`),
  otherwise a bare name.
- the log (stdout): lines `[MM/DD/YYYY-HH:MM:SS] [I] key: value`; `TensorRT version`, `Selected
  Device`, `Compute Capability`, `Device Global Memory`, `Input inference shape : name=BxCxHxW`,
  `Created execution context with device memory size: X MiB`, `Timing trace has N queries`,
  `Throughput: X qps` and the `&&&& PASSED|FAILED TensorRT.trtexec [TensorRT vNNNNNN] ... # command`.

trtexec writes these files with plain stream output (no JSON library): a layer name holding a quote
makes an invalid file; such a file is refused with a one-line error like any other malformed one.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import UserError

TIME_FIELDS = ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
               "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs")  # fmt: skip
PROFILE_FIELDS = ("name", "timeMs", "averageMs", "medianMs", "percentage")
# latencyMs is printed as h2d + compute + d2h, each with 6 significant digits
SUM_TOLERANCE_MS = 1e-3
_LOG_PREFIX = re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] \[([VIWEF])\] ")
_STATUS = re.compile(r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec \[TensorRT v(\d+)\].*? # (.*)$")
_SHAPE = re.compile(r"^Input inference shape\s*:\s*(.+)=([0-9x]+)$")


@dataclass
class TimesTrace:
    """Per-query durations in ms, as trtexec measured them (CUDA events around each stage)."""

    latency_ms: list[float]  # h2d + compute + d2h: trtexec's "Latency"
    gpu_compute_ms: list[float]
    h2d_ms: list[float]
    d2h_ms: list[float]
    enqueue_ms: list[float]  # endEnqMs - startEnqMs: host time to enqueue the query


@dataclass
class LayerProfile:
    name: str
    total_ms: float
    average_ms: float
    median_ms: float
    percentage: float


@dataclass
class LayerInfo:
    name: str
    layer_type: str
    precision: str | None  # of the first input, as trt-engine-explorer does; None for layers without inputs
    tactic: str | None


@dataclass
class TrtexecLog:
    """What the trtexec log says about the run; fields it does not print stay None."""

    status: str | None = None
    tensorrt_version: str | None = None
    command: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    input_name: str | None = None
    input_shape: list[int] | None = None
    context_memory_bytes: int | None = None
    timed_queries: int | None = None
    throughput_qps: float | None = None


def _load_json(path: str | os.PathLike, what: str, flag: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass the file trtexec wrote with {flag}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg} at line {getattr(exc, 'lineno', '?')}); "
                        f"pass the {what} trtexec wrote with {flag}") from None  # fmt: skip


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {value!r} is not a finite number; the file is damaged")
    return float(value)


def read_times(path: str | os.PathLike) -> TimesTrace:
    document = _load_json(path, "timing trace", "--exportTimes")
    if not isinstance(document, list) or not document:
        raise UserError(f"{path}: expected a non-empty list of per-query records; pass trtexec's --exportTimes file")
    columns: dict[str, list[float]] = {name: [] for name in TIME_FIELDS}
    for index, record in enumerate(document):
        if not isinstance(record, dict) or set(record) != set(TIME_FIELDS):
            raise UserError(f"{path}: record {index} is not a trtexec timing record (fields {', '.join(TIME_FIELDS)})"
                            "; pass the --exportTimes file, not --exportProfile")  # fmt: skip
        for name in TIME_FIELDS:
            columns[name].append(_number(record[name], f"{path}: record {index} {name}"))
        stages = columns["h2dMs"][-1] + columns["computeMs"][-1] + columns["d2hMs"][-1]
        if abs(stages - columns["latencyMs"][-1]) > SUM_TOLERANCE_MS * max(1.0, stages):
            raise UserError(f"{path}: record {index} latencyMs {columns['latencyMs'][-1]} is not h2d + compute + d2h "
                            f"({stages:.6g}); the file is damaged")  # fmt: skip
    enqueue = [end - start for start, end in zip(columns["startEnqMs"], columns["endEnqMs"], strict=True)]
    return TimesTrace(columns["latencyMs"], columns["computeMs"], columns["h2dMs"], columns["d2hMs"], enqueue)


def read_profile(path: str | os.PathLike) -> tuple[int, list[LayerProfile]]:
    """(profiled iterations, per-layer times) from trtexec's --exportProfile file."""
    document = _load_json(path, "layer profile", "--exportProfile")
    if not isinstance(document, list) or not document or not isinstance(document[0], dict) or set(document[0]) != {
            "count"}:  # fmt: skip
        raise UserError(f"{path}: does not start with trtexec's {{\"count\": N}} record; pass the --exportProfile file")
    count = document[0]["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{path}: profile count {count!r} is not a positive integer; the file is damaged")
    layers = []
    for index, record in enumerate(document[1:], start=1):
        if not isinstance(record, dict) or set(record) != set(PROFILE_FIELDS) or not isinstance(record["name"], str):
            raise UserError(f"{path}: record {index} is not a layer record (fields {', '.join(PROFILE_FIELDS)}); "
                            "pass the --exportProfile file")  # fmt: skip
        values = [_number(record[key], f"{path}: layer {record['name']!r} {key}") for key in PROFILE_FIELDS[1:]]
        layers.append(LayerProfile(record["name"], *values))
    return count, layers


def read_layer_info(path: str | os.PathLike) -> tuple[list[LayerInfo], list[str]]:
    """(layers, binding names) from trtexec's --exportLayerInfo file."""
    document = _load_json(path, "layer information", "--exportLayerInfo")
    if not isinstance(document, dict) or not isinstance(document.get("Layers"), list):
        raise UserError(f"{path}: no \"Layers\" list; pass the file trtexec wrote with --exportLayerInfo")
    layers = []
    for index, raw in enumerate(document["Layers"]):
        if isinstance(raw, str):
            raise UserError(f"{path}: layer {index} is a bare name; rebuild the engine with "
                            "--profilingVerbosity=detailed to get types and precisions")  # fmt: skip
        if not isinstance(raw, dict) or not isinstance(raw.get("Name"), str) or not isinstance(raw.get("Inputs"), list):
            raise UserError(f"{path}: layer {index} lacks Name/Inputs; the file is damaged or not from trtexec")
        inputs = raw["Inputs"]
        precision = tensor_precision(inputs[0].get("Format/Datatype", "")) if inputs else None
        layers.append(LayerInfo(raw["Name"], str(raw.get("LayerType", "?")), precision, raw.get("TacticName")))
    bindings = document.get("Bindings", [])  # older TensorRT versions wrote no bindings
    return layers, [str(b) for b in bindings]


def tensor_precision(format_text: str) -> str:
    """'Four wide channel vectorized row major Int8 format' -> 'int8' (TensorRT's format descriptions)."""
    text = format_text.lower()
    for token, precision in (("uint8", "uint8"), ("int8", "int8"), ("fp16", "fp16"), ("half", "fp16"),
                             ("bfloat16", "bf16"), ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"),
                             ("int64", "int64"), ("fp8", "fp8"), ("bool", "bool")):  # fmt: skip
        if token in text:
            return precision
    return "unknown"


def read_log(path: str | os.PathLike) -> TrtexecLog:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass trtexec's output, saved with '> trtexec.log 2>&1'")
    log = TrtexecLog()
    recognised = 0
    for number, raw in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        prefix = _LOG_PREFIX.match(raw)
        line = raw[prefix.end():] if prefix else raw.strip()
        recognised += bool(prefix)
        try:
            _read_log_line(log, line.strip())
        except (ValueError, IndexError):
            raise UserError(f"{p}:{number}: unreadable value in {line[:60]!r}; pass trtexec's own output") from None
    if not recognised or log.status is None:
        raise UserError(f"{p}: not a trtexec log (no '[date] [I]' lines or '&&&&' status); pass trtexec's stdout")
    if log.status == "FAILED":
        raise UserError(f"{p}: trtexec reported FAILED; fix the build or run (see the log) before importing")
    return log


def _read_log_line(log: TrtexecLog, line: str) -> None:
    status = _STATUS.match(line)
    if status:
        log.status, log.command = status.group(1), status.group(3)
        return
    shape = _SHAPE.match(line)
    if shape:
        log.input_name, log.input_shape = shape.group(1).strip("'"), [int(d) for d in shape.group(2).split("x")]
        return
    key, _, value = line.partition(": ")
    if key == "TensorRT version":
        log.tensorrt_version = value.strip()
    elif key == "Selected Device":
        log.device["name"] = value.strip()
    elif key == "Compute Capability":
        log.device["compute_capability"] = value.strip()
    elif key == "SMs":
        log.device["sms"] = int(value)
    elif key == "Device Global Memory":
        log.device["memory_bytes"] = int(value.split()[0]) << 20
    elif key == "Created execution context with device memory size":
        log.context_memory_bytes = round(float(value.split()[0]) * 2**20)
    elif key == "Throughput":
        log.throughput_qps = float(value.split()[0])
    elif line.startswith("Timing trace has "):
        log.timed_queries = int(line.split()[3])


def check_times_match_log(times: TimesTrace, log: TrtexecLog, times_path: str, log_path: str) -> None:
    """A one-line error where the timing trace and the log cannot come from the same trtexec run."""
    if log.timed_queries is not None and log.timed_queries != len(times.latency_ms):
        raise UserError(f"{times_path} holds {len(times.latency_ms)} queries but {log_path} timed "
                        f"{log.timed_queries}: they come from different runs; pass matching files")  # fmt: skip


def check_profile_matches_layers(profile: list[LayerProfile], layers: list[LayerInfo], profile_path: str,
                                 layers_path: str) -> None:  # fmt: skip
    """A one-line error where the profile names a layer the engine's layer information does not have."""
    engine_layers = {layer.name for layer in layers}
    foreign = [p.name for p in profile if p.name not in engine_layers]
    if foreign:
        raise UserError(f"{profile_path}: layer {foreign[0]!r} is not in {layers_path}: profile and layer "
                        "information come from different engines; pass matching files")  # fmt: skip


@dataclass
class TrtexecRun:
    """The files of one trtexec run (one batch size); `batch_size` is needed only without a log."""

    times: str
    log: str | None = None
    batch_size: int | None = None


def bench_record(runs: list[TrtexecRun], *, profile: str | None = None, layers: str | None = None,
                 target: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The bench record (engines.bench's schema, timing_source "trtexec") of one engine's trtexec runs.

    Each run gives one latency entry; `profile` and `layers` (from one of the runs) give per-layer
    times and precisions; the logs give the GPU, the TensorRT version and the context's device memory.
    """
    from engines.bench import LatencyResult

    latency, logs = [], []
    for run in runs:
        times = read_times(run.times)
        log = read_log(run.log) if run.log is not None else None
        if log is not None:
            check_times_match_log(times, log, run.times, run.log)
        batch_size = _batch_size(run, log)
        throughput = log.throughput_qps * batch_size if log is not None and log.throughput_qps else None
        latency.append(LatencyResult.from_samples(
            batch_size, times.latency_ms, timing_source="trtexec", throughput_ips=throughput,
            gpu_compute_ms=times.gpu_compute_ms, h2d_ms=times.h2d_ms, d2h_ms=times.d2h_ms, enqueue_ms=times.enqueue_ms,
        ).to_dict())  # fmt: skip
        if log is not None:
            logs.append(log)
    setups = {(log.tensorrt_version, log.device.get("name")) for log in logs}
    if len(setups) > 1:
        raise UserError(f"the logs come from different TensorRT versions or GPUs ({sorted(map(str, setups))}); "
                        "import each engine's runs separately")  # fmt: skip
    layer_rows, precision = _layers(profile, layers)
    first = logs[0] if logs else TrtexecLog()
    engine = {"backend": "tensorrt", "backend_version": first.tensorrt_version, "target": target,
              "precision": precision, "device": first.device or {"name": "unknown"}, "built_with": "trtexec",
              "command": first.command}  # fmt: skip
    memory = {} if first.context_memory_bytes is None else {"device_context_bytes": first.context_memory_bytes}
    return {"engine": engine, "latency": latency, "memory": memory, "layers": layer_rows}


def _batch_size(run: TrtexecRun, log: TrtexecLog | None) -> int:
    from_log = log.input_shape[0] if log is not None and log.input_shape else None
    if from_log is not None and run.batch_size is not None and from_log != run.batch_size:
        raise UserError(f"{run.log} ran batch {from_log}, not {run.batch_size}; drop --batch-size or pass its log")
    batch_size = from_log or run.batch_size
    if batch_size is None:
        raise UserError(f"{run.times}: the batch size is unknown; pass the run's --log (it prints the input shape) "
                        "or --batch-size")  # fmt: skip
    return batch_size


def _layers(profile: str | None, layers: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Per-layer rows (profile times joined with layer types and precisions) and the engine's precision."""
    infos = read_layer_info(layers)[0] if layers is not None else None
    profiled = read_profile(profile)[1] if profile is not None else None
    if profiled is not None and infos is not None:
        check_profile_matches_layers(profiled, infos, profile, layers)
    by_name = {info.name: info for info in infos or []}
    rows = []
    for name in [p.name for p in profiled] if profiled is not None else list(by_name):
        info = by_name.get(name)
        row: dict[str, Any] = {"name": name}
        if info is not None:
            row.update(type=info.layer_type, precision=info.precision, tactic=info.tactic)
        rows.append(row)
    for row, timing in zip(rows, profiled or [], strict=False):
        row.update(average_ms=timing.average_ms, median_ms=timing.median_ms, percentage=timing.percentage)
    precisions = {info.precision for info in infos or [] if info.precision in ("int8", "fp16", "fp32", "bf16", "fp8")}
    precision = next((p for p in ("int8", "fp8", "fp16", "bf16", "fp32") if p in precisions), None)
    return rows, precision
