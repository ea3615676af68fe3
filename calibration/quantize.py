"""Post-training INT8 quantization to a symmetric Q/DQ ONNX model that TensorRT and ONNX Runtime both run.

Built on `onnxruntime.quantization.quantize_static`. The settings are fixed by what TensorRT
accepts (REFERENCE.md section 4): QDQ format, int8 activations and weights, every zero point 0,
per-channel weight scales on axis 0, and float biases (TensorRT's DequantizeLinear takes int8,
not the int32 bias ORT would write; ORT's CPU kernels quantize a float bias themselves).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Error as ProtobufError
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from calibration.data import ArrayCalibrationReader, ProgressCallback
from calibration.qdq import QDQ_OPS, is_quantized, qdq_zero_point_violations
from engines.artifacts import atomic_path
from engines.errors import UserError

# Ops whose weights INT8 is for; a model without any has nothing worth quantizing.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION_METHODS = ("minmax",)

ORT_EXTRA_OPTIONS = {
    # Zero point 0 everywhere: TensorRT accepts symmetric Q/DQ only.
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    # Keep biases float: TensorRT cannot parse an int32 DequantizeLinear.
    "QuantizeBias": False,
}


@dataclass
class QuantizeConfig:
    per_channel: bool = False  # one weight scale per output channel (axis 0) instead of per tensor
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI (see REFERENCE.md section 3)
    method: str = "minmax"  # activation range calibration; only "minmax" so far
    batch_size: int = 32  # images per calibration batch; MinMax ranges do not depend on it


@dataclass
class QuantizeResult:
    output_path: str
    config: dict  # QuantizeConfig fields plus the fixed ORT settings used
    num_calibration_images: int
    quantized_nodes: list[str]  # names of the nodes that read at least one dequantized input
    activation_scales: dict[str, float]  # FP32 tensor name -> scale of its QuantizeLinear (amax / 127)


def quantize_int8(
    model_path: str | os.PathLike,
    calibration_images: np.ndarray,
    output_path: str | os.PathLike,
    config: QuantizeConfig,
    progress: ProgressCallback | None = None,
) -> QuantizeResult:
    """Calibrate `model_path` (FP32 ONNX) on `calibration_images` and write its INT8 Q/DQ twin.

    `calibration_images` are float32 model inputs, N x C x H x W. `progress(done, total)` is called
    once per calibration batch. Bad input raises UserError before anything is written; the output
    appears only once it is complete and checked.
    """
    _check_config(config)
    model = _load_fp32_model(Path(model_path))
    input_name, input_dims = _image_input(model, Path(model_path))
    images = _calibration_batch_images(calibration_images, input_name, input_dims, config.batch_size, Path(model_path))
    if Path(output_path).resolve() == Path(model_path).resolve():
        raise UserError(f"{output_path}: output would overwrite the FP32 input model; pass another output path")
    reader = ArrayCalibrationReader(images, input_name, config.batch_size, progress)
    fp32_tensor_names = {i.name for i in model.graph.input} | {o for node in model.graph.node for o in node.output}

    with atomic_path(output_path) as tmp, _without_pre_process_advice():
        # A ModelProto, not the path: given a path, ORT writes `<model>-inferred.onnx` next to the
        # input model (and leaves it there if anything fails). Its other temporary files go to the
        # system temp directory.
        quantize_static(
            model,
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(ORT_EXTRA_OPTIONS),
        )
        quantized = onnx.load(str(tmp))
        violations = qdq_zero_point_violations(quantized)
        if violations:
            raise RuntimeError(
                f"internal error: ONNX Runtime wrote Q/DQ nodes with a nonzero or non-int8 zero point "
                f"({', '.join(violations[:5])}); TensorRT would reject the model"
            )

    return QuantizeResult(
        output_path=str(output_path),
        config={
            **asdict(config),
            "quant_format": "QDQ",
            "activation_type": "QInt8",
            "weight_type": "QInt8",
            "extra_options": dict(ORT_EXTRA_OPTIONS),
        },
        num_calibration_images=len(images),
        quantized_nodes=_quantized_node_names(quantized),
        activation_scales=_activation_scales(quantized, fp32_tensor_names),
    )


def _check_config(config: QuantizeConfig) -> None:
    if config.method not in CALIBRATION_METHODS:
        raise UserError(
            f"calibration method {config.method!r} is not available; use 'minmax' (Percentile and Entropy "
            "come with the calibration issue: ONNX Runtime's Entropy silently returns MinMax ranges)"
        )
    if config.batch_size < 1:
        raise UserError(f"calibration batch size {config.batch_size} is not positive; pass a batch size of 1 or more")


def _load_fp32_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the FP32 ONNX model written by 'mimicnorm-deploy export'")
    try:
        model = onnx.load(str(path))
        # Protobuf parses many non-ONNX byte strings without complaint; an empty graph gives them away.
        if not model.graph.node:
            raise ValueError("no graph")
        onnx.checker.check_model(model)
    except (ProtobufError, OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise UserError(f"{path}: not an ONNX model ({exc.__class__.__name__}); pass the FP32 .onnx file") from None
    if is_quantized(model):
        raise UserError(f"{path}: already quantized (has Q/DQ or quantized ops); pass the FP32 model")
    if not any(node.op_type in WEIGHTED_OPS for node in model.graph.node):
        raise UserError(f"{path}: model has no Conv, Gemm or MatMul to quantize; pass the CNN's FP32 model")
    return model


def _image_input(model: onnx.ModelProto, path: Path) -> tuple[str, list[int | None]]:
    """Name and N, C, H, W dims (None where symbolic) of the model's one image input."""
    initializer_names = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise UserError(
            f"{path}: model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "calibration feeds one image input: export the model with a single input"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise UserError(f"{path}: input '{inputs[0].name}' is not a float32 N x C x H x W tensor; export the FP32 CNN")
    return inputs[0].name, dims


def _calibration_batch_images(
    images: np.ndarray, input_name: str, dims: list[int | None], batch_size: int, path: Path
) -> np.ndarray:
    """Check that `images` fit the model input and make at least one batch; return them as float32."""
    images = np.asarray(images)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise UserError(
            f"calibration images are {images.dtype} with shape {images.shape}; pass float32 model inputs "
            "N x C x H x W (engines.artifacts.load_image_set applies the image set's scale)"
        )
    if len(images) == 0:
        raise UserError("calibration set is empty; pass the calibration image set written by 'mimicnorm-deploy export'")
    if len(images) < batch_size:
        raise UserError(
            f"calibration set has {len(images)} images, fewer than one batch of {batch_size}; "
            "pass more images or a smaller batch size"
        )
    if not np.isfinite(images).all():
        raise UserError("calibration images contain NaN or infinity; re-export the calibration image set")
    if any(want is not None and want != got for want, got in zip(dims[1:], images.shape[1:], strict=True)):
        expected = " x ".join(str(d) if d is not None else "?" for d in dims[1:])
        raise UserError(
            f"calibration images are {' x '.join(map(str, images.shape[1:]))} per image but input "
            f"'{input_name}' of {path} takes {expected}; export the calibration set at the model's input size"
        )
    fixed_batch = dims[0]
    if fixed_batch is not None and (batch_size != fixed_batch or len(images) % fixed_batch):
        raise UserError(
            f"{path}: input '{input_name}' has a fixed batch of {fixed_batch}; use batch size {fixed_batch} "
            f"and a multiple of {fixed_batch} images, or export with a dynamic batch axis"
        )
    return images.astype(np.float32, copy=False)


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
