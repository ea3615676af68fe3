"""Post-training INT8 quantization to a symmetric Q/DQ ONNX model that TensorRT and ONNX Runtime both run.

Built on `onnxruntime.quantization.quantize_static`. The settings are fixed by what TensorRT
accepts (docs/TENSORRT.md section 2): QDQ format, int8 activations and weights, every zero point 0,
per-channel weight scales on axis 0, and float biases (TensorRT's DequantizeLinear takes int8,
not the int32 bias ORT would write; ORT's CPU kernels quantize a float bias themselves).

Activation ranges come from `calibration.ranges` (MinMax, Percentile, MSE or TensorRT's entropy)
and reach quantize_static as its calibration cache, so ORT runs no calibration of its own and
every activation scale it writes is amax / 127 of the chosen method.

Where the Q/DQ pairs go depends on who runs the model (PLACEMENTS):
- "tensorrt": the inputs and weights of Conv/Gemm/MatMul and the skip input of every residual Add
  (an Add of two activations; both inputs where no Conv feeds either, `qdq.residual_branch_inputs`),
  nothing on any output. That is the pattern TensorRT fuses: it carries a scale across Relu and
  pooling itself, and fuses Conv + residual Add (+ Relu) into one kernel when the branch input
  stays unquantized, rounding the sum once (docs/TENSORRT.md section 2: the placement NVIDIA's
  Model Optimizer writes).
- "onnxruntime": ORT's own placement, Q/DQ on the inputs and outputs of every op it knows, the
  DQ -> op -> Q node units its CPU kernels fuse into QLinearConv and friends. ORT cannot run the
  tensorrt placement well: a Conv feeding a residual Add's float branch has no Q after it, so it
  stays a float Conv (9 of ResNet-20's 21), and the model ran 2x slower than FP32 where this
  placement ran at 0.55x (docs/BENCHMARKS.md section 4.1). Hence two placements. Two ORT rules
  change which range a tensor gets there: the input of a Relu/Clip takes the Relu's output range,
  and the output of a value-preserving op (Flatten, Reshape, MaxPool, ...) takes its input's range.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

from calibration.inputs import load_fp32_model
from calibration.qdq import (
    dangling_qdq,
    qdq_source,
    qdq_zero_point_violations,
    quantizable_layers,
    residual_branch_inputs,
    tensorrt_placement_violations,
)
from calibration.ranges import DEFAULT_PERCENTILE, ActivationRanges
from engines.artifacts import atomic_path
from engines.errors import UserError
from engines.onnx_model import QDQ_OPS

ORT_EXTRA_OPTIONS = {
    # Zero point 0 everywhere: TensorRT accepts symmetric Q/DQ only.
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    # Keep biases float: TensorRT cannot parse an int32 DequantizeLinear.
    "QuantizeBias": False,
}
# Activation encodings. "int8-symmetric" is what TensorRT requires (and what ARM CPUs run well).
# "uint8" (asymmetric, weights still symmetric int8) is ONNX Runtime's native U8S8 form on x86:
# there, symmetric int8 activations are converted to uint8 around every fused kernel, and measured
# on ResNet-20 (AVX2, no VNNI) they made INT8 2x slower than FP32 while U8S8 ran 1.4x faster.
ACTIVATION_ENCODINGS = ("int8-symmetric", "uint8")
PLACEMENTS = ("tensorrt", "onnxruntime")  # see the module docstring
# The tensorrt placement: quantize only these ops' inputs, never an output.
TENSORRT_QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add"]


@dataclass
class QuantizeConfig:
    per_channel: bool = False  # one weight scale per output channel (axis 0) instead of per tensor
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI (see docs/BACKGROUND.md section 3)
    method: str = "minmax"  # activation ranges: minmax, percentile, mse or entropy (calibration.ranges)
    batch_size: int = 32  # images per calibration batch; the ranges do not depend on it
    percentile: float = DEFAULT_PERCENTILE  # for method "percentile": the share of |x| kept inside the range
    activations: str = "int8-symmetric"  # or "uint8" (ONNX Runtime on x86): see ACTIVATION_ENCODINGS
    placement: str = "tensorrt"  # or "onnxruntime": where the Q/DQ pairs go, see PLACEMENTS


@dataclass
class QuantizeResult:
    output_path: str
    config: dict  # QuantizeConfig fields plus the fixed ORT settings used
    num_calibration_images: int
    quantized_nodes: list[str]  # names of the nodes that read at least one dequantized input
    activation_scales: dict[str, float]  # FP32 tensor name -> scale of its QuantizeLinear (amax / 127)
    amax: dict[str, float] = field(default_factory=dict)  # calibrated amax of every FP32 tensor
    excluded_nodes: list[str] = field(default_factory=list)  # nodes left in float on request


def write_qdq_model(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    output_path: str | os.PathLike,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    nodes_to_exclude: Sequence[str] = (),
    activations: str = "int8-symmetric",
    placement: str = "tensorrt",
) -> QuantizeResult:
    """Write the INT8 Q/DQ twin of `model_path` with activation scales amax / 127 from `ranges`
    (or, for uint8 activations, the scale and zero point of `ranges.asymmetric_range`), with its
    Q/DQ pairs where `placement` puts them.

    Nodes named in `nodes_to_exclude` keep float inputs and outputs (a mixed-precision plan's
    high-precision layers). `ranges` must have been measured on this very model.
    """
    _check_encoding(activations, placement)
    path = Path(model_path)
    model = load_fp32_model(path)
    ranges.require_model(path)
    _check_output_path(model_path, output_path)
    _check_node_names(model, path, nodes_to_exclude)
    fp32_tensor_names = {i.name for i in model.graph.input} | {o for node in model.graph.node for o in node.output}
    config = QuantizeConfig(
        per_channel=per_channel, reduce_range=reduce_range, method=ranges.method, batch_size=ranges.batch_size,
        percentile=ranges.percentile if ranges.percentile is not None else DEFAULT_PERCENTILE,
        activations=activations, placement=placement,
    )  # fmt: skip
    extra_options = _ort_extra_options(config)
    quantize_options, float_inputs = _placement_choice(model, path, placement, nodes_to_exclude)
    quantized = _quantize_with_ort(model, ranges, output_path, config, nodes_to_exclude, extra_options,
                                   quantize_options, float_inputs)  # fmt: skip
    return QuantizeResult(
        output_path=str(output_path),
        config=_recorded_config(config, extra_options),
        num_calibration_images=ranges.num_images,
        quantized_nodes=_quantized_node_names(quantized),
        activation_scales=_activation_scales(quantized, fp32_tensor_names),
        amax=dict(ranges.amax),
        excluded_nodes=list(nodes_to_exclude),
    )


def _check_encoding(activations: str, placement: str) -> None:
    if activations not in ACTIVATION_ENCODINGS:
        raise UserError(f"activation encoding {activations!r} is not one of {', '.join(ACTIVATION_ENCODINGS)}")
    if placement not in PLACEMENTS:
        raise UserError(f"Q/DQ placement {placement!r} is not one of {', '.join(PLACEMENTS)}")


def _check_node_names(model: onnx.ModelProto, path: Path, nodes_to_exclude: Sequence[str]) -> None:
    node_names = {node.name for node in model.graph.node}
    unknown = [name for name in nodes_to_exclude if name not in node_names]
    if unknown:
        raise UserError(f"{path}: no node named {', '.join(map(repr, unknown))}; exclude nodes by their ONNX names")


def _symmetric(config: QuantizeConfig) -> bool:
    return config.activations == "int8-symmetric"


def _ort_extra_options(config: QuantizeConfig) -> dict:
    """quantize_static's extra_options: the fixed ones, the activation encoding, and for TensorRT's
    placement no Q/DQ on the outputs of the quantized operators."""
    extra_options = {**ORT_EXTRA_OPTIONS, "ActivationSymmetric": _symmetric(config)}
    if config.placement == "tensorrt":
        extra_options["OpTypesToExcludeOutputQuantization"] = TENSORRT_QUANTIZED_OPS
    return extra_options


def _placement_choice(
    model: onnx.ModelProto, path: Path, placement: str, nodes_to_exclude: Sequence[str]
) -> tuple[dict, dict[str, set[int] | None]]:
    """quantize_static's arguments choosing the nodes it quantizes, and the inputs to give back
    their float tensor after it has written Q/DQ (node -> input indices; None: all its inputs)."""
    float_inputs: dict[str, set[int] | None] = dict.fromkeys(nodes_to_exclude)
    if placement != "tensorrt":
        return {}, float_inputs
    excluded = set(nodes_to_exclude)
    chosen = [node.name for node in quantizable_layers(model) if node.name not in excluded]
    if not chosen:
        raise UserError(f"{path}: every quantizable layer is excluded; leave at least one in INT8")
    float_inputs.update(_residual_branch_float_inputs(model, excluded))
    return {"op_types_to_quantize": TENSORRT_QUANTIZED_OPS, "nodes_to_quantize": chosen}, float_inputs


def _quantize_with_ort(
    model: onnx.ModelProto,
    ranges: ActivationRanges,
    output_path: str | os.PathLike,
    config: QuantizeConfig,
    nodes_to_exclude: Sequence[str],
    extra_options: dict,
    quantize_options: dict,
    float_inputs: dict[str, set[int] | None],
) -> onnx.ModelProto:
    """The Q/DQ model ONNX Runtime's quantize_static writes from our ranges, float inputs given
    back, checked and written atomically to `output_path`."""
    symmetric = _symmetric(config)
    with (
        tempfile.TemporaryDirectory(prefix="mimicnorm-qdq.") as tmp_dir,
        atomic_path(output_path) as tmp,
        _without_pre_process_advice(),
    ):
        cache = _ranges_cache(ranges, symmetric, Path(tmp_dir) / "ranges.json")
        # A ModelProto, not the path: given a path, ORT writes `<model>-inferred.onnx` next to the
        # input model (and leaves it there if anything fails). Its other temporary files go to the
        # system temp directory.
        quantize_static(
            model,
            tmp,
            None,  # the cache holds every range: ORT runs no calibration
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra_options,
            calibration_cache_path=cache,
            **quantize_options,
        )
        quantized = onnx.load(str(tmp))
        if float_inputs:
            _feed_float_inputs(quantized, float_inputs)
            onnx.save(quantized, tmp)
        _check_written(quantized, symmetric, config.placement)
    return quantized


def _recorded_config(config: QuantizeConfig, extra_options: dict) -> dict:
    """The QuantizeConfig fields plus the fixed ONNX Runtime settings, as the result records them."""
    return {
        **asdict(config),
        "quant_format": "QDQ",
        "activations": config.activations,
        "activation_type": "QInt8" if _symmetric(config) else "QUInt8",
        "weight_type": "QInt8",
        "extra_options": extra_options,
    }


def _ranges_cache(ranges: ActivationRanges, symmetric: bool, cache: Path) -> Path:
    """`ranges` as ONNX Runtime's calibration cache: (-amax, amax) per tensor, or for uint8
    activations the asymmetric range."""
    bounds = {name: (-amax, amax) if symmetric else ranges.asymmetric_range(name) for name, amax in ranges.amax.items()}
    tensor_ranges = {name: (np.array(lo, np.float32), np.array(hi, np.float32)) for name, (lo, hi) in bounds.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, tensor_ranges), cache)
    return cache


def _check_written(quantized: onnx.ModelProto, symmetric: bool, placement: str) -> None:
    """What ONNX Runtime wrote must keep our promises; a broken one is our bug, not the user's."""
    # Only the symmetric encoding promises zero points of 0 (TensorRT's requirement).
    violations = qdq_zero_point_violations(quantized) if symmetric else []
    if violations:
        raise RuntimeError(
            f"internal error: ONNX Runtime wrote Q/DQ nodes with a nonzero or non-int8 zero point "
            f"({', '.join(violations[:5])}); TensorRT would reject the model"
        )
    violations = dangling_qdq(quantized)
    if placement == "tensorrt":
        violations += tensorrt_placement_violations(quantized)
    if violations:
        raise RuntimeError(f"internal error: misplaced Q/DQ nodes: {'; '.join(violations[:5])}")


def _check_output_path(model_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    if Path(output_path).resolve() == Path(model_path).resolve():
        raise UserError(f"{output_path}: output would overwrite the FP32 input model; pass another output path")


def _residual_branch_float_inputs(model: onnx.ModelProto, excluded: set[str]) -> dict[str, set[int]]:
    """The branch input of every quantized residual Add, which TensorRT's placement leaves float.

    ORT quantizes both inputs of an Add. TensorRT fuses Conv + Add (+ Relu) into one INT8 kernel
    when only the skip input carries Q/DQ; the branch then stays in the Conv's accumulator and is
    rounded once, at the fused output. Q/DQ on the branch too would force a separate INT8 Add
    (NVIDIA, TensorRT Developer Guide, "Q/DQ Layer-Placement Recommendations").
    """
    branches = residual_branch_inputs(model)
    return {name: {index} for name, index in branches.items() if index is not None and name not in excluded}


def _feed_float_inputs(model: onnx.ModelProto, float_inputs: dict[str, set[int] | None]) -> None:
    """Give the named nodes their float inputs back (the listed input indices, or all of them for
    None), and drop the Q/DQ pairs nothing reads any more.

    ORT leaves an excluded node's weights float but still feeds it the dequantized copy of an
    activation that it shares with quantized consumers, so the layer would see INT8 rounding.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name not in float_inputs:
            continue
        indices = float_inputs[node.name]
        for index, name in enumerate(node.input):
            if indices is not None and index not in indices:
                continue
            node.input[index] = qdq_source(name, producers) or name
    graph_outputs = {output.name for output in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | graph_outputs
        unread = [n for n in model.graph.node if n.op_type in QDQ_OPS and not any(o in read for o in n.output)]
        if not unread:
            break
        for node in unread:
            model.graph.node.remove(node)
    read = {name for node in model.graph.node for name in node.input}
    for initializer in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(initializer)


def _quantized_node_names(model: onnx.ModelProto) -> list[str]:
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in QDQ_OPS and any(name in dequantized for name in node.input)
    ]


def _activation_scales(model: onnx.ModelProto, fp32_tensor_names: set[str]) -> dict[str, float]:
    initializers = {init.name: init for init in model.graph.initializer}
    dequantize_outputs: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            dequantize_outputs.setdefault(node.input[0], []).append(node.output[0])
    scales = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        name = node.input[0]
        if name not in fp32_tensor_names:
            # ORT renames a graph output it quantizes (logits -> logits_QuantizeLinear_Input) and gives
            # the FP32 name to the DequantizeLinear behind it; TensorRT caches use the FP32 names.
            name = next((out for out in dequantize_outputs.get(node.output[0], []) if out in fp32_tensor_names), name)
        scales[name] = numpy_helper.to_array(initializers[node.input[1]]).item()
    return scales


class _DropPreProcessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _without_pre_process_advice() -> Iterator[None]:
    """Silence quantize_static's two "consider pre-processing" warnings on the root logger.

    That pre-processing is ORT graph optimization plus shape inference: quantize_static runs the
    shape inference itself, and the optimizer's fusions would change the graph TensorRT should
    see as exported, so the advice does not apply here.
    """
    advice_filter = _DropPreProcessAdvice()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)
