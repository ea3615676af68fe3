"""Mixed-precision plans: which layers run in INT8 and which in high precision, chosen by an accuracy gate.

The layers are `qdq.quantizable_layers`: every Conv/Gemm/MatMul with a weight, and every residual Add.
1. Sensitivity: for every such layer, the logits SQNR of the model with only that layer in INT8
   (its input activations, and weights, through Q/DQ), run by ONNX Runtime with graph
   optimizations off, i.e. Q/DQ simulated in float, the same numbers on every CPU. Measured on
   the first SENSITIVITY_IMAGES held-out images: it only ranks the layers (the gate is measured
   on all of them), and a pass per layer over every held-out image was most of a plan's cost.
2. The planner starts from all layers in INT8 and moves the most sensitive layer to the high
   precision type, one at a time, until the held-out images pass the gate (top-1 drop and/or
   logits SQNR against the FP32 model); each move is recorded with its reason. Where all INT8
   already passes, nothing moves and step 1 is skipped (the plan records no sensitivity).
   A top-1 gate is only as fine as its hold-out: one image is 1/N of top-1, and with no image lost
   the 95 % upper bound of the true loss is still 3/N (the "rule of three", Hanley & Lippman-Hand
   1983). So a gate of t needs at least 3/t held-out images (600 for half a point); a smaller
   hold-out is refused, since any single flipped image would move layers for noise. The top-1
   drop is the paired difference on the same images (images the plan loses minus images it gains,
   over N); the plan records both counts and the gate's resolution.
3. `write_mixed_model` writes the plan as a Q/DQ model whose high-precision layers read float
   activations and weights: FP32 (CPU targets), or FP16 (GPU targets: everything but the Q/DQ
   nodes in FP16, `fp16.convert_qdq_fp16`). The gate is measured on exactly that model.
The plan's JSON (`PrecisionPlan`, what an engine builder reads) is `engines.precision_plan`'s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from calibration.fp16 import convert_fp16, convert_qdq_fp16
from calibration.inputs import calibration_batch_images, image_input, load_fp32_model
from calibration.metrics import sqnr_db
from calibration.qdq import quantizable_layers
from calibration.quantize import QuantizeResult, write_qdq_model
from calibration.ranges import ActivationRanges, images_sha256
from engines.artifacts import atomic_path, sha256_file
from engines.errors import UserError
from engines.onnxruntime.session import run_model
from engines.precision_plan import (
    HIGH_PRECISIONS,
    Gate,
    GateResult,
    LayerSensitivity,
    Move,
    PrecisionPlan,
    gate_resolution,
    qdq_options,
)

SENSITIVITY_IMAGES = 128  # the first held-out images, where each layer's sensitivity is measured

# message(text): one line per step of the planner (sensitivity of each layer, each move).
PlanProgress = Callable[[str], None]
GateMeter = Callable[[dict[str, str]], GateResult]  # a candidate plan (layer -> precision) -> its gate result


def layer_sensitivity(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    images: np.ndarray,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    activations: str = "int8-symmetric",
    placement: str = "tensorrt",
    progress: PlanProgress | None = None,
) -> list[LayerSensitivity]:
    """Logits SQNR with one layer at a time in INT8 (all else FP32), on `images`, in graph order."""
    model = _planned_model(model_path, ranges)
    reference = _logits(model_path, images)
    all_nodes = [node.name for node in model.graph.node]
    options = qdq_options(per_channel, reduce_range, activations, placement)
    sensitivity = []
    with tempfile.TemporaryDirectory(prefix="mimicnorm-plan.") as tmp:
        for node in quantizable_layers(model):
            others = [name for name in all_nodes if name != node.name]
            result = write_qdq_model(
                model_path, ranges, Path(tmp) / "one_layer.onnx", nodes_to_exclude=others, **options
            )
            sqnr = sqnr_db(reference, _logits(result.output_path, images))
            sensitivity.append(LayerSensitivity(node.name, node.op_type, sqnr))
            if progress is not None:
                progress(f"sensitivity: {node.name} alone in INT8 gives logits SQNR {sqnr:.1f} dB")
    return sensitivity


def plan_precision(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    holdout_images: np.ndarray,
    gate: Gate,
    *,
    holdout_labels: np.ndarray | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activations: str = "int8-symmetric",
    placement: str = "tensorrt",
    high_precision: str = "fp32",
    progress: PlanProgress | None = None,
) -> PrecisionPlan:
    """Plan INT8 for as many layers as the gate allows, moving the most sensitive ones out first.

    `holdout_images` (float32 N x C x H x W) are calibration-split images not used for `ranges`;
    with `holdout_labels` the top-1 drop is FP32 accuracy minus the plan's, else the share of
    images whose top-1 class changes. Raises UserError when even the all-high-precision model
    fails the gate (FP16 can; FP32 cannot).
    """
    gate.check(len(holdout_images))
    if high_precision not in HIGH_PRECISIONS:
        raise UserError(f"high precision {high_precision!r} is not one of {', '.join(HIGH_PRECISIONS)}")
    model = _planned_model(model_path, ranges)
    holdout_images = _holdout_batch(model, model_path, holdout_images, holdout_labels)
    options = qdq_options(per_channel, reduce_range, activations, placement)
    measure = _gate_meter(model_path, ranges, holdout_images, holdout_labels, gate, options, high_precision)
    _check_a_plan_can_pass(measure, model, high_precision)
    layers = {node.name: "int8" for node in quantizable_layers(model)}
    result = measure(layers)
    if result.passed:
        # Nothing to move: ranking the layers would cost one pass per layer and change nothing.
        sensitivity: list[LayerSensitivity] = []
        moved: list[Move] = []
        if progress is not None:
            progress(f"plan: every layer in INT8 passes the gate ({_describe(result)}); no sensitivity needed")
    else:
        ranked_on = holdout_images[:SENSITIVITY_IMAGES]
        sensitivity = layer_sensitivity(model_path, ranges, ranked_on, **options, progress=progress)
        layers, moved, result = _move_until_passing(sensitivity, measure, high_precision, result, progress)
    return PrecisionPlan(
        model_sha256=ranges.model_sha256,
        calibration_sha256=ranges.calibration_sha256,
        holdout_sha256=images_sha256(holdout_images),
        method=ranges.method,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activations=activations,
        placement=placement,
        high_precision=high_precision,
        gate=gate,
        holdout_images=len(holdout_images),
        gate_resolution=None if gate.max_top1_drop is None else gate_resolution(len(holdout_images)),
        layers=layers,
        sensitivity=sensitivity,
        moved=moved,
        result=result,
    )


def _holdout_batch(
    model: onnx.ModelProto, model_path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None
) -> np.ndarray:
    """The held-out images as the model's input batch, checked against their labels."""
    input_name, dims = image_input(model, Path(model_path))
    images = calibration_batch_images(images, input_name, dims, 1, Path(model_path))
    if labels is not None and np.shape(labels) != (len(images),):
        raise UserError(f"{np.shape(labels)} held-out labels for {len(images)} images; pass one each")
    return images


def _gate_meter(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    holdout_images: np.ndarray,
    holdout_labels: np.ndarray | None,
    gate: Gate,
    options: dict,
    high_precision: str,
) -> GateMeter:
    """A function measuring the gate on a candidate plan (layer -> precision) against FP32's logits."""
    reference = _logits(model_path, holdout_images)

    def measure(layers: dict[str, str]) -> GateResult:
        with tempfile.TemporaryDirectory(prefix="mimicnorm-plan.") as tmp:
            path = Path(tmp) / "plan.onnx"
            _write(model_path, ranges, layers, path, options, high_precision)
            return _gate_result(reference, _logits(path, holdout_images), holdout_labels, gate)

    return measure


def _check_a_plan_can_pass(measure: GateMeter, model: onnx.ModelProto, high_precision: str) -> None:
    """Fail fast when no plan can pass: every layer in high precision is the best there is."""
    best = measure({node.name: high_precision for node in quantizable_layers(model)})
    if not best.passed:
        raise UserError(
            f"no precision plan passes the gate: even the all-{high_precision} model gives {_describe(best)}; "
            "relax the gate"
        )


def _move_until_passing(
    sensitivity: list[LayerSensitivity],
    measure: GateMeter,
    high_precision: str,
    all_int8: GateResult,
    progress: PlanProgress | None,
) -> tuple[dict[str, str], list[Move], GateResult]:
    """From all layers in INT8 (whose gate result is `all_int8`), the most sensitive moved to
    `high_precision` one by one until the gate passes: the layers' precisions, the moves with their
    reasons, the last gate result."""
    layers = {s.node: "int8" for s in sensitivity}
    moved: list[Move] = []
    result = all_int8
    for layer in sorted(sensitivity, key=lambda s: s.logits_sqnr_db):
        if result.passed:
            break
        layers[layer.node] = high_precision
        moved.append(
            Move(
                layer.node,
                high_precision,
                f"gate failed (top-1 drop {result.top1_drop:.4f}, logits SQNR {result.logits_sqnr_db:.1f} dB) "
                f"and {layer.node} is the most sensitive INT8 layer left "
                f"(alone in INT8: logits SQNR {layer.logits_sqnr_db:.1f} dB)",
            )
        )
        result = measure(layers)
        if progress is not None:
            progress(f"plan: {layer.node} -> {high_precision}; now {_describe(result)}")
    return layers, moved, result

def write_mixed_model(
    model_path: str | os.PathLike, plan: PrecisionPlan, ranges: ActivationRanges, output_path: str | os.PathLike
) -> QuantizeResult | None:
    """Write `plan` for `model_path`: Q/DQ for its INT8 layers, its high precision type for the rest.

    The QuantizeResult describes the Q/DQ part; None when the plan has no INT8 layer (the output
    is then the FP32 model, or its pure FP16 twin).
    """
    if sha256_file(model_path) != plan.model_sha256:
        raise UserError(f"{model_path}: the precision plan was made for another model; re-run the planner on it")
    if ranges.calibration_sha256 != plan.calibration_sha256 or ranges.method != plan.method:
        raise UserError("activation ranges differ from those the precision plan was made with; pass the plan's ranges")
    _planned_model(model_path, ranges)
    return _write(model_path, ranges, plan.layers, Path(output_path), plan.qdq_options, plan.high_precision)


def write_int8_model(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    output_path: str | os.PathLike,
    *,
    high_precision: str = "fp32",
    high_precision_layers: Sequence[str] = (),
    **qdq: bool | str,
) -> QuantizeResult:
    """Every quantizable layer in INT8 (`qdq`: write_qdq_model's encoding options), and the rest of
    the graph (pooling, Relu, a residual Add's branch, the Casts at input and output) in
    `high_precision`: FP16 for TensorRT targets, since TensorRT 11 networks are strongly typed and
    run what the ONNX types say, FP32 elsewhere. FP16 refuses constants and activations beyond its range.

    `high_precision_layers` (node names of quantizable layers) stay in `high_precision` too: an
    ungated what-if, e.g. the classifier left in float as Model Optimizer does (docs/BENCHMARKS.md section 8)."""
    if high_precision not in HIGH_PRECISIONS:
        raise UserError(f"high precision {high_precision!r} is not one of {', '.join(HIGH_PRECISIONS)}")
    model = _planned_model(model_path, ranges)
    layers = {node.name: "int8" for node in quantizable_layers(model)}
    unknown = [name for name in high_precision_layers if name not in layers]
    if unknown:
        raise UserError(f"{model_path}: {', '.join(map(repr, unknown))} is not a quantizable layer; name Conv, Gemm, "
                        "MatMul or residual Add nodes")  # fmt: skip
    layers.update(dict.fromkeys(high_precision_layers, high_precision))
    return _write(model_path, ranges, layers, Path(output_path), qdq, high_precision)


def _write(
    model_path: str | os.PathLike,
    ranges: ActivationRanges,
    layers: dict[str, str],
    output_path: Path,
    qdq_options: dict,
    high_precision: str,
) -> QuantizeResult | None:
    excluded = [node for node, precision in layers.items() if precision != "int8"]
    if len(excluded) == len(layers):
        # Nothing in INT8: no Q/DQ at all (ORT's placement would still quantize the pooling).
        if high_precision == "fp16":
            convert_fp16(model_path, output_path, activation_max_abs=ranges.max_abs)
        else:
            with atomic_path(output_path) as tmp:
                shutil.copyfile(model_path, tmp)
        return None
    options = {**qdq_options, "nodes_to_exclude": excluded}
    if high_precision == "fp32":
        return write_qdq_model(model_path, ranges, output_path, **options)
    with tempfile.TemporaryDirectory(prefix="mimicnorm-plan.") as tmp:
        qdq_path = Path(tmp) / "qdq.onnx"
        result = write_qdq_model(model_path, ranges, qdq_path, **options)
        convert_qdq_fp16(qdq_path, output_path, activation_max_abs=ranges.max_abs)
    result.output_path = str(output_path)
    return result


def _planned_model(model_path: str | os.PathLike, ranges: ActivationRanges) -> onnx.ModelProto:
    model = load_fp32_model(Path(model_path))
    ranges.require_model(model_path)
    unnamed = [node.op_type for node in model.graph.node if not node.name]
    if unnamed:
        raise UserError(
            f"{model_path}: {len(unnamed)} nodes have no name; a plan names its layers, re-export the model"
        )
    return model


def _logits(model_path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Logits from ONNX Runtime with graph optimizations off: Q/DQ simulated in float on any CPU."""
    return run_model(model_path, images, graph_optimization="disabled")


def _gate_result(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None, gate: Gate) -> GateResult:
    reference_top1, top1 = reference.argmax(axis=1), logits.argmax(axis=1)
    if labels is not None:
        lost = int(np.sum((reference_top1 == labels) & (top1 != labels)))
        gained = int(np.sum((reference_top1 != labels) & (top1 == labels)))
    else:
        lost, gained = int(np.sum(reference_top1 != top1)), 0
    drop = (lost - gained) / len(reference)
    sqnr = sqnr_db(reference, logits)
    passed = (gate.max_top1_drop is None or drop <= gate.max_top1_drop) and (
        gate.min_logits_sqnr_db is None or sqnr >= gate.min_logits_sqnr_db
    )
    return GateResult(top1_drop=drop, logits_sqnr_db=sqnr, passed=passed, images=len(reference),
                      images_lost=lost, images_gained=gained)  # fmt: skip


def _describe(result: GateResult) -> str:
    verdict = "passes" if result.passed else "fails"
    return (f"top-1 drop {result.top1_drop:.4f} ({result.images_lost} images lost, {result.images_gained} gained of "
            f"{result.images}), logits SQNR {result.logits_sqnr_db:.1f} dB ({verdict})")  # fmt: skip
